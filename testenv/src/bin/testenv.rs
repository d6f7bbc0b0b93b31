//! `testenv up|down [--dir DIR]`: a long-lived local control plane for
//! development, e.g. for running the operator by hand (`make control-plane`);
//! `testenv cluster`, `import` and `deploy`: the same with a worker node, an
//! image loaded into it, and Replika installed from its bundle or chart
//! (`make cluster`, `make image`, `make deploy`).
//!
//! `import` loads an image archive into the node when a cluster runs (and
//! says so when none does). `up` and `cluster` reuse what runs in DIR when it is ready (a cluster
//! also serves as a plane), and otherwise start it there, detached from this
//! process. `down` stops either and removes its files, except its logs.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use testenv::{Cluster, ControlPlane, Install};

const USAGE: &str =
    "usage: testenv [--dir DIR] up | down | cluster | import ARCHIVE | deploy INSTALL IMAGE
  DIR defaults to .local; INSTALL is self-managed, cert-manager or helm; IMAGE is NAME:TAG";
const DEFAULT_DIR: &str = ".local";

enum Action {
    Up,
    Down,
    Cluster,
    Import(PathBuf),
    Deploy(Install, String),
}

fn main() -> ExitCode {
    let outcome =
        parse_args(std::env::args().skip(1).collect()).and_then(|(action, dir)| match action {
            Action::Up => up(&dir),
            Action::Down => down(&dir),
            Action::Cluster => cluster(&dir).map(drop),
            Action::Import(archive) => import(&dir, &archive),
            Action::Deploy(install, image) => deploy(&dir, install, &image),
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("testenv: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: Vec<String>) -> Result<(Action, PathBuf)> {
    let dir = match args.iter().position(|arg| arg == "--dir") {
        Some(at) if at + 1 < args.len() => {
            let dir = args.remove(at + 1);
            args.remove(at);
            dir.into()
        }
        Some(_) => bail!("{USAGE}"),
        None => DEFAULT_DIR.into(),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let action = match args.as_slice() {
        ["up"] => Action::Up,
        ["down"] => Action::Down,
        ["cluster"] => Action::Cluster,
        ["import", archive] => Action::Import(archive.into()),
        ["deploy", install, image] => Action::Deploy(install.parse()?, (*image).to_owned()),
        _ => bail!("{USAGE}"),
    };
    Ok((action, dir))
}

fn up(dir: &Path) -> Result<()> {
    let plane = match ControlPlane::running_in(dir) {
        Some(plane) => {
            eprintln!(
                "testenv: the control plane in {} is already running",
                dir.display()
            );
            plane
        }
        None => {
            // Whatever is left of a plane that is no longer ready goes first.
            ControlPlane::stop(dir)?;
            let started = Instant::now();
            let plane = ControlPlane::start(dir)?;
            eprintln!(
                "testenv: started a control plane in {:.1?}",
                started.elapsed()
            );
            plane
        }
    };
    usage_hint(dir, &plane);
    Ok(())
}

fn cluster(dir: &Path) -> Result<Cluster> {
    let cluster = match Cluster::running_in(dir) {
        Some(cluster) => {
            eprintln!(
                "testenv: the cluster in {} is already running",
                dir.display()
            );
            cluster
        }
        None => {
            let started = Instant::now();
            let cluster = Cluster::start(dir)?;
            eprintln!(
                "testenv: started a cluster with a node in {:.1?}",
                started.elapsed()
            );
            cluster
        }
    };
    usage_hint(dir, cluster.plane());
    Ok(cluster)
}

fn running_cluster(dir: &Path) -> Result<Cluster> {
    Cluster::running_in(dir).with_context(|| {
        format!(
            "no cluster with a node runs in {} (make cluster)",
            dir.display()
        )
    })
}

/// Loads the image into the cluster's node, if a cluster runs: `make image`
/// also serves to build the archive alone.
fn import(dir: &Path, archive: &Path) -> Result<()> {
    let Some(cluster) = Cluster::running_in(dir) else {
        eprintln!(
            "testenv: no cluster with a node runs in {}; {} is built but loaded nowhere",
            dir.display(),
            archive.display()
        );
        return Ok(());
    };
    cluster.import_image(archive)?;
    eprintln!("testenv: loaded {} into the node", archive.display());
    Ok(())
}

fn deploy(dir: &Path, install: Install, image: &str) -> Result<()> {
    let started = Instant::now();
    running_cluster(dir)?.deploy(install, image)?;
    eprintln!(
        "testenv: Replika ({install}, {image}) is available in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
    ControlPlane::stop(dir)?;
    eprintln!("testenv: stopped the control plane in {}", dir.display());
    Ok(())
}

fn usage_hint(dir: &Path, plane: &ControlPlane) {
    eprintln!("testenv: logs are in {}/logs; use it with", dir.display());
    eprintln!("  export KUBECONFIG={}", plane.kubeconfig_path().display());
    eprintln!("  {}/bin/kubectl get namespaces", dir.display());
}
