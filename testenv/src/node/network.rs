//! The node's network on the host: the bridge its pods hang off, the route
//! that keeps Service addresses on it, the guard that keeps pod traffic on
//! this machine, and the kernel settings they need — and their removal.
//!
//! Pod and Service addresses exist only on the bridge and inside the pods'
//! network namespaces: the guard drops everything forwarded between the
//! bridge and any other interface, both ways, and is in place before any pod
//! runs. It lives in the mangle table, which kube-proxy leaves alone, so none
//! of kube-proxy's ACCEPT rules in the filter table can get past it.

use std::{fs, path::Path};

use anyhow::{Context, Result};

use super::host;

/// The name of the one node.
pub(crate) const NODE_NAME: &str = "replika-node";
/// The bridge, created here before anything else (the CNI bridge plugin uses
/// it as it finds it). Fixed, so one cluster with a node runs at a time.
pub(crate) const BRIDGE: &str = "replika0";
/// The bridge's address: the node's IP, and where the API server listens.
pub(crate) const BRIDGE_IP: &str = "10.244.0.1";
/// The pods' addresses, on the bridge.
pub(crate) const POD_RANGE: &str = "10.244.0.0/24";
/// ClusterIPs; routed onto the bridge so that none leaves by the default route.
pub(crate) const SERVICE_RANGE: &str = "10.96.0.0/24";
/// The `kubernetes` Service: the first address of [`SERVICE_RANGE`].
pub(crate) const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// Named as nameserver in pods' resolv.conf so no lookup goes to the host's
/// resolver; nothing answers there (there is no cluster DNS).
pub(crate) const CLUSTER_DNS: &str = "10.96.0.10";

/// The mangle-table chain of the egress guard.
const GUARD_CHAIN: &str = "REPLIKA-EGRESS-GUARD";

/// Kernel settings changed by the node: IP forwarding (pod → ClusterIP →
/// pod), and what the kubelet sets when it starts.
const SYSCTLS: [&str; 4] = [
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// Saves the kernel settings into `saved` (unless a previous start did), then
/// creates the bridge, the Service route and the guard, and turns forwarding on.
pub(crate) fn set_up(saved: &Path) -> Result<()> {
    if !saved.exists() {
        let values = SYSCTLS
            .iter()
            .map(|name| Ok(format!("{name} {}\n", read_sysctl(name)?.trim())))
            .collect::<Result<String>>()?;
        fs::write(saved, values).with_context(|| format!("cannot write {}", saved.display()))?;
    }
    guard("-A")?;
    host("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    host(
        "ip",
        &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE],
    )?;
    host("ip", &["link", "set", BRIDGE, "up"])?;
    host(
        "ip",
        &[
            "route",
            "add",
            SERVICE_RANGE,
            "dev",
            BRIDGE,
            "src",
            BRIDGE_IP,
        ],
    )?;
    write_sysctl("net/ipv4/ip_forward", "1")
}

/// Removes what [`set_up`] and kube-proxy added and restores the saved kernel
/// settings. Each step runs even if an earlier one found nothing to remove.
pub(crate) fn tear_down(saved: &Path) -> Result<()> {
    // Absent already when a start failed early: nothing to do then.
    let _ = host("ip", &["link", "delete", BRIDGE]);
    for family in ["iptables", "ip6tables"] {
        remove_kube_chains(family)?;
    }
    let _ = guard("-D");
    for range in [POD_RANGE, SERVICE_RANGE] {
        // conntrack exits 1 when no entry matched.
        let _ = host("conntrack", &["-D", "-s", range]);
        let _ = host("conntrack", &["-D", "-d", range]);
    }
    if let Ok(values) = fs::read_to_string(saved) {
        for line in values.lines() {
            if let Some((name, value)) = line.split_once(' ') {
                write_sysctl(name, value)?;
            }
        }
    }
    Ok(())
}

/// `-A` adds the guard (in IPv4 and IPv6), `-D` removes it.
fn guard(action: &str) -> Result<()> {
    for family in ["iptables", "ip6tables"] {
        let mangle = |args: &[&str]| host(family, &[&["-w", "-t", "mangle"], args].concat());
        if action == "-A" {
            mangle(&["-N", GUARD_CHAIN])?;
            mangle(&[
                "-A",
                GUARD_CHAIN,
                "-i",
                BRIDGE,
                "!",
                "-o",
                BRIDGE,
                "-j",
                "DROP",
            ])?;
            mangle(&[
                "-A",
                GUARD_CHAIN,
                "-o",
                BRIDGE,
                "!",
                "-i",
                BRIDGE,
                "-j",
                "DROP",
            ])?;
            mangle(&["-I", "FORWARD", "1", "-j", GUARD_CHAIN])?;
        } else {
            let _ = mangle(&["-D", "FORWARD", "-j", GUARD_CHAIN]);
            let _ = mangle(&["-F", GUARD_CHAIN]);
            let _ = mangle(&["-X", GUARD_CHAIN]);
        }
    }
    Ok(())
}

/// Deletes every `KUBE-*` chain of kube-proxy and the kubelet, in every
/// table, and the rules of built-in chains that jump to them. (`kube-proxy
/// --cleanup` leaves some behind, such as `KUBE-FIREWALL`.)
fn remove_kube_chains(family: &str) -> Result<()> {
    for table in ["filter", "nat", "mangle", "raw"] {
        let Ok(rules) = host(family, &["-w", "-t", table, "-S"]) else {
            continue;
        };
        let mut chains = Vec::new();
        for rule in rules.lines() {
            let words = split_rule(rule);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["-N", chain] if chain.starts_with("KUBE-") => chains.push(chain.to_string()),
                ["-A", chain, rest @ ..]
                    if !chain.starts_with("KUBE-")
                        && rest
                            .windows(2)
                            .any(|w| w[0] == "-j" && w[1].starts_with("KUBE-")) =>
                {
                    host(family, &[&["-w", "-t", table, "-D", chain], rest].concat())?;
                }
                _ => {}
            }
        }
        for op in ["-F", "-X"] {
            for chain in &chains {
                host(family, &["-w", "-t", table, op, chain])?;
            }
        }
    }
    Ok(())
}

/// The words of a rule as `iptables -S` prints it, where a comment with
/// spaces is in double quotes.
fn split_rule(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn read_sysctl(name: &str) -> Result<String> {
    let path = format!("/proc/sys/{name}");
    fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
}

fn write_sysctl(name: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{name}");
    fs::write(&path, value).with_context(|| format!("cannot set {path} to {value}"))
}
