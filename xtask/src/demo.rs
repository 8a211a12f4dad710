//! `cargo xtask demo`: port-demux on a private namespace pair with real TCP and UDP traffic.
//!
//! Topology: `pdemo-client` (cli0 10.99.0.2) <-> `pdemo-server` (srv0 10.99.0.1, port-demux),
//! and in the server namespace a second veth `mirror0` whose peer `tap0` lives in `pdemo-tap`:
//! the redirect target. Every port-demux step runs the real CLI as its own process.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use port_demux_testkit::{Capture, Lab, netns::udp_to};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// (port, datagrams, binding shown in the plan)
const UDP_PLAN: [(u16, u32, &str); 4] = [
    (7777, 100, "drop"),
    (7001, 50, "pass (udp/7000-7099)"),
    (9999, 20, "redirect:mirror0"),
    (5000, 10, "unbound: default pass"),
];

fn pd(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(["--netns", "pdemo-server"])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "port-demux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

fn step(bin: &Path, args: &[&str]) -> Result<()> {
    println!("$ port-demux --netns pdemo-server {}", args.join(" "));
    print!("{}", pd(bin, args)?);
    Ok(())
}

pub fn demo(bin: &Path) -> Result<()> {
    port_demux::Scope::current()?.ensure_bpffs()?;
    // The test kit's lab with the demo's names: removed on drop (port-demux unloaded first),
    // and reaped by the kit's next run if the demo is killed. GRO is on for tap0: a veth drops
    // frames redirected into it unless its peer runs XDP or has GRO on.
    let lab = Lab::builder()
        .netns("pdemo-client", "pdemo-server")
        .sink_netns("pdemo-tap")
        .interfaces("cli0", "srv0")
        .redirect_interfaces("mirror0", "tap0")
        .ipv4(CLIENT, SERVER, 24)
        .build();
    let result = run_demo(bin, &lab);
    let _ = pd(bin, &["unload", "srv0"]);
    result
}

fn run_demo(bin: &Path, lab: &Lab) -> Result<()> {
    step(bin, &["load", "srv0"])?;
    step(bin, &["bind", "udp/7777", "drop", "--owner", "demo"])?;
    step(bin, &["bind", "udp/7000-7099", "pass"])?;
    step(bin, &["bind", "tcp/http", "pass"])?;
    step(bin, &["bind", "tcp/8443", "drop"])?;
    step(bin, &["bind", "udp/9999", "redirect:mirror0"])?;
    step(bin, &["bindings"])?;

    // Server sockets, created inside the server namespace.
    let udp: Vec<_> = UDP_PLAN
        .iter()
        .map(|&(port, _, _)| lab.server.udp_socket(SocketAddr::from((SERVER, port))))
        .collect();
    let http = lab.server.tcp_listener(SocketAddr::from((SERVER, 80)));
    let _tls = lab.server.tcp_listener(SocketAddr::from((SERVER, 8443)));
    let mut tap = Capture::open(lab.sink(), lab.sink_if());
    let http_server = std::thread::spawn(move || -> Result<()> {
        let (mut conn, _) = http.accept()?;
        let mut request = [0u8; 512];
        let n = conn.read(&mut request)?;
        ensure!(request[..n].starts_with(b"GET /"), "unexpected request");
        conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n")?;
        Ok(())
    });

    println!("\nsending from pdemo-client:");
    let client = lab.client.run(|| -> Result<(String, bool)> {
        let socket = std::net::UdpSocket::bind((CLIENT, 0))?;
        for (port, count, _) in UDP_PLAN {
            for i in 0..count {
                socket.send_to(format!("datagram {i}").as_bytes(), (SERVER, port))?;
            }
        }
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((SERVER, 80)), Duration::from_secs(2))?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        let tls = TcpStream::connect_timeout(
            &SocketAddr::from((SERVER, 8443)),
            Duration::from_millis(300),
        );
        Ok((reply.lines().next().unwrap_or("").to_owned(), tls.is_ok()))
    })?;
    http_server.join().expect("http thread")?;

    let mut failures = Vec::new();
    for (socket, &(port, sent, binding)) in udp.iter().zip(&UDP_PLAN) {
        let got = drain_udp(socket)?;
        let want = if binding.starts_with("pass") || binding.starts_with("unbound") {
            sent
        } else {
            0
        };
        println!("  udp/{port:<5} {binding:<22} sent {sent:>3}, server socket received {got:>3}");
        if got != want {
            failures.push(format!("udp/{port}: received {got}, expected {want}"));
        }
    }
    let (mirrored, _) = udp_to(tap.read_for(Duration::from_millis(300)), 9999);
    println!("  udp/9999 frames seen on tap0 (peer of mirror0): {mirrored}");
    if mirrored != 20 {
        failures.push(format!("redirect: {mirrored} frames on tap0, expected 20"));
    }
    println!(
        "  tcp/80    pass                   HTTP reply: {:?}",
        client.0
    );
    println!(
        "  tcp/8443  drop                   connect {}",
        if client.1 {
            "succeeded (WRONG)"
        } else {
            "timed out: SYNs dropped"
        }
    );
    if client.1 {
        failures.push("tcp/8443 connected through a drop binding".into());
    }

    println!();
    step(bin, &["stats"])?;
    step(bin, &["status"])?;
    let stats: serde_json::Value = serde_json::from_str(&pd(bin, &["stats", "--json"])?)?;
    for (port, sent, _) in UDP_PLAN {
        let counted = stats["ports"]
            .as_array()
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p["proto"] == "udp" && p["port"] == port)
            })
            .and_then(|p| p["packets"].as_u64())
            .unwrap_or(0);
        if counted != u64::from(sent) {
            failures.push(format!("udp/{port}: counted {counted}, sent {sent}"));
        }
    }
    let totals = &stats["totals"];
    let sum = |key: &str| {
        totals[key].as_object().map_or(0, |m| {
            m.values()
                .filter_map(serde_json::Value::as_u64)
                .sum::<u64>()
        })
    };
    let per_port: u64 = stats["ports"].as_array().map_or(0, |ports| {
        ports.iter().filter_map(|p| p["packets"].as_u64()).sum()
    });
    if sum("outcomes") != totals["packets"].as_u64().unwrap_or(0)
        || totals["outcomes"]["demuxed"].as_u64() != Some(per_port)
    {
        failures.push("totals do not add up".into());
    }
    let redirected: u32 = UDP_PLAN
        .iter()
        .filter(|(_, _, what)| what.starts_with("redirect"))
        .map(|(_, sent, _)| sent)
        .sum();
    if totals["redirects"]["redirected"].as_u64() != Some(u64::from(redirected)) {
        failures.push(format!(
            "redirects: {}, sent {redirected}",
            totals["redirects"]
        ));
    }
    step(bin, &["unload", "srv0"])?;
    if failures.is_empty() {
        println!("\ndemo ok: every count matches what was sent");
        Ok(())
    } else {
        bail!("demo found problems: {}", failures.join("; "))
    }
}

/// Datagrams waiting on `socket`.
fn drain_udp(socket: &std::net::UdpSocket) -> Result<u32> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    Ok(n)
}
