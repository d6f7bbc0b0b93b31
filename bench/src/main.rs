//! `bench`: runs the scenarios of docs/benchmarks.md against an operator,
//! prints the table and writes the JSON.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bench::cli::Args;
use bench::cluster::{self, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE};
use bench::figures::{Machine, Memory, MemoryPerCopy, Results, Settings};
use bench::observer::Observer;
use bench::operator::Endpoints;
use bench::report;
use bench::scenarios::{Bench, Options};
use bench::workload::Workload;
use bench::{accounting, setup, webhook};
use clap::Parser;
use k8s_openapi::jiff::Timestamp;
use testenv::ControlPlane;

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: choosing the plane sets testenv's environment.
    let outcome = cluster::select_plane(args.kubeconfig.as_deref()).and_then(|plane| {
        tokio::runtime::Runtime::new()
            .context("cannot start a tokio runtime")?
            .block_on(run(args, plane))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, plane: &'static ControlPlane) -> Result<()> {
    report::create_parent_dir(&args.json)?;
    let results = measure(&args, plane).await?;
    let rows = report::rows(&results);
    println!("\n{}", report::table(&results, &rows));
    println!("{}", report::phases(&results));
    report::write_json(&args.json, &results, &rows)?;
    println!("results written to {}", args.json.display());
    Ok(())
}

async fn measure(args: &Args, plane: &'static ControlPlane) -> Result<Results> {
    let started_at = Timestamp::now().to_string();
    let external = args.kubeconfig.is_some();
    let cluster = cluster::prepare(plane, &args.extra_manifests, external).await?;
    accounting::install(&cluster.admin, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await?;
    let workload = Workload {
        scale: args.scale.max(1),
        replikas: args.replikas.max(1),
        unrelated_secrets: args.unrelated_secrets,
        new_namespaces: args.new_namespaces,
        repeats: usize::from(args.repeats),
        sync_time: args.sync_time.clone(),
        preexisting: setup::preexisting_namespaces(&cluster.admin).await?,
    };
    let observer = Observer::start(cluster.admin.clone()).await?;
    setup::build(&cluster.admin, &workload, args.parallelism).await?;

    let options = options(args)?;
    webhook::write_certificates(&options.endpoints.tls_dir)?;
    let mut bench = Bench::start(cluster, workload, observer, options).await?;
    let fan_out = bench.fan_out().await?;
    bench.all_replikas().await?;
    let namespace_created = bench.namespace_created().await?;
    let idle = bench.idle(Duration::from_secs(args.idle_window)).await?;
    let steady = bench.memory()?;
    let memory_per_copy = MemoryPerCopy::new(
        bench.baseline_rss_mib(),
        steady.rss_mib,
        bench.workload.copies_managed(),
    );
    let webhook = bench.admission(args.admission_requests).await?;
    let memory = Memory {
        rss_mib: steady.rss_mib,
        peak_mib: bench.memory()?.peak_mib,
    };
    save_operator_metrics(&bench, &args.json.with_file_name("operator-metrics.txt")).await;
    if external {
        bench.clean_up().await?;
    }
    Ok(Results {
        started_at,
        settings: settings(args),
        machine: Machine::this(),
        floor_create: fan_out.floor_create,
        floor_update: fan_out.floor_update,
        replika_created: fan_out.replika_created,
        source_updated: fan_out.source_updated,
        namespace_created,
        idle,
        memory,
        memory_per_copy,
        phases: bench.phases(),
        webhook,
    })
}

fn options(args: &Args) -> Result<Options> {
    Ok(Options {
        operator_cmd: args.operator_cmd(),
        operator_log: args.json.with_file_name("operator.log"),
        endpoints: Endpoints::pick(args.json.with_file_name("webhook-tls"))?,
        parallelism: args.parallelism.max(1),
        timeout: Duration::from_secs(args.timeout),
        repeats: usize::from(args.repeats),
    })
}

/// Keeps the operator's own metrics beside the results, for diagnosis; an
/// operator that serves none is only mentioned.
async fn save_operator_metrics(bench: &Bench, path: &std::path::Path) {
    let saved = match bench.operator_metrics().await {
        Ok(text) => std::fs::write(path, text).map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    match saved {
        Ok(()) => eprintln!("  operator metrics written to {}", path.display()),
        Err(error) => eprintln!("  no operator metrics saved: {error:#}"),
    }
}

fn settings(args: &Args) -> Settings {
    Settings {
        scale: args.scale,
        replikas: args.replikas,
        unrelated_secrets: args.unrelated_secrets,
        new_namespaces: args.new_namespaces,
        idle_window_s: args.idle_window,
        parallelism: args.parallelism,
        sync_time: args.sync_time.clone(),
        admission_requests: args.admission_requests,
        repeats: usize::from(args.repeats),
        operator_cmd: args.operator_cmd(),
    }
}
