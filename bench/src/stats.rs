//! Latency summaries: percentiles over per-object latencies, in milliseconds,
//! and the median and range of one figure over a scenario's repetitions.

use std::time::Duration;

use serde::Serialize;

/// The distribution of one step's per-object latencies.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// How many latencies were measured.
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `latencies`; all zero when there are none.
    pub fn of(latencies: &[Duration]) -> Summary {
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        Summary {
            count: sorted.len(),
            p50_ms: millis(percentile(&sorted, 50.0)),
            p99_ms: millis(percentile(&sorted, 99.0)),
            max_ms: millis(sorted.last().copied().unwrap_or_default()),
        }
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest value with at
/// least `p` percent of the values at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One figure over the repetitions of a scenario: the verdict is taken on
/// the median, the range shows how much it moved.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// How many repetitions the figure comes from.
    pub runs: usize,
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; all zero when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        sorted.sort_by(f64::total_cmp);
        let runs = sorted.len();
        let median = match runs {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Spread {
            runs,
            median,
            min: sorted.first().copied().unwrap_or_default(),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// A duration in milliseconds, rounded to a tenth.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&hundred, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&hundred, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_sorts_first() {
        let summary = Summary::of(&ms(&[30, 10, 20]));
        assert_eq!(summary.count, 3);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.p99_ms, 30.0);
        assert_eq!(summary.max_ms, 30.0);
    }

    #[test]
    fn spreads_take_the_middle() {
        let odd = Spread::of([3.0, 1.0, 2.0, 9.0, 4.0]);
        assert_eq!((odd.runs, odd.median, odd.min, odd.max), (5, 3.0, 1.0, 9.0));
        assert_eq!(Spread::of([1.0, 2.0]).median, 1.5);
        assert_eq!(Spread::of([]).runs, 0);
    }

    #[test]
    fn millis_rounds_to_a_tenth() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.6);
    }
}
