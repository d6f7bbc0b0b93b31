//! The figures of a run, as measured: what each scenario yields, and the
//! whole run's results as they are printed and written to JSON.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accounting::RequestCounts;
use crate::stats::Summary;

/// Resident memory of the operator, in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_mib: f64,
    /// `VmHWM`: the highest resident size since the process started.
    pub peak_mib: f64,
}

/// What the admission scenario measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WebhookFigures {
    /// Applies through the API server with no webhook registered.
    pub without_webhook: Summary,
    /// The same applies with the webhooks registered.
    pub with_webhook: Summary,
    /// p99 with the webhooks minus p99 without: the figure with a target.
    pub added_latency_p99_ms: f64,
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

/// The operator's state after one phase of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub memory: Memory,
    /// Requests the operator sent during the phase.
    pub requests: RequestCounts,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub started_at: String,
    pub settings: Settings,
    pub machine: Machine,
    pub floor_create: Propagation,
    pub floor_update: Propagation,
    pub replika_created: Propagation,
    pub source_updated: Propagation,
    pub namespace_created: Summary,
    pub idle: Idle,
    /// `rss_mib` after the idle window (steady) and `peak_mib` over the whole
    /// run, the admission scenario included.
    pub memory: Memory,
    pub phases: Vec<Phase>,
    /// `None` when the operator serves no webhook.
    pub webhook: Option<WebhookFigures>,
}
