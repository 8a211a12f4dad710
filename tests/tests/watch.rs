//! `port-demux stats --watch`: with `--json`, driven with rates N, 0 and 3N in successive
//! intervals, it reports exactly those counts per interval and those rates over the measured
//! time; on a terminal (tmux), it draws, follows a resize and quits on q.
//!
//! Needs root and tmux.

use std::time::Duration;

use port_demux_testkit::{
    Lab,
    cli::{bin, command, pd},
    netns::{SERVER_IF, UDP_OVERHEAD},
    service::{Service, Tmux},
};
use serde_json::Value;

fn ok(lab: &Lab, args: &[&str]) {
    let run = pd(&lab.server, args);
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
}

/// udp/7777's entry in one interval's object.
fn port_7777(doc: &Value) -> &Value {
    doc["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["proto"] == "udp" && p["port"] == 7777)
        .unwrap_or_else(|| panic!("no udp/7777 in {doc}"))
}

#[test]
fn json_reports_the_rate_of_each_interval() {
    const N: u64 = 40;
    const PAYLOAD: usize = 100;
    let lab = Lab::new();
    ok(&lab, &["load", SERVER_IF]);
    ok(&lab, &["bind", "udp/7777", "drop"]);
    let mut watch = Service::start(
        "stats --watch --json",
        command(
            &lab.server,
            &["stats", "--watch", "--json", "--interval", "1"],
        ),
    );
    let lines = watch.lines();
    let client = lab.udp_client();
    let interval = |what: &str| -> Value {
        let line = lines.next(Duration::from_secs(10));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    };
    // Each batch goes out right after an interval's line, so the next interval holds it whole:
    // the reading that ends the interval comes a second later.
    interval("the first interval");
    let mut total = 0;
    for batch in [N, 0, 3 * N] {
        let _ = lab.send_udp(&client, 7777, batch, PAYLOAD);
        total += batch;
        let doc = interval("an interval");
        // The interval as measured: a second unless readings are late (a loaded machine).
        let seconds = doc["seconds"].as_f64().expect("seconds");
        assert!(seconds > 0.0, "{doc}");
        let p = port_7777(&doc);
        assert_eq!(p["new_packets"], batch, "{doc}");
        assert_eq!(p["packets"], total, "{doc}");
        let bytes = batch * (UDP_OVERHEAD + PAYLOAD as u64);
        assert_eq!(p["new_bytes"], bytes, "{doc}");
        // The rates are the interval's counts over its measured time: N, 0 and 3N a second
        // when the interval is the second asked for.
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let (pps, bps) = (batch as f64 / seconds, (bytes * 8) as f64 / seconds);
        let close = |got: &Value, want: f64| (got.as_f64().expect("a rate") - want).abs() < 1e-6;
        assert!(close(&p["packets_per_s"], pps), "{pps}: {doc}");
        assert!(close(&p["bits_per_s"], bps), "{bps}: {doc}");
        assert!(close(&doc["rates"]["packets_per_s"], pps), "{doc}");
        assert!(
            close(&doc["rates"]["outcomes_per_s"]["demuxed"], pps),
            "{doc}"
        );
    }
    watch.assert_running();
}

#[test]
fn the_terminal_view_draws_follows_a_resize_and_quits_on_q() {
    let lab = Lab::new();
    ok(&lab, &["load", SERVER_IF]);
    ok(&lab, &["bind", "udp/7777", "drop"]);
    let tmux = Tmux::start(
        &format!(
            "{} --netns {} stats --watch --interval 0.5",
            bin().display(),
            lab.server.name()
        ),
        120,
        40,
    );
    let wait = Duration::from_secs(10);
    // The frame spans the terminal: its top right corner is the last column.
    let framed = |width: usize| {
        move |screen: &[String]| {
            screen.first().is_some_and(|top| {
                top.contains("port-demux stats --watch: b0")
                    && top.chars().count() == width
                    && top.ends_with('┐')
            })
        }
    };
    tmux.wait_screen(wait, "the view at 120 columns", framed(120));
    let client = lab.udp_client();
    let _ = lab.send_udp(&client, 7777, 50, 10);
    let row = |screen: &[String]| {
        screen.iter().any(|l| {
            let words: Vec<&str> = l.split(|c: char| c.is_whitespace() || c == '│').collect();
            words.contains(&"udp/7777") && words.contains(&"drop") && words.contains(&"50")
        })
    };
    let screen = tmux.wait_screen(wait, "udp/7777 with 50 packets", |s| row(s));
    assert!(screen.iter().any(|l| l.contains("PKT/S")), "{screen:#?}");
    assert_eq!(screen.len(), 40);
    tmux.run(&["resize-window", "-t", "t", "-x", "80", "-y", "20"]);
    let screen = tmux.wait_screen(wait, "the view redrawn at 80 columns", |s| {
        framed(80)(s) && row(s)
    });
    assert_eq!(screen.len(), 20, "{screen:#?}");
    assert_eq!(tmux.exit_status(), None, "the view ended on the resize");
    tmux.run(&["send-keys", "-t", "t", "q"]);
    let deadline = std::time::Instant::now() + wait;
    while tmux.exit_status().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no exit on q; screen:\n{}",
            tmux.screen().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tmux.exit_status(), Some(0), "exit status after q");
}
