//! How a run is shown: one table on the terminal with each figure beside its
//! target (docs/benchmarks.md), the per-phase lines, and the same (with every
//! raw figure) as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::accounting::{LEASE, WATCH};
use crate::figures::{Phase, Propagation, Results, WebhookFigures, WebhookShare};
use crate::stats::{Spread, Summary};

/// From this many namespaces on, the large-scale targets of docs/benchmarks.md
/// apply; below, the tightened ones of the default scale.
pub const LARGE_SCALE: usize = 10_000;

/// The targets of docs/benchmarks.md at one scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Targets {
    /// Propagation may take at most this many times the floor.
    pub floor_ratio: f64,
    /// Namespace created → its copies exist, p99.
    pub new_namespace_p99_ms: f64,
    /// Operator resident memory, steady and peak.
    pub memory_mib: f64,
    /// Each webhook's share of admission latency, p99 (API server histogram).
    pub webhook_share_p99_ms: f64,
}

impl Targets {
    /// The targets for a run over `scale` namespaces.
    pub fn for_scale(scale: usize) -> Targets {
        if scale >= LARGE_SCALE {
            Targets {
                floor_ratio: 1.25,
                new_namespace_p99_ms: 1000.0,
                memory_mib: 128.0,
                webhook_share_p99_ms: 5.0,
            }
        } else {
            Targets {
                floor_ratio: 1.1,
                new_namespace_p99_ms: 300.0,
                memory_mib: 48.0,
                webhook_share_p99_ms: 5.0,
            }
        }
    }
}

/// How a figure compares with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// A figure shown for context, with no target of its own.
    Info,
    /// The operator does not offer what the figure measures.
    NotMeasured,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met { Verdict::Pass } else { Verdict::Fail }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub measure: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    fn new(measure: String, value: String, target: &str, verdict: Verdict) -> Row {
        Row {
            measure,
            value,
            target: target.to_owned(),
            verdict,
        }
    }

    fn info(measure: String, value: String) -> Row {
        Row::new(measure, value, "", Verdict::Info)
    }
}

/// The table's rows, in the order of docs/benchmarks.md; timed figures are
/// medians over the repetitions, with their range.
pub fn rows(results: &Results) -> Vec<Row> {
    let n = results.settings.scale;
    let targets = Targets::for_scale(n);
    let mut rows = floor_rows(results, n);
    rows.extend(propagation_rows(results, n, &targets));
    rows.push(namespace_row(results, &targets));
    rows.push(idle_row(results));
    rows.extend(memory_rows(results, &targets));
    rows.extend(cost_rows(results));
    rows.extend(webhook_rows(results.webhook.as_deref(), &targets));
    rows
}

fn floor_rows(results: &Results, n: usize) -> Vec<Row> {
    let floor = |what: &str, runs: &[Propagation]| {
        Row::info(
            format!(
                "floor: bare client {what} {n} objects ({} parallel), all / p99",
                results.settings.parallelism
            ),
            format!(
                "{} / {}",
                spread(&Spread::of(runs.iter().map(|run| run.total_ms)), duration),
                duration(Spread::of(runs.iter().map(|run| run.per_object.p99_ms)).median)
            ),
        )
    };
    vec![
        floor("creates", &results.floor_create),
        floor("updates", &results.floor_update),
    ]
}

fn propagation_rows(results: &Results, n: usize, targets: &Targets) -> Vec<Row> {
    let target = format!("<= {}x floor", targets.floor_ratio);
    let created = &results.replika_created;
    let updated = &results.source_updated;
    // Each repetition against the floor run right before it.
    let created_ratio = ratios(created, &results.floor_create, |run| run.total_ms);
    // Like with like: the p99 of the copies against the p99 of the floor's objects.
    let updated_ratio = ratios(updated, &results.floor_update, |run| run.per_object.p99_ms);
    let ratio_value = |ratio: &Spread, times: Spread| {
        format!(
            "{} floor; {}",
            spread(ratio, |x| format!("{x:.2}x")),
            spread(&times, duration)
        )
    };
    vec![
        Row::info(
            "Replika created -> copy present, p50 / p99 / max (median run)".into(),
            distribution(created),
        ),
        Row::new(
            format!("Replika created -> copies in all {n} namespaces"),
            ratio_value(
                &created_ratio,
                Spread::of(created.iter().map(|run| run.total_ms)),
            ),
            &target,
            Verdict::of(created_ratio.median <= targets.floor_ratio),
        ),
        Row::info(
            "source updated -> copy updated, p50 / p99 / max (median run)".into(),
            distribution(updated),
        ),
        Row::new(
            format!("source updated -> all {n} copies updated, p99"),
            ratio_value(
                &updated_ratio,
                Spread::of(updated.iter().map(|run| run.per_object.p99_ms)),
            ),
            &target,
            Verdict::of(updated_ratio.median <= targets.floor_ratio),
        ),
    ]
}

