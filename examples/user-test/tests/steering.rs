//! A user's integration test: port-demux in front of a server namespace, real UDP (IPv4 and
//! IPv6) and TCP from a client namespace, exact per-port counts. Needs root.

use std::{net::SocketAddr, path::Path};

use port_demux::{Action, BindOptions, Error, LoadOptions, PortDemux, Proto};
use port_demux_testkit::{
    Lab, SILENCE, count_datagrams, netns::SERVER_IF, recv_datagrams, send_udp, wait_counted,
};

#[test]
fn drop_pass_and_a_range_counted_exactly() -> Result<(), Error> {
    // Client a0 <-> server b0, each in a namespace of its own with a unique name; all removed
    // when `lab` drops, also if the test panics.
    let lab = Lab::new();
    lab.enable_ipv6();
    let scope = lab.server.scope();
    let (demux, _) = PortDemux::load(&scope, SERVER_IF, &LoadOptions::default())?;
    let bind = |spec: &str, action: Action, owner: &str| {
        let owner = owner.to_owned();
        let opts = BindOptions {
            owner,
            ..BindOptions::default()
        };
        demux.bind(spec.parse()?, &action, &opts)
    };
    bind("udp/7777", Action::Drop, "me")?;
    bind("udp/7000-7099", Action::Pass, "me")?;
    bind("tcp/8080", Action::Pass, "me")?;
    // A port inside the bound range: refused, and nothing changed.
    let taken = bind("udp/7050", Action::Drop, "someone");
    assert!(matches!(&taken, Err(Error::Conflict { ports, .. }) if ports.to_string() == "udp/7050"));

    let server = |port: u16| SocketAddr::from((lab.server_addr(), port));
    let server6 = |port: u16| SocketAddr::from((lab.server_addr6(), port));
    let dropped = lab.server.udp_socket(server(7777));
    let passed = lab.server.udp_socket(server(7042));
    let passed6 = lab.server.udp_socket(server6(7042));
    let client = lab.udp_client();
    let client6 = lab
        .client
        .udp_socket(SocketAddr::from((lab.client_addr6(), 0)));
    let to_drop =
        send_udp(&client, server(7777), 10, 100) + send_udp(&client6, server6(7777), 4, 100);
    let to_pass =
        send_udp(&client, server(7042), 5, 200) + send_udp(&client6, server6(7042), 3, 200);
    let (reply, to_tcp) = lab.tcp_exchange_counted(8080, b"GET /", b"200 OK");
    assert_eq!(reply, b"200 OK");

    let expected = [
        (Proto::Udp, 7777, to_drop),
        (Proto::Udp, 7042, to_pass),
        (Proto::Tcp, 8080, to_tcp),
    ];
    let stats = wait_counted(&demux, &expected);
    assert_eq!(recv_datagrams(&passed, 5), [200; 5]);
    assert_eq!(recv_datagrams(&passed6, 3), [200; 3]);
    assert_eq!(count_datagrams(&dropped, SILENCE), 0);
    assert_eq!(stats.port(Proto::Udp, 7050).action, Some(Action::Pass));
    // The client's are the only TCP/UDP frames b0 received (IPv6 adds MLD reports).
    let demuxed = to_drop.packets + to_pass.packets + to_tcp.packets;
    assert_eq!(
        (stats.totals.demuxed(), stats.totals.demuxed_ipv6),
        (demuxed, 7)
    );

    PortDemux::unload(&scope, SERVER_IF)?;
    assert_eq!(lab.server.xdp_prog(SERVER_IF), None);
    assert!(scope.loaded()?.is_empty());
    let names = [lab.server.name().to_owned(), lab.client.name().to_owned()];
    drop(lab);
    assert!(
        names
            .iter()
            .all(|ns| !Path::new("/run/netns").join(ns).exists())
    );
    Ok(())
}
