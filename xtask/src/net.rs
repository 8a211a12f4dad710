//! Network namespaces and veth pairs for the demo and the benchmarks, removed on drop.

use std::{fs::File, os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, Result, bail};

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("cannot run ip (iproute2)")?;
    if !status.success() {
        bail!("ip {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Named network namespaces, deleted (with their veths) when dropped.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `names` (deleting leftovers of an earlier run first), loopback up in each.
    pub fn create(names: &[&str]) -> Result<Self> {
        let this = Self {
            names: names.iter().map(|&n| n.to_owned()).collect(),
        };
        for name in names {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
            ip(&["netns", "add", name])?;
            in_ns(name, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(this)
    }

    /// A veth pair `a` (in `ns_a`, address `addr_a`) <-> `b` (in `ns_b`, `addr_b`), both up.
    pub fn veth(
        ns_a: &str,
        a: &str,
        addr_a: &str,
        ns_b: &str,
        b: &str,
        addr_b: &str,
    ) -> Result<()> {
        ip(&[
            "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ])?;
        for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
            if !addr.is_empty() {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            }
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`: sockets it creates stay in `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    let file =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("no namespace {ns}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this new thread only, with a namespace fd we hold.
        let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    }))
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !status.success() {
        bail!("mount -t bpf bpf /sys/fs/bpf failed: {status}");
    }
    Ok(())
}
