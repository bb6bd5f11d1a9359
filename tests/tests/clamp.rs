//! Real traffic between two namespaces, the agent attached on one side (`a`) with static
//! clamps: the MSS is rewritten in both directions, connections complete with data over IPv4
//! and IPv6, in TCX and in clsact mode, and oversize DF packets are counted exactly.

use std::time::Duration;

use wslnet_agent::config::AttachMode;
use wslnet_tests::{
    agent::{AgentOptions, Pair, RunFlag, attach_mode_name, sample, status_counter},
    lab::VPN_MTU,
    netns::{Daemon, PATIENCE, Transport},
};

/// Bytes of the file the HTTP server in `b` serves.
const FILE_SIZE: usize = 300 * 1024;
/// Port of the HTTP server in `b`.
const HTTP_PORT: u16 = 8080;

/// The agent on `eth0` of `a`, attached in `mode`, with both of `b`'s addresses clamped to
/// 1372.
fn clamping_both_families(mode: AttachMode) -> AgentOptions {
    AgentOptions::clamping(Pair::b4(), VPN_MTU)
        .with(RunFlag::Clamp(Pair::b6().into(), VPN_MTU))
        .with(RunFlag::AttachMode(mode))
}

/// Starts an HTTP server on [::]:[`HTTP_PORT`] in `b` serving a FILE_SIZE file at /blob.
fn http_server(pair: &Pair) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blob"), vec![b'x'; FILE_SIZE]).unwrap();
    let srv = pair
        .b
        .spawn(
            "python3",
            [
                "-m",
                "http.server",
                &HTTP_PORT.to_string(),
                "--bind",
                "::",
                "--directory",
                dir.path().to_str().unwrap(),
            ],
        )
        .unwrap();
    pair.b
        .wait_for_listener(Transport::Tcp, HTTP_PORT, PATIENCE)
        .unwrap();
    (srv, dir)
}

/// Downloads /blob from `url_host` in `a` with curl and returns the byte count.
fn download(pair: &Pair, url_host: &str) -> usize {
    let out = pair
        .a
        .sh(&format!(
            "curl -sS --max-time 10 -o /dev/null -w '%{{size_download}}' http://{url_host}:{HTTP_PORT}/blob"
        ))
        .unwrap();
    out.trim().parse().unwrap()
}

/// SYN lines of a tcpdump text capture as (source, mss).
fn syn_mss(capture: &str) -> Vec<(String, u32)> {
    capture
        .lines()
        .filter(|l| l.contains("Flags [S"))
        .filter_map(|l| {
            let src = l.split(" > ").next()?.split_whitespace().last()?;
            let mss = l
                .split("mss ")
                .nth(1)?
                .split([',', ']'])
                .next()?
                .parse()
                .ok()?;
            Some((src.to_string(), mss))
        })
        .collect()
}

fn clamp_in_both_directions(mode: AttachMode) {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let (_srv, _dir) = http_server(&pair);
    let capture_file = std::env::temp_dir().join(wslnet_tests::netns::unique("cap") + ".pcap");
    let port = HTTP_PORT.to_string();
    let mut capture = pair
        .b
        .capture("eth0", &capture_file, &["tcp", "port", &port])
        .unwrap();

    let sender_mss = |addr| pair.sender_mss(addr, HTTP_PORT).unwrap();
    // Without the agent: the kernel's own MSS (1460 - 12 of timestamps).
    assert_eq!(sender_mss(Pair::b4()), 1448);

    let agent = clamping_both_families(mode).start(&pair.a, &fs).unwrap();

    // Ingress: the SYN-ACK of b (MSS 1460 / 1440) is clamped on arrival, so a's stack sends
    // segments that fit 1372: 1332 - 12 (IPv4), 1312 - 12 (IPv6).
    assert_eq!(sender_mss(Pair::b4()), 1320);
    assert_eq!(sender_mss(Pair::b6()), 1300);

    // Connections complete with data.
    assert_eq!(download(&pair, Pair::B4), FILE_SIZE);
    assert_eq!(download(&pair, &format!("[{}]", Pair::B6)), FILE_SIZE);

    let status = capture
        .signal_and_wait(libc::SIGINT, Duration::from_secs(5))
        .unwrap();
    assert!(
        status.success() || status.code().is_none(),
        "tcpdump: {status}"
    );
    let text = pair
        .b
        .sh(&format!("tcpdump -n -vv -r {}", capture_file.display()))
        .unwrap();
    let _ = std::fs::remove_file(&capture_file);
    let syns = syn_mss(&text);
    // Egress: every SYN of a, as seen on the wire by b, carries the clamped MSS ...
    let from_a4: Vec<u32> = syns
        .iter()
        .filter(|(s, _)| s.starts_with(&format!("{}.", Pair::A4)))
        .map(|(_, m)| *m)
        .collect();
    let from_a6: Vec<u32> = syns
        .iter()
        .filter(|(s, _)| s.starts_with(&format!("{}.", Pair::A6)))
        .map(|(_, m)| *m)
        .collect();
    // (the first IPv4 SYN was sent before the agent started)
    assert_eq!(from_a4.first(), Some(&1460), "capture:\n{text}");
    assert!(
        from_a4.len() >= 3 && from_a4[1..].iter().all(|&m| m == 1332),
        "{from_a4:?}\n{text}"
    );
    assert!(
        from_a6.len() >= 2 && from_a6.iter().all(|&m| m == 1312),
        "{from_a6:?}\n{text}"
    );
    // ... while b's SYN-ACKs left b unclamped (the rewrite happened at a's ingress).
    assert!(
        syns.iter()
            .filter(|(s, _)| s.starts_with(&format!("{}.", Pair::B4)))
            .all(|(_, m)| *m == 1460),
        "{text}"
    );

    // Counters: status and metrics agree with what was sent.
    let st = agent.status().unwrap();
    for dirfam in ["egress/ipv4", "ingress/ipv4", "egress/ipv6", "ingress/ipv6"] {
        assert!(
            status_counter(&st, "eth0", dirfam, "mss_clamped") >= 2,
            "{dirfam}: {st:#}"
        );
    }
    let mode = attach_mode_name(mode);
    assert_eq!(st["interfaces"][0]["mode"], mode);
    let m = agent.metrics().unwrap();
    let clamped = sample(
        &m,
        "wslnet_mss_clamped_total",
        &[
            ("interface", "eth0"),
            ("direction", "egress"),
            ("family", "ipv4"),
        ],
    )
    .unwrap();
    assert_eq!(
        clamped as u64,
        status_counter(&st, "eth0", "egress/ipv4", "mss_clamped")
    );
    assert_eq!(
        sample(
            &m,
            "wslnet_interface_attached",
            &[("interface", "eth0"), ("mode", &mode)]
        ),
        Some(1.0)
    );
}

