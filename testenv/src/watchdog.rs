//! Processes that must not outlive the one that started them (an operator
//! under test, say) get a watchdog: a small shell loop, outside our process
//! group so that a Ctrl-C ending us spares it, that kills them once we are gone
//! however we ended.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// Polls until the process whose pid is `$1` is gone, then sends SIGTERM to `$2`.
/// A process is gone once `/proc/<pid>/cmdline` is empty: a zombie passes
/// `kill -0` until it is reaped.
const SCRIPT: &str = r#"
parent=$1 child=$2
while [ -n "$(tr '\0' '\n' 2>/dev/null <"/proc/$parent/cmdline" | head -n 1)" ]; do sleep 1; done
kill "$child" 2>/dev/null
"#;

/// Starts the watchdog that stops `pid` once this process has ended.
pub fn stop_when_we_end(pid: u32) -> std::io::Result<Child> {
    Command::new("sh")
        .args(["-c", SCRIPT, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}
