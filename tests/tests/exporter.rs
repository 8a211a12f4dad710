//! `port-demux exporter` scraped by a real Prometheus while real traffic flows through a veth
//! pair: the per-port counters Prometheus stores equal what was sent; after an unload and a
//! load it sees the counters reset and the new counts; the exporter never stops serving.
//!
//! Needs root and Debian's `prometheus` (`cargo xtask setup` installs it).

use std::net::SocketAddr;

use port_demux_testkit::{
    Lab,
    cli::{command, pd},
    netns::{SERVER_IF, UDP_OVERHEAD},
    service::{Prometheus, Service, http_get},
};

fn ok(lab: &Lab, args: &[&str]) {
    let run = pd(&lab.server, args);
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
}

/// The Prometheus selector of one port's series on b0.
fn port(metric: &str, proto: &str, port: &str) -> String {
    format!("{metric}{{job=\"pd\",interface=\"{SERVER_IF}\",proto=\"{proto}\",port=\"{port}\"}}")
}

#[test]
fn prometheus_scrapes_exact_counts_and_sees_the_reset_of_a_reload() {
    let lab = Lab::new();
    ok(&lab, &["load", SERVER_IF]);
    ok(&lab, &["bind", "udp/7777", "drop", "--owner", "dns"]);
    ok(&lab, &["bind", "tcp/8080", "pass", "--owner", "web"]);

    let mut exporter = Service::start(
        "port-demux exporter",
        command(&lab.server, &["exporter", "--listen", "127.0.0.1:0"]),
    );
    let line = exporter.first_line();
    let target: SocketAddr = line
        .strip_prefix("serving http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("exporter said {line:?}"));
    let (code, body) = http_get(target, "/metrics").expect("the exporter answers");
    assert_eq!(code, 200, "{body}");
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
    // Every scrape succeeded: Prometheus's own `up` never dropped to 0.
    prometheus.wait_for("min_over_time(up{job=\"pd\"}[5m])", 1.0);
    exporter.assert_running();
}
