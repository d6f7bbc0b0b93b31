//! Starting the plane's processes, recording their pids, and stopping them.
//!
//! Each process runs in its own process group, so a Ctrl-C meant for `cargo
//! test` or `make` does not reach it: planes are stopped on purpose, by
//! `testenv down` or by the watchdog of [`crate::ControlPlane::shared`], both
//! of which read the pids from `<dir>/state/<name>.pid`.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::Write,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use crate::layout::Layout;

/// How many lines of a failed process's log go into the error.
const LOG_TAIL_LINES: usize = 30;

/// How long a killed process may take to disappear.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The processes of a plane this process started: a failed start takes them
/// down, and a running plane stops and restarts single ones (see [`crate::Component`]).
#[derive(Debug, Default)]
pub(crate) struct Processes {
    started: Vec<Started>,
}

#[derive(Debug)]
struct Started {
    name: String,
    child: Child,
}

impl Processes {
    /// Starts `program` with its output in `<dir>/logs/<name>.log` and its pid in
    /// `<dir>/state/<name>.pid`, where `name` is the program's file name.
    pub(crate) fn spawn(
        &mut self,
        layout: &Layout,
        program: &Path,
        args: Vec<OsString>,
    ) -> Result<()> {
        self.spawn_with_env(layout, program, args, &[])
    }

    /// [`Processes::spawn`] with `env` added to the inherited environment.
    pub(crate) fn spawn_with_env(
        &mut self,
        layout: &Layout,
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, OsString)],
    ) -> Result<()> {
        let log_path = layout.log(&file_name(program)?);
        let log = fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        self.spawn_logging_to(log, layout, program, args, env)
    }

    /// Starts `program` again after [`Processes::stop`], appending to its log
    /// (after a line that marks the restart) instead of replacing it.
    pub(crate) fn respawn(
        &mut self,
        layout: &Layout,
        program: &Path,
        args: Vec<OsString>,
    ) -> Result<()> {
        let name = file_name(program)?;
        if self.started.iter().any(|p| p.name == name) {
            return Err(anyhow!("{name} is already running"));
        }
        let log_path = layout.log(&name);
        let mut log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(log, "---- testenv: {name} started again ----")?;
        self.spawn_logging_to(log, layout, program, args, &[])
    }

    fn spawn_logging_to(
        &mut self,
        log: fs::File,
        layout: &Layout,
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, OsString)],
    ) -> Result<()> {
        let name = file_name(program)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid_file = layout.pid_file(&name);
        fs::write(&pid_file, format!("{}\n", child.id()))
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        self.started.push(Started { name, child });
        Ok(())
    }

    /// Fails, with the end of its log, if a started process is no longer running.
    pub(crate) fn ensure_running(&self, layout: &Layout) -> Result<()> {
        let exited = self.started.iter().find(|p| !is_alive(p.child.id()));
        let Some(exited) = exited else {
            return Ok(());
        };
        let log = layout.log(&exited.name);
        Err(anyhow!(
            "{} exited; the end of {}:\n{}",
            exited.name,
            log.display(),
            log_tail(&log)
        ))
    }

    /// Kills the started process called `name` (SIGKILL), reaps it and
    /// removes its pid file, so that only [`Processes::respawn`] brings it back.
    pub(crate) fn stop(&mut self, layout: &Layout, name: &str) -> Result<()> {
        let index = self
            .started
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        let mut stopped = self.started.remove(index);
        // An error means it had exited already, which is the goal.
        let _ = stopped.child.kill();
        stopped
            .child
            .wait()
            .with_context(|| format!("cannot reap {name}"))?;
        let pid_file = layout.pid_file(name);
        fs::remove_file(&pid_file).with_context(|| format!("cannot remove {}", pid_file.display()))
    }

    /// Kills and reaps every started process.
    pub(crate) fn kill(self) {
        for mut started in self.started {
            // Errors mean the process is gone already, which is the goal.
            let _ = started.child.kill();
            let _ = started.child.wait();
        }
    }
}

/// Kills the processes whose pids a plane recorded under `<dir>/state`, and
/// waits until they are gone. The plane's data is thrown away afterwards, so
/// SIGKILL: there is nothing to shut down gracefully. One that cannot be
/// killed does not spare the others; the errors are reported together.
pub(crate) fn kill_recorded(layout: &Layout) -> Result<()> {
    let errors: Vec<String> = recorded(layout)?
        .iter()
        .filter_map(|(name, pid)| kill_and_wait(*pid, name).err())
        .map(|error| format!("{error:#}"))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", errors.join("\n")))
    }
}

/// [`kill_recorded`] for the processes called `name` only.
pub(crate) fn kill_recorded_named(layout: &Layout, name: &str) -> Result<()> {
    recorded(layout)?
        .iter()
        .filter(|(recorded, _)| recorded == name)
        .try_for_each(|(name, pid)| kill_and_wait(*pid, name))
}

/// Whether the process recorded as `name` runs.
pub(crate) fn recorded_is_running(layout: &Layout, name: &str) -> Result<bool> {
    Ok(recorded(layout)?
        .iter()
        .any(|(recorded, pid)| recorded == name && is_running(*pid, name)))
}

/// The names and pids recorded under `<dir>/state`.
fn recorded(layout: &Layout) -> Result<Vec<(String, u32)>> {
    let state_dir = layout.state_dir();
    let entries = match fs::read_dir(&state_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", state_dir.display()));
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) else {
            continue;
        };
        let Ok(pid) = fs::read_to_string(&path)?.trim().parse::<u32>() else {
            continue;
        };
        found.push((name.to_owned(), pid));
    }
    Ok(found)
}

fn kill_and_wait(pid: u32, name: &str) -> Result<()> {
    // A recorded pid may have been reused by an unrelated process since; only
    // signal it if it still runs the program that was recorded.
    if !is_running(pid, name) {
        return Ok(());
    }
    let pid_t = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid_t, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot kill {name} ({pid})"));
    }
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while is_running(pid, name) {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{name} ({pid}) is still running {EXIT_TIMEOUT:?} after SIGKILL"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether our own child `pid` has not exited. Its name is not checked: just
/// after the fork, before the exec, it still carries this process's name.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: `pid (comm) S ...`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// Whether `pid` is a live process running the program called `name`. Exited
/// processes that nobody has reaped yet (zombies) have an empty command line,
/// so they do not count.
pub(crate) fn is_running(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let program = cmdline.split(|&byte| byte == 0).next().unwrap_or_default();
    Path::new(OsStr::from_bytes(program)).file_name() == Some(name.as_ref())
}

fn file_name(program: &Path) -> Result<String> {
    program
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable file name", program.display()))
}

fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
