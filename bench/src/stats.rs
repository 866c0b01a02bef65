//! Latency figures: percentiles of a sorted sample, printed the same way everywhere.

use std::fmt;
use std::time::Duration;

/// The `p` quantile (0..=1) of an ascending sample (nearest rank; zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50 / p99 / max of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn of(mut sample: Vec<Duration>) -> Latency {
        sample.sort_unstable();
        Latency {
            count: sample.len(),
            p50: percentile(&sample, 0.50),
            p99: percentile(&sample, 0.99),
            max: sample.last().copied().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            self.p50, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let sample: Vec<Duration> = (1..=100).map(ms).collect();
        let l = Latency::of(sample.into_iter().rev().collect());
        assert_eq!(
            (l.count, l.p50, l.p99, l.max),
            (100, ms(51), ms(99), ms(100))
        );
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
