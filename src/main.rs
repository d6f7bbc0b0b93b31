//! The `replika` command: runs the operator, or prints and makes what installing it needs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kube::{Client, CustomResourceExt};
use replika::api::Replika;
use replika::authorization::Authorizer;
use replika::controller::{self, Telemetry};
use replika::domain::duration::parse_go_duration;
use replika::health::{self, Readiness};
use replika::leader::{self, Leadership, LeaseSettings};
use replika::metrics::Metrics;
use replika::plugin;
use replika::webhook::{self, Certificates, self_managed::SelfManaged, tls};
use tokio::sync::watch;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "replika",
    version,
    about = "Keeps copies of one Kubernetes object in many namespaces, in sync with its source"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct RunArgs {
    /// Log format.
    #[arg(long, env = "REPLIKA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `replika=debug`).
    #[arg(long, env = "REPLIKA_LOG", default_value = "info")]
    log_level: String,
    /// How many copies one Replika writes at once.
    #[arg(long, env = "REPLIKA_MAX_PARALLEL_WRITES", default_value_t = 32)]
    max_parallel_writes: usize,
    /// How many Replikas are reconciled at once.
    #[arg(long, env = "REPLIKA_MAX_PARALLEL_REPLIKAS", default_value_t = 4)]
    max_parallel_replikas: u16,
    /// Run the replication engine; `--reconcile=false` serves only the webhooks.
    #[arg(long, env = "REPLIKA_RECONCILE", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    reconcile: bool,
    /// Serve the admission webhooks on this address (e.g. 0.0.0.0:9443); off when absent.
    #[arg(long, env = "REPLIKA_WEBHOOK_BIND")]
    webhook_bind: Option<SocketAddr>,
    /// Directory holding tls.crt and tls.key (e.g. a mounted cert-manager Secret), reloaded on change.
    #[arg(long, env = "REPLIKA_TLS_DIR", conflicts_with = "tls_secret")]
    tls_dir: Option<PathBuf>,
    /// Self-managed certificates: the Secret (namespace/name) that keeps them.
    #[arg(long, env = "REPLIKA_TLS_SECRET", value_parser = parse_namespaced)]
    tls_secret: Option<(String, String)>,
    /// Self-managed certificates: names and IPs the serving certificate is valid for.
    #[arg(
        long,
        env = "REPLIKA_TLS_HOSTS",
        value_delimiter = ',',
        default_value = "replika-webhook.replika.svc"
    )]
    tls_hosts: Vec<String>,
    /// Self-managed certificates: how often the Secret is checked for renewal (Go duration).
    #[arg(long, env = "REPLIKA_TLS_CHECK_INTERVAL", default_value = "10m", value_parser = parse_check_interval)]
    tls_check_interval: Duration,
    /// Self-managed certificates: the webhook configurations whose caBundle is kept current.
    #[arg(long, env = "REPLIKA_WEBHOOK_CONFIGURATION", default_value = "replika")]
    webhook_configuration: String,
    /// The Secret (namespace/name) holding the key that signs Replika authors; created when absent.
    #[arg(long, env = "REPLIKA_SIGNING_KEY_SECRET", value_parser = parse_namespaced, default_value = "replika/replika-signing-key")]
    signing_key_secret: (String, String),
    /// Serve /metrics, /healthz and /readyz over plain HTTP on this address (e.g. 0.0.0.0:8080); off when absent.
    #[arg(long, env = "REPLIKA_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// Reconcile only while holding a Lease, so that several replicas can run side by side.
    #[arg(long, env = "REPLIKA_LEADER_ELECTION", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Leader election: name of the Lease.
    #[arg(long, env = "REPLIKA_LEASE_NAME", default_value = "replika-leader")]
    lease_name: String,
    /// Leader election: namespace of the Lease (the pod's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "replika")]
    lease_namespace: String,
    /// Leader election: how long a leader that stopped renewing keeps the Lease (Go duration).
    #[arg(long, env = "REPLIKA_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    lease_duration: Duration,
    /// Leader election: this process's identity (the pod name in a cluster; the host name and process id otherwise).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Development mode, for a cluster that cannot call this process's webhooks:
    /// Replikas with no author attestation replicate as this process's own
    /// identity (your kubeconfig user), within its access. Refused for a ServiceAccount.
    #[arg(long, env = "REPLIKA_AUTHORIZE_UNSIGNED_AS_SELF", conflicts_with = "webhook_bind", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    authorize_unsigned_as_self: bool,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    out: PathBuf,
    /// DNS name or IP address of the server (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for every TLS user in the process (kube client and webhook).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match parse_command_line().command {
        Command::Crd => {
            print!(
                "{}",
                serde_saphyr::to_string(&Replika::crd()).context("rendering the CRD")?
            );
            Ok(())
        }
        Command::Certs(args) => write_certs(&args),
        Command::Run(args) => run(*args).await,
        Command::Attest(args) => plugin::attest(args).await,
        Command::Status(args) => plugin::status(args).await,
        Command::Plan(args) => plugin::plan(args).await,
    }
}

