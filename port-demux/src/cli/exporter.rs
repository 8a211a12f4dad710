//! `port-demux exporter --listen ADDR:PORT`: the counters of every running instance, in every
//! network namespace (or only `--netns`'s), as Prometheus metrics on `/metrics` (`OpenMetrics`
//! text, from the `prometheus-client` crate).
//!
//! Each scrape lists the running instances ([`crate::running`]: the ones `status --all`
//! reports as running) and reads each one's counters through its pins, opened afresh: an
//! instance unloaded since the last scrape (or whose namespace or interface is gone) is gone
//! from the output, one loaded again (a new program, new maps) shows counters that start from
//! zero again under the same `interface` and `netns` labels, which Prometheus takes as a counter
//! reset, and one loaded in another namespace appears. Nothing is cached between scrapes but the
//! exporter's own error count: a handle kept from one scrape to the next would hold its
//! namespace open (keeping a deleted namespace, its interfaces and its program alive) and its
//! maps, and the pins cost a few system calls to open beside the counters' arrays each scrape
//! reads anyway.
//!
//! The HTTP side is a minimal HTTP/1.1 server on tokio (one request per connection, `GET` only):
//! Prometheus is its only client.

use std::{
    fmt,
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, text},
    metrics::MetricType,
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Failure;
use crate::{BindingRange, PortDemux, Proto, Scope, Totals, common::outcome};

/// Arguments of `exporter`.
#[derive(Debug, Args)]
pub struct ExporterArgs {
    /// Address and port to serve `/metrics` on, e.g. `127.0.0.1:9487` or `[::]:9487`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Also export the N busiest unbound ports one by one; the other unbound ports are summed
    /// under `port="other"` (bound ports are always exported one by one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub top: usize,
}

/// Largest request head read; Prometheus sends a few hundred bytes.
const MAX_REQUEST: usize = 8192;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What every scrape needs: where to look, what to list, and the exporter's own error count.
#[derive(Debug)]
struct Exporter {
    /// `--netns NS`: that namespace only, its series labelled `netns="NS"`; `None`: every
    /// namespace's instances in `bpffs`, each labelled by [`netns_label`].
    only: Option<(Scope, String)>,
    bpffs: PathBuf,
    /// The cookie of the exporter's own namespace, whose instances are labelled `netns=""`.
    own_cookie: u64,
    top: usize,
    errors: AtomicU64,
}

/// The `netns` label of an instance found in the namespace of cookie `cookie`, named `name`
/// in `/run/netns` (matched by cookie) if it is: that name; empty for the exporter's own
/// namespace (cookie `own`); else `cookie:<N>`, the namespace's cookie, which the kernel never
/// gives another namespace while it runs (inode numbers it reuses).
fn netns_label(name: Option<&str>, cookie: u64, own: u64) -> String {
    match name {
        Some(name) => name.to_owned(),
        None if cookie == own => String::new(),
        None => format!("cookie:{cookie}"),
    }
}

pub async fn exporter(
    scope: &Scope,
    netns: Option<&str>,
    args: &ExporterArgs,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let listener = TcpListener::bind(args.listen).await.map_err(|e| Failure {
        message: format!(
            "cannot listen on {}: {e}; give --listen a free ADDR:PORT",
            args.listen
        ),
        code: 1,
    })?;
    let exporter = Arc::new(Exporter {
        only: netns.map(|ns| (scope.clone(), ns.to_owned())),
        bpffs: scope.bpffs().to_owned(),
        own_cookie: scope.netns_cookie(),
        top: args.top,
        errors: AtomicU64::new(0),
    });
    // Signals handled before the address is announced: a client that reads it may signal.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure {
        message: format!("cannot handle SIGTERM: {e}"),
        code: 1,
    })?;
    // SIGHUP reloads nothing here (the exporter follows the pins at every scrape; the unit's
    // reload is `port-demux apply`): it must not end the process, as its default would.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Failure {
            message: format!("cannot handle SIGHUP: {e}"),
            code: 1,
        })?;
    writeln!(
        out,
        "serving http://{}/metrics",
        listener.local_addr().unwrap_or(args.listen)
    )?;
    out.flush()?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                log::info!("SIGHUP: nothing to reload, every scrape reads the pins afresh");
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(respond(stream, Arc::clone(&exporter)));
                }
                // Out of file descriptors and the like: this connection is lost, not the server.
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    }
}

