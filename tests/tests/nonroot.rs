//! The CLI as the systemd unit runs it (deploy/port-demux.service): a user that is not root,
//! holding only `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON` as ambient capabilities, loads, binds,
//! reads stats and bindings and unloads, its pins its own; without any one of the three, `load`
//! is refused with one line naming it, and nothing is left behind. And `systemd-analyze
//! verify` accepts the unit.
//!
//! The pins go to a bpffs of the test's own, owned by the user (as the unit's `ExecStartPre`
//! gives the user `/sys/fs/bpf/port-demux`); the interface is a veth pair in the host's
//! namespace, since entering another namespace would need `CAP_SYS_ADMIN`. Needs root (to
//! create both and to drop to the user) and setpriv.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use port_demux_testkit::{
    HostVeth,
    cli::{Run, assert_refused, bin, execute, json},
    netns::{run, unique},
};

/// `nobody`.
const USER: &str = "65534";
/// The unit's capabilities, as setpriv names them.
const CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

/// A bpffs mounted on a fresh folder owned by [`USER`]; unmounted (its pins with it) and
/// removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("pdt-bpffs-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).expect("creating the mount point");
        let bpffs = Self(dir);
        let path = bpffs.0.to_str().expect("UTF-8");
        run("mount", &["-t", "bpf", "bpf", path]);
        run("chown", &[&format!("{USER}:{USER}"), path]);
        bpffs
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// `port-demux --bpffs BPFFS ARGS` as [`USER`] with `caps` (setpriv names) only.
fn as_user(bpffs: &Path, caps: &[&str], args: &[&str]) -> Run {
    let caps = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", USER, "--regid", USER, "--clear-groups"]);
    if caps.is_empty() {
        cmd.arg("--inh-caps=-all");
    } else {
        cmd.arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg("--")
        .arg(bin())
        .arg("--bpffs")
        .arg(bpffs)
        .args(args);
    execute(cmd)
}

fn ok(bpffs: &Path, args: &[&str]) -> String {
    let run = as_user(bpffs, &CAPS, args);
    assert_eq!(run.code, Some(0), "{args:?} as {USER}: {run:?}");
    run.stdout
}

#[test]
fn the_units_capabilities_suffice_and_each_is_needed() {
    let veth = HostVeth::new();
    let bpffs = Bpffs::new();
    let iface = veth.name.as_str();

    // Each capability dropped in turn: the one-line refusal naming it, nothing pinned.
    for dropped in CAPS {
        let caps: Vec<&str> = CAPS.into_iter().filter(|c| *c != dropped).collect();
        let run = as_user(&bpffs.0, &caps, &["load", iface]);
        let want = format!("missing CAP_{}", dropped.to_uppercase());
        assert_refused(
            &run,
            &format!("load without {dropped}"),
            &["needs root", &want],
        );
        let pins = bpffs.0.join("port-demux");
        let left: Vec<_> = walk(&pins);
        assert!(
            left.iter().all(|p| p.is_dir()),
            "pins left without {dropped}: {left:?}"
        );
    }

    ok(&bpffs.0, &["load", iface]);
    ok(
        &bpffs.0,
        &["bind", "-i", iface, "udp/7777", "drop", "--owner", "svc"],
    );
    let stats = json(
        &as_user(&bpffs.0, &CAPS, &["stats", "-i", iface, "--json"]),
        "stats",
    );
    let port = &stats["ports"][0];
    assert_eq!(
        (&port["proto"], &port["port"], &port["action"]),
        (&"udp".into(), &7777.into(), &"drop".into()),
        "{stats}"
    );
    let bindings = json(
        &as_user(&bpffs.0, &CAPS, &["bindings", "-i", iface, "--json"]),
        "bindings",
    );
    assert!(bindings.to_string().contains("\"svc\""), "{bindings}");
    // The pins are the user's, and only the user's.
    let pins = walk(&bpffs.0.join("port-demux"));
    assert!(pins.iter().any(|p| p.is_file()), "{pins:?}");
    for pin in &pins {
        let meta = fs::metadata(pin).expect("a pin");
        assert_eq!(meta.uid().to_string(), USER, "{}", pin.display());
        assert_eq!(meta.mode() & 0o077, 0, "{} is not private", pin.display());
    }
    // The kernel runs the program the user loaded.
    let instances = json(&as_user(&bpffs.0, &CAPS, &["status", "--json"]), "status");
    assert_eq!(instances["interfaces"][0]["attached"], true, "{instances}");
    ok(&bpffs.0, &["unload", iface]);
    assert!(walk(&bpffs.0.join("port-demux")).iter().all(|p| p.is_dir()));
}

/// Every path under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return all;
    };
    for entry in entries {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            all.extend(walk(&path));
        }
        all.push(path);
    }
    all
}

/// The unit as installed, but with the binary this build made where it says /usr/bin/port-demux
/// (`systemd-analyze verify` checks that every command exists) and the man pages it names
/// generated from the CLI (it runs `man` on each).
fn verify(unit_text: &str) -> Run {
    let dir = std::env::temp_dir().join(format!("pdt-unit-{}-{}", std::process::id(), unique()));
    fs::create_dir_all(&dir).expect("a folder");
    let generated = execute({
        let mut cmd = Command::new(bin());
        cmd.args(["generate", "--out"]).arg(&dir);
        cmd
    });
    assert_eq!(generated.code, Some(0), "{generated:?}");
    let unit = dir.join("port-demux.service");
    fs::write(
        &unit,
        unit_text.replace("/usr/bin/port-demux", bin().to_str().expect("UTF-8")),
    )
    .expect("writing the unit");
    let run = execute({
        let mut cmd = Command::new("systemd-analyze");
        cmd.arg("verify").arg(&unit).env("MANPATH", dir.join("man"));
        cmd
    });
    let _ = fs::remove_dir_all(&dir);
    run
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/port-demux.service");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let run = verify(&text);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    // The check has teeth: a bad value is reported (as a warning: hence the empty stderr
    // above), a missing command fails.
    let broken = verify(&text.replace("ProtectSystem=strict", "ProtectSystem=sideways"));
    assert!(broken.stderr.contains("sideways"), "{broken:?}");
    let missing = verify(&text.replace("/usr/bin/install", "/nonexistent/install"));
    assert_ne!(missing.code, Some(0), "{missing:?}");
}
