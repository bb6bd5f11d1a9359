//! `wslnet-agent doctor` in the black-hole lab: a real resolver (dnsmasq), a real proxy port,
//! the real agent, a path that carries 1372 bytes and drops the ICMP errors that would say so.
use std::net::IpAddr;

use serde_json::Value;
use wslnet_tests::{
    agent::{AgentOptions, RunFlag},
    lab::{Lab, SRV_MORE_V4, SRV_V4, VPN_MTU},
    netns::{Netns, PATIENCE, agent_bin},
};

/// A name only the lab's resolver knows.
const NAME: &str = "intranet.lab";
/// A port nothing listens on in `srv`.
const CLOSED_PORT: u16 = 3999;
/// A port the lab's HTTP server listens on (the working proxy).
const PROXY_PORT: u16 = 3128;
/// Most packets one doctor run in the lab may send (its own count and the interface's).
const PACKET_BOUND: u64 = 200;

/// One doctor run: exit code, the parsed `--json` report, eth0's transmitted packets during it.
struct Run {
    code: i32,
    report: Value,
    tx_packets: u64,
}

impl Run {
    fn finding(&self, check: &str) -> &Value {
        self.report["findings"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["check"] == check))
            .unwrap_or_else(|| panic!("no {check} finding in {:#}", self.report))
    }

    fn status(&self, check: &str) -> &str {
        self.finding(check)["status"].as_str().unwrap_or("?")
    }

    fn summary(&self, check: &str) -> &str {
        self.finding(check)["summary"].as_str().unwrap_or("")
    }
}

/// `wslnet-agent doctor --json ARGS` in `wsl` with these environment variables.
fn doctor(ns: &Netns, args: &[&str], env: &[(&str, String)]) -> Run {
    let before = tx_packets(ns);
    let mut cmd = ns.command(agent_bin());
    cmd.arg("doctor").arg("--json").args(args);
    for v in wslnet_agent::doctor::PROXY_VARIABLES {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        tx_packets: tx_packets(ns) - before,
        report,
    };
    eprintln!(
        "doctor {args:?}: exit {}, {} packets by its count, {} on eth0, {} ms\n{:#}",
        run.code, run.report["packets_sent"], run.tx_packets, run.report["elapsed_ms"], run.report
    );
    run
}

/// Packets `wsl`'s eth0 has transmitted.
fn tx_packets(ns: &Netns) -> u64 {
    ns.sh("cat /sys/class/net/eth0/statistics/tx_packets")
        .expect("reading tx_packets")
        .trim()
        .parse()
        .expect("tx_packets")
}

#[test]
fn doctor_names_a_dead_resolver_a_black_hole_and_a_closed_proxy_then_passes_once_fixed() {
    let lab = Lab::new(VPN_MTU).unwrap();
    lab.start_dns(&[(NAME, SRV_V4)]).unwrap();
    lab.start_http(PROXY_PORT).unwrap();
    let srv = IpAddr::V4(SRV_V4);
    let resolver = IpAddr::V4(SRV_V4);
    // A host of the server network with no resolver on it: queries get no answer.
    let dead = IpAddr::V4(SRV_MORE_V4[0]);
    let target = srv.to_string();
    let no_pins = lab.tmp_dir().join("no-pins").display().to_string();
    let args = ["--target", &target, "--name", NAME];

    // Broken: a dead nameserver, a proxy on a closed port, a black hole, no wslnet.
    lab.set_nameservers(&[dead]).unwrap();
    let closed = vec![("https_proxy", format!("http://{SRV_V4}:{CLOSED_PORT}"))];
    let broken = doctor(
        &lab.wsl,
        &[&args[..], &["--pin-dir", &no_pins]].concat(),
        &closed,
    );
    assert_eq!(broken.code, 1, "something fails, so exit 1");
    for (check, status) in [
        ("route", "ok"),
        ("gateway", "ok"),
        ("reach", "ok"),
        ("dns", "fail"),
        ("proxy", "fail"),
        ("pmtu", "fail"),
        ("agent", "fail"),
    ] {
        assert_eq!(broken.status(check), status, "{check}: {:#}", broken.report);
    }
    assert!(broken.summary("dns").contains(&dead.to_string()));
    assert!(broken.summary("proxy").contains(&CLOSED_PORT.to_string()));
    assert!(broken.summary("pmtu").contains("black hole of 1372"));
    let fixes: Vec<&str> = broken.report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| f["fix"].as_str().unwrap_or(""))
        .collect();
    assert!(
        fixes.iter().all(|f| !f.is_empty()),
        "a fix for every failure"
    );

    // The second resolver tells a dead resolver from a dead name.
    let resolver_s = resolver.to_string();
    let told = doctor(
        &lab.wsl,
        &[
            &args[..],
            &["--resolver", &resolver_s, "--pin-dir", &no_pins],
        ]
        .concat(),
        &[],
    );
    assert_eq!(told.status("dns"), "fail");
    assert!(
        told.summary("dns")
            .contains(&format!("{resolver} resolves {NAME}: the resolver is dead")),
        "{}",
        told.summary("dns")
    );

    // Fixed: a working resolver, a proxy that listens, wslnet clamping the target.
    lab.set_nameservers(&[resolver]).unwrap();
    let agent = AgentOptions::eth0()
        .with(RunFlag::Target(srv))
        .start_in_lab(&lab)
        .unwrap();
    agent.wait_for_clamp(srv, VPN_MTU, PATIENCE).unwrap();
    let open = vec![("https_proxy", format!("http://{SRV_V4}:{PROXY_PORT}"))];
    let fixed = doctor(
        &lab.wsl,
        &[&args[..], &["--pin-dir", &agent.pin_dir]].concat(),
        &open,
    );
    assert_eq!(fixed.code, 0, "nothing fails: {:#}", fixed.report);
    assert_eq!(fixed.status("dns"), "ok");
    assert_eq!(fixed.status("proxy"), "ok");
    assert_eq!(fixed.status("agent"), "ok");
    assert_ne!(fixed.status("pmtu"), "fail");
    assert!(fixed.summary("pmtu").contains("1372"));
    assert!(
        fixed
            .summary("agent")
            .contains(&format!("{srv} clamped to 1372"))
    );

    for run in [&broken, &told, &fixed] {
        let counted = run.report["packets_sent"].as_u64().unwrap();
        assert!(counted <= PACKET_BOUND, "{counted} packets counted");
        assert!(
            run.tx_packets <= PACKET_BOUND,
            "{} packets left eth0",
            run.tx_packets
        );
    }
}

#[test]
fn without_a_default_route_route_fails_and_what_depends_on_it_is_skipped() {
    let lab = Lab::new(VPN_MTU).unwrap();
    lab.set_nameservers(&[IpAddr::V4(SRV_V4)]).unwrap();
    lab.wsl
        .sh("ip route del default; ip -6 route del default")
        .unwrap();
    let target = SRV_V4.to_string();
    let run = doctor(&lab.wsl, &["--target", &target, "--name", NAME], &[]);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("route"), "fail");
    assert!(run.summary("route").contains("no default route"));
    assert!(
        run.finding("route")["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ip route add default"))
    );
    for check in ["gateway", "reach", "dns", "pmtu"] {
        assert_eq!(run.status(check), "skip", "{check}: {:#}", run.report);
    }
    assert_eq!(
        run.report["packets_sent"], 0,
        "nothing to send without a route"
    );
}