/// Reads one request from `stream` and answers it; errors end this connection only.
async fn respond(mut stream: TcpStream, exporter: Arc<Exporter>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default());
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let exporter = Arc::clone(&exporter);
            match tokio::task::spawn_blocking(move || exporter.scrape()).await {
                Ok(body) => ("200 OK", OPENMETRICS, body),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("scrape failed: {e}\n"),
                ),
            }
        }
        ("GET", "/") => (
            "200 OK",
            "text/html",
            "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n".to_owned(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "only /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One instance as a scrape found it.
#[derive(Debug)]
struct Instance {
    iface: String,
    /// The `netns` label.
    netns: String,
    /// `None` when it could not be read (`port_demux_up` 0).
    read: Option<Reading>,
}

#[derive(Debug)]
struct Reading {
    attached: bool,
    /// (proto, port label, packets, bytes): bound ports, the `top` busiest unbound ones, and
    /// per protocol the other unbound ones summed under `other`.
    ports: Vec<(Proto, String, u64, u64)>,
    bindings: Vec<BindingRange>,
    /// Address-scoped bindings' own counters (`dst` set).
    scoped: Vec<crate::PortStat>,
    totals: Totals,
}

/// Everything one scrape exports, read before encoding (encoding cannot fail on the kernel).
#[derive(Debug)]
struct Snapshot {
    instances: Vec<Instance>,
    duration: f64,
    errors: u64,
}

impl Exporter {
    /// Reads every instance and renders the metrics.
    fn scrape(&self) -> String {
        let start = Instant::now();
        let mut instances = Vec::new();
        match self.targets() {
            Ok(targets) => {
                for (scope, iface, netns) in targets {
                    let read = self.read(&scope, &iface);
                    if let Err(e) = &read {
                        log::warn!("reading {iface}{}: {e}", scope.where_());
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    instances.push(Instance {
                        iface,
                        netns,
                        read: read.ok(),
                    });
                }
            }
            Err(e) => {
                log::warn!("listing instances: {e}");
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let snapshot = Snapshot {
            instances,
            duration: start.elapsed().as_secs_f64(),
            errors: self.errors.load(Ordering::Relaxed),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut body = String::new();
        if let Err(e) = text::encode(&mut body, &registry) {
            // Writing to a String fails only if an encoder refuses a value.
            log::warn!("encoding the metrics: {e}");
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        body
    }

    /// The instances to read now, each with its namespace, its interface's name and its
    /// `netns` label: those running in `--netns`'s namespace, or every running instance of
    /// the bpffs (stale ones are not served: their series end, as Prometheus expects of a
    /// thing that is gone).
    fn targets(&self) -> crate::Result<Vec<(Scope, String, String)>> {
        if let Some((scope, label)) = &self.only {
            return Ok(scope
                .loaded()?
                .into_iter()
                .map(|iface| (scope.clone(), iface, label.clone()))
                .collect());
        }
        Ok(crate::running(&self.bpffs)?
            .into_iter()
            .map(|crate::Running { instance, scope }| {
                let iface = instance
                    .iface
                    .unwrap_or_else(|| format!("ifindex-{}", instance.ifindex.unwrap_or_default()));
                let label = netns_label(
                    instance.netns.as_deref(),
                    scope.netns_cookie(),
                    self.own_cookie,
                );
                (scope, iface, label)
            })
            .collect())
    }

    fn read(&self, scope: &Scope, iface: &str) -> crate::Result<Reading> {
        let demux = PortDemux::open(scope, iface)?;
        // The arrays once each (their batch reads are most of a scrape's cost).
        let (counters, bindings) = demux.stats_and_bindings()?;
        Ok(Reading {
            attached: demux.attached()?,
            ports: select(&counters.ports, self.top),
            bindings,
            scoped: counters.scoped,
            totals: counters.totals,
        })
    }
}

/// Bound ports one by one, the `top` busiest unbound ones too, the rest of the unbound ones
/// summed per protocol under `other` (present even when zero, so that its series is unbroken).
fn select(ports: &[crate::PortStat], top: usize) -> Vec<(Proto, String, u64, u64)> {
    let mut listed = Vec::new();
    let mut other = [(0u64, 0u64); 2];
    let mut unbound = 0;
    // `ports` is busiest first.
    for p in ports {
        if p.action.is_some() || (unbound < top && p.packets > 0) {
            unbound += usize::from(p.action.is_none());
            listed.push((p.proto, p.port.to_string(), p.packets, p.bytes));
        } else {
            let sum = &mut other[usize::from(p.proto == Proto::Udp)];
            sum.0 += p.packets;
            sum.1 += p.bytes;
        }
    }
    for (proto, (packets, bytes)) in [Proto::Tcp, Proto::Udp].into_iter().zip(other) {
        listed.push((proto, "other".to_owned(), packets, bytes));
    }
    listed
}

type Labels = Vec<(&'static str, String)>;

impl Instance {
    /// The labels every series of the instance carries.
    fn labels(&self) -> Labels {
        vec![
            ("interface", self.iface.clone()),
            ("netns", self.netns.clone()),
        ]
    }
}

impl Snapshot {
    fn readings(&self) -> impl Iterator<Item = (&Instance, &Reading)> {
        self.instances
            .iter()
            .filter_map(|i| Some((i, i.read.as_ref()?)))
    }
}

/// One metric family: its descriptor, then one sample per label set.
fn family<
    V: prometheus_client::encoding::EncodeCounterValue + prometheus_client::encoding::EncodeGaugeValue,
>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample
                .encode_counter::<prometheus_client::encoding::NoLabelSet, V, f64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_ports(&mut encoder)?;
        self.encode_instances(&mut encoder)
    }
}

impl Snapshot {
    /// Per-port counters and the bindings.
    fn encode_ports(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let port_samples = |field: fn(&(Proto, String, u64, u64)) -> u64| {
            self.readings()
                .flat_map(move |(instance, r)| {
                    r.ports.iter().map(move |p| {
                        let mut labels = instance.labels();
                        labels.push(("proto", p.0.to_string()));
                        labels.push(("port", p.1.clone()));
                        (labels, field(p))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            encoder,
            "port_demux_port_packets",
            "Frames to a destination port since load (port=\"other\": the unbound ports not listed one by one).",
            MetricType::Counter,
            port_samples(|p| p.2),
        )?;
        family(
            encoder,
            "port_demux_port_bytes",
            "Bytes of those frames as XDP sees them, Ethernet header included.",
            MetricType::Counter,
            port_samples(|p| p.3),
        )?;
        let mut info = encoder.encode_descriptor(
            "port_demux_binding",
            "The binding of a port: its action and owner.",
            None,
            MetricType::Info,
        )?;
        // One series per (protocol, port): the scoped bindings have their own family.
        for (instance, r) in self.readings() {
            for b in r.bindings.iter().filter(|b| b.dst.is_none()) {
                for labels in binding_labels(instance, b) {
                    info.encode_info(&labels)?;
                }
            }
        }
        self.encode_scoped(encoder)
    }

    /// Address-scoped bindings: their own counters and their binding, by `dst`.
    fn encode_scoped(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let samples = |field: fn(&crate::PortStat) -> u64| {
            self.readings()
                .flat_map(move |(instance, r)| {
                    r.scoped.iter().filter_map(move |p| {
                        let mut labels = instance.labels();
                        labels.push(("proto", p.proto.to_string()));
                        labels.push(("port", p.port.to_string()));
                        labels.push(("dst", p.dst?.to_string()));
                        Some((labels, field(p)))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            encoder,
            "port_demux_scoped_packets",
            "Frames an address-scoped binding decided (also counted under their port) since it was bound.",
            MetricType::Counter,
            samples(|p| p.packets),
        )?;
        family(
            encoder,
            "port_demux_scoped_bytes",
            "Bytes of those frames as XDP sees them, Ethernet header included.",
            MetricType::Counter,
            samples(|p| p.bytes),
        )?;
        let mut info = encoder.encode_descriptor(
            "port_demux_scoped_binding",
            "An address-scoped binding: its action and owner.",
            None,
            MetricType::Info,
        )?;
        for (instance, r) in self.readings() {
            for b in r.bindings.iter().filter(|b| b.dst.is_some()) {
                for labels in binding_labels(instance, b) {
                    info.encode_info(&labels)?;
                }
            }
        }
        Ok(())
    }

    /// Per-instance counters and gauges, and the exporter's own.
    fn encode_instances(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        family(
            encoder,
            "port_demux_frames",
            "Frames the program saw, by outcome (demuxed: counted per port).",
            MetricType::Counter,
            self.readings().flat_map(|(instance, r)| {
                outcome::NAMES
                    .iter()
                    .zip(r.totals.outcomes)
                    .map(move |(name, v)| {
                        let mut labels = instance.labels();
                        labels.push(("outcome", (*name).to_owned()));
                        (labels, v)
                    })
            }),
        )?;
        family(
            encoder,
            "port_demux_redirects",
            "Frames bound to a redirect: redirected, or passed because the target was gone (fallback).",
            MetricType::Counter,
            self.readings().flat_map(|(instance, r)| {
                [
                    ("redirected", r.totals.redirected),
                    ("fallback", r.totals.redirect_fallback),
                ]
                .map(|(result, v)| {
                    let mut labels = instance.labels();
                    labels.push(("result", result.to_owned()));
                    (labels, v)
                })
            }),
        )?;
        family(
            encoder,
            "port_demux_up",
            "1 when the instance's pins were read at this scrape, 0 when they could not be.",
            MetricType::Gauge,
            self.instances
                .iter()
                .map(|i| (i.labels(), u64::from(i.read.is_some()))),
        )?;
        family(
            encoder,
            "port_demux_attached",
            "1 when the interface runs the instance's pinned program now.",
            MetricType::Gauge,
            self.readings()
                .map(|(instance, r)| (instance.labels(), u64::from(r.attached))),
        )?;
        family(
            encoder,
            "port_demux_exporter_scrape_duration_seconds",
            "Time this scrape took to read the instances.",
            MetricType::Gauge,
            [(Labels::new(), self.duration)],
        )?;
        family(
            encoder,
            "port_demux_exporter_scrape_errors",
            "Instances (or the instance list) the exporter could not read, since it started.",
            MetricType::Counter,
            [(Labels::new(), self.errors)],
        )
    }
}

/// The info labels of each port of `b`: protocol, port, the prefix of an address-scoped
/// binding, action and owner.
fn binding_labels<'a>(
    instance: &'a Instance,
    b: &'a BindingRange,
) -> impl Iterator<Item = Labels> + 'a {
    (b.ports.first..=b.ports.last).map(move |port| {
        let mut labels = instance.labels();
        labels.push(("proto", b.ports.proto.to_string()));
        labels.push(("port", port.to_string()));
        if let Some(dst) = b.dst {
            labels.push(("dst", dst.to_string()));
        }
        labels.push(("action", b.action.to_string()));
        labels.push(("owner", b.owner.clone()));
        labels
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, PortSpec, PortStat};

    #[test]
    fn bound_ports_always_the_unbound_summed_unless_top() {
        let stat = |proto, port, packets, action| PortStat {
            proto,
            port,
            packets,
            bytes: packets * 100,
            action,
            dst: None,
        };
        // Busiest first, as `stats` gives them.
        let ports = [
            stat(Proto::Udp, 5000, 9, None),
            stat(Proto::Udp, 7777, 5, Some(Action::Drop)),
            stat(Proto::Tcp, 80, 3, None),
            stat(Proto::Udp, 5001, 2, None),
            stat(Proto::Tcp, 443, 0, Some(Action::Pass)),
        ];
        let names = |top| {
            select(&ports, top)
                .into_iter()
                .map(|(proto, port, packets, _)| format!("{proto}/{port}={packets}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(0),
            ["udp/7777=5", "tcp/443=0", "tcp/other=3", "udp/other=11"]
        );
        assert_eq!(
            names(2),
            [
                "udp/5000=9",
                "udp/7777=5",
                "tcp/80=3",
                "tcp/443=0",
                "tcp/other=0",
                "udp/other=2"
            ]
        );
        let snapshot = Snapshot {
            instances: vec![
                Instance {
                    iface: "b0".into(),
                    netns: "lab".into(),
                    read: Some(Reading {
                        attached: true,
                        ports: select(&ports, 0),
                        bindings: vec![BindingRange {
                            ports: PortSpec {
                                proto: Proto::Udp,
                                first: 7777,
                                last: 7778,
                            },
                            action: Action::Drop,
                            owner: "dns".into(),
                            dst: None,
                        }],
                        scoped: Vec::new(),
                        totals: Totals::default(),
                    }),
                },
                Instance {
                    iface: "b1".into(),
                    netns: "lab".into(),
                    read: None,
                },
            ],
            duration: 0.25,
            errors: 1,
        };
        let body = serves(
            snapshot,
            &[
                "# TYPE port_demux_port_packets counter",
                "port_demux_port_packets_total{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7777\"} 5",
                "port_demux_port_bytes_total{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"other\"} 1100",
                "port_demux_binding_info{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7778\",action=\"drop\",owner=\"dns\"} 1",
                "port_demux_frames_total{interface=\"b0\",netns=\"lab\",outcome=\"not_ip\"} 0",
                "port_demux_redirects_total{interface=\"b0\",netns=\"lab\",result=\"fallback\"} 0",
                "port_demux_up{interface=\"b0\",netns=\"lab\"} 1",
                "port_demux_up{interface=\"b1\",netns=\"lab\"} 0",
                "port_demux_attached{interface=\"b0\",netns=\"lab\"} 1",
                "port_demux_exporter_scrape_duration_seconds 0.25",
                "port_demux_exporter_scrape_errors_total 1",
                "# EOF",
            ],
        );
        assert!(
            !body.contains("interface=\"b1\",netns=\"lab\",proto"),
            "{body}"
        );
    }

    #[test]
    fn netns_named_by_run_netns_then_own_then_cookie() {
        assert_eq!(netns_label(Some("blue"), 8995, 1), "blue");
        // A name wins even for the exporter's own namespace: one name per namespace.
        assert_eq!(netns_label(Some("host"), 1, 1), "host");
        assert_eq!(netns_label(None, 1, 1), "");
        assert_eq!(netns_label(None, 8995, 1), "cookie:8995");
    }

    #[test]
    fn one_interface_name_in_two_namespaces_makes_two_series() {
        let reading = |packets| Reading {
            attached: true,
            ports: vec![(Proto::Udp, "7777".to_owned(), packets, packets * 100)],
            bindings: Vec::new(),
            scoped: Vec::new(),
            totals: Totals::default(),
        };
        let snapshot = Snapshot {
            instances: vec![
                Instance {
                    iface: "b0".into(),
                    netns: "red".into(),
                    read: Some(reading(3)),
                },
                Instance {
                    iface: "b0".into(),
                    netns: "cookie:8995".into(),
                    read: Some(reading(5)),
                },
            ],
            duration: 0.0,
            errors: 0,
        };
        serves(
            snapshot,
            &[
                "port_demux_port_packets_total{interface=\"b0\",netns=\"red\",proto=\"udp\",port=\"7777\"} 3",
                "port_demux_port_packets_total{interface=\"b0\",netns=\"cookie:8995\",proto=\"udp\",port=\"7777\"} 5",
                "port_demux_up{interface=\"b0\",netns=\"red\"} 1",
                "port_demux_up{interface=\"b0\",netns=\"cookie:8995\"} 1",
            ],
        );
    }

    /// The text a scrape of `snapshot` serves, which must hold each of `lines`.
    fn serves(snapshot: Snapshot, lines: &[&str]) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut body = String::new();
        text::encode(&mut body, &registry).unwrap();
        for line in lines {
            assert!(body.lines().any(|l| l == *line), "no {line:?} in\n{body}");
        }
        body
    }

    #[test]
    fn scoped_bindings_have_their_own_families() {
        let net: ipnet::IpNet = "192.0.2.0/24".parse().expect("a prefix");
        let binding = |action, owner: &str, dst| BindingRange {
            ports: PortSpec::single(Proto::Udp, 7777),
            action,
            owner: owner.into(),
            dst,
        };
        let reading = Reading {
            attached: true,
            ports: vec![(Proto::Udp, "7777".to_owned(), 9, 900)],
            bindings: vec![
                binding(Action::Drop, "dns", None),
                binding(Action::Pass, "web", Some(net)),
            ],
            scoped: vec![PortStat {
                proto: Proto::Udp,
                port: 7777,
                packets: 4,
                bytes: 400,
                action: Some(Action::Pass),
                dst: Some(net),
            }],
            totals: Totals::default(),
        };
        let snapshot = Snapshot {
            instances: vec![Instance {
                iface: "b0".into(),
                netns: "lab".into(),
                read: Some(reading),
            }],
            duration: 0.0,
            errors: 0,
        };
        let body = serves(
            snapshot,
            &[
                "port_demux_binding_info{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7777\",action=\"drop\",owner=\"dns\"} 1",
                "port_demux_scoped_packets_total{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7777\",dst=\"192.0.2.0/24\"} 4",
                "port_demux_scoped_bytes_total{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7777\",dst=\"192.0.2.0/24\"} 400",
                "port_demux_scoped_binding_info{interface=\"b0\",netns=\"lab\",proto=\"udp\",port=\"7777\",dst=\"192.0.2.0/24\",action=\"pass\",owner=\"web\"} 1",
            ],
        );
        // One binding series per port, for the join: the scoped binding is not among them.
        let infos = body
            .lines()
            .filter(|l| l.starts_with("port_demux_binding_info"))
            .count();
        assert_eq!(infos, 1, "{body}");
    }
}
