//! A progress line on stderr while a phase runs: rewritten in place on a terminal, one
//! line every few seconds otherwise (so logs of a long run stay readable).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters a phase moves forward; the printer reads them.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints `label` and the counters (and `extra()`) until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    terminal: bool,
}

impl Progress {
    pub fn start(
        label: String,
        total: u64,
        counters: Arc<Counters>,
        extra: impl Fn() -> String + Send + 'static,
    ) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let c = &counters;
                let line = format!(
                    "{}: sent {}/{total}, answered {} (accepted {}, refused {}), {}",
                    label,
                    c.sent.load(Ordering::Relaxed),
                    c.answered.load(Ordering::Relaxed),
                    c.accepted.load(Ordering::Relaxed),
                    c.rejected.load(Ordering::Relaxed),
                    extra(),
                );
                let mut err = std::io::stderr().lock();
                if terminal {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        });
        Progress { task, terminal }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}
