//! `port-demux exporter` scraped by a real Prometheus while real traffic flows through veth
//! pairs: the per-port counters Prometheus stores equal what was sent; after an unload and a
//! load it sees the counters reset and the new counts; the exporter never stops serving. One
//! exporter without `--netns` serves the instances of every namespace, each under its
//! namespace's name, and follows them as they are unloaded, loaded again, or lose their
//! namespace.
//!
//! Needs root and Debian's `prometheus` (`cargo xtask setup` installs it).

use std::{
    net::SocketAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use port_demux_testkit::{
    Lab,
    chaos::PrivateBpffs,
    cli::{bin, command, pd},
    netns::{SERVER_IF, UDP_OVERHEAD},
    service::{PROMETHEUS_TIMEOUT, Prometheus, Service, http_get},
};

fn ok(lab: &Lab, args: &[&str]) {
    let run = pd(&lab.server, args);
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
}

/// The Prometheus selector of one port's series on b0.
fn port(metric: &str, proto: &str, port: &str) -> String {
    format!("{metric}{{job=\"pd\",interface=\"{SERVER_IF}\",proto=\"{proto}\",port=\"{port}\"}}")
}

/// `cmd`, a `port-demux exporter` on a free port of 127.0.0.1, started, answering, and not
/// ended by a SIGHUP (an operator's reload).
fn start_exporter(cmd: Command) -> (Service, SocketAddr) {
    let mut exporter = Service::start("port-demux exporter", cmd);
    let line = exporter.first_line();
    let target: SocketAddr = line
        .strip_prefix("serving http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("exporter said {line:?}"));
    let (code, body) = http_get(target, "/metrics").expect("the exporter answers");
    assert_eq!(code, 200, "{body}");
    // A SIGHUP (an operator's reload) does not end it.
    port_demux_testkit::netns::run("kill", &["-HUP", &exporter.id().to_string()]);
    let (code, _) = http_get(target, "/metrics").expect("the exporter answers after SIGHUP");
    assert_eq!(code, 200);
    exporter.assert_running();
    (exporter, target)
}

#[test]
fn prometheus_scrapes_exact_counts_and_sees_the_reset_of_a_reload() {
    let lab = Lab::new();
    ok(&lab, &["load", SERVER_IF]);
    ok(&lab, &["bind", "udp/7777", "drop", "--owner", "dns"]);
    ok(&lab, &["bind", "tcp/8080", "pass", "--owner", "web"]);

    let (mut exporter, target) = start_exporter(command(
        &lab.server,
        &["exporter", "--listen", "127.0.0.1:0"],
    ));
    let mut prometheus = Prometheus::start("pd", target);

    // Real traffic: datagrams to a bound and to two unbound ports, a TCP exchange.
    let client = lab.udp_client();
    let _server = lab.udp_server(5000);
    let bytes_7777 = lab.send_udp(&client, 7777, 50, 100);
    let unbound = lab.send_udp(&client, 5000, 7, 10) + lab.send_udp(&client, 5001, 3, 10);
    let (_, tcp) =
        lab.tcp_exchange_counted(8080, b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n");

    let udp_7777 = port("port_demux_port_packets_total", "udp", "7777");
    prometheus.wait_for(&udp_7777, 50.0);
    let expected = [
        (
            port("port_demux_port_bytes_total", "udp", "7777"),
            bytes_7777,
        ),
        (port("port_demux_port_packets_total", "udp", "other"), 10),
        (port("port_demux_port_bytes_total", "udp", "other"), unbound),
        (
            port("port_demux_port_packets_total", "tcp", "8080"),
            tcp.packets,
        ),
        (
            port("port_demux_port_bytes_total", "tcp", "8080"),
            tcp.bytes,
        ),
        (port("port_demux_port_packets_total", "tcp", "other"), 0),
    ];
    for (query, want) in &expected {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        prometheus.wait_for(query, *want as f64);
    }
    assert_eq!(unbound, 10 * (UDP_OVERHEAD + 10));
    // The bindings as info metrics, the instance up and attached.
    let info = prometheus.query("port_demux_binding_info{job=\"pd\"}");
    let mut bindings: Vec<String> = info
        .iter()
        .map(|(m, v)| {
            format!(
                "{}/{} {} {} {v}",
                m["proto"].as_str().unwrap(),
                m["port"].as_str().unwrap(),
                m["action"].as_str().unwrap(),
                m["owner"].as_str().unwrap()
            )
        })
        .collect();
    bindings.sort();
    assert_eq!(bindings, ["tcp/8080 pass web 1", "udp/7777 drop dns 1"]);
    let instance = format!(
        "{{job=\"pd\",interface=\"{SERVER_IF}\",netns=\"{}\"}}",
        lab.server.name()
    );
    prometheus.wait_for(&format!("port_demux_up{instance}"), 1.0);
    prometheus.wait_for(&format!("port_demux_attached{instance}"), 1.0);
    prometheus.wait_for(
        "port_demux_frames_total{job=\"pd\",outcome=\"demuxed\"}",
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        {
            (60 + tcp.packets) as f64
        },
    );

    // Unload and load again: new maps, counters from zero; fewer frames than before, so the
    // new value is below the old one whenever Prometheus looks.
    ok(&lab, &["unload", SERVER_IF]);
    prometheus.wait_for(&format!("count(port_demux_up{instance}) or vector(0)"), 0.0);
    ok(&lab, &["load", SERVER_IF]);
    ok(&lab, &["bind", "udp/7777", "drop", "--owner", "dns2"]);
    let bytes_again = lab.send_udp(&client, 7777, 20, 100);
    prometheus.wait_for(&udp_7777, 20.0);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    prometheus.wait_for(
        &port("port_demux_port_bytes_total", "udp", "7777"),
        bytes_again as f64,
    );
    prometheus.wait_for(&format!("resets({udp_7777}[5m])"), 1.0);
    // The rebind's owner is the info metric's, not a new series of the counter.
    prometheus.wait_for(
        "port_demux_binding_info{job=\"pd\",port=\"7777\",owner=\"dns2\"}",
        1.0,
    );
    // The exporter kept serving through the unload and the load: the same process, scraped
    // now. (A scrape slower than the one-second timeout on a loaded machine counts as down in
    // Prometheus's `up` without the exporter failing: reported, not asserted.)
    exporter.assert_running();
    prometheus.wait_for("up{job=\"pd\"}", 1.0);
    eprintln!(
        "scrapes that Prometheus counted as failed: {:?}",
        prometheus.value("count_over_time(up{job=\"pd\"}[5m]) - sum_over_time(up{job=\"pd\"}[5m])")
    );
}

/// The selector of udp/7777's series `metric` on b0 in `lab`'s server namespace, as the
/// exporter without `--netns` labels it: by its name in /run/netns.
fn udp_7777(metric: &str, lab: &Lab) -> String {
    format!(
        "{metric}{{job=\"all\",interface=\"{SERVER_IF}\",netns=\"{}\",proto=\"udp\",port=\"7777\"}}",
        lab.server.name()
    )
}

/// The selector of the instance-wide series `metric` of b0 in `lab`'s server namespace.
fn instance(metric: &str, lab: &Lab) -> String {
    format!(
        "{metric}{{job=\"all\",interface=\"{SERVER_IF}\",netns=\"{}\"}}",
        lab.server.name()
    )
}

/// Waits until Prometheus holds `packets` frames and `bytes` bytes for udp/7777 in `lab`.
fn wait_counted(prometheus: &mut Prometheus, lab: &Lab, packets: u64, bytes: u64) {
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    for (metric, want) in [
        ("port_demux_port_packets_total", packets as f64),
        ("port_demux_port_bytes_total", bytes as f64),
    ] {
        prometheus.wait_for(&udp_7777(metric, lab), want);
    }
}

/// The (interface, netns) of every instance the exporter serves now (`port_demux_up`), with
/// its value, sorted.
fn served(prometheus: &Prometheus) -> Vec<(String, String, f64)> {
    let mut all: Vec<(String, String, f64)> = prometheus
        .query("port_demux_up{job=\"all\"}")
        .into_iter()
        .map(|(m, v)| {
            let label = |name: &str| m[name].as_str().unwrap_or_default().to_owned();
            (label("interface"), label("netns"), v)
        })
        .collect();
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    all
}

/// Polls [`served`] until it is `want` (b0 of each lab, up), as Prometheus sees it.
fn wait_served(prometheus: &Prometheus, want: &[&Lab]) {
    let mut want: Vec<(String, String, f64)> = want
        .iter()
        .map(|lab| (SERVER_IF.to_owned(), lab.server.name().to_owned(), 1.0))
        .collect();
    want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    loop {
        let got = served(prometheus);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the instances served to be {want:?}; last: {got:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_exporter_serves_every_namespace_each_under_its_name() {
    // A bpffs of the test's own: the exporter serves every instance in it, and only this
    // test's (other tests load theirs in the host's meanwhile). Declared first, so dropped
    // after the labs whose interfaces run its programs.
    let bpffs = PrivateBpffs::new();
    let on = |lab: &Lab, args: &[&str]| {
        let mut all = vec!["--bpffs", bpffs.path()];
        all.extend_from_slice(args);
        ok(lab, &all);
    };
    // Two labs: two server namespaces, each with port-demux on an interface named b0.
    let red = Lab::new();
    let blue = Lab::new();
    for lab in [&red, &blue] {
        on(lab, &["load", SERVER_IF]);
        on(lab, &["bind", "udp/7777", "drop", "--owner", "dns"]);
    }
    // One exporter, without --netns, in the test's (the host's) namespace.
    let mut cmd = Command::new(bin());
    cmd.args([
        "--bpffs",
        bpffs.path(),
        "exporter",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (mut exporter, target) = start_exporter(cmd);
    // Every 2 s: a scrape reads two instances' arrays (debug build, a loaded machine).
    let mut prometheus = Prometheus::start_every("all", target, 2);

    let (red_client, blue_client) = (red.udp_client(), blue.udp_client());
    let red_bytes = red.send_udp(&red_client, 7777, 30, 100);
    let blue_bytes = blue.send_udp(&blue_client, 7777, 70, 200);
    wait_counted(&mut prometheus, &red, 30, red_bytes);
    wait_counted(&mut prometheus, &blue, 70, blue_bytes);
    // Exactly the two instances, told apart by their netns label alone, both up and attached.
    wait_served(&prometheus, &[&red, &blue]);
    for lab in [&red, &blue] {
        prometheus.wait_for(&instance("port_demux_attached", lab), 1.0);
    }

    // Red unloaded: its series end; blue goes on counting.
    on(&red, &["unload", SERVER_IF]);
    wait_served(&prometheus, &[&blue]);
    let red_packets = format!(
        "count({}) or vector(0)",
        udp_7777("port_demux_port_packets_total", &red)
    );
    prometheus.wait_for(&red_packets, 0.0);
    let more = blue.send_udp(&blue_client, 7777, 11, 200);
    wait_counted(&mut prometheus, &blue, 81, blue_bytes + more);

    // Red loaded again (a new instance appears): the same series, from zero (a reset).
    on(&red, &["load", SERVER_IF]);
    on(&red, &["bind", "udp/7777", "drop", "--owner", "dns"]);
    let again = red.send_udp(&red_client, 7777, 4, 100);
    wait_counted(&mut prometheus, &red, 4, again);
    wait_served(&prometheus, &[&red, &blue]);
    prometheus.wait_for(
        &format!(
            "resets({}[5m])",
            udp_7777("port_demux_port_packets_total", &red)
        ),
        1.0,
    );

    // Blue's namespace deleted without an unload: its instance is stale (namespace gone, its
    // pins still there), not served; red is.
    blue.server.delete();
    wait_served(&prometheus, &[&red]);
    let last = red.send_udp(&red_client, 7777, 6, 100);
    wait_counted(&mut prometheus, &red, 10, again + last);

    exporter.assert_running();
    prometheus.wait_for("up{job=\"all\"}", 1.0);
    prometheus.wait_for("port_demux_exporter_scrape_errors_total{job=\"all\"}", 0.0);
    eprintln!(
        "scrape duration (s), last and max over the test: {:?} {:?}",
        prometheus.value("port_demux_exporter_scrape_duration_seconds{job=\"all\"}"),
        prometheus
            .value("max_over_time(port_demux_exporter_scrape_duration_seconds{job=\"all\"}[5m])"),
    );
}
