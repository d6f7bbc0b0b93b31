//! The `replika` command: runs the operator, or prints what it installs.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::{Client, CustomResourceExt};
use replika::api::Replika;
use replika::controller;
use tracing::info;
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
    Run(RunArgs),
    /// Print the Replika CustomResourceDefinition as YAML.
    Crd,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!(
                "{}",
                serde_saphyr::to_string(&Replika::crd()).context("rendering the CRD")?
            );
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
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
    let settings = controller::Settings {
        max_parallel_writes: args.max_parallel_writes.max(1),
        max_parallel_replikas: args.max_parallel_replikas.max(1),
    };
    controller::run(client, settings, shutdown_signal()).await;
    Ok(())
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
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
}