/// The ratio of each operator run to the floor run paired with it.
fn ratios(runs: &[Propagation], floors: &[Propagation], figure: fn(&Propagation) -> f64) -> Spread {
    Spread::of(
        runs.iter()
            .zip(floors)
            .map(|(run, floor)| figure(run) / figure(floor)),
    )
}

fn namespace_row(results: &Results, targets: &Targets) -> Row {
    let runs = &results.namespace_created;
    let count: usize = runs.iter().map(|run| run.count).sum();
    let p99 = Spread::of(runs.iter().map(|run| run.p99_ms));
    let p50 = Spread::of(runs.iter().map(|run| run.p50_ms));
    Row::new(
        format!(
            "namespace created -> its copies exist, p50 / p99 ({count} copies, {} runs)",
            runs.len()
        ),
        format!("{} / {}", duration(p50.median), spread(&p99, duration)),
        &format!("p99 <= {} ms", targets.new_namespace_p99_ms),
        Verdict::of(p99.median <= targets.new_namespace_p99_ms),
    )
}

fn idle_row(results: &Results) -> Row {
    let idle = &results.idle;
    Row::new(
        format!(
            "requests while nothing changes ({} s, {} Replikas)",
            idle.window_s, results.settings.replikas
        ),
        format!(
            "{} (+{} watch, {} lease)",
            idle.state_requests,
            idle.by_class.of(WATCH),
            idle.by_class.of(LEASE)
        ),
        "0 + leases, watches",
        Verdict::of(idle.state_requests == 0),
    )
}

fn memory_rows(results: &Results, targets: &Targets) -> Vec<Row> {
    let target = format!("<= {} MiB", targets.memory_mib);
    let settings = &results.settings;
    let scenario = format!(
        "{} Replikas x {} ns + {} Secrets",
        settings.replikas, settings.scale, settings.unrelated_secrets
    );
    let row = |what: &str, mib: f64| {
        Row::new(
            format!("operator RSS {what}, {scenario}"),
            format!("{mib:.1} MiB"),
            &target,
            Verdict::of(mib <= targets.memory_mib),
        )
    };
    let per_copy = &results.memory_per_copy;
    vec![
        row("steady (after idle)", results.memory.rss_mib),
        row("peak (whole run)", results.memory.peak_mib),
        Row::info(
            "operator RSS per managed copy (steady - before any Replika)".into(),
            format!(
                "{} B ({:.1} MiB over {:.1} MiB, {} copies)",
                thousands(per_copy.bytes_per_copy),
                results.memory.rss_mib - per_copy.baseline_rss_mib,
                per_copy.baseline_rss_mib,
                thousands(per_copy.copies_managed as f64)
            ),
        ),
    ]
}

/// What writing copies cost the operator, phase by phase, beside the floor
/// client writing the same number of objects.
fn cost_rows(results: &Results) -> Vec<Row> {
    let phase = |name: &str| results.phases.iter().find(|phase| phase.name == name);
    let floor_for = |name: &str| match name {
        "Replika created" => phase("floor create"),
        "source updated" => phase("floor update"),
        _ => None,
    };
    [
        "Replika created",
        "source updated",
        "Replikas created",
        "namespaces created",
    ]
    .into_iter()
    .filter_map(|name| {
        let operator = phase(name)?;
        Some(Row::info(
            format!("cost of {name}: per 1 000 copies, CPU / requests but leases (floor)"),
            cost(operator, floor_for(name)),
        ))
    })
    .collect()
}

fn cost(operator: &Phase, floor: Option<&Phase>) -> String {
    let (Some(cpu), Some(requests)) = (operator.cpu_s_per_1000(), operator.requests_per_1000())
    else {
        return "no copies written".into();
    };
    let floor = floor.and_then(Phase::floor_requests_per_1000).map_or_else(
        || "no floor".into(),
        |requests| format!("floor {}", thousands(requests)),
    );
    let runs = match operator.runs {
        1 => "1 run".to_owned(),
        runs => format!("{runs} runs"),
    };
    format!(
        "{cpu:.2} s CPU / {} requests ({floor}); {} copies in {runs}",
        thousands(requests),
        thousands(operator.copies_written as f64),
    )
}

