//! `replika run`: the wiring of a running operator — the API client, the
//! signing key, the operations endpoint, the webhook server and the engine
//! (under leader election or not) — around one [`Shutdown`] that every task
//! holds. A module of the binary: what it wires lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use replika::authorization::Authorizer;
use replika::controller::{self, Telemetry};
use replika::leader::{self, Leadership, LeaseSettings};
use replika::metrics::Metrics;
use replika::operations::{self, Parts, Readiness};
use replika::shutdown::Shutdown;
use replika::webhook::{self, Certificates, self_managed::SelfManaged};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, RunArgs};

/// Runs the operator until SIGTERM or Ctrl-C (or until its webhook server fails).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log_level)?;
    let client = Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster configuration")?;
    let version = client
        .apiserver_version()
        .await
        .context("the API server did not answer")?;
    info!(server = %version.git_version, "connected to the API server");

    let shutdown = Shutdown::default();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.start();
        }
    });

    if !args.reconcile && args.webhook_bind.is_none() {
        anyhow::bail!("nothing to run: --reconcile=false and no --webhook-bind");
    }
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::new(Parts {
        webhook: args.webhook_bind.is_some(),
        engine: args.reconcile,
        elected: args.leader_election,
    }));
    let operations = args
        .metrics_bind
        .map(|bind| serve_operations(bind, &client, &metrics, &readiness, &shutdown));
    let Some(authorizer) =
        load_authorizer(&client, &args.signing_key_secret, shutdown.started()).await
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
    tokio::spawn({
        // Out of the Service's endpoints as soon as shutdown starts.
        let (readiness, started) = (readiness.clone(), shutdown.started());
        async move {
            started.await;
            readiness.shutting_down.set(true);
        }
    });
    let webhook = webhook_options(&args, &client, &authorizer)?.map(|options| {
        let (client, metrics, readiness) = (client.clone(), metrics.clone(), readiness.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let served =
                webhook::run(client, options, metrics, readiness, shutdown.started()).await;
            if let Err(error) = &served {
                // A replica that cannot serve the webhooks stops (handing
                // its Lease over) and exits non-zero, so it is restarted.
                error!(%error, "the webhook server failed; stopping");
                shutdown.start();
            }
            served
        })
    });
    if args.reconcile {
        let telemetry = Telemetry {
            metrics: metrics.clone(),
            ready: readiness.clone(),
        };
        run_engine(&args, client, authorizer, telemetry, &shutdown).await;
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `bind` until shutdown.
fn serve_operations(
    bind: SocketAddr,
    client: &Client,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let (metrics, readiness, started) = (metrics.clone(), readiness.clone(), shutdown.started());
    let api_server = Arc::new(operations::ApiServerProbe::new(client.clone()));
    tokio::spawn(async move {
        if let Err(error) = operations::serve(bind, metrics, readiness, api_server, started).await {
            error!(%error, "the operations endpoint failed");
        }
    })
}

/// Runs the replication engine until shutdown: at once, or whenever this
/// process holds the Lease (`--leader-election`).
async fn run_engine(
    args: &RunArgs,
    client: Client,
    authorizer: Arc<Authorizer>,
    telemetry: Telemetry,
    shutdown: &Shutdown,
) {
    let settings = controller::Settings {
        max_parallel_writes: args.max_parallel_writes.max(1),
        max_parallel_replikas: args.max_parallel_replikas.max(1),
        max_writes_in_flight: args.max_writes_in_flight.max(1),
        leadership: Leadership::always(),
    };
    let Telemetry { metrics, ready } = telemetry;
    if !args.leader_election {
        metrics.leader.set(1);
        let telemetry = Telemetry { metrics, ready };
        controller::run(client, settings, authorizer, telemetry, shutdown.started()).await;
        return;
    }
    let lease = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        duration: args.lease_duration,
    };
    let on_leadership = |leading: bool| {
        metrics.leader.set(i64::from(leading));
        ready.leading.set(leading);
    };
    let engine = |leadership, until| {
        let settings = controller::Settings {
            leadership,
            ..settings.clone()
        };
        let telemetry = Telemetry {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        controller::run(
            client.clone(),
            settings,
            authorizer.clone(),
            telemetry,
            until,
        )
    };
    leader::run_while_leading(client.clone(), lease, shutdown, on_leadership, engine).await;
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
