//! A burst of SYNs to many addresses (a scan, or one process's flood of connects) uses the
//! search budget up, but cannot keep a destination a user connects to afterwards waiting: new
//! destinations are admitted most recently seen first as the budget refills, and due searches
//! start most recently used first.

use std::time::Duration;

use wslnet_tests::{
    agent::{AgentOptions, RunFlag, sample},
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::require_root,
};

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
