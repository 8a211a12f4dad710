//! Network namespaces and veth pairs for tests, always removed by guards (also on panic);
//! running code inside a namespace; real sockets there; `AF_PACKET` captures; polling.
//!
//! The usual topology is a [`Lab`]:
//!
//! ```text
//!  namespace A (client)        namespace B (server, port-demux on b0)     namespace C (sink)
//!  a0 10.77.N.2/24  <-veth->   b0 10.77.N.1/24
//!                              c0 (redirect target)            <-veth->   c1 (GRO on)
//! ```
//!
//! Those are the defaults: [`Lab::builder`] takes the caller's namespace and interface names and
//! IPv4/IPv6 addresses instead.
//!
//! IPv6 is off in every namespace and the neighbours of a0 and b0 are permanent, so the only
//! frames b0 ever receives are the ones a test sends: counters can be asserted exactly.

use std::{
    fmt::Debug,
    fs::{self, File},
    io::{self, Read as _, Write as _},
    mem,
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
        UdpSocket,
    },
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use port_demux::Scope;

/// How long any wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a socket must stay silent to count as "received nothing" once port-demux has
/// counted every frame sent to it.
pub const SILENCE: Duration = Duration::from_millis(50);

/// Client side of a [`Lab`]'s veth pair, in namespace A.
pub const CLIENT_IF: &str = "a0";
/// Server side, in namespace B: port-demux runs here.
pub const SERVER_IF: &str = "b0";
/// Redirect target, in namespace B.
pub const REDIRECT_IF: &str = "c0";
/// Peer of the redirect target, in namespace C: redirected frames arrive here.
pub const SINK_IF: &str = "c1";

/// Ethernet + IPv4 (no options) + UDP headers: the bytes XDP counts besides the payload.
pub const UDP_OVERHEAD: u64 = 14 + 20 + 8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique in this process: it names namespaces and picks subnets.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command and panics with its stderr when it fails.
///
/// # Panics
/// When the command cannot run or exits non-zero.
pub fn run(program: &str, args: &[&str]) {
    let _ = output(program, args);
}

