//! [`ControlPlane::shared`]: one plane per test binary, gone when the binary is.

use std::{
    env, fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};

use crate::plane::ControlPlane;

/// Names the admin kubeconfig of a running plane that tests should use instead
/// of starting their own (e.g. `.local/kubeconfig` from `make control-plane`).
const KUBECONFIG_ENV: &str = "REPLIKA_TEST_KUBECONFIG";

/// Polls until the process whose pid is `$1` is gone, then kills the processes
/// recorded in `$2/state/<name>.pid` and removes the directory `$2` once they
/// are dead.
///
/// `program` prints a live process's `argv[0]`, and nothing for a zombie: a dead
/// process passes `kill -0` until it is reaped, which takes seconds where PID 1
/// reaps lazily. A recorded pid is only killed while it still runs the recorded
/// program, since pids get reused.
const WATCHDOG_SCRIPT: &str = r#"
parent=$1 dir=$2
program() { tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline" | head -n 1; }
while [ -n "$(program "$parent")" ]; do sleep 1; done
pids=
for pid_file in "$dir"/state/*.pid; do
  [ -f "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  case $(program "$pid") in
    */"$(basename "$pid_file" .pid)") kill -9 "$pid" && pids="$pids $pid" ;;
  esac
done
tries=0
for pid in $pids; do
  while [ -n "$(program "$pid")" ] && [ "$tries" -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
done
rm -rf "$dir"
"#;

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane for this test binary: when `REPLIKA_TEST_KUBECONFIG`
    /// is set, that running cluster (e.g. from `make control-plane`); otherwise
    /// a private one, started on first use and torn down when the process exits.
    ///
    /// The teardown does not rely on this process exiting cleanly: a watchdog
    /// shell, in its own process group, waits for this process to disappear
    /// (even by SIGKILL), then kills the plane and removes its directory.
    /// Identities handed out for a `REPLIKA_TEST_KUBECONFIG` plane live in such
    /// a private directory too.
    ///
    /// Synchronous, and safe to call from inside `#[tokio::test]`s.
    ///
    /// # Panics
    /// If no plane can be had; every later call panics with the same error.
    pub fn shared() -> &'static ControlPlane {
        let shared = SHARED.get_or_init(|| set_up().map_err(|error| format!("{error:#}")));
        match shared {
            Ok(plane) => plane,
            Err(error) => panic!("no control plane for the tests: {error}"),
        }
    }
}

fn set_up() -> Result<ControlPlane> {
    let dir = env::temp_dir().join(format!("replika-testenv-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    start_watchdog(&dir)?;
    match env::var_os(KUBECONFIG_ENV) {
        Some(kubeconfig) => ControlPlane::connect(&PathBuf::from(kubeconfig), &dir)
            .with_context(|| format!("cannot use the control plane from {KUBECONFIG_ENV}")),
        None => ControlPlane::start(&dir),
    }
}

fn start_watchdog(dir: &Path) -> Result<()> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("testenv-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of our process group, so a Ctrl-C that kills us spares it.
        .process_group(0)
        .spawn()
        .context("cannot start the control plane's watchdog")?;
    Ok(())
}
