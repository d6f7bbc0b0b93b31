//! The operator under test: any command line, run under the deploy
//! ServiceAccount's kubeconfig, ended with the benchmark (even if the benchmark
//! is killed), and measured through `/proc/<pid>/status` (memory) and
//! `/proc/<pid>/stat` (CPU time).
//!
//! Where to serve its webhook and metrics is passed in the environment
//! variables Replika reads ([`WEBHOOK_BIND_ENV`], [`TLS_DIR_ENV`],
//! [`METRICS_BIND_ENV`]); another operator may ignore them, and then the
//! admission rows say it serves no webhook.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::figures::Memory;

/// The operator built in release mode from this workspace, with leader
/// election on as in `deploy/operator`.
pub const DEFAULT_COMMAND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/release/replika run --leader-election=true"
);
/// Address the operator should serve its admission webhooks on (HTTPS).
pub const WEBHOOK_BIND_ENV: &str = "REPLIKA_WEBHOOK_BIND";
/// Directory holding the webhook's `tls.crt` and `tls.key`.
pub const TLS_DIR_ENV: &str = "REPLIKA_TLS_DIR";
/// Address the operator should serve `/metrics` on (plain HTTP).
pub const METRICS_BIND_ENV: &str = "REPLIKA_METRICS_BIND";

/// How long reading the operator's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on
/// every architecture Linux exposes it to user space with).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// How many lines of the operator's log a failure message shows.
const LOG_TAIL_LINES: usize = 30;

/// Where the operator is asked to serve its webhook and its metrics.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub webhook: SocketAddr,
    /// Holds `tls.crt`, `tls.key` and `ca.crt` for [`Endpoints::webhook`].
    pub tls_dir: PathBuf,
    pub metrics: SocketAddr,
}

impl Endpoints {
    /// Two free ports on 127.0.0.1, and `tls_dir`.
    pub fn pick(tls_dir: PathBuf) -> Result<Endpoints> {
        // Both listeners are held until both ports are known, so they differ.
        let webhook = TcpListener::bind("127.0.0.1:0")?;
        let metrics = TcpListener::bind("127.0.0.1:0")?;
        Ok(Endpoints {
            webhook: webhook.local_addr()?,
            tls_dir,
            metrics: metrics.local_addr()?,
        })
    }
}

/// A running operator process.
pub struct Operator {
    process: Mutex<Child>,
    pid: u32,
    log: PathBuf,
    metrics: SocketAddr,
    watchdog: Child,
}

impl Operator {
    /// Runs `command` through `sh -c 'exec …'` (so its pid is the operator's
    /// own), with `KUBECONFIG` set to `kubeconfig`, `endpoints` in the
    /// environment and its output in `log`.
    pub fn start(
        command: &str,
        kubeconfig: &Path,
        endpoints: &Endpoints,
        log: &Path,
    ) -> Result<Operator> {
        let program = command.split_whitespace().next().unwrap_or_default();
        if program.contains('/') && !Path::new(program).exists() {
            bail!(
                "the operator binary {program} does not exist; build it first \
                 (`cargo build --release --bin replika`) or pass --operator-cmd"
            );
        }
        let output =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let process = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .env("KUBECONFIG", kubeconfig)
            .env(WEBHOOK_BIND_ENV, endpoints.webhook.to_string())
            .env(TLS_DIR_ENV, &endpoints.tls_dir)
            .env(METRICS_BIND_ENV, endpoints.metrics.to_string())
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("cannot start the operator `{command}`"))?;
        let watchdog = testenv::stop_when_we_end(process.id())
            .context("cannot start the operator's watchdog")?;
        Ok(Operator {
            pid: process.id(),
            process: Mutex::new(process),
            log: log.to_owned(),
            metrics: endpoints.metrics,
            watchdog,
        })
    }

    /// Fails, showing the end of the log, if the operator has exited.
    pub fn ensure_running(&self) -> Result<()> {
        match self.process().try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "the operator exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail()
            ),
        }
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(Memory {
            rss_mib: status_kib(&status, "VmRSS:").context("no VmRSS")? / 1024.0,
            peak_mib: status_kib(&status, "VmHWM:").context("no VmHWM")? / 1024.0,
        })
    }

    /// CPU time the operator has used since it started, user and system, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        stat_cpu_seconds(&stat).with_context(|| format!("no CPU times in {path}"))
    }

    /// The operator's own `/metrics`, for diagnosis; fails if it serves none.
    pub async fn scrape_metrics(&self) -> Result<String> {
        let scrape = async {
            let mut stream = tokio::net::TcpStream::connect(self.metrics).await?;
            let request = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics);
            stream.write_all(request.as_bytes()).await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            anyhow::Ok(response)
        };
        let response = tokio::time::timeout(SCRAPE_TIMEOUT, scrape)
            .await
            .context("timed out")??;
        let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
        ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        Ok(body.to_owned())
    }

    fn process(&self) -> MutexGuard<'_, Child> {
        // A poisoned lock still holds a usable handle.
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last lines of the operator's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for child in [&mut self.watchdog, process] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value in KiB of a `/proc/<pid>/status` line such as `VmRSS:  1234 kB`.
fn status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The process name
/// (field 2, in parentheses) may hold spaces, so fields are counted after
/// its closing parenthesis: `state` is the first there, `utime` the 12th.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times_after_the_name() {
        let stat =
            "4242 (re plika) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_seconds(stat), Some(3.25));
        assert_eq!(stat_cpu_seconds("4242 (replika) S 1"), None);
    }

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\treplika\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(20480.0));
        assert_eq!(status_kib(status, "VmHWM:"), Some(40960.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }
}
