//! Where the cores went during a phase: CPU time of the system under test, of
//! PostgreSQL's processes, of RabbitMQ's Erlang VM and of the benchmark itself, read from
//! `/proc` before and after. On one box every part shares the same cores, so a latency
//! figure says whether the system kept up and this says what each change cost, and where.
//! It is also far steadier from run to run than a p99 on a busy box: compare builds with it.
//!
//! Times are the kernel's per-process counters (`utime + stime`, in clock ticks of 10 ms);
//! PostgreSQL's and RabbitMQ's include their reaped children (a backend that ended during
//! the phase still counts). "other" is what the whole machine was busy with beyond the
//! four (the kernel's network work outside process context, anything else running).

use std::time::{Duration, Instant};

/// The parts the machine's CPU time is split into, in print order.
const PARTS: [&str; 4] = ["orderflow", "postgres", "rabbitmq", "bench"];

/// Takes [`Sample`]s of CPU time; `system_pid` is the `orderflow` process under test.
pub struct Meter {
    system_pid: Option<u32>,
    ticks_per_sec: f64,
}

/// CPU seconds per part, and the machine's busy seconds, at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    parts: [f64; 4],
    busy: f64,
    cores: usize,
}

/// What a phase cost: core-seconds per part between two samples.
#[derive(Debug)]
pub struct Usage {
    wall: Duration,
    parts: [f64; 4],
    busy: f64,
    cores: usize,
}

impl Meter {
    pub fn new(system_pid: Option<u32>) -> Meter {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Meter {
            system_pid,
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// CPU time used so far. A process that cannot be read (it just ended) counts nothing.
    pub fn sample(&self) -> Sample {
        let mut ticks = [0u64; 4];
        if let Some(pid) = self.system_pid {
            ticks[0] = read_stat(&format!("/proc/{pid}/stat")).map_or(0, |s| s.own());
        }
        ticks[3] = read_stat("/proc/self/stat").map_or(0, |s| s.own());
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let Some(stat) = read_stat(&format!("/proc/{pid}/stat")) else {
                    continue;
                };
                if stat.comm.starts_with("postgres") {
                    ticks[1] += stat.with_children();
                } else if stat.comm.starts_with("beam") {
                    ticks[2] += stat.with_children();
                }
            }
        }
        let (busy, cores) = machine_busy_ticks();
        Sample {
            at: Instant::now(),
            parts: ticks.map(|t| t as f64 / self.ticks_per_sec),
            busy: busy as f64 / self.ticks_per_sec,
            cores,
        }
    }
}

impl Usage {
    pub fn between(before: &Sample, after: &Sample) -> Usage {
        let mut parts = [0.0; 4];
        for (i, part) in parts.iter_mut().enumerate() {
            *part = (after.parts[i] - before.parts[i]).max(0.0);
        }
        Usage {
            wall: after.at.saturating_duration_since(before.at),
            parts,
            busy: (after.busy - before.busy).max(0.0),
            cores: after.cores,
        }
    }

    /// Print the split as cores busy on average, and as CPU time per `unit` of work done
    /// (`count` of them, e.g. accepted changes), in µs.
    pub fn print(&self, count: usize, unit: &str) {
        let secs = self.wall.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let named: f64 = self.parts.iter().sum();
        let cores = |s: f64| format!("{:.2}", s / secs);
        println!(
            "    cpu: {} of {} cores busy over {:.1?}: {}, other {}",
            cores(self.busy),
            self.cores,
            self.wall,
            self.split(cores),
            cores((self.busy - named).max(0.0)),
        );
        if count > 0 {
            let micros = |s: f64| format!("{:.0}", s * 1e6 / count as f64);
            println!(
                "    cpu per {unit} (µs): {}; all busy {}",
                self.split(micros),
                micros(self.busy)
            );
        }
    }

    /// Each part's name and its seconds as `show` renders them: `orderflow 0.51, …`.
    fn split(&self, show: impl Fn(f64) -> String) -> String {
        PARTS
            .iter()
            .zip(self.parts)
            .map(|(name, s)| format!("{name} {}", show(s)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The fields of `/proc/<pid>/stat` this module reads.
#[derive(Debug, PartialEq)]
struct Stat {
    comm: String,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn own(&self) -> u64 {
        self.utime + self.stime
    }

    fn with_children(&self) -> u64 {
        self.own() + self.cutime + self.cstime
    }
}

fn read_stat(path: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// Parse one `/proc/<pid>/stat` line. The command name is in parentheses and may itself
/// hold spaces and parentheses: it ends at the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    // After the name come field 3 (state) on; utime is field 14.
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// The machine's busy ticks since boot (every state but idle and iowait, all cores) and
/// its number of cores, from `/proc/stat`.
fn machine_busy_ticks() -> (u64, usize) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let cores = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let busy = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse::<u64>().ok())
                .enumerate()
                // user nice system idle iowait irq softirq steal (guest is within user).
                .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0);
    (busy, cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (beam (x) smp) S 1 4242 4242 0 -1 4194560 5000 0 0 0 \
                    731 52 9 4 20 0 30 0 123456 2000000000 30000 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "beam (x) smp".into(),
                utime: 731,
                stime: 52,
                cutime: 9,
                cstime: 4,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
    }

    #[test]
    fn usage_is_the_difference_of_two_samples() {
        let at = Instant::now();
        let before = Sample {
            at,
            parts: [1.0, 2.0, 3.0, 4.0],
            busy: 10.0,
            cores: 2,
        };
        let after = Sample {
            at: at + Duration::from_secs(2),
            parts: [1.5, 3.0, 3.25, 4.0],
            busy: 12.0,
            cores: 2,
        };
        let usage = Usage::between(&before, &after);
        assert_eq!(usage.parts, [0.5, 1.0, 0.25, 0.0]);
        assert_eq!(usage.busy, 2.0);
        assert_eq!(usage.wall, Duration::from_secs(2));
    }

    #[test]
    fn this_process_is_measured_while_it_works() {
        let meter = Meter::new(None);
        let before = meter.sample();
        // Burn CPU until the kernel's counters for this process and for the machine have
        // both moved (a tick is 10 ms; they tick apart, so one may move before the other).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        let moved = |u: Usage| u.parts[3] > 0.0 && u.busy > 0.0;
        while !moved(Usage::between(&before, &meter.sample())) {
            assert!(Instant::now() < deadline, "no CPU time counted in 10 s");
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        let usage = Usage::between(&before, &meter.sample());
        assert!(usage.parts[3] > 0.0 && usage.busy > 0.0, "{usage:?}");
        assert!(usage.cores >= 1);
    }
}
