//! The figures of a run, as measured: what each scenario yields (one entry
//! per repetition for the timed ones), and the whole run's results as they
//! are printed and written to JSON.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accounting::{LEASE, RequestCounts};
use crate::stats::Summary;

/// Resident memory of the operator, in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_mib: f64,
    /// `VmHWM`: the highest resident size since the process started.
    pub peak_mib: f64,
}

/// One webhook's share of admission latency, from the API server's own
/// histogram `apiserver_admission_webhook_admission_duration_seconds` over
/// the applies of one repetition (the difference of two scrapes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WebhookShare {
    /// The webhook's name, as the metric's label `name` has it.
    pub webhook: String,
    /// `mutating` or `validating`.
    pub kind: String,
    /// Calls the API server made to it during the applies.
    pub calls: u64,
    /// `None` when it was not called.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What one repetition of the admission scenario measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WebhookFigures {
    /// Applies through the API server with no webhook registered.
    pub without_webhook: Summary,
    /// The same applies with the webhooks registered.
    pub with_webhook: Summary,
    /// p99 with the webhooks minus p99 without, end to end.
    pub added_latency_p99_ms: f64,
    /// Each webhook's share of the applies with the webhooks, as the API
    /// server measured it: the figure with a target.
    pub share: Vec<WebhookShare>,
    /// The same share over applies made one at a time (API server not saturated).
    pub share_one_at_a_time: Vec<WebhookShare>,
    /// AdmissionReviews sent straight to `/validate`.
    pub direct: Summary,
    /// AdmissionReviews answered per second when called directly.
    pub direct_reviews_per_second: f64,
}

/// What the run was asked to do.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub scale: usize,
    pub replikas: usize,
    pub unrelated_secrets: usize,
    pub new_namespaces: usize,
    pub idle_window_s: u64,
    pub parallelism: usize,
    pub sync_time: String,
    pub admission_requests: usize,
    /// Repetitions of each timed scenario.
    pub repeats: usize,
    pub operator_cmd: String,
}

/// The machine the run was taken on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description from `/proc`.
    pub fn this() -> Machine {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            cpu_model: read("/proc/cpuinfo")
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// How long N objects took to arrive, from the moment the change was made.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Propagation {
    /// Per object (copy, or floor object): change made → seen by the watch.
    pub per_object: Summary,
    /// Change made → the last object seen.
    pub total_ms: f64,
    /// For the floor: change made → every write answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responses_ms: Option<f64>,
}

impl Propagation {
    /// Latencies from `started` to each arrival.
    pub fn since(started: Instant, arrivals: impl Iterator<Item = Instant>) -> Propagation {
        let latencies: Vec<Duration> = arrivals
            .map(|at| at.saturating_duration_since(started))
            .collect();
        let per_object = Summary::of(&latencies);
        Propagation {
            per_object,
            total_ms: per_object.max_ms,
            responses_ms: None,
        }
    }
}

/// Requests the operator sent while nothing changed.
#[derive(Clone, Debug, Serialize)]
pub struct Idle {
    pub window_s: u64,
    /// All requests but lease renewals and watches: the figure with a target.
    pub state_requests: u64,
    pub by_class: RequestCounts,
}

/// The operator's state after one phase of the run, summed over the
/// phase's repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    /// How many times the phase ran (once per repetition of its scenario).
    pub runs: usize,
    pub seconds: f64,
    /// After the last run.
    pub memory: Memory,
    /// CPU time the operator used during the phase, user and system.
    pub cpu_s: f64,
    /// Requests the operator sent during the phase.
    pub requests: RequestCounts,
    /// Objects the phase wrote: the operator's copies, or the floor's objects.
    pub copies_written: u64,
    /// Requests the floor client sent (0 in the operator's phases).
    pub floor_requests: u64,
}

impl Phase {
    /// The operator's requests per 1 000 copies written, leader election's
    /// lease requests left out (they come with time, not with copies);
    /// `None` if no copy was written.
    pub fn requests_per_1000(&self) -> Option<f64> {
        let requests = self.requests.total() - self.requests.of(LEASE);
        per_1000(requests as f64, self.copies_written)
    }

