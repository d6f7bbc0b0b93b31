//! How a run is shown: one table on the terminal with each figure beside its
//! target (docs/benchmarks.md), the per-phase lines, and the same (with every
//! raw figure) as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::accounting::{LEASE, WATCH};
use crate::figures::{Propagation, Results, WebhookFigures};
use crate::stats::Summary;

/// Propagation may take at most this many times the floor (docs/benchmarks.md).
pub const FLOOR_RATIO_TARGET: f64 = 1.25;
/// Namespace created → its copy exists, p99 (docs/benchmarks.md).
pub const NEW_NAMESPACE_P99_TARGET_MS: f64 = 500.0;
/// Operator resident memory (docs/benchmarks.md).
pub const MEMORY_TARGET_MIB: f64 = 64.0;
/// Webhook admission latency added through the API server, p99 (docs/benchmarks.md).
pub const WEBHOOK_P99_TARGET_MS: f64 = 10.0;

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
}

/// The table's rows, in the order of docs/benchmarks.md.
pub fn rows(results: &Results) -> Vec<Row> {
    let n = results.settings.scale;
    let mut rows = floor_rows(results, n);
    rows.extend(propagation_rows(results, n));
    rows.push(namespace_row(results));
    rows.push(idle_row(results));
    rows.extend(memory_rows(results));
    rows.extend(webhook_rows(results.webhook.as_ref()));
    rows
}

fn floor_rows(results: &Results, n: usize) -> Vec<Row> {
    let floor = |what: &str, floor: &Propagation| {
        Row::new(
            format!(
                "floor: bare client {what} {n} objects ({} parallel), all / p99",
                results.settings.parallelism
            ),
            format!(
                "{} / {}",
                duration(floor.total_ms),
                duration(floor.per_object.p99_ms)
            ),
            "",
            Verdict::Info,
        )
    };
    vec![
        floor("creates", &results.floor_create),
        floor("updates", &results.floor_update),
    ]
}

fn propagation_rows(results: &Results, n: usize) -> Vec<Row> {
    let target = format!("<= {FLOOR_RATIO_TARGET}x floor");
    let created = &results.replika_created;
    let created_ratio = created.total_ms / results.floor_create.total_ms;
    let updated = &results.source_updated;
    // Like with like: the p99 of the copies against the p99 of the floor's objects.
    let updated_ratio = updated.per_object.p99_ms / results.floor_update.per_object.p99_ms;
    vec![
        Row::new(
            "Replika created -> copy present, p50 / p99 / max".into(),
            distribution(&created.per_object),
            "",
            Verdict::Info,
        ),
        Row::new(
            format!("Replika created -> copies in all {n} namespaces"),
            format!("{} ({created_ratio:.2}x floor)", duration(created.total_ms)),
            &target,
            Verdict::of(created_ratio <= FLOOR_RATIO_TARGET),
        ),
        Row::new(
            "source updated -> copy updated, p50 / p99 / max".into(),
            distribution(&updated.per_object),
            "",
            Verdict::Info,
        ),
        Row::new(
            format!("source updated -> all {n} copies updated, p99"),
            format!(
                "{} ({updated_ratio:.2}x floor)",
                duration(updated.per_object.p99_ms)
            ),
            &target,
            Verdict::of(updated_ratio <= FLOOR_RATIO_TARGET),
        ),
    ]
}

fn namespace_row(results: &Results) -> Row {
    let summary = &results.namespace_created;
    Row::new(
        format!(
            "namespace created -> its copies exist, p50 / p99 ({} copies)",
            summary.count
        ),
        format!(
            "{} / {}",
            duration(summary.p50_ms),
            duration(summary.p99_ms)
        ),
        &format!("p99 <= {NEW_NAMESPACE_P99_TARGET_MS} ms"),
        Verdict::of(summary.p99_ms <= NEW_NAMESPACE_P99_TARGET_MS),
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

fn memory_rows(results: &Results) -> Vec<Row> {
    let target = format!("<= {MEMORY_TARGET_MIB} MiB");
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
            Verdict::of(mib <= MEMORY_TARGET_MIB),
        )
    };
    vec![
        row("steady (after idle)", results.memory.rss_mib),
        row("peak (whole run)", results.memory.peak_mib),
    ]
}

/// The admission rows, or "not served" for an operator without a webhook.
fn webhook_rows(webhook: Option<&WebhookFigures>) -> Vec<Row> {
    let latency = "webhook admission latency added, p99, 50 concurrent applies";
    let throughput = "webhook called directly, 50 concurrent: reviews/s, p99";
    let latency_target = format!("<= {WEBHOOK_P99_TARGET_MS} ms");
    let Some(figures) = webhook else {
        let not_served = |measure: &str, target: &str| {
            Row::new(
                measure.into(),
                "no webhook served".into(),
                target,
                Verdict::NotMeasured,
            )
        };
        return vec![
            not_served(latency, &latency_target),
            not_served(throughput, ""),
        ];
    };
    vec![
        Row::new(
            latency.into(),
            format!(
                "{} ({} with, {} without)",
                duration(figures.added_latency_p99_ms),
                duration(figures.with_webhook.p99_ms),
                duration(figures.without_webhook.p99_ms)
            ),
            &latency_target,
            Verdict::of(figures.added_latency_p99_ms <= WEBHOOK_P99_TARGET_MS),
        ),
        Row::new(
            throughput.into(),
            format!(
                "{:.0} / {}",
                figures.direct_reviews_per_second,
                duration(figures.direct.p99_ms)
            ),
            "",
            Verdict::Info,
        ),
    ]
}

/// The table as text, with a header naming the run.
pub fn table(results: &Results, rows: &[Row]) -> String {
    let settings = &results.settings;
    let machine = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Replika benchmark: {} namespaces, {} Replikas, {} unrelated Secrets, idle window {} s",
        settings.scale, settings.replikas, settings.unrelated_secrets, settings.idle_window_s
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
    let mut out = String::from("operator by phase (RSS now / peak; requests sent):\n");
    for phase in &results.phases {
        let _ = writeln!(
            out,
            "  {:<34} {:>6.1} s  {:>6.1} / {:>6.1} MiB  {}",
            phase.name,
            phase.seconds,
            phase.memory.rss_mib,
            phase.memory.peak_mib,
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

fn distribution(summary: &Summary) -> String {
    format!(
        "{} / {} / {}",
        duration(summary.p50_ms),
        duration(summary.p99_ms),
        duration(summary.max_ms)
    )
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
        let rows = webhook_rows(None);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|row| row.verdict == Verdict::NotMeasured));
    }
}