/// The command line; run as `kubectl-replika`, help and errors name `kubectl replika`.
fn parse_command_line() -> Cli {
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

fn write_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let certs = tls::generate(&args.hosts, Duration::from_secs(args.days * 24 * 3600))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (file, content) in [
        (tls::CA_FILE, &certs.ca_pem),
        (tls::CERT_FILE, &certs.cert_pem),
        (tls::KEY_FILE, &certs.key_pem),
    ] {
        let path = args.out.join(file);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log_level)?;
    let client = Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster configuration")?;
    let version = client
        .apiserver_version()
        .await
        .context("the API server did not answer")?;
    info!(server = %version.git_version, "connected to the API server");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
    }
    let stop_watch = stop_rx.clone();
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };

    if !args.reconcile && args.webhook_bind.is_none() {
        anyhow::bail!("nothing to run: --reconcile=false and no --webhook-bind");
    }
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    // A part this process does not run is never what keeps it unready.
    readiness.webhook.set(args.webhook_bind.is_none());
    readiness
        .engine
        .set(!args.reconcile || args.leader_election);
    let operations = args.metrics_bind.map(|bind| {
        let (metrics, readiness, stopped) = (metrics.clone(), readiness.clone(), stopped());
        let api_server = Arc::new(health::ApiServerProbe::new(client.clone()));
        tokio::spawn(async move {
            if let Err(error) = health::serve(bind, metrics, readiness, api_server, stopped).await {
                error!(%error, "the operations endpoint failed");
            }
        })
    });
    let Some(authorizer) = load_authorizer(&client, &args.signing_key_secret, stopped()).await
    else {
        return Ok(());
    };
    let authorizer = if args.authorize_unsigned_as_self {
        authorizer
            .authorize_unsigned_as_self()
            .map_err(anyhow::Error::msg)?
    } else {
        authorizer
    };
    announce_admission_mode(&args, &authorizer);
    let authorizer = Arc::new(authorizer);
    readiness.signing_key.set(true);
    // Access review answers are remembered while RBAC is unchanged.
    tokio::spawn(authorizer.clone().follow_rbac());
    {
        // Out of the Service's endpoints as soon as shutdown starts.
        let (readiness, stopped) = (readiness.clone(), stopped());
        tokio::spawn(async move {
            stopped.await;
            readiness.shutting_down.set(true);
        });
    }
    let webhook = match webhook_options(&args, &client, &authorizer)? {
        Some(options) => {
            let (client, metrics, readiness) = (client.clone(), metrics.clone(), readiness.clone());
            let (stopped, stop_tx) = (stopped(), stop_tx.clone());
            Some(tokio::spawn(async move {
                let served = webhook::run(client, options, metrics, readiness, stopped).await;
                if let Err(error) = &served {
                    // A replica that cannot serve the webhooks stops (handing
                    // its Lease over) and exits non-zero, so it is restarted.
                    error!(%error, "the webhook server failed; stopping");
                    let _ = stop_tx.send(true);
                }
                served
            }))
        }
        None => None,
    };
    let settings = controller::Settings {
        max_parallel_writes: args.max_parallel_writes.max(1),
        max_parallel_replikas: args.max_parallel_replikas.max(1),
        leadership: Leadership::always(),
    };
    let telemetry = || Telemetry {
        metrics: metrics.clone(),
        ready: readiness.clone(),
    };
    if args.reconcile && args.leader_election {
        let lease = LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: args.identity.clone().unwrap_or_else(default_identity),
            duration: args.lease_duration,
        };
        let on_leadership = |leading: bool| {
            metrics.leader.set(i64::from(leading));
            // The leader is ready once its caches sync; a follower has none to wait for.
            readiness.engine.set(!leading);
        };
        let (client, settings) = (client.clone(), settings.clone());
        let engine = |leadership, until| {
            let settings = controller::Settings {
                leadership,
                ..settings.clone()
            };
            controller::run(
                client.clone(),
                settings,
                authorizer.clone(),
                telemetry(),
                until,
            )
        };
        leader::run_while_leading(client.clone(), lease, stop_watch, on_leadership, engine).await;
    } else if args.reconcile {
        metrics.leader.set(1);
        controller::run(client, settings, authorizer, telemetry(), stopped()).await;
    }
    if let Some(operations) = operations {
        let _ = operations.await;
    }
    match webhook {
        Some(webhook) => match webhook.await {
            Ok(served) => served.context("the webhook server failed"),
            Err(error) => Err(anyhow::Error::from(error).context("the webhook server panicked")),
        },
        None => Ok(()),
    }
}

