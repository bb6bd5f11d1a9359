//! Floods. A burst of SYNs to many addresses (a scan, or one process's flood of connects) uses
//! the search budget up, but cannot keep a destination a user connects to afterwards waiting:
//! new destinations are admitted most recently seen first as the budget refills, and due
//! searches start most recently used first. A burst of interfaces whose events the kernel
//! could not queue (the agent's netlink buffer full) is found by listing the interfaces again.

use std::time::Duration;

use wslnet_tests::{
    agent::{AgentOptions, Pair, RunFlag, sample},
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::{PATIENCE, require_root, wait_until},
};

/// `zt*` interfaces (veth pairs; the peers' names do not match) created while the agent is
/// stopped: their netlink events (several each) are far more than its socket buffer holds.
const BURST: usize = 200;

/// Addresses the flood connects to (10.200.0.0/16, which nothing answers).
const FLOOD: u32 = 1500;

#[test]
fn a_flood_of_new_destinations_does_not_hold_up_the_next_one() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    // 10.200.0.0/16 leads nowhere: `vpn` drops it, so each flood address is a silent search.
    lab.vpn.sh("ip route add blackhole 10.200.0.0/16").unwrap();
    let agent = AgentOptions::eth0()
        .with(RunFlag::RecheckInterval(3600))
        .start_in_lab(&lab)
        .unwrap();
    // One SYN to each of FLOOD addresses, as fast as Python can connect.
    lab.syn_flood_from_wsl(0, FLOOD).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Then the user's connection (its SYN is what the datapath learns).
    lab.syn_from_wsl(SRV_V4.into(), 9).unwrap();
    // The flood took the whole burst of `probe.searches_per_minute` (60). The old fixed window
    // (first come, first served) kept this one waiting until the minute was over.
    agent
        .wait_for_clamp(SRV_V4, VPN_MTU, Duration::from_secs(20))
        .unwrap();
    let metrics = agent.metrics().unwrap();
    let pending = sample(&metrics, "wslnet_pending_destinations", &[]).unwrap();
    assert!(
        pending > 0.0,
        "the flood's addresses wait for the budget: {pending}"
    );
}

/// The agent stopped (SIGSTOP) while [`BURST`] `zt*` interfaces appear: the kernel drops the
/// events that do not fit its netlink buffer and tells it (ENOBUFS, an overrun). It lists the
/// interfaces again and attaches every one; an agent that ignored the overrun would never learn
/// of the interfaces whose events were dropped.
#[test]
fn interfaces_whose_events_were_lost_are_found_by_listing_again() {
    require_root();
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let agent = AgentOptions::as_at_boot()
        .with(RunFlag::NoLearn)
        .start(&pair.a, &fs)
        .unwrap();
    let pid = agent.daemon.pid() as i32;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let names: Vec<String> = (0..BURST).map(|i| format!("zt{i:08x}")).collect();
    let batch = |line: fn(&str) -> String| names.iter().map(|n| line(n)).collect::<String>();
    let script = format!(
        "ip -batch - <<'EOF'\n{}EOF\nip -batch - <<'EOF'\n{}EOF\n",
        batch(|n| format!("link add name {n} type veth peer name p{n}\n")),
        batch(|n| format!("link set dev {n} up\n"))
    );
    let created = pair.a.sh(&script);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    created.unwrap();
    let attached = || -> Option<usize> {
        let names = agent.interface_names().ok()?;
        Some(names.iter().filter(|n| n.starts_with("zt")).count())
    };
    wait_until(
        PATIENCE * 2,
        &format!("{BURST} zt interfaces attached"),
        || (attached()? == BURST).then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; {:?} attached; log:\n{}",
            attached(),
            agent.daemon.log()
        )
    });
    let overruns = sample(
        &agent.metrics().unwrap(),
        "wslnet_netlink_overruns_total",
        &[],
    );
    assert!(overruns >= Some(1.0), "no overrun counted: {overruns:?}");
}