wslnet_tests::in_both_attach_modes! {
    clamp_in_both_directions,
    tcx: tcx_clamps_both_directions_ipv4_and_ipv6,
    clsact: clsact_clamps_both_directions_ipv4_and_ipv6,
}

/// Runs iperf3 from `a` to `b` for `secs` seconds; the data goes a -> b.
fn bulk_send(pair: &Pair, addr: &str) {
    pair.a
        .sh(&format!("iperf3 -c {addr} -t 1 -J >/dev/null"))
        .unwrap();
}

/// Counting alone (`--no-reflect`: oversize packets pass, as the path here carries them):
/// every oversize DF packet counted once, whatever its kind, and nothing else.
#[test]
fn oversize_df_packets_are_counted_exactly() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let agent = clamping_both_families(AttachMode::Auto)
        .with(RunFlag::NoReflect)
        .start(&pair.a, &fs)
        .unwrap();
    let oversize = |fam: &str| {
        let st = agent.status().unwrap();
        status_counter(&st, "eth0", &format!("egress/{fam}"), "oversize_df")
    };
    assert_eq!(oversize("ipv4"), 0);

    // 1500-byte DF echo requests to a peer whose path MTU is 1372: each one counted.
    pair.a
        .sh(&format!(
            "ping -q -M do -s 1472 -c 5 -i 0.2 -W 1 {}",
            Pair::B4
        ))
        .unwrap();
    assert_eq!(oversize("ipv4"), 5);
    // Small ones fit: not counted.
    pair.a
        .sh(&format!(
            "ping -q -M do -s 1000 -c 3 -i 0.2 -W 1 {}",
            Pair::B4
        ))
        .unwrap();
    assert_eq!(oversize("ipv4"), 5);
    // IPv6: every packet is DF; 1452 + 8 + 40 = 1500 bytes.
    pair.a
        .sh(&format!("ping -6 -q -s 1452 -c 3 -i 0.2 -W 1 {}", Pair::B6))
        .unwrap();
    assert_eq!(oversize("ipv6"), 3);

    // A bulk TCP transfer whose MSS fits (clamped at ingress) is never oversize: with GSO
    // (64 KiB super-packets measured by gso_size) and without.
    let _iperf = pair.b.spawn("iperf3", ["-s"]).unwrap();
    pair.b
        .wait_for_listener(Transport::Tcp, 5201, PATIENCE)
        .unwrap();
    bulk_send(&pair, Pair::B4);
    bulk_send(&pair, Pair::B6);
    assert_eq!(oversize("ipv4"), 5, "GSO bulk transfer counted as oversize");
    assert_eq!(oversize("ipv6"), 3, "GSO bulk transfer counted as oversize");
    pair.a
        .sh("ethtool -K eth0 tso off gso off >/dev/null")
        .unwrap();
    bulk_send(&pair, Pair::B4);
    bulk_send(&pair, Pair::B6);
    assert_eq!(
        oversize("ipv4"),
        5,
        "non-GSO bulk transfer counted as oversize"
    );
    assert_eq!(
        oversize("ipv6"),
        3,
        "non-GSO bulk transfer counted as oversize"
    );
    let m = agent.metrics().unwrap();
    assert_eq!(
        sample(
            &m,
            "wslnet_oversize_df_packets_total",
            &[("interface", "eth0"), ("family", "ipv4")]
        ),
        Some(5.0)
    );
}