/// Runs a command and returns its stdout; panics with its stderr when it fails.
///
/// # Panics
/// When the command cannot run or exits non-zero.
#[must_use]
pub fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a fresh thread that has entered network namespace `name` (`/run/netns/NAME`),
/// and returns its result. Sockets created there stay in that namespace wherever they are
/// used later. A panic in `f` is re-raised here.
///
/// # Panics
/// When the namespace cannot be entered, or `f` panics.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/run/netns").join(name);
    let ns = File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a namespace descriptor we hold, for this new thread only.
            let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(
                ret == 0,
                "cannot enter network namespace {name}: {}",
                io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Polls `probe` until `done` holds for its value, and returns that value.
///
/// # Panics
/// After [`TIMEOUT`], showing the last value.
pub fn poll<T: Debug>(what: &str, mut probe: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; last: {value:?}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// How long [`hunt_inode`] tries.
pub const HUNT: Duration = Duration::from_secs(30);

/// Makes namespaces with `make` until one has the inode number `ino` (a deleted namespace's),
/// and returns it; `Err` with how many were made when none got it.
///
/// The kernel hands out the lowest free number, and frees a deleted namespace's from its
/// cleanup work some time after `ip netns del` returns, which nothing shows but the reuse
/// itself. Namespaces that missed are kept, so that each try takes another number, and a try
/// that missed waits a little before the next. A new namespace's `/proc/net` entries draw from
/// the same numbers and may take it first: so in rounds of 40, after which the misses are all
/// deleted (freeing such an entry again), for up to [`HUNT`]: the cleanup work lags when the
/// machine is busy (a clean-clone CI run once saw no reuse in five rounds, about 4 s).
///
/// # Errors
/// When no namespace got the number within [`HUNT`].
pub fn hunt_inode<T>(
    ino: u64,
    mut make: impl FnMut() -> T,
    ino_of: impl Fn(&T) -> u64,
) -> Result<T, usize> {
    let deadline = Instant::now() + HUNT;
    let mut tries = 0;
    while Instant::now() < deadline {
        let mut missed = Vec::new();
        for _ in 0..40 {
            let ns = make();
            tries += 1;
            if ino_of(&ns) == ino {
                return Ok(ns);
            }
            missed.push(ns);
            thread::sleep(Duration::from_millis(10));
        }
        drop(missed);
        thread::sleep(Duration::from_millis(300));
    }
    Err(tries)
}

/// A network namespace named `pdt-<pid>-<n>-<tag>`, deleted on drop together with every
/// port-demux pin of it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    pins: PathBuf,
}

impl Netns {
    /// Creates a namespace with a unique name ending in `tag`, IPv6 off and `lo` up.
    ///
    /// # Panics
    /// When it cannot be created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        Self::with_name(format!("pdt-{}-{}-{tag}", std::process::id(), unique()))
    }

    /// Creates namespace `name`, IPv6 off and `lo` up. A name not of the kit's own form
    /// (`pdt-<pid>-...`) is recorded with this process's pid (see [`crate::reap`]) before the
    /// namespace exists, so that it is removed at the kit's next start if this process is killed.
    ///
    /// # Panics
    /// When it cannot be created (the name is taken, say).
    #[must_use]
    pub fn with_name(name: String) -> Self {
        crate::reap::reap_once();
        if crate::reap::netns_pid(&name).is_none() {
            crate::reap::record(&name);
        }
        if let Err(e) = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
            })
        {
            crate::reap::forget(&name);
            panic!("cannot create network namespace {name}: {e}");
        }
        // The guard exists from here on: a failure below still deletes the namespace.
        let mut ns = Self {
            name,
            pins: PathBuf::new(),
        };
        // Keyed by the namespace's cookie, which the kernel never reuses: nothing is there yet.
        ns.pins = ns.scope().dir();
        // Before any interface exists: no IPv6 link-local, DAD, router solicitation or MLD.
        ns.run(|| {
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                fs::write(&path, "1").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
            }
        });
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The name, for `ip netns` and `--netns`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port-demux scope of the namespace.
    ///
    /// # Panics
    /// When the namespace cannot be opened.
    #[must_use]
    pub fn scope(&self) -> Scope {
        Scope::netns(&self.name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The bpffs folder holding the port-demux pins of this namespace.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    /// `ip -n NAME ARGS...`.
    ///
    /// # Panics
    /// When it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// The id of the XDP program attached to `iface`, as `ip link` reports it.
    ///
    /// # Panics
    /// When `ip` fails or its JSON is not understood.
    #[must_use]
    pub fn xdp_prog(&self, iface: &str) -> Option<u32> {
        let out = output(
            "ip",
            &["-n", &self.name, "-j", "link", "show", "dev", iface],
        );
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link: {e}: {out}"));
        let id = doc[0].get("xdp")?["prog"]["id"].as_u64();
        Some(
            id.and_then(|id| u32::try_from(id).ok())
                .unwrap_or_else(|| panic!("no XDP program id in {out}")),
        )
    }

    /// `ip netns exec NAME ARGS...`.
    ///
    /// # Panics
    /// When it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` inside the namespace: see [`in_netns`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// Index of `iface` in the namespace.
    ///
    /// # Panics
    /// When there is no such interface.
    #[must_use]
    pub fn ifindex(&self, iface: &str) -> u32 {
        self.scope()
            .ifindex(iface)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no interface {iface} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds too. Instances are unloaded
        // the way users unload them; the pins of whatever that left are removed after.
        if let Ok(scope) = Scope::netns(&self.name) {
            crate::reap::unload_all(&scope);
        }
        // What is left in the namespace's folder and runs nowhere. An instance whose interface
        // moved to another namespace is that namespace's to unload.
        if let Err(e) = remove_stale_pins(&self.pins) {
            eprintln!("cannot remove pins {}: {e}", self.pins.display());
        }
        if Path::new("/run/netns").join(&self.name).exists() {
            ip_delete(
                &["netns", "del", &self.name],
                &format!("network namespace {}", self.name),
            );
        }
        crate::reap::forget(&self.name);
    }
}

impl Netns {
    /// Deletes the namespace as `ip netns del` does, without unloading port-demux first (what
    /// a careless user does): its instances' interfaces go with it, their pins stay. The guard
    /// removes those pins when it drops.
    pub fn delete(&self) {
        run("ip", &["netns", "del", &self.name]);
    }
}

/// Removes the instance folders under `dir` that run nowhere, then `dir` if it is empty.
fn remove_stale_pins(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let all = port_demux::instances(Path::new(port_demux::BPFFS)).map_err(io::Error::other)?;
    for instance in all {
        if instance.dir.starts_with(dir) && instance.state != port_demux::State::Running {
            remove_iface_pins(&instance.dir)?;
        }
    }
    // Fails, harmlessly, while an instance that moved away is still in it.
    let _ = fs::remove_dir(dir);
    Ok(())
}

/// Runs `ip ARGS...`, which deletes `what`, from a destructor: never panics, says on stderr
/// what failed.
fn ip_delete(args: &[&str], what: &str) {
    match Command::new("ip").args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cannot delete {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("cannot run ip {}: {e}", args.join(" ")),
    }
}

/// Removes a namespace's pin folder: every interface folder (its link first, which detaches the
/// program), then the folder itself. bpffs answers EPERM, not ENOENT, under a missing folder,
/// so existence is checked first.
pub(crate) fn remove_pin_tree(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_iface_pins(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::remove_dir(dir)
}

/// A veth pair in the caller's (host) network namespace, for what must run without `setns`
/// (an unprivileged user cannot enter a namespace): IPv6 off on both ends before they come up
/// and no addresses, so the host sends nothing through them. Deleted on drop, together with
/// port-demux's pins of either end.
#[derive(Debug)]
pub struct HostVeth {
    /// The end to load port-demux on.
    pub name: String,
    /// Its peer: frames sent here arrive on [`HostVeth::name`].
    pub peer: String,
}

impl HostVeth {
    /// Creates the pair `pdr<pid>x<n>a` <-> `pdr<pid>x<n>b` (pid in hexadecimal), both up.
    ///
    /// # Panics
    /// When the set-up fails.
    #[must_use]
    pub fn new() -> Self {
        crate::reap::reap_once();
        let base = format!("pdr{:x}x{}", std::process::id(), unique());
        let veth = Self {
            name: format!("{base}a"),
            peer: format!("{base}b"),
        };
        veth.remove_pins();
        run(
            "ip",
            &[
                "link", "add", &veth.name, "type", "veth", "peer", "name", &veth.peer,
            ],
        );
        for iface in [&veth.name, &veth.peer] {
            let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
            fs::write(&path, "1").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
            run("ip", &["link", "set", iface, "up"]);
        }
        veth
    }

    /// The host's scope.
    ///
    /// # Panics
    /// When the namespace cannot be read.
    #[must_use]
    pub fn scope() -> Scope {
        Scope::current().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Index of `iface` in the host namespace.
    ///
    /// # Panics
    /// When there is no such interface.
    #[must_use]
    pub fn ifindex(iface: &str) -> u32 {
        Self::scope()
            .ifindex(iface)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no interface {iface} in the host namespace"))
    }

    fn remove_pins(&self) {
        let ns_dir = Self::scope().dir();
        for iface in [&self.name, &self.peer] {
            let dir = ns_dir.join(iface);
            if let Err(e) = remove_iface_pins(&dir) {
                eprintln!("cannot remove pins {}: {e}", dir.display());
            }
        }
        // Only when no other instance of the host namespace is left in it.
        if ns_dir.exists() {
            let _ = fs::remove_dir(&ns_dir);
        }
    }
}

impl Default for HostVeth {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds too.
        if let Ok(scope) = Scope::current() {
            for iface in [&self.name, &self.peer] {
                let _ = port_demux::PortDemux::unload(&scope, iface);
            }
        }
        self.remove_pins();
        ip_delete(&["link", "del", &self.name], &self.name);
    }
}

/// Removes one interface's pin folder, its link first.
pub(crate) fn remove_iface_pins(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let link = dir.join("link");
    if link.exists() {
        fs::remove_file(&link)?;
    }
    for pin in fs::read_dir(dir)? {
        fs::remove_file(pin?.path())?;
    }
    fs::remove_dir(dir)
}

/// Client and server namespaces joined by a veth pair, and optionally a sink namespace behind a
/// second pair for redirects. Everything is removed on drop.
///
/// [`Lab::new`] and [`Lab::with_redirect`] choose unique names and addresses (safe for parallel
/// tests); [`Lab::builder`] takes the caller's namespace and interface names and IPv4/IPv6
/// addresses.
#[derive(Debug)]
pub struct Lab {
    // Dropped first: its pins go while its interfaces still exist.
    /// Namespace B: [`Lab::server_if`] (and [`Lab::redirect_if`]).
    pub server: Netns,
    /// Namespace A: [`Lab::client_if`].
    pub client: Netns,
    /// Namespace C: [`Lab::sink_if`], with [`Lab::with_redirect`].
    pub sink: Option<Netns>,
    ifaces: Ifaces,
    v4: Pair<Ipv4Addr>,
    v6: Pair<Ipv6Addr>,
    /// Distinguishes the lab's MAC addresses (and the default subnets).
    tag: u8,
}

/// Interface names of a [`Lab`]: a0, b0, c0, c1 unless the caller chose others.
#[derive(Clone, Debug)]
struct Ifaces {
    client: String,
    server: String,
    redirect: String,
    sink: String,
}

/// A client and a server address, and their prefix length.
#[derive(Clone, Copy, Debug)]
struct Pair<A> {
    client: A,
    server: A,
    prefix_len: u8,
}

/// What [`Lab::builder`] makes: every name and address the caller did not choose is the
/// unique default of [`Lab::new`].
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until built"]
pub struct LabBuilder {
    netns: Option<(String, String)>,
    sink_netns: Option<String>,
    ifaces: Option<(String, String)>,
    redirect_ifaces: Option<(String, String)>,
    v4: Option<Pair<Ipv4Addr>>,
    v6: Option<Pair<Ipv6Addr>>,
    redirect: bool,
}

impl LabBuilder {
    /// Names of namespaces A (client) and B (server). A name the kit did not generate is
    /// recorded with this process's pid, so that a killed test's namespaces are removed the
    /// next time the kit runs, as generated ones are.
    pub fn netns(mut self, client: &str, server: &str) -> Self {
        self.netns = Some((client.to_owned(), server.to_owned()));
        self
    }

    /// Name of namespace C; adds the redirect pair ([`LabBuilder::redirect`]).
    pub fn sink_netns(mut self, sink: &str) -> Self {
        self.sink_netns = Some(sink.to_owned());
        self.redirect = true;
        self
    }

    /// Names of the client's and the server's ends of the pair (a0, b0 by default).
    pub fn interfaces(mut self, client: &str, server: &str) -> Self {
        self.ifaces = Some((client.to_owned(), server.to_owned()));
        self
    }

    /// Names of the redirect target in B and its peer in C (c0, c1 by default); adds the
    /// redirect pair.
    pub fn redirect_interfaces(mut self, redirect: &str, sink: &str) -> Self {
        self.redirect_ifaces = Some((redirect.to_owned(), sink.to_owned()));
        self.redirect = true;
        self
    }

    /// IPv4 addresses of the client and the server end, in one subnet of `prefix_len` bits
    /// (`10.77.N.2` and `10.77.N.1`/24 by default).
    pub fn ipv4(mut self, client: Ipv4Addr, server: Ipv4Addr, prefix_len: u8) -> Self {
        self.v4 = Some(Pair {
            client,
            server,
            prefix_len,
        });
        self
    }

    /// IPv6 addresses of the client and the server end, in one subnet of `prefix_len` bits,
    /// and IPv6 turned on as [`Lab::enable_ipv6`] does (`fd77:N::2` and `fd77:N::1`/64 by
    /// default, only with that call).
    pub fn ipv6(mut self, client: Ipv6Addr, server: Ipv6Addr, prefix_len: u8) -> Self {
        self.v6 = Some(Pair {
            client,
            server,
            prefix_len,
        });
        self
    }

    /// Adds namespace C behind a second veth pair, as [`Lab::with_redirect`].
    pub fn redirect(mut self) -> Self {
        self.redirect = true;
        self
    }

    /// Creates the lab.
    ///
    /// # Panics
    /// When the set-up fails (a name already taken, an address `ip` refuses, client and
    /// server given the same address); what was created by then is removed.
    #[must_use]
    pub fn build(self) -> Lab {
        let n = unique();
        let tag = u8::try_from(n % 250 + 1).expect("below 251");
        let prefix = format!("pdt-{}-{n}", std::process::id());
        let default_v4 = Pair {
            client: Ipv4Addr::new(10, 77, tag, 2),
            server: Ipv4Addr::new(10, 77, tag, 1),
            prefix_len: 24,
        };
        let default_v6 = Pair {
            client: Ipv6Addr::new(0xfd77, u16::from(tag), 0, 0, 0, 0, 0, 2),
            server: Ipv6Addr::new(0xfd77, u16::from(tag), 0, 0, 0, 0, 0, 1),
            prefix_len: 64,
        };
        let v4 = self.v4.unwrap_or(default_v4);
        let v6 = self.v6.unwrap_or(default_v6);
        assert_ne!(v4.client, v4.server, "client and server need two addresses");
        assert_ne!(v6.client, v6.server, "client and server need two addresses");
        let (client_ns, server_ns) = self
            .netns
            .unwrap_or_else(|| (format!("{prefix}-a"), format!("{prefix}-b")));
        let (client_if, server_if) = self
            .ifaces
            .unwrap_or_else(|| (CLIENT_IF.to_owned(), SERVER_IF.to_owned()));
        let (redirect_if, sink_if) = self
            .redirect_ifaces
            .unwrap_or_else(|| (REDIRECT_IF.to_owned(), SINK_IF.to_owned()));
        let server = Netns::with_name(server_ns);
        let client = Netns::with_name(client_ns);
        let mut lab = Lab {
            server,
            client,
            sink: None,
            ifaces: Ifaces {
                client: client_if,
                server: server_if,
                redirect: redirect_if,
                sink: sink_if,
            },
            v4,
            v6,
            tag,
        };
        lab.join_client_and_server();
        if self.redirect {
            let sink = Netns::with_name(self.sink_netns.unwrap_or_else(|| format!("{prefix}-c")));
            lab.join_sink(sink);
        }
        if self.v6.is_some() {
            lab.enable_ipv6();
        }
        lab
    }
}

impl Lab {
    /// A and B joined by a0 <-> b0, with addresses and permanent neighbours; unique names.
    ///
    /// # Panics
    /// When the set-up fails.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// [`Lab::new`] plus namespace C: c0 in B <-> c1 in C, both up, GRO on c1 (without it, or
    /// an XDP program on c1, a veth drops frames redirected into c0).
    ///
    /// # Panics
    /// When the set-up fails.
    #[must_use]
    pub fn with_redirect() -> Self {
        Self::builder().redirect().build()
    }

    /// A lab with names and addresses of the caller's choosing:
    ///
    /// ```no_run
    /// # use port_demux_testkit::Lab;
    /// let lab = Lab::builder()
    ///     .netns("shop-client", "shop-server")
    ///     .interfaces("eth0", "eth1")
    ///     .ipv4("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), 24)
    ///     .ipv6("2001:db8::2".parse().unwrap(), "2001:db8::1".parse().unwrap(), 64)
    ///     .build();
    /// ```
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The client/server pair: addresses, both ends up, permanent neighbours.
    fn join_client_and_server(&self) {
        let (client_mac, server_mac) = (self.mac(2), self.mac(1));
        let (client_if, server_if) = (self.client_if(), self.server_if());
        self.client.ip(&[
            "link",
            "add",
            client_if,
            "address",
            &client_mac,
            "type",
            "veth",
            "peer",
            "name",
            server_if,
            "address",
            &server_mac,
            "netns",
            self.server.name(),
        ]);
        let len = self.v4.prefix_len;
        for (ns, iface, own, peer, peer_mac) in [
            (
                &self.client,
                client_if,
                self.v4.client,
                self.v4.server,
                &server_mac,
            ),
            (
                &self.server,
                server_if,
                self.v4.server,
                self.v4.client,
                &client_mac,
            ),
        ] {
            ns.ip(&["addr", "add", &format!("{own}/{len}"), "dev", iface]);
            ns.ip(&["link", "set", iface, "up"]);
            ns.ip(&[
                "neigh",
                "add",
                &peer.to_string(),
                "lladdr",
                peer_mac,
                "dev",
                iface,
                "nud",
                "permanent",
            ]);
        }
    }

    /// The redirect pair into `sink`, GRO on its far end.
    fn join_sink(&mut self, sink: Netns) {
        let (redirect_mac, sink_mac) = (self.mac(3), self.mac(4));
        let (redirect_if, sink_if) = (self.ifaces.redirect.as_str(), self.ifaces.sink.as_str());
        self.server.ip(&[
            "link",
            "add",
            redirect_if,
            "address",
            &redirect_mac,
            "type",
            "veth",
            "peer",
            "name",
            sink_if,
            "address",
            &sink_mac,
            "netns",
            sink.name(),
        ]);
        self.server.ip(&["link", "set", redirect_if, "up"]);
        sink.ip(&["link", "set", sink_if, "up"]);
        sink.exec(&["ethtool", "-K", sink_if, "gro", "on"]);
        self.sink = Some(sink);
    }

    fn mac(&self, host: u8) -> String {
        let bytes: Vec<String> = self
            .mac_bytes(host)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        bytes.join(":")
    }

    /// The MAC address of the client end (`host` 2), the server end (1), the redirect target
    /// (3) or its peer (4).
    #[must_use]
    pub fn mac_bytes(&self, host: u8) -> [u8; 6] {
        [0x02, 0x77, 0, 0, self.tag, host]
    }

    /// The client's end of the pair (a0 unless chosen), in A.
    #[must_use]
    pub fn client_if(&self) -> &str {
        &self.ifaces.client
    }

    /// The server's end of the pair (b0 unless chosen), in B: port-demux runs here.
    #[must_use]
    pub fn server_if(&self) -> &str {
        &self.ifaces.server
    }

    /// The redirect target in B (c0 unless chosen).
    #[must_use]
    pub fn redirect_if(&self) -> &str {
        &self.ifaces.redirect
    }

    /// The redirect target's peer in C (c1 unless chosen): redirected frames arrive here.
    #[must_use]
    pub fn sink_if(&self) -> &str {
        &self.ifaces.sink
    }

    /// Dual stack: IPv6 on both ends as well, with the lab's IPv6 addresses
    /// ([`Lab::server_addr6`], [`Lab::client_addr6`]) and link-local ones (`fe80::1`,
    /// `fe80::2`), no duplicate address detection, no router solicitation, no automatic
    /// addresses, permanent neighbours. The only IPv6 frames the stack sends by itself are MLD
    /// reports for the addresses' multicast groups (`ICMPv6`: `not_tcp_udp`).
    /// [`LabBuilder::ipv6`] calls it.
    ///
    /// # Panics
    /// When the set-up fails.
    pub fn enable_ipv6(&self) {
        let len = self.v6.prefix_len;
        for (ns, iface, own, peer, host, peer_host) in [
            (
                &self.client,
                self.client_if(),
                self.v6.client,
                self.v6.server,
                2,
                1,
            ),
            (
                &self.server,
                self.server_if(),
                self.v6.server,
                self.v6.client,
                1,
                2,
            ),
        ] {
            ns.run(|| {
                for (key, value) in [
                    ("accept_dad", "0"),
                    ("dad_transmits", "0"),
                    ("router_solicitations", "0"),
                    ("accept_ra", "0"),
                    ("addr_gen_mode", "1"),
                    ("disable_ipv6", "0"),
                ] {
                    let path = format!("/proc/sys/net/ipv6/conf/{iface}/{key}");
                    fs::write(&path, value).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
                }
            });
            let peer_mac = self.mac(peer_host);
            for (addr, peer_addr) in [
                (format!("{own}/{len}"), peer.to_string()),
                (format!("fe80::{host}/64"), format!("fe80::{peer_host}")),
            ] {
                ns.ip(&["-6", "addr", "add", &addr, "dev", iface, "nodad"]);
                ns.ip(&[
                    "-6",
                    "neigh",
                    "add",
                    &peer_addr,
                    "lladdr",
                    &peer_mac,
                    "dev",
                    iface,
                    "nud",
                    "permanent",
                ]);
            }
        }
    }

    /// Adds a second IPv4 and IPv6 address to the server end, host 3 of its subnets (its own
    /// are hosts 1 and 2), and returns them: a second address of each family for
    /// address-scoped bindings. Needs [`Lab::enable_ipv6`].
    ///
    /// # Panics
    /// When `ip` fails.
    #[must_use = "the addresses added"]
    pub fn add_second_server_addrs(&self) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c, _] = self.v4.server.octets();
        let v4 = Ipv4Addr::new(a, b, c, 3);
        let mut seg = self.v6.server.segments();
        seg[7] = 3;
        let v6 = Ipv6Addr::from(seg);
        let iface = self.server_if();
        self.server
            .add_addr(iface, &format!("{v4}/{}", self.v4.prefix_len));
        self.server
            .add_addr(iface, &format!("{v6}/{}", self.v6.prefix_len));
        (v4, v6)
    }

    /// The server end's IPv6 address, with [`Lab::enable_ipv6`].
    #[must_use]
    pub const fn server_addr6(&self) -> Ipv6Addr {
        self.v6.server
    }

    /// The client end's IPv6 address, with [`Lab::enable_ipv6`].
    #[must_use]
    pub const fn client_addr6(&self) -> Ipv6Addr {
        self.v6.client
    }

    /// Namespace C.
    ///
    /// # Panics
    /// Without [`Lab::with_redirect`].
    #[must_use]
    pub fn sink(&self) -> &Netns {
        self.sink
            .as_ref()
            .expect("a lab made with Lab::with_redirect")
    }

    /// The server end's IPv4 address.
    #[must_use]
    pub const fn server_addr(&self) -> Ipv4Addr {
        self.v4.server
    }

    /// The client end's IPv4 address.
    #[must_use]
    pub const fn client_addr(&self) -> Ipv4Addr {
        self.v4.client
    }

    /// A UDP socket in A on a0's address.
    ///
    /// # Panics
    /// When it cannot be bound.
    #[must_use]
    pub fn udp_client(&self) -> UdpSocket {
        let addr = self.client_addr();
        self.client
            .run(|| UdpSocket::bind((addr, 0)))
            .expect("binding the UDP client")
    }

    /// A UDP socket in B on b0's address and `port`, with a receive buffer no test fills: the
    /// default (208 KiB) held only 49 of 50 small datagrams on Linux 6.1, whose veth charges
    /// each frame that went through native XDP a page or more.
    ///
    /// # Panics
    /// When it cannot be bound.
    #[must_use]
    pub fn udp_server(&self, port: u16) -> UdpSocket {
        let addr = self.server_addr();
        let sock = self
            .server
            .run(|| UdpSocket::bind((addr, port)))
            .expect("binding the UDP server");
        set_rcvbuf(&sock, 8 << 20);
        sock
    }

    /// Sends `count` datagrams of `payload` bytes from `client` to b0's `port`; returns the
    /// bytes XDP sees for them.
    ///
    /// # Panics
    /// When sending fails.
    #[must_use = "the bytes XDP counts for the datagrams"]
    pub fn send_udp(&self, client: &UdpSocket, port: u16, count: u64, payload: usize) -> u64 {
        let to = SocketAddrV4::new(self.server_addr(), port);
        let data = vec![0x5a; payload];
        for _ in 0..count {
            let sent = client.send_to(&data, to).expect("sending a datagram");
            assert_eq!(sent, payload);
        }
        count * (UDP_OVERHEAD + payload as u64)
    }

    /// One TCP exchange from A to b0's `port`: the client connects, sends `request` and
    /// half-closes; the server (in B) reads to the end, replies and closes with `SO_LINGER`,
    /// which returns only once the client acknowledged the server's FIN. When this returns, every
    /// segment the client sent has been through b0. Returns the reply the client read.
    ///
    /// # Panics
    /// When any step fails.
    #[must_use]
    pub fn tcp_exchange(&self, port: u16, request: &[u8], reply: &[u8]) -> Vec<u8> {
        let server_addr = SocketAddrV4::new(self.server_addr(), port);
        self.tcp_exchange_to(server_addr.into(), request, reply)
    }

    /// As [`Lab::tcp_exchange`], to any address of b0 (IPv6 ones with [`Lab::enable_ipv6`]; a
    /// link-local one with a0's index as its scope): the server listens on the unspecified
    /// address of `to`'s family.
    ///
    /// # Panics
    /// When any step fails.
    #[must_use]
    pub fn tcp_exchange_to(&self, to: SocketAddr, request: &[u8], reply: &[u8]) -> Vec<u8> {
        let any: IpAddr = match to {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        // A previous exchange's connection on the port can hold it a little longer than its
        // server's lingering close (seen once in the emulated 6.12 VM: "Address already in
        // use" on the second of two exchanges to one port); `SO_REUSEADDR`, which `bind`
        // sets, covers only `TIME_WAIT`. Wait for the port instead.
        let listener = poll(
            "the port to listen on in B",
            || self.server.run(|| TcpListener::bind((any, to.port()))),
            |bound| !matches!(bound, Err(e) if e.kind() == io::ErrorKind::AddrInUse),
        )
        .expect("listening in B");
        thread::scope(|s| {
            let server = s.spawn(move || {
                let (mut conn, _) = listener.accept().expect("accepting");
                conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("reading the request");
                assert_eq!(got, request, "request");
                conn.write_all(reply).expect("writing the reply");
                set_linger(&conn);
                drop(conn);
            });
            let client_ip = self.client_addr();
            let got = self.client.run(|| {
                let mut conn = TcpStream::connect_timeout(&to, TIMEOUT).expect("connecting from A");
                if to.is_ipv4() {
                    assert_eq!(conn.local_addr().expect("address").ip(), client_ip);
                }
                conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                conn.write_all(request).expect("writing the request");
                conn.shutdown(Shutdown::Write).expect("half-closing");
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("reading the reply");
                got
            });
            server
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            got
        })
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// The size of a `T`, as socket calls take it.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("a small struct")
}

/// `setsockopt(2)` at `SOL_SOCKET` with a value of type `T`.
///
/// # Panics
/// When the kernel refuses; the message starts with `name`.
fn set_socket_option<T>(sock: &impl AsFd, option: libc::c_int, name: &str, value: &T) {
    // SAFETY: setsockopt with a value of the size given.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(value).cast(),
            socklen::<T>(),
        )
    };
    assert_eq!(ret, 0, "{name}: {}", io::Error::last_os_error());
}

