//! Leftovers of test processes that died without running their guards (SIGKILL, abort, a
//! power cut): the kit's names carry the creating process's pid, so what belongs to a dead pid
//! is removed the next time the kit creates anything, port-demux unloaded from it first.
//!
//! Names: namespaces `pdt-<pid>-<n>-<tag>` (decimal pid), host veths `pdr<pid>x<n>a` and
//! `...b` (hexadecimal pid: an interface name has at most 15 bytes). Namespaces named by the
//! caller carry no pid: each is recorded as an empty file `<RECORDS>/<pid>/<name>` before it is
//! created, and the file is removed with the namespace.

use std::{fs, path::Path, process::Command, sync::Once};

use port_demux::{PortDemux, Scope};

use crate::netns::remove_pin_tree;

/// Prefix of the namespaces the kit names.
pub const NETNS_PREFIX: &str = "pdt-";
/// Prefix of the host veths the kit names.
pub const HOST_VETH_PREFIX: &str = "pdr";

/// Where namespaces named by the caller are recorded, one folder per process.
pub const RECORDS: &str = "/run/port-demux-testkit";

static ONCE: Once = Once::new();

/// Records namespace `name`, named by the caller, as this process's.
///
/// # Panics
/// When the record cannot be written: a namespace the kit could not reap is not created.
pub(crate) fn record(name: &str) {
    let dir = Path::new(RECORDS).join(std::process::id().to_string());
    if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join(name), b"")) {
        panic!("cannot record namespace {name} in {}: {e}", dir.display());
    }
}

/// Forgets namespace `name` (once deleted); nothing when it was not recorded.
pub(crate) fn forget(name: &str) {
    let dir = Path::new(RECORDS).join(std::process::id().to_string());
    let _ = fs::remove_file(dir.join(name));
    // Only once empty: other namespaces of this process may still be recorded.
    let _ = fs::remove_dir(&dir);
}

/// Names in folder `dir` (none when it cannot be read).
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Unloads port-demux from namespace `name`, removes its pins, deletes it.
fn remove_netns(name: &str) {
    eprintln!("port-demux-testkit: removing namespace {name} of a dead test process");
    if let Ok(scope) = Scope::netns(name) {
        unload_all(&scope);
        let _ = remove_pin_tree(&scope.dir());
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Reaps once per process: called before the kit creates its first namespace or veth.
pub fn reap_once() {
    ONCE.call_once(reap);
}

/// Whether process `pid` is alive (a zombie counts as alive: its parent may still clean up).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The pid in a kit namespace name.
#[must_use]
pub fn netns_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NETNS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The pid in a kit host veth name.
#[must_use]
pub fn host_veth_pid(name: &str) -> Option<u32> {
    let hex = name.strip_prefix(HOST_VETH_PREFIX)?.split('x').next()?;
    u32::from_str_radix(hex, 16).ok()
}

/// Removes every namespace and host veth the kit created in a process that is gone, with
/// port-demux unloaded from it and its pins removed first. Says on stderr what it removed.
pub fn reap() {
    for name in names_in(Path::new("/run/netns")) {
        if netns_pid(&name).is_some_and(|pid| !alive(pid)) {
            remove_netns(&name);
        }
    }
    for pid in names_in(Path::new(RECORDS)) {
        if pid.parse().is_ok_and(|pid| !alive(pid)) {
            let dir = Path::new(RECORDS).join(&pid);
            for name in names_in(&dir) {
                if Path::new("/run/netns").join(&name).exists() {
                    remove_netns(&name);
                }
                let _ = fs::remove_file(dir.join(&name));
            }
            let _ = fs::remove_dir(&dir);
        }
    }
    let links = names_in(Path::new("/sys/class/net"));
    let Ok(host) = Scope::current() else { return };
    for name in links {
        if host_veth_pid(&name).is_some_and(|pid| !alive(pid)) {
            eprintln!("port-demux-testkit: removing veth {name} of a dead test process");
            let _ = PortDemux::unload(&host, &name);
            let _ = crate::netns::remove_iface_pins(&host.dir().join(&name));
            let _ = Command::new("ip").args(["link", "del", &name]).output();
        }
    }
}

/// Unloads every port-demux instance of `scope` (errors ignored: this runs from destructors
/// and for dead processes' leftovers).
pub fn unload_all(scope: &Scope) {
    for iface in scope.loaded().unwrap_or_default() {
        let _ = PortDemux::unload(scope, &iface);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(netns_pid("pdt-4242-7-a"), Some(4242));
        assert_eq!(netns_pid("pdt-x-7-a"), None);
        assert_eq!(netns_pid("other"), None);
        assert_eq!(host_veth_pid("pdr1a2bx3a"), Some(0x1a2b));
        assert_eq!(host_veth_pid("eth0"), None);
    }
}
