//! Running a command (usually kubectl) and keeping what it printed.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

/// What a finished command printed, and whether it exited with status 0.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status_ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CommandOutput {
    fn from(output: Output) -> CommandOutput {
        CommandOutput {
            status_ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to completion, capturing stdout and stderr (lossily decoded as UTF-8).
///
/// # Panics
/// If the program cannot be started at all: that is a broken test environment,
/// not a result a test could check.
pub fn run(cmd: &mut Command) -> CommandOutput {
    cmd.output()
        .unwrap_or_else(|error| panic!("cannot run {cmd:?}: {error}"))
        .into()
}

/// [`run`], with `input` as the command's stdin.
///
/// # Panics
/// If the program cannot be started or fed, as [`run`].
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> CommandOutput {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {cmd:?}: {error}"));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|error| panic!("cannot write to {cmd:?}: {error}"));
    child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("cannot wait for {cmd:?}: {error}"))
        .into()
}
