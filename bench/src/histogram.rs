//! Prometheus histograms read from a `/metrics` text: the cumulative buckets
//! of one metric grouped by one label, the difference of two scrapes, and
//! quantiles by linear interpolation within a bucket, as Prometheus'
//! `histogram_quantile` computes them. Depends on no other module.

use std::collections::BTreeMap;

/// One histogram: cumulative counts by upper bound, ascending, `+Inf` last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// A histogram from `(upper bound, cumulative count)` pairs, in any order.
    pub fn new(mut buckets: Vec<(f64, f64)>) -> Histogram {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets }
    }

    /// Observations counted (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, count)| count)
    }

    /// What was observed between `earlier` and `self` (two scrapes of the
    /// same counter): the difference of each bucket's cumulative count.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(le, _)| le.total_cmp(&bound).is_eq())
                .map_or(0.0, |&(_, count)| count)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, count)| (le, (count - before(le)).max(0.0)))
                .collect(),
        }
    }

    /// The `q` quantile (0 ≤ q ≤ 1): the bucket holding the rank `q × count`,
    /// interpolated linearly between its lower and upper bound (0 below the
    /// first bucket); the highest finite bound if the rank falls in `+Inf`.
    /// `None` when nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// The histograms of `metric` (its `_bucket` series) in `text`, one per value
/// of the label `by`, each summed over the series' other labels; `keep`
/// chooses series by their labels.
pub fn histograms_by(
    text: &str,
    metric: &str,
    by: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, Histogram> {
    let series = format!("{metric}_bucket{{");
    let mut sums: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(series.as_str()) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let labels = parse_labels(labels);
        let (Some(key), Some(le), Ok(value)) = (
            labels.get(by),
            labels.get("le").and_then(|le| parse_bound(le)),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        if !keep(&labels) {
            continue;
        }
        let bucket = sums
            .entry(key.clone())
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        bucket.1 += value;
    }
    sums.into_iter()
        .map(|(key, buckets)| (key, Histogram::new(buckets.into_values().collect())))
        .collect()
}

fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// `a="x",b="y"` as a map; understands `\"` and `\\` inside values.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = index + 1;
                    break;
                }
                _ => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";

    fn scrape(validate: [u64; 4], mutate: [u64; 4]) -> String {
        let mut text = format!("# TYPE {METRIC} histogram\n");
        for (name, kind, counts) in [
            ("validate.example.com", "validating", validate),
            ("mutate.example.com", "admit", mutate),
        ] {
            for (le, count) in ["0.005", "0.025", "0.1", "+Inf"].iter().zip(counts) {
                text.push_str(&format!(
                    "{METRIC}_bucket{{name=\"{name}\",operation=\"CREATE\",rejected=\"false\",type=\"{kind}\",le=\"{le}\"}} {count}\n"
                ));
            }
            text.push_str(&format!(
                "{METRIC}_count{{name=\"{name}\",operation=\"CREATE\",rejected=\"false\",type=\"{kind}\"}} {}\n",
                counts[3]
            ));
        }
        // Another webhook, and the same one for another operation.
        text.push_str(&format!(
            "{METRIC}_bucket{{name=\"other.example.com\",operation=\"CREATE\",rejected=\"false\",type=\"validating\",le=\"+Inf\"}} 7\n"
        ));
        text.push_str(&format!(
            "{METRIC}_bucket{{name=\"validate.example.com\",operation=\"UPDATE\",rejected=\"false\",type=\"validating\",le=\"+Inf\"}} 3\n"
        ));
        text
    }

    #[test]
    fn groups_by_label_and_sums_the_rest() {
        let text = scrape([1, 2, 3, 4], [0, 0, 0, 0]);
        let all = histograms_by(&text, METRIC, "name", |_| true);
        assert_eq!(all.len(), 3);
        assert_eq!(all["validate.example.com"].count(), 7.0);
        let creates = histograms_by(&text, METRIC, "name", |labels| {
            labels.get("operation").map(String::as_str) == Some("CREATE")
        });
        assert_eq!(creates["validate.example.com"].count(), 4.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_difference() {
        let before = histograms_by(
            &scrape([10, 10, 10, 10], [0, 0, 0, 0]),
            METRIC,
            "name",
            |_| true,
        );
        // 100 more: 50 under 5 ms, 40 in 5..25 ms, 10 in 25..100 ms.
        let after = histograms_by(
            &scrape([60, 100, 110, 110], [0, 0, 0, 0]),
            METRIC,
            "name",
            |_| true,
        );
        let phase = after["validate.example.com"].since(&before["validate.example.com"]);
        assert_eq!(phase.count(), 100.0);
        let p50 = phase.quantile(0.5).expect("observed");
        assert!((p50 - 0.005).abs() < 1e-12, "{p50}");
        // Rank 99: 9 of the 10 in 25..100 ms.
        let p99 = phase.quantile(0.99).expect("observed");
        assert!((p99 - (0.025 + 0.075 * 0.9)).abs() < 1e-12, "{p99}");
        // The first bucket interpolates from 0.
        assert!((phase.quantile(0.25).expect("observed") - 0.0025).abs() < 1e-12);
        assert_eq!(after["mutate.example.com"].quantile(0.99), None);
    }

    #[test]
    fn a_rank_in_the_infinite_bucket_is_the_highest_finite_bound() {
        let histogram = Histogram::new(vec![(0.1, 1.0), (f64::INFINITY, 10.0)]);
        assert_eq!(histogram.quantile(0.99), Some(0.1));
    }

    #[test]
    fn labels_with_escapes() {
        let labels = parse_labels(r#"a="x,y",b="say \"hi\"",le="+Inf""#);
        assert_eq!(labels["a"], "x,y");
        assert_eq!(labels["b"], "say \"hi\"");
        assert_eq!(labels["le"], "+Inf");
    }
}