/// Sets the receive buffer of `sock` to `bytes`, above `rmem_max` if need be
/// (`SO_RCVBUFFORCE`, root only).
///
/// # Panics
/// When the kernel refuses.
pub fn set_rcvbuf(sock: &impl AsFd, bytes: libc::c_int) {
    set_socket_option(sock, libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE", &bytes);
}

/// A new `AF_PACKET` raw socket of protocol 0 in the calling thread's namespace: it receives
/// nothing until bound, and sends out of the interface its destination address names.
///
/// # Panics
/// When the socket cannot be opened.
#[must_use]
pub fn packet_socket() -> OwnedFd {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `SO_LINGER` on: `close` waits until the peer acknowledged everything, FIN included.
fn set_linger(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 5,
    };
    set_socket_option(conn, libc::SO_LINGER, "SO_LINGER", &linger);
}

/// Waits until `sock` has received `count` datagrams; returns their lengths.
///
/// # Panics
/// When they do not all arrive within [`TIMEOUT`].
#[must_use]
pub fn recv_datagrams(sock: &UdpSocket, count: usize) -> Vec<usize> {
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 2048];
    (0..count)
        .map(|i| match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("datagram {} of {count} did not arrive: {e}", i + 1),
        })
        .collect()
}

/// Datagrams `sock` receives within `wait`.
///
/// # Panics
/// On a receive error other than a timeout.
#[must_use]
pub fn count_datagrams(sock: &UdpSocket, wait: Duration) -> usize {
    sock.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        match sock.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return n;
            }
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