    /// The floor client's requests per 1 000 objects written.
    pub fn floor_requests_per_1000(&self) -> Option<f64> {
        per_1000(self.floor_requests as f64, self.copies_written)
    }

    /// The operator's CPU seconds per 1 000 copies written.
    pub fn cpu_s_per_1000(&self) -> Option<f64> {
        per_1000(self.cpu_s, self.copies_written)
    }

    /// Adds a later run of the same phase.
    pub fn add(&mut self, run: Phase) {
        self.runs += run.runs;
        self.seconds = ((self.seconds + run.seconds) * 10.0).round() / 10.0;
        self.memory = run.memory;
        self.cpu_s = ((self.cpu_s + run.cpu_s) * 100.0).round() / 100.0;
        for (class, count) in run.requests.0 {
            *self.requests.0.entry(class).or_default() += count;
        }
        self.copies_written += run.copies_written;
        self.floor_requests += run.floor_requests;
    }
}

fn per_1000(amount: f64, copies: u64) -> Option<f64> {
    (copies > 0).then(|| amount * 1000.0 / copies as f64)
}

/// The operator's memory against what it manages.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MemoryPerCopy {
    /// RSS once the operator was up, before any Replika existed.
    pub baseline_rss_mib: f64,
    /// Copies the Replikas present at the end of the idle window manage.
    pub copies_managed: u64,
    /// (steady RSS − baseline) / copies managed.
    pub bytes_per_copy: f64,
}

impl MemoryPerCopy {
    pub fn new(baseline_rss_mib: f64, steady_rss_mib: f64, copies_managed: u64) -> MemoryPerCopy {
        let grown = (steady_rss_mib - baseline_rss_mib) * 1024.0 * 1024.0;
        MemoryPerCopy {
            baseline_rss_mib,
            copies_managed,
            bytes_per_copy: (grown / copies_managed.max(1) as f64).round(),
        }
    }
}

/// Everything a run measured; each timed scenario has one entry per
/// repetition, in the order they ran (the floor's `i`th run right before the
/// operator's `i`th).
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub started_at: String,
    pub settings: Settings,
    pub machine: Machine,
    pub floor_create: Vec<Propagation>,
    pub floor_update: Vec<Propagation>,
    pub replika_created: Vec<Propagation>,
    pub source_updated: Vec<Propagation>,
    /// Per repetition, the latencies of its new namespaces' copies.
    pub namespace_created: Vec<Summary>,
    pub idle: Idle,
    /// `rss_mib` after the idle window (steady) and `peak_mib` over the whole
    /// run, the admission scenario included.
    pub memory: Memory,
    pub memory_per_copy: MemoryPerCopy,
    pub phases: Vec<Phase>,
    /// One entry per repetition; `None` when the operator serves no webhook.
    pub webhook: Option<Vec<WebhookFigures>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn phase(cpu_s: f64, patches: u64, copies: u64) -> Phase {
        Phase {
            name: "source updated".into(),
            runs: 1,
            seconds: 1.0,
            memory: Memory::default(),
            cpu_s,
            requests: RequestCounts(BTreeMap::from([("patch".into(), patches)])),
            copies_written: copies,
            floor_requests: 0,
        }
    }

    #[test]
    fn runs_of_a_phase_add_up_and_cost_per_1000() {
        let mut total = phase(0.5, 1000, 1000);
        total.requests.0.insert(LEASE.into(), 4);
        total.add(phase(1.5, 1002, 1000));
        assert_eq!(total.runs, 2);
        assert_eq!(total.requests.of("patch"), 2002);
        assert_eq!(total.requests_per_1000(), Some(1001.0));
        assert_eq!(total.cpu_s_per_1000(), Some(1.0));
        assert_eq!(total.floor_requests_per_1000(), Some(0.0));
        assert_eq!(phase(1.0, 3, 0).requests_per_1000(), None);
    }

    #[test]
    fn memory_per_copy_is_the_growth_over_the_copies() {
        let figure = MemoryPerCopy::new(20.0, 30.0, 10 * 1024);
        assert_eq!(figure.bytes_per_copy, 1024.0);
    }
}
