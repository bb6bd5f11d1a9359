//! DSCP normalisation (`run --set-dscp`) through a NAT that drops marked packets, with real
//! OpenSSH, a capture on the far side and checksums checked by the test crate's own code.

use std::{net::IpAddr, time::Duration};

use wslnet_tests::{
    agent::{AgentOptions, RunFlag, sample},
    lab::{Lab, SRV_V4},
    netns::require_root,
    packets,
};

/// Session output the remote command writes, bytes.
const OUTPUT: usize = 100_000;
/// ssh's time limit, seconds: far more than the session needs when packets pass.
const SSH_SECS: u32 = 8;

/// What one `ssh -o IPQoS='af21 cs1' ... 'head -c 100000 /dev/zero'` printed: the count of
/// session output bytes that arrived (`wc -c`), then ssh's `-v` log.
struct Session {
    log: String,
}

impl Session {
    /// Whether ssh authenticated (from its `-v` log).
    fn authenticated(&self) -> bool {
        self.log.contains("Authenticated to")
    }

    /// Bytes of session output that arrived.
    fn bytes(&self) -> usize {
        self.log
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn ssh_marked(lab: &Lab, sshd: &wslnet_tests::lab::SshServer) -> Session {
    let mut args = vec![
        "-v".to_string(),
        "-o".to_string(),
        "IPQoS=af21 cs1".to_string(),
    ];
    args.extend(sshd.ssh_args(
        IpAddr::V4(SRV_V4),
        SSH_SECS,
        &format!("head -c {OUTPUT} /dev/zero"),
    ));
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let log = lab.tmp_dir().join("ssh-v.log");
    let log = log.display();
    let out = lab
        .wsl
        .sh_output(&format!(
            "timeout {SSH_SECS} ssh {} 2>{log} | wc -c; cat {log}",
            quoted.join(" ")
        ))
        .unwrap();
    Session {
        log: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// OpenSSH marks its packets `IPQoS af21 cs1` (its default since 7.8): af21 from its SYN through
/// the login (OpenSSH 9.2, Debian 12's, marks the socket before it connects), cs1 once a
/// non-interactive session starts. Behind a NAT that drops cs1 SSH logs in and then moves no
/// session data; one that drops af21 too lets it not even connect. With `--set-dscp 0` the agent
/// clears the marks of every egress packet: through a NAT dropping both, the command moves its
/// 100000 bytes of session output, and a capture in `srv` shows every packet from `wsl` with
/// DSCP 0 (every packet to sshd), the ECN bits the stack set (ECN is negotiated: data segments carry ECT(0)), and a
/// valid IPv4 header checksum.
#[test]
fn ssh_through_a_nat_that_drops_marked_packets_passes_with_set_dscp_0() {
    require_root();
    let lab = Lab::new(1500).unwrap();
    for ns in [&lab.wsl, &lab.srv] {
        ns.sh("sysctl -qw net.ipv4.tcp_ecn=1").unwrap();
    }
    let sshd = lab.start_sshd(2222).unwrap();

    lab.drop_marked(&["cs1"]).unwrap();
    let without = ssh_marked(&lab, &sshd);
    assert!(
        without.authenticated() && without.bytes() == 0,
        "without the rewrite, behind a NAT dropping cs1, SSH should log in and then move \
         nothing: {} bytes\n{}",
        without.bytes(),
        without.log
    );
    lab.drop_marked(&["cs1", "af21"]).unwrap();
    let without = ssh_marked(&lab, &sshd);
    assert!(
        !without.authenticated() && without.bytes() == 0,
        "without the rewrite, behind a NAT dropping af21, SSH should not get in: {} bytes\n{}",
        without.bytes(),
        without.log
    );

    let agent = AgentOptions::default()
        .with(RunFlag::SetDscp(0))
        .start_in_lab(&lab)
        .unwrap();
    let pcap = lab.tmp_dir().join("dscp.pcap");
    let mut capture = lab.srv.capture("eth0", &pcap, &[]).unwrap();
    let with = ssh_marked(&lab, &sshd);
    capture
        .signal_and_wait(libc::SIGINT, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        with.bytes(),
        OUTPUT,
        "{}\nagent log:\n{}",
        with.log,
        agent.daemon.log()
    );

    // Every IPv4 TCP packet to sshd (the capture sees both directions and IPv6 neighbours).
    let seen: Vec<Vec<u8>> = packets::pcap_ipv4(&std::fs::read(&pcap).unwrap())
        .into_iter()
        .filter(|ip| {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            ip[9] == 6 && ip.get(ihl + 2..ihl + 4) == Some(&2222u16.to_be_bytes()[..])
        })
        .collect();
    assert!(
        seen.len() > 10,
        "{} packets captured; tcpdump: {}",
        seen.len(),
        capture.log()
    );
    let mut ect0 = 0;
    for ip in &seen {
        let ds = ip[1];
        assert_eq!(ds >> 2, 0, "DSCP {} reached srv", ds >> 2);
        // Linux marks ECN-capable data ECT(0) and its pure ACKs not-ECT; nothing else.
        assert!(
            ds & 0b11 == 0b10 || ds & 0b11 == 0,
            "ECN bits {:#04b}",
            ds & 0b11
        );
        ect0 += usize::from(ds & 0b11 == 0b10);
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert_eq!(
            packets::internet_checksum(&ip[..ihl]),
            0,
            "IPv4 header checksum wrong: {:02x?}",
            &ip[..ihl]
        );
    }
    assert!(
        ect0 > 0,
        "no ECT(0) packet among {}: ECN was not negotiated",
        seen.len()
    );
    let rewritten = sample(
        &agent.metrics().unwrap(),
        "wslnet_dscp_rewritten_total",
        &[("interface", "eth0"), ("family", "ipv4")],
    )
    .unwrap_or(0.0);
    assert!(rewritten > 0.0, "no rewrite counted");
    let status = agent.status().unwrap();
    assert_eq!(status["interfaces"][0]["set_dscp"], 0, "{status}");
}
