//! The machine's ceilings to judge a figure by: the `sql-limit` yardstick (pgbench on a
//! scratch database) gives `tx1`, one change per hand-written transaction, and `tx50`,
//! fifty changes per transaction. Shared machines are noisy, so a ratio taken right
//! before and right after the benchmark means more than any absolute figure.

use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct YardstickArgs {
    /// Run this sql-limit yardstick script (`run.sh`) right before and right after the
    /// benchmark and print the benchmark's figure as a ratio of its ceilings.
    #[arg(long, value_name = "RUN_SH")]
    pub yardstick: Option<PathBuf>,
    /// Seconds each yardstick measurement runs.
    #[arg(long, default_value_t = 10)]
    pub yardstick_secs: u32,
    /// tx1 transactions/s measured beforehand (instead of running the script).
    #[arg(long, env = "YARDSTICK_TX1")]
    pub tx1: Option<f64>,
    /// tx50 transactions/s measured beforehand (each one is fifty changes).
    #[arg(long, env = "YARDSTICK_TX50")]
    pub tx50: Option<f64>,
}

/// One measurement of the ceilings, in transactions per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ceilings {
    pub tx1: Option<f64>,
    pub tx50: Option<f64>,
}

/// Which ceiling a figure is judged by.
#[derive(Debug, Clone, Copy)]
pub enum Ceiling {
    /// Single changes: one change per transaction is `tx1`.
    Tx1,
    /// Batched changes: `tx50` transactions of fifty changes each.
    Tx50Changes,
}

impl YardstickArgs {
    /// The ceilings before the benchmark: measured now, or as given, or none.
    pub async fn before(&self) -> anyhow::Result<Option<Ceilings>> {
        match &self.yardstick {
            Some(_) => self.measure("before").await.map(Some),
            None if self.tx1.is_some() || self.tx50.is_some() => Ok(Some(Ceilings {
                tx1: self.tx1,
                tx50: self.tx50,
            })),
            None => Ok(None),
        }
    }

    /// The ceilings after the benchmark (only when the script is run).
    pub async fn after(&self) -> anyhow::Result<Option<Ceilings>> {
        match &self.yardstick {
            Some(_) => self.measure("after").await.map(Some),
            None => Ok(None),
        }
    }

    async fn measure(&self, when: &str) -> anyhow::Result<Ceilings> {
        let script = self.yardstick.as_ref().expect("checked by the caller");
        println!(
            "yardstick {when}: {} {}",
            script.display(),
            self.yardstick_secs
        );
        let out = tokio::process::Command::new(script)
            .arg(self.yardstick_secs.to_string())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(parse(&text))
    }
}

/// Read `tx1 tps = 1234.5 (...)` and `tx50 tps = 56.7 (...)` lines of the script.
pub fn parse(output: &str) -> Ceilings {
    let mut found = Ceilings::default();
    for line in output.lines() {
        let Some((name, rest)) = line.split_once(' ') else {
            continue;
        };
        let tps = rest
            .split_once("tps = ")
            .and_then(|(_, n)| n.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok());
        match name {
            "tx1" => found.tx1 = tps,
            "tx50" => found.tx50 = tps,
            _ => {}
        }
    }
    found
}

/// Print `figure` (changes per second) as a ratio of its ceiling, before and after.
pub fn report(
    label: &str,
    figure: f64,
    ceiling: Ceiling,
    before: Option<&Ceilings>,
    after: Option<&Ceilings>,
) {
    let ratio = |c: &Ceilings| {
        let (tps, per_tx, name) = match ceiling {
            Ceiling::Tx1 => (c.tx1, 1.0, "tx1"),
            Ceiling::Tx50Changes => (c.tx50, 50.0, "tx50 x 50"),
        };
        tps.map(|tps| {
            format!(
                "{:.2}x {name} ({:.0} changes/s)",
                figure / (tps * per_tx),
                tps * per_tx
            )
        })
    };
    let parts: Vec<String> = [("before", before), ("after", after)]
        .into_iter()
        .filter_map(|(when, c)| c.and_then(ratio).map(|r| format!("{r} {when}")))
        .collect();
    if !parts.is_empty() {
        println!("yardstick: {label} {figure:.0} = {}", parts.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_scripts_tps_lines() {
        let out = "tx1 tps = 1530.412 (without initial connection time)\n\
                   ins1 tps = 4100.2 (without initial connection time)\n\
                   tx50 tps = 61.25 (without initial connection time) (x50 transitions)\n";
        assert_eq!(
            parse(out),
            Ceilings {
                tx1: Some(1530.412),
                tx50: Some(61.25)
            }
        );
    }
}
