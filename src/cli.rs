//! The `replika` command line: its commands and options (clap), and how it is
//! parsed. A module of the binary, not of the library: only `src/main.rs` and
//! the running operator (`src/operator.rs`) read these types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use replika::controller;
use replika::domain::duration::parse_go_duration;
use replika::plugin;

#[derive(Parser)]
#[command(
    name = "replika",
    version,
    about = "Keeps copies of one Kubernetes object in many namespaces, in sync with its source"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or the in-cluster config).
    Run(Box<RunArgs>),
    /// Print the Replika CustomResourceDefinition as YAML.
    Crd,
    /// Make a CA and a serving certificate for the webhook (ca.crt, tls.crt, tls.key).
    Certs(CertsArgs),
    /// Vouch for existing Replikas (e.g. the earlier Go operator's): Replika's
    /// webhooks review your access and sign you (your kubeconfig user) as their author.
    Attest(plugin::AttestArgs),
    /// Show where each target namespace of one Replika stands: synced, pending, conflict, failed.
    Status(plugin::StatusArgs),
    /// Show what applying a Replika would do, namespace by namespace, writing nothing.
    Plan(plugin::PlanArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Log format.
    #[arg(long, env = "REPLIKA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `replika=debug`).
    #[arg(long, env = "REPLIKA_LOG", default_value = "info")]
    pub log_level: String,
    /// How many copies one Replika writes at once.
    #[arg(long, env = "REPLIKA_MAX_PARALLEL_WRITES", default_value_t = controller::DEFAULT_MAX_PARALLEL_WRITES)]
    pub max_parallel_writes: usize,
    /// How many Replikas' passes read the caches and write copies at once
    /// (a pass writes its status after giving its slot back).
    #[arg(long, env = "REPLIKA_MAX_PARALLEL_REPLIKAS", default_value_t = controller::DEFAULT_MAX_PARALLEL_REPLIKAS)]
    pub max_parallel_replikas: u16,
    /// How many copy writes are in flight at once, across all Replikas.
    #[arg(long, env = "REPLIKA_MAX_WRITES_IN_FLIGHT", default_value_t = controller::DEFAULT_MAX_WRITES_IN_FLIGHT)]
    pub max_writes_in_flight: usize,
    /// Run the replication engine; `--reconcile=false` serves only the webhooks.
    #[arg(long, env = "REPLIKA_RECONCILE", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub reconcile: bool,
    /// Serve the admission webhooks on this address (e.g. 0.0.0.0:9443); off when absent.
    #[arg(long, env = "REPLIKA_WEBHOOK_BIND")]
    pub webhook_bind: Option<SocketAddr>,
    /// Directory holding tls.crt and tls.key (e.g. a mounted cert-manager Secret), reloaded on change.
    #[arg(long, env = "REPLIKA_TLS_DIR", conflicts_with = "tls_secret")]
    pub tls_dir: Option<PathBuf>,
    /// Self-managed certificates: the Secret (namespace/name) that keeps them.
    #[arg(long, env = "REPLIKA_TLS_SECRET", value_parser = parse_namespaced)]
    pub tls_secret: Option<(String, String)>,
    /// Self-managed certificates: names and IPs the serving certificate is valid for.
    #[arg(
        long,
        env = "REPLIKA_TLS_HOSTS",
        value_delimiter = ',',
        default_value = "replika-webhook.replika.svc"
    )]
    pub tls_hosts: Vec<String>,
    /// Self-managed certificates: how often the Secret is checked for renewal (Go duration).
    #[arg(long, env = "REPLIKA_TLS_CHECK_INTERVAL", default_value = "10m", value_parser = parse_check_interval)]
    pub tls_check_interval: Duration,
    /// Self-managed certificates: the webhook configurations whose caBundle is kept current.
    #[arg(long, env = "REPLIKA_WEBHOOK_CONFIGURATION", default_value = "replika")]
    pub webhook_configuration: String,
    /// The Secret (namespace/name) holding the key that signs Replika authors; created when absent.
    #[arg(long, env = "REPLIKA_SIGNING_KEY_SECRET", value_parser = parse_namespaced, default_value = "replika/replika-signing-key")]
    pub signing_key_secret: (String, String),
    /// Serve /metrics, /healthz and /readyz over plain HTTP on this address (e.g. 0.0.0.0:8080); off when absent.
    #[arg(long, env = "REPLIKA_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Reconcile only while holding a Lease, so that several replicas can run side by side.
    #[arg(long, env = "REPLIKA_LEADER_ELECTION", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Leader election: name of the Lease.
    #[arg(long, env = "REPLIKA_LEASE_NAME", default_value = "replika-leader")]
    pub lease_name: String,
    /// Leader election: namespace of the Lease (the pod's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "replika")]
    pub lease_namespace: String,
    /// Leader election: how long a leader that stopped renewing keeps the Lease (Go duration).
    #[arg(long, env = "REPLIKA_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
    /// Leader election: this process's identity (the pod name in a cluster; the host name and process id otherwise).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Development mode, for a cluster that cannot call this process's webhooks:
    /// Replikas with no author attestation replicate as this process's own
    /// identity (your kubeconfig user), within its access. Refused for a ServiceAccount.
    #[arg(long, env = "REPLIKA_AUTHORIZE_UNSIGNED_AS_SELF", conflicts_with = "webhook_bind", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub authorize_unsigned_as_self: bool,
}

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS name or IP address of the server (repeatable).
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    match parse_go_duration(value) {
        Ok(duration) if duration >= Duration::from_secs(2) => Ok(duration),
        Ok(_) => Err("the lease must last at least 2s".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn parse_check_interval(value: &str) -> Result<Duration, String> {
    match parse_go_duration(value) {
        Ok(duration) if duration >= Duration::from_secs(1) => Ok(duration),
        Ok(_) => Err("check at most once a second".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn parse_namespaced(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err(format!("expected namespace/name, got {value:?}")),
    }
}

/// The command line; run as `kubectl-replika`, help and errors name `kubectl replika`.
pub fn parse_command_line() -> Cli {
    let invoked_as = std::env::args_os().next().map(PathBuf::from);
    let as_plugin = invoked_as
        .as_deref()
        .and_then(std::path::Path::file_name)
        .is_some_and(|name| name == plugin::PLUGIN_BINARY);
    let mut command = Cli::command();
    if as_plugin {
        command = command.name("kubectl replika").bin_name("kubectl replika");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}
