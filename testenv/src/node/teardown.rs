//! Removing what the node leaves on the host beyond its processes: container
//! shims, mounts, the pods' cgroups, and directories it creates outside its
//! own (the kubelet and containerd have some fixed paths).

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

/// Directories outside the node's own that the kubelet, containerd or the CNI
/// plugins create whatever they are told. Those absent before the node
/// started are removed with it.
const HOST_PATHS: [&str; 6] = [
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/containerd",
    "/usr/libexec/kubernetes",
];

/// How long killed processes may take to disappear.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Records which of [`HOST_PATHS`] do not exist yet (once: a second start
/// after a failed one keeps the first record).
pub(crate) fn record_host_paths(record: &Path) -> Result<()> {
    if record.exists() {
        return Ok(());
    }
    let absent: String = HOST_PATHS
        .iter()
        .filter(|path| !Path::new(path).exists())
        .map(|path| format!("{path}\n"))
        .collect();
    fs::write(record, absent).with_context(|| format!("cannot write {}", record.display()))
}

/// Removes the directories that [`record_host_paths`] found absent.
pub(crate) fn remove_host_paths(record: &Path) -> Result<()> {
    let Ok(absent) = fs::read_to_string(record) else {
        return Ok(());
    };
    for path in absent.lines().map(Path::new) {
        unmount_under(path)?;
        match fs::remove_dir_all(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("cannot remove {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// SIGKILLs every process whose command line mentions `needle` (containerd's
/// shims name its socket), and waits until they are gone.
pub(crate) fn kill_processes_mentioning(needle: &str) -> Result<()> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let found = processes_mentioning(needle.as_bytes())?;
        if found.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("processes {found:?} survive SIGKILL"));
        }
        for pid in found {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn processes_mentioning(needle: &[u8]) -> Result<Vec<libc::pid_t>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot read /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Zombies have an empty command line: they are gone already.
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|window| window == needle) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Unmounts everything mounted at or below `root` (the kubelet bind-mounts
/// its root onto itself; containerd mounts root filesystems, `/dev/shm`s and
/// network namespaces), deepest first, detaching busy ones.
pub(crate) fn unmount_under(root: &Path) -> Result<()> {
    loop {
        let mut mounts = mount_points()?
            .into_iter()
            .filter(|point| point.starts_with(root))
            .collect::<Vec<_>>();
        if mounts.is_empty() {
            return Ok(());
        }
        mounts.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
        for point in mounts {
            let c_path = CString::new(point.as_os_str().as_bytes())?;
            // SAFETY: c_path is a valid NUL-terminated string for the call.
            if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("cannot unmount {}", point.display()));
            }
        }
    }
}

/// The mount points of this mount namespace, from `/proc/self/mountinfo`
/// (the fifth field, with spaces and the like escaped as octal).
fn mount_points() -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_octal(escaped)))
        .collect())
}

fn unescape_octal(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the `kubepods` cgroups the kubelet made (cgroupfs driver) in every
/// hierarchy, innermost first, killing what still runs in them (containers
/// that outlived a containerd that died).
pub(crate) fn remove_pod_cgroups() -> Result<()> {
    for hierarchy in fs::read_dir("/sys/fs/cgroup").context("cannot read /sys/fs/cgroup")? {
        let pods = hierarchy?.path().join("kubepods");
        if pods.is_dir() {
            remove_cgroup(&pods)?;
        }
    }
    Ok(())
}

fn remove_cgroup(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            remove_cgroup(&path)?;
        }
    }
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|pid| pid.parse().ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(error)
                    .with_context(|| format!("cannot remove the cgroup {}", dir.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
