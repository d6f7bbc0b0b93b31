//! The benchmark's command line.

use std::path::PathBuf;

use clap::Parser;

use crate::operator::DEFAULT_COMMAND;

/// Measures an operator serving `replika.prosimcorp.com/v1beta1` against the
/// targets of docs/benchmarks.md, beside a bare client applying the same objects.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench", version)]
pub struct Args {
    /// Namespaces every Replika copies its source into.
    #[arg(long, default_value_t = 1000)]
    pub scale: usize,
    /// Replikas present for the namespace, idle and memory scenarios (each
    /// with its own source); the first is the one timed on creation and update.
    #[arg(long, default_value_t = 20)]
    pub replikas: usize,
    /// Secrets that no Replika references, spread over the namespaces.
    #[arg(long, default_value_t = 50_000)]
    pub unrelated_secrets: usize,
    /// Seconds with nothing changing over which the operator's requests are
    /// counted (15 resync periods of the default `--sync-time`).
    #[arg(long, default_value_t = 300)]
    pub idle_window: u64,
    /// Namespaces created one at a time in each repetition of "namespace
    /// created → copy exists" (each gets a copy of every Replika's source:
    /// 400 latencies per repetition by default).
    #[arg(long, default_value_t = 20)]
    pub new_namespaces: usize,
    /// Times each timed scenario runs (Replika created, source updated, each
    /// beside its floor; namespace created; admission); the table shows the
    /// median with the range, and a target is judged on the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub repeats: u16,
    /// The operator's command line (run with `sh -c 'exec …'`, `KUBECONFIG`
    /// set to its ServiceAccount's kubeconfig). Default: the release build of
    /// this workspace's `replika run`.
    #[arg(long)]
    pub operator_cmd: Option<String>,
    /// Writes in flight at once for the floor client: the operator's default
    /// `--max-parallel-writes`.
    #[arg(long, default_value_t = 32)]
    pub parallelism: usize,
    /// `spec.synchronization.time` of the Replikas (the periodic resync).
    #[arg(long, default_value = "20s")]
    pub sync_time: String,
    /// Applies through the API server on each side of the admission scenario
    /// (without and with the webhook), and reviews sent to the webhook directly.
    #[arg(long, default_value_t = 1000)]
    pub admission_requests: usize,
    /// Where the results go as JSON; the operator's log and metrics,
    /// and the webhook's certificates, go beside it.
    #[arg(long, default_value = "target/bench/result.json")]
    pub json: PathBuf,
    /// Admin kubeconfig of a running cluster to use; by default a private
    /// control plane is started in a temporary directory and torn down after.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Manifest applied as admin after `deploy/base`, e.g. RBAC another
    /// operator needs beyond Replika's; may be repeated.
    #[arg(long = "extra-manifest")]
    pub extra_manifests: Vec<PathBuf>,
    /// Longest wait for any one step, in seconds, before 5 ms more per object
    /// waited for (a wait for 200 000 copies may take 1 000 s more).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

impl Args {
    /// The operator command line to run.
    pub fn operator_cmd(&self) -> String {
        self.operator_cmd
            .clone()
            .unwrap_or_else(|| DEFAULT_COMMAND.to_owned())
    }
}
