//! Rescue of what the clamp cannot shape, through the black-hole lab: an upload and a download
//! running when the path shrinks, SSH over ZeroTier on a path below the first-contact clamp, UDP senders with DF (from the VM and from a container behind its NAT), and the
//! limits of the answers (rate, measured destinations only, checksums checked independently on a
//! capture).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use wslnet_agent::reflect::ErrorKind;
use wslnet_tests::{
    agent::{AgentOptions, RunFlag, sample},
    clients::{self, Client, Servers},
    lab::{Lab, VPN_MTU},
    netns::{Netns, require_root},
    packets,
};

/// Port of the TCP sink in `srv`.
const SINK_PORT: u16 = 9000;
/// A UDP port in `srv` nothing listens on (the datagrams only have to leave).
const UDP_PORT: u16 = 9999;

/// Uploads `bytes` to the sink at `host`, paced over `secs`, then waits until the sink has read
/// everything and closed; prints `done` on success. Killed by `timeout` after `limit` seconds.
fn upload_script(host: IpAddr, bytes: usize, secs: f64, limit: u32) -> String {
    format!(
        "timeout {limit} python3 -c '
import socket, time
s = socket.create_connection((\"{host}\", {SINK_PORT}))
chunk = b\"x\" * 16384
sent, start = 0, time.time()
while sent < {bytes}:
    s.sendall(chunk)
    sent += len(chunk)
    time.sleep(max(0.0, start + {secs} * sent / {bytes} - time.time()))
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b\"\"
print(\"done\", sent)
'"
    )
}

/// Sends 1400-byte UDP datagrams with DF (`IP_PMTUDISC_DO` / `IPV6_MTU_DISCOVER`) to `host`, one
/// every 50 ms, up to `tries`; prints `EMSGSIZE after N` when the kernel refuses one (it learned
/// a smaller path MTU), else `sent N`.
fn udp_df_script(host: IpAddr, tries: u32) -> String {
    let (family, level, opt) = if host.is_ipv4() {
        ("AF_INET", "IPPROTO_IP", 10) // IP_MTU_DISCOVER
    } else {
        ("AF_INET6", "IPPROTO_IPV6", 23) // IPV6_MTU_DISCOVER
    };
    format!(
        "python3 -c '
import socket, errno, time
s = socket.socket(socket.{family}, socket.SOCK_DGRAM)
s.setsockopt(socket.{level}, {opt}, 2)
s.connect((\"{host}\", {UDP_PORT}))
for n in range({tries}):
    try:
        s.send(b\"u\" * 1400)
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            print(\"EMSGSIZE after\", n)
            raise SystemExit(0)
        raise
    time.sleep(0.05)
print(\"sent\", {tries})
'"
    )
}

/// The path MTU the kernel of `ns` has cached for `host` (`ip route get`), if any.
fn cached_mtu(ns: &Netns, host: IpAddr) -> Option<u16> {
    let out = ns.sh(&format!("ip route get {host}")).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok())
}

/// An upload runs at full size when a VPN connects and the path shrinks to 1372 with nothing
/// visible in the VM. Its retransmissions are a symptom, the agent re-measures, and from then on
/// every oversize segment it sends is dropped and answered with "fragmentation needed" (IPv4) /
/// "packet too big" (IPv6) naming 1372: the kernel lowers the connection's MSS and the upload
/// completes. With `--no-reflect` the same upload stalls until its time limit.
#[test]
fn an_upload_running_when_the_path_shrinks_completes() {
    across_a_shrink(
        "upload",
        ErrorKind::Local,
        |lab| lab.start_tcp_sink(SINK_PORT),
        |lab, host, limit| {
            let started = Instant::now();
            let out = lab
                .wsl
                .sh_output(&upload_script(host, 3 << 20, 3.0, limit.as_secs() as u32));
            let done = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("done"));
            (done, started.elapsed())
        },
    );
}

/// For IPv4 and IPv6, with reflection and without: the lab at 1500 with what `serve` starts in
/// `srv`, the agent measuring `srv` first (so that the connection starts at full size),
/// `transfer` started and the path shrunk to 1372 under it 0.8 s later. The transfer must
/// complete exactly when reflection is on, and errors of `kind` be sent exactly then.
fn across_a_shrink(
    what: &str,
    kind: ErrorKind,
    serve: impl Fn(&Lab) -> anyhow::Result<()>,
    transfer: impl Fn(&Lab, IpAddr, Duration) -> (bool, Duration) + Sync,
) {
    require_root();
    let limit = Duration::from_secs(15);
    for v6 in [false, true] {
        for reflect in [true, false] {
            let lab = Lab::new(1500).unwrap();
            serve(&lab).unwrap();
            let host = lab.srv_addr(v6);
            let mut options = AgentOptions::eth0().with(RunFlag::Target(host));
            if !reflect {
                options = options.with(RunFlag::NoReflect);
            }
            let agent = options.start_in_lab(&lab).unwrap();
            agent
                .wait_for_clamp(host, 1500, Duration::from_secs(30))
                .unwrap();
            let ((done, took), shrunk_at) = std::thread::scope(|s| {
                let started = Instant::now();
                let run = s.spawn(|| transfer(&lab, host, limit));
                std::thread::sleep(Duration::from_millis(800));
                lab.set_bottleneck(VPN_MTU).unwrap();
                let shrunk_at = started.elapsed();
                (run.join().unwrap(), shrunk_at)
            });
            let family = if v6 { "ipv6" } else { "ipv4" };
            let sent = sample(
                &agent.metrics().unwrap(),
                "wslnet_icmp_errors_sent_total",
                &[("family", family), ("kind", kind.label())],
            )
            .unwrap();
            eprintln!(
                "{host} reflect={reflect}: {what} done={done} in {took:?} (shrunk at \
                 {shrunk_at:?}), {sent} errors of kind {}",
                kind.label()
            );
            if reflect {
                assert!(
                    done,
                    "the {what} should complete; log:\n{}",
                    agent.daemon.log()
                );
                assert!(sent >= 1.0);
            } else {
                assert!(!done, "without reflection the {what} should stall");
                assert_eq!(sent, 0.0);
            }
        }
    }
}

/// A UDP sender with DF (QUIC, DNS, a WireGuard underlay) sending 1400-byte datagrams through a
/// measured 1372 black hole: the first one is dropped and answered, the kernel caches 1372 for
/// the destination, and the next send fails with EMSGSIZE, IPv4 and IPv6. To a destination that
/// is not measured (clamped for first contact only) nothing is answered and the datagrams just
/// vanish, as without the agent.
#[test]
fn a_udp_sender_with_df_learns_the_path_mtu() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let (v4, v6) = (lab.srv_addrs(false), lab.srv_addrs(true));
    let agent = AgentOptions::measuring(v4[0])
        .with(RunFlag::Target(v6[0]))
        .start_in_lab(&lab)
        .unwrap();
    for host in [v4[0], v6[0]] {
        agent
            .wait_for_clamp(host, VPN_MTU, Duration::from_secs(30))
            .unwrap();
        let out = lab.wsl.sh(&udp_df_script(host, 40)).unwrap();
        eprintln!("{host}: {}", out.trim());
        assert!(out.contains("EMSGSIZE after"), "{out}");
        assert_eq!(cached_mtu(&lab.wsl, host), Some(VPN_MTU));
    }
    // Not measured (no target, no learning): no answer, no EMSGSIZE, no cached MTU.
    for host in [v4[1], v6[1]] {
        let out = lab.wsl.sh(&udp_df_script(host, 10)).unwrap();
        assert!(out.contains("sent 10"), "{host}: {out}");
        assert_eq!(cached_mtu(&lab.wsl, host), None, "{host}");
    }
}

/// The same from a container behind the VM's own NAT (Docker in WSL): its datagram leaves eth0
/// with the VM's address, the error is addressed to that, and conntrack carries it back to the
/// container, whose socket gets EMSGSIZE.
#[test]
fn a_udp_sender_in_a_container_behind_the_nat_learns_the_path_mtu() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let ctr = lab.add_container().unwrap();
    let host = lab.srv_addr(false);
    let agent = AgentOptions::eth0()
        .with(RunFlag::Target(host))
        .start_in_lab(&lab)
        .unwrap();
    agent
        .wait_for_clamp(host, VPN_MTU, Duration::from_secs(30))
        .unwrap();
    let out = ctr.sh(&udp_df_script(host, 40)).unwrap();
    eprintln!("container -> {host}: {}", out.trim());
    assert!(out.contains("EMSGSIZE after"), "{out}");
    assert_eq!(cached_mtu(&ctr, host), Some(VPN_MTU));
}

/// A flood of oversize packets to one destination yields at most the configured rate of errors
/// (a burst of `reflect_per_sec`, then that many a second), and every error that reaches the
/// local stack, captured on `lo` and checked here with code independent of the agent's, has a
/// valid IP header checksum, a valid ICMP checksum, names 1372 and quotes the dropped packet's
/// header.
#[test]
fn a_flood_of_oversize_packets_yields_rate_limited_well_formed_errors() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let host = lab.srv_addr(false);
    let agent = AgentOptions::measuring(host)
        .with(RunFlag::ReflectPerSec(5))
        .start_in_lab(&lab)
        .unwrap();
    agent
        .wait_for_clamp(host, VPN_MTU, Duration::from_secs(30))
        .unwrap();
    let pcap = lab.tmp_dir().join("lo.pcap");
    let mut capture = lab.wsl.capture("lo", &pcap, &["icmp"]).unwrap();
    // IP_PMTUDISC_PROBE (3): DF set, the cached path MTU ignored: every datagram leaves at
    // 1400 bytes, however many errors come back. 500 of them in about a second.
    let started = Instant::now();
    lab.wsl
        .sh(&format!(
            "python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 3)
s.connect((\"{host}\", {UDP_PORT}))
for n in range(500):
    try:
        s.send(b\"f\" * 1400)
    except OSError:
        pass
    time.sleep(0.002)
'"
        ))
        .unwrap();
    let flood = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    // Errors can be sent until the metrics are read: the bucket refills over all of it.
    let window = started.elapsed();
    capture
        .signal_and_wait(libc::SIGINT, Duration::from_secs(5))
        .unwrap();
    let m = agent.metrics().unwrap();
    let sent = sample(
        &m,
        "wslnet_icmp_errors_sent_total",
        &[("family", "ipv4"), ("kind", "local")],
    )
    .unwrap();
    let limited = sample(
        &m,
        "wslnet_icmp_errors_limited_total",
        &[("family", "ipv4")],
    )
    .unwrap();
    let dropped = sample(
        &m,
        "wslnet_oversize_dropped_packets_total",
        &[("interface", "eth0"), ("family", "ipv4")],
    )
    .unwrap();
    let allowed = 5.0 + 5.0 * window.as_secs_f64() + 1.0;
    eprintln!(
        "flood of 500 in {flood:?}: {dropped} dropped, {sent} errors sent (at most {allowed:.1}), \
         {limited} held back"
    );
    // Each error also fails the socket's next send (EMSGSIZE, pending on the socket); every
    // other datagram leaves and is dropped.
    assert!(
        (499.0..=500.0).contains(&(dropped + sent)),
        "{dropped} + {sent}"
    );
    assert!(sent >= 5.0 && sent <= allowed, "{sent} > {allowed}");
    assert_eq!(limited + sent, dropped, "each drop answered or held back");

    let errors = packets::pcap_ipv4(&std::fs::read(&pcap).unwrap());
    assert_eq!(
        errors.len() as f64,
        sent,
        "every error sent reaches the stack"
    );
    for ip in &errors {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert_eq!(
            packets::fold(packets::sum_words(0, &ip[..ihl])),
            0xffff,
            "IP checksum"
        );
        let icmp = &ip[ihl..];
        assert_eq!(
            packets::fold(packets::sum_words(0, icmp)),
            0xffff,
            "ICMP checksum"
        );
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), VPN_MTU);
        let quoted = &icmp[8..];
        assert_eq!(
            &quoted[16..20],
            &lab_octets(host),
            "quotes the datagram to srv"
        );
        assert_eq!(quoted[9], 17, "a UDP datagram");
        assert_eq!(u16::from_be_bytes([quoted[2], quoted[3]]), 1400 + 28);
    }
}

fn lab_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A download runs at full size when a VPN connects and the path shrinks to 1372 with nothing
/// visible in the VM. It stops in mid-stream (a symptom); the re-measurement finds the path
/// narrower, and the agent tells the server, quoting a sequence number its stack accepts (the
/// server's ISN from its SYN-ACK plus what we received), that the path carries 1372: the server
/// retransmits smaller and the download completes, IPv4 and IPv6. With `--no-reflect` it stalls
/// until its time limit.
#[test]
fn a_download_running_when_the_path_shrinks_completes() {
    // Every lab's server has the same port, path and size: the first one's description serves.
    let http = std::sync::OnceLock::new();
    across_a_shrink(
        "download",
        ErrorKind::Peer,
        |lab| {
            let _ = http.set(lab.start_http(8080)?);
            Ok(())
        },
        |lab, host, limit| {
            clients::paced_download(&lab.wsl, http.get().expect("served"), host, limit)
        },
    );
}

/// A ZeroTier user's report: `zt*` at MTU 2800 over a 1000-byte path, the agent with its
/// default configuration. The SSH client's first connection is clamped for first contact to
/// 1280, still too big; the search finds 1000 within moments, the server is told, our own
/// oversize segments are answered locally, and the key exchange passes on the first try.
#[test]
fn zerotier_over_a_1000_byte_path_passes_ssh_on_the_first_try_by_default() {
    require_root();
    let lab = Lab::zerotier(1000).unwrap();
    let servers = Servers::start(&lab).unwrap();
    // Without the agent the key exchange stalls.
    let without = clients::run(&lab, &servers, Client::Ssh, false, Duration::from_secs(4));
    assert!(!without.ok && without.timed_out, "{without:?}");
    let agent = AgentOptions::as_at_boot().start_in_lab(&lab).unwrap();
    let first = clients::run(&lab, &servers, Client::Ssh, false, Duration::from_secs(20));
    eprintln!(
        "ssh over zt (1000-byte path): ok={} in {:?}",
        first.ok, first.elapsed
    );
    assert!(first.ok, "{first:?}; log:\n{}", agent.daemon.log());
}
