//! Soak (opt-in, not in the default suite): the agent runs for `WSLNET_SOAK_SECS` (default
//! 1800, 30 minutes) in the black-hole lab while interfaces come and go, the configuration is
//! reloaded, `/metrics` is scraped, floods of new destinations arrive and the path narrows and
//! widens. At the end its memory and descriptors are bounded, its manager still turns and every
//! clamp is right.
//!
//! `cargo test -p wslnet-tests --test soak -- --ignored --nocapture` (root; the agent built).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use wslnet_tests::{
    agent::{AgentOptions, RunFlag},
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::{PATIENCE, require_root, wait_until},
};

/// The lab's bottleneck (bytes) at the start and at the end.
const BOTTLENECK: u16 = VPN_MTU;
/// The narrower path the soak switches to now and then (bytes).
const NARROWER: u16 = 1300;
/// One round of the soak.
const ROUND: Duration = Duration::from_secs(5);
/// SYNs to new addresses (10.200.0.0/16, which nothing answers) in each flood.
const FLOOD: u32 = 200;

/// The agent's config: the lab's uplink, the soak's veth interfaces, re-checks every 20 s,
/// and `srv`'s /24 clamped statically when `static_clamp`.
fn write_config(path: &Path, static_clamp: bool) {
    let mut text =
        String::from("interfaces = [\"eth0\", \"soak*\"]\n[probe]\nrecheck_interval_secs = 20\n");
    if static_clamp {
        text += "[[clamp]]\ncidr = \"10.77.3.0/24\"\nmtu = 1200\n";
    }
    std::fs::write(path, text).unwrap();
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[test]
#[ignore = "30 minutes; run with --ignored (WSLNET_SOAK_SECS sets the length)"]
fn soak() {
    require_root();
    let secs: u64 = std::env::var("WSLNET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let lab = Lab::new(BOTTLENECK).unwrap();
    lab.vpn.sh("ip route add blackhole 10.200.0.0/16").unwrap();
    let config = lab.tmp_dir().join("wslnet.toml");
    write_config(&config, false);
    let agent = AgentOptions::as_at_boot()
        .with(RunFlag::Config(config.clone()))
        .start_in_lab(&lab)
        .unwrap();
    let pid = agent.daemon.pid();
    lab.syn_from_wsl(SRV_V4.into(), 9).unwrap();
    agent.wait_for_clamp(SRV_V4, BOTTLENECK, PATIENCE).unwrap();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut round = 0u32;
    let (mut reloads, mut floods, mut links, mut scrapes) = (0, 0, 0, 0);
    let mut baseline = None;
    let (mut max_rss, mut max_fds) = (0, 0);
    while Instant::now() < deadline {
        round += 1;
        // Interfaces come and go: a veth attached every round, removed the next.
        let (name, other) = (round % 2, (round + 1) % 2);
        lab.wsl
            .sh(&format!(
                "ip link del soak{other} 2>/dev/null
                 ip link add soak{name} type veth peer name peer{name} && ip link set soak{name} up"
            ))
            .unwrap();
        links += 1;
        if round.is_multiple_of(3) {
            write_config(&config, round.is_multiple_of(6));
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            reloads += 1;
        }
        if round.is_multiple_of(6) {
            lab.syn_flood_from_wsl(round * FLOOD, FLOOD).unwrap();
            floods += 1;
        }
        if round.is_multiple_of(4) {
            let mtu = if round.is_multiple_of(8) {
                BOTTLENECK
            } else {
                NARROWER
            };
            lab.set_bottleneck(mtu).unwrap();
        }
        lab.syn_from_wsl(SRV_V4.into(), 9).unwrap();
        assert!(agent.metrics().unwrap().contains("wslnet_build_info"));
        scrapes += 1;
        let (rss, fds) = footprint(pid);
        // The first minute fills the caches and the learned destinations: measure from there.
        if baseline.is_none() && start.elapsed() > Duration::from_secs(60) {
            baseline = Some((rss, fds));
        }
        max_rss = max_rss.max(rss);
        max_fds = max_fds.max(fds);
        std::thread::sleep(ROUND);
    }

    // The end state: the first path, no static clamp, no soak interfaces.
    write_config(&config, false);
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    lab.wsl
        .sh("ip link del soak0 2>/dev/null; ip link del soak1 2>/dev/null; true")
        .unwrap();
    lab.set_bottleneck(BOTTLENECK).unwrap();
    lab.syn_from_wsl(SRV_V4.into(), 9).unwrap();
    agent
        .wait_for_clamp(SRV_V4, BOTTLENECK, Duration::from_secs(120))
        .unwrap();
    wait_until(PATIENCE, "no static entry left", || {
        let status = agent.status().ok()?;
        let statics = status["clamps"]
            .as_array()?
            .iter()
            .filter(|c| c["origin"] == "static")
            .count();
        (statics == 0).then_some(())
    })
    .unwrap();
    let (end_rss, end_fds) = footprint(pid);
    let (base_rss, base_fds) = baseline.unwrap_or((end_rss, end_fds));
    eprintln!(
        "soak: {secs} s, {round} rounds, {links} interfaces, {reloads} reloads, {floods} floods \
         of {FLOOD}, {scrapes} scrapes; RSS KiB after 1 min {base_rss}, max {max_rss}, end \
         {end_rss}; fds after 1 min {base_fds}, max {max_fds}, end {end_fds}"
    );
    assert_eq!(
        agent.healthz().unwrap(),
        (200, "ok".to_string()),
        "{}",
        agent.daemon.log()
    );
    let log = agent.daemon.log();
    for bad in ["panicked", "manager ended", "stopping"] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    assert!(
        max_rss <= base_rss * 2 + 8 * 1024,
        "RSS grew from {base_rss} to {max_rss} KiB"
    );
    assert!(
        max_fds <= base_fds + 32,
        "fds grew from {base_fds} to {max_fds}"
    );
}