/// The admission rows, or "not served" for an operator without a webhook.
fn webhook_rows(runs: Option<&[WebhookFigures]>, targets: &Targets) -> Vec<Row> {
    let latency = "webhook admission latency added end to end, p99, 50 concurrent applies";
    let throughput = "webhook called directly, 50 concurrent: reviews/s, p99";
    let share_target = format!("p99 <= {} ms", targets.webhook_share_p99_ms);
    let share_measure = |kind: &str| {
        format!("webhook share of admission (API server histogram), {kind}, p50 / p99")
    };
    let Some(runs) = runs.filter(|runs| !runs.is_empty()) else {
        let not_served = |measure: String, target: &str| {
            Row::new(
                measure,
                "no webhook served".into(),
                target,
                Verdict::NotMeasured,
            )
        };
        return vec![
            not_served(share_measure("mutating"), &share_target),
            not_served(share_measure("validating"), &share_target),
            not_served(latency.into(), ""),
            not_served(throughput.into(), ""),
        ];
    };
    let mut rows = share_rows(
        runs,
        |run| &run.share,
        &share_measure,
        Some(targets.webhook_share_p99_ms),
    );
    rows.extend(share_rows(
        runs,
        |run| &run.share_one_at_a_time,
        &|kind| format!("{}, one apply at a time", share_measure(kind)),
        None,
    ));
    let added = Spread::of(runs.iter().map(|run| run.added_latency_p99_ms));
    let with = Spread::of(runs.iter().map(|run| run.with_webhook.p99_ms));
    let without = Spread::of(runs.iter().map(|run| run.without_webhook.p99_ms));
    rows.push(Row::info(
        latency.into(),
        format!(
            "{} ({} with, {} without)",
            spread(&added, duration),
            duration(with.median),
            duration(without.median)
        ),
    ));
    let per_second = Spread::of(runs.iter().map(|run| run.direct_reviews_per_second));
    let direct_p99 = Spread::of(runs.iter().map(|run| run.direct.p99_ms));
    rows.push(Row::info(
        throughput.into(),
        format!(
            "{} / {}",
            thousands(per_second.median),
            duration(direct_p99.median)
        ),
    ));
    rows
}

/// One row per webhook for the share `of` each run picks, judged against
/// `target_p99_ms` when there is one.
fn share_rows(
    runs: &[WebhookFigures],
    of: fn(&WebhookFigures) -> &[WebhookShare],
    measure: &dyn Fn(&str) -> String,
    target_p99_ms: Option<f64>,
) -> Vec<Row> {
    let target = target_p99_ms.map_or_else(String::new, |ms| format!("p99 <= {ms} ms"));
    of(&runs[0])
        .iter()
        .enumerate()
        .map(|(index, first)| {
            let shares = || runs.iter().filter_map(|run| of(run).get(index));
            let calls: u64 = shares().map(|share| share.calls).sum();
            let p99s: Vec<f64> = shares().filter_map(|share| share.p99_ms).collect();
            if p99s.is_empty() {
                return Row::new(
                    measure(&first.kind),
                    format!("not called by the API server ({calls} calls)"),
                    &target,
                    Verdict::Fail,
                );
            }
            let p99 = Spread::of(p99s);
            let p50 = Spread::of(shares().filter_map(|share| share.p50_ms));
            let value = format!(
                "{} / {}; {} calls",
                duration(p50.median),
                spread(&p99, duration),
                thousands(calls as f64)
            );
            match target_p99_ms {
                Some(ms) => Row::new(
                    measure(&first.kind),
                    value,
                    &target,
                    Verdict::of(p99.median <= ms),
                ),
                None => Row::info(measure(&first.kind), value),
            }
        })
        .collect()
}

/// The table as text, with a header naming the run.
pub fn table(results: &Results, rows: &[Row]) -> String {
    let settings = &results.settings;
    let machine = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Replika benchmark: {} namespaces, {} Replikas, {} unrelated Secrets, idle window {} s, \
         {} repetitions (median (min .. max))",
        settings.scale,
        settings.replikas,
        settings.unrelated_secrets,
        settings.idle_window_s,
        settings.repeats
    );
    let _ = writeln!(out, "operator: {}", settings.operator_cmd);
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), {} GiB, Linux {}\n",
        machine.cpus, machine.cpu_model, machine.memory_gib, machine.kernel
    );
    let header = Row::new("measure".into(), "value".into(), "target", Verdict::Info);
    let widths = [
        column_width(rows, &header, |row| &row.measure),
        column_width(rows, &header, |row| &row.value),
        column_width(rows, &header, |row| &row.target),
    ];
    for (index, row) in std::iter::once(&header).chain(rows).enumerate() {
        let result = if index == 0 {
            "result"
        } else {
            row.verdict.label()
        };
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {result}",
            row.measure,
            row.value,
            row.target,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let missed = rows
        .iter()
        .filter(|row| row.verdict == Verdict::Fail)
        .count();
    let judged = rows
        .iter()
        .filter(|row| matches!(row.verdict, Verdict::Pass | Verdict::Fail))
        .count();
    let _ = writeln!(out, "\n{} of {judged} targets met", judged - missed);
    out
}