/// An `AF_PACKET` socket seeing every frame one interface receives (not the ones it sends), or
/// with [`Capture::open_sent`] every frame it sends.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    frames: Vec<Vec<u8>>,
    sent: bool,
}

impl Capture {
    /// Starts capturing on `iface` of `ns`. Only frames that arrive after this are seen.
    ///
    /// # Panics
    /// When the socket cannot be opened.
    #[must_use]
    pub fn open(ns: &Netns, iface: &str) -> Self {
        Self::open_direction(ns, iface, false)
    }

    /// Starts capturing the frames `iface` of `ns` sends (handed to its driver: a veth frame
    /// seen here is one its peer's XDP program will see, unless the veth drops it).
    ///
    /// # Panics
    /// When the socket cannot be opened.
    #[must_use]
    pub fn open_sent(ns: &Netns, iface: &str) -> Self {
        Self::open_direction(ns, iface, true)
    }

    fn open_direction(ns: &Netns, iface: &str, sent: bool) -> Self {
        let ifindex = ns.ifindex(iface);
        let fd = ns.run(|| {
            // Protocol 0 receives nothing until bind, which sets the protocol and the
            // interface together: no frame of another interface slips in.
            let fd = packet_socket();
            // A receive buffer no test fills: a frame the capture dropped would read as a
            // counter mismatch.
            set_rcvbuf(&fd, 8 << 20);
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
            addr.sll_protocol = u16::try_from(libc::ETH_P_ALL).expect("fits").to_be();
            addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits");
            // SAFETY: binding to a sockaddr_ll of the size given.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    socklen::<libc::sockaddr_ll>(),
                )
            };
            assert_eq!(ret, 0, "binding AF_PACKET: {}", io::Error::last_os_error());
            fd
        });
        Self {
            fd,
            frames: Vec::new(),
            sent,
        }
    }

    /// Frames the socket dropped (its receive buffer was full) since the last call: a capture
    /// that dropped frames cannot be compared with counters.
    ///
    /// # Panics
    /// When the statistics cannot be read.
    #[must_use]
    pub fn take_drops(&self) -> u32 {
        // SAFETY: an all-zero tpacket_stats is valid.
        let mut stats: libc::tpacket_stats = unsafe { mem::zeroed() };
        let mut len = socklen::<libc::tpacket_stats>();
        // SAFETY: getsockopt into a struct of the size given; reading resets the counters.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        };
        assert_eq!(ret, 0, "PACKET_STATISTICS: {}", io::Error::last_os_error());
        stats.tp_drops
    }

    /// Reads what is queued, waiting up to `wait` for the first frame; returns every frame
    /// captured so far. For a thread that drains a busy capture before its buffer fills.
    pub fn read_for(&mut self, wait: Duration) -> &[Vec<u8>] {
        self.read(wait);
        &self.frames
    }

    /// Reads what is queued, waiting up to `wait` for the first frame; returns whether any came.
    fn read(&mut self, wait: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: polling one pollfd we own.
        if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
            return false;
        }
        let mut buf = vec![0u8; 65536];
        let mut any = false;
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len = socklen::<libc::sockaddr_ll>();
            // SAFETY: receiving into buffers we own, of the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "AF_PACKET recv: {e}");
                return any;
            };
            if (from.sll_pkttype == libc::PACKET_OUTGOING) == self.sent {
                self.frames.push(buf[..n].to_vec());
                any = true;
            }
        }
    }

    /// Every frame received so far (what is queued now included).
    pub fn frames(&mut self) -> &[Vec<u8>] {
        self.read(Duration::ZERO);
        &self.frames
    }

    /// Waits until `done` holds for the frames received so far, and returns them.
    ///
    /// # Panics
    /// After [`TIMEOUT`].
    pub fn wait(&mut self, what: &str, done: impl Fn(&[Vec<u8>]) -> bool) -> &[Vec<u8>] {
        let deadline = Instant::now() + TIMEOUT;
        self.read(Duration::ZERO);
        while !done(&self.frames) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {TIMEOUT:?} waiting for {what}; {} frames captured",
                self.frames.len()
            );
            self.read(left.min(Duration::from_millis(50)));
        }
        &self.frames
    }
}

/// The transport protocol (6 or 17) and destination port of an IPv4 TCP or UDP frame.
#[must_use]
pub fn l4_dst(frame: &[u8]) -> Option<(u8, u16)> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let port = ip.get(ihl + 2..ihl + 4)?;
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP)
        .then(|| (proto, u16::from_be_bytes([port[0], port[1]])))
}

/// Frames (and their bytes) to UDP `port`.
#[must_use]
pub fn udp_to(frames: &[Vec<u8>], port: u16) -> (u64, u64) {
    count_to(frames, IPPROTO_UDP, port)
}

/// Frames (and their bytes) to TCP `port`.
#[must_use]
pub fn tcp_to(frames: &[Vec<u8>], port: u16) -> (u64, u64) {
    count_to(frames, IPPROTO_TCP, port)
}

fn count_to(frames: &[Vec<u8>], proto: u8, port: u16) -> (u64, u64) {
    frames
        .iter()
        .filter(|f| l4_dst(f) == Some((proto, port)))
        .fold((0, 0), |(n, bytes), f| (n + 1, bytes + f.len() as u64))
}
