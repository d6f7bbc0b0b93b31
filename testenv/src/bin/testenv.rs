//! `testenv up|down [--dir DIR]`: a long-lived local control plane for
//! development, e.g. for running the operator by hand (`make control-plane`).
//!
//! `up` reuses the plane in DIR if it is ready, and otherwise starts a new one
//! there, detached from this process. `down` stops it and removes its files,
//! except its logs.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Result, bail};
use testenv::ControlPlane;

const USAGE: &str = "usage: testenv up|down [--dir DIR]   (DIR defaults to .local)";
const DEFAULT_DIR: &str = ".local";

enum Action {
    Up,
    Down,
}

fn main() -> ExitCode {
    let outcome = parse_args(std::env::args().skip(1)).and_then(|(action, dir)| match action {
        Action::Up => up(&dir),
        Action::Down => down(&dir),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("testenv: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Action, PathBuf)> {
    let action = match args.next().as_deref() {
        Some("up") => Action::Up,
        Some("down") => Action::Down,
        _ => bail!("{USAGE}"),
    };
    let dir = match (args.next().as_deref(), args.next(), args.next()) {
        (None, ..) => DEFAULT_DIR.into(),
        (Some("--dir"), Some(dir), None) => dir.into(),
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
    eprintln!("testenv: logs are in {}/logs; use it with", dir.display());
    eprintln!("  export KUBECONFIG={}", plane.kubeconfig_path().display());
    eprintln!("  {}/bin/kubectl get namespaces", dir.display());
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
    ControlPlane::stop(dir)?;
    eprintln!("testenv: stopped the control plane in {}", dir.display());
    Ok(())
}