/// Says in one line how Replikas get an author this process will replicate for.
fn announce_admission_mode(args: &RunArgs, authorizer: &Authorizer) {
    if let Some(bind) = args.webhook_bind {
        info!(%bind, "admission: this process serves Replika's webhooks and signs the author of every Replika they admit");
    } else if args.authorize_unsigned_as_self {
        info!(
            user = %authorizer.identity().username,
            "admission: DEVELOPMENT MODE (--authorize-unsigned-as-self): no webhooks; a Replika without an author attestation replicates as this user, within this user's access"
        );
    } else {
        info!(
            "admission: no webhooks in this process; only Replikas whose author Replika's webhooks signed (an installed operator) replicate"
        );
    }
}

/// Loads the signing key, retrying (unready meanwhile) until it works or the
/// process is asked to stop: missing RBAC is fixed without a restart.
async fn load_authorizer(
    client: &Client,
    (namespace, name): &(String, String),
    stopped: impl Future<Output = ()>,
) -> Option<Authorizer> {
    let mut retry = Duration::from_secs(1);
    let load = async {
        loop {
            match Authorizer::load(client.clone(), namespace, name).await {
                Ok(authorizer) => return authorizer,
                Err(error) => {
                    error!(error = %anyhow::Error::from(error), retry_in = ?retry, "Replika authors cannot be signed or verified yet");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    tokio::select! {
        authorizer = load => Some(authorizer),
        () = stopped => None,
    }
}

/// The host name and process id: unique enough for a process outside a pod.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "replika".into());
    format!("{host}-{}", std::process::id())
}

fn webhook_options(
    args: &RunArgs,
    client: &Client,
    authorizer: &Arc<Authorizer>,
) -> anyhow::Result<Option<webhook::Options>> {
    let Some(bind) = args.webhook_bind else {
        return Ok(None);
    };
    let certificates = match (&args.tls_dir, &args.tls_secret) {
        (Some(dir), _) => Certificates::Files(dir.clone()),
        (None, Some((namespace, name))) => Certificates::SelfManaged(SelfManaged {
            client: client.clone(),
            secret_namespace: namespace.clone(),
            secret_name: name.clone(),
            hosts: args.tls_hosts.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
            check_every: args.tls_check_interval,
        }),
        (None, None) => anyhow::bail!("--webhook-bind needs --tls-dir or --tls-secret"),
    };
    Ok(Some(webhook::Options {
        bind,
        certificates,
        limits: Default::default(),
        authorizer: authorizer.clone(),
    }))
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    info!("shutting down");
}