/// Per-phase memory and requests, to see where time and requests go.
pub fn phases(results: &Results) -> String {
    let mut out =
        String::from("operator by phase, all runs (time; RSS now / peak; CPU; requests sent):\n");
    for phase in &results.phases {
        let name = match phase.runs {
            1 => phase.name.clone(),
            runs => format!("{} (x{runs})", phase.name),
        };
        let _ = writeln!(
            out,
            "  {:<42} {:>6.1} s  {:>6.1} / {:>6.1} MiB  {:>6.2} s CPU  {}",
            name,
            phase.seconds,
            phase.memory.rss_mib,
            phase.memory.peak_mib,
            phase.cpu_s,
            phase.requests.describe()
        );
    }
    out
}

/// Creates the directory `path` goes in (the operator's log goes there too).
pub fn create_parent_dir(path: &Path) -> Result<()> {
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        None => Ok(()),
    }
}

/// Writes the results and the rows as pretty JSON.
pub fn write_json(path: &Path, results: &Results, rows: &[Row]) -> Result<()> {
    let document = serde_json::json!({"results": results, "rows": rows});
    let text = serde_json::to_string_pretty(&document)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn column_width(rows: &[Row], header: &Row, column: fn(&Row) -> &String) -> usize {
    std::iter::once(header)
        .chain(rows)
        .map(|row| column(row).chars().count())
        .max()
        .unwrap_or_default()
}

/// p50 / p99 / max of the run whose total time is the median one.
fn distribution(runs: &[Propagation]) -> String {
    let mut sorted: Vec<&Propagation> = runs.iter().collect();
    sorted.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return "no run".into();
    };
    let summary: &Summary = &median.per_object;
    format!(
        "{} / {} / {}",
        duration(summary.p50_ms),
        duration(summary.p99_ms),
        duration(summary.max_ms)
    )
}

/// The median, and the range when there was more than one run.
fn spread(spread: &Spread, show: impl Fn(f64) -> String) -> String {
    if spread.runs <= 1 {
        show(spread.median)
    } else {
        format!(
            "{} ({} .. {})",
            show(spread.median),
            show(spread.min),
            show(spread.max)
        )
    }
}

/// A count with thin groups of thousands: `20 421`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(' ');
        }
        grouped.push(digit);
    }
    if value < -0.5 {
        grouped.insert(0, '-');
    }
    grouped
}

/// Milliseconds, shown in seconds from one second up.
fn duration(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_switch_to_seconds() {
        assert_eq!(duration(312.46), "312.5 ms");
        assert_eq!(duration(2412.0), "2.41 s");
    }

    #[test]
    fn an_operator_without_webhook_is_not_judged_on_it() {
        let rows = webhook_rows(None, &Targets::for_scale(1000));
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|row| row.verdict == Verdict::NotMeasured));
    }

    #[test]
    fn targets_tighten_at_the_default_scale_and_relax_at_ten_thousand() {
        assert_eq!(Targets::for_scale(1000).floor_ratio, 1.1);
        assert_eq!(Targets::for_scale(1000).memory_mib, 48.0);
        assert_eq!(Targets::for_scale(10_000).floor_ratio, 1.25);
        assert_eq!(Targets::for_scale(10_000).new_namespace_p99_ms, 1000.0);
    }

    fn propagation(total_ms: f64) -> Propagation {
        let per_object = Summary {
            count: 1,
            p50_ms: total_ms,
            p99_ms: total_ms,
            max_ms: total_ms,
        };
        Propagation {
            per_object,
            total_ms,
            responses_ms: None,
        }
    }

    #[test]
    fn each_run_is_judged_against_its_own_floor_and_the_verdict_on_the_median() {
        let runs = [propagation(100.0), propagation(300.0), propagation(120.0)];
        let floors = [propagation(100.0), propagation(100.0), propagation(100.0)];
        let ratio = ratios(&runs, &floors, |run| run.total_ms);
        assert_eq!((ratio.median, ratio.min, ratio.max), (1.2, 1.0, 3.0));
        assert_eq!(distribution(&runs), "120.0 ms / 120.0 ms / 120.0 ms");
        assert_eq!(
            spread(&ratio, |x| format!("{x:.2}x")),
            "1.20x (1.00x .. 3.00x)"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(20421.0), "20 421");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1 000 000");
        assert_eq!(thousands(-1234.0), "-1 234");
    }
}
