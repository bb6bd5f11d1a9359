//! The path-MTU manager inside `run`, in the black-hole lab: when it searches again. A network
//! change that arrives while a destination is being measured is not lost, and a destination
//! that never answers is searched ever less often instead of every interval forever.

use wslnet_tests::{
    agent::{Agent, sample},
    lab::{Lab, SRV_V4},
    netns::{Bpffs, PATIENCE, require_root, wait_until},
};

/// A re-check interval no test waits for: only the behaviour under test can search again.
const NEVER: &str = "3600";

/// The agent's exported path MTU of `target` (0 while unreachable), if any.
fn path_mtu(agent: &Agent, target: &str) -> Option<f64> {
    sample(
        &agent.metrics().ok()?,
        "wslnet_path_mtu_bytes",
        &[("target", target)],
    )
}

/// Waits until the agent's log has a line containing `text`; panics with the log otherwise.
fn wait_for_log(agent: &Agent, text: &str) {
    wait_until(PATIENCE, &format!("a log line with {text:?}"), || {
        agent.daemon.log().contains(text).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.daemon.log()));
}

#[test]
fn a_network_change_during_a_search_is_searched_again() {
    require_root();
    let lab = Lab::new(1500).unwrap();
    let fs = Bpffs::new().unwrap();
    let target = SRV_V4.to_string();
    // Nothing crosses the bottleneck while the first search runs: it ends "unreachable", and
    // its next search would wait the whole re-check interval (an hour).
    lab.set_loss(100.0).unwrap();
    let agent = Agent::start(
        &lab.wsl,
        &fs,
        &[
            "--iface",
            "eth0",
            "--target",
            &target,
            "--no-learn",
            "--recheck-interval",
            NEVER,
        ],
    )
    .unwrap();
    // A route changes while that search still waits for answers (two rounds of 1 s).
    lab.wsl
        .sh("ip route add 10.200.0.0/24 via 10.77.1.1")
        .unwrap();
    wait_for_log(&agent, "unreachable: no probe answered");
    // Then the path carries again; nothing else tells the agent.
    lab.set_loss(0.0).unwrap();
    // Searched again at once because the route changed during the first search, so the path
    // is measured within seconds, not an hour.
    wait_until(PATIENCE, "the path measured at 1500", || {
        (path_mtu(&agent, &target) == Some(1500.0)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.daemon.log()));
    wait_for_log(&agent, "the network changed during its measurement");
}

#[test]
fn a_destination_that_never_answers_is_searched_ever_less_often() {
    require_root();
    let lab = Lab::new(1500).unwrap();
    let fs = Bpffs::new().unwrap();
    let target = SRV_V4.to_string();
    lab.drop_icmp_echo(true).unwrap();
    let agent = Agent::start(
        &lab.wsl,
        &fs,
        &[
            "--iface",
            "eth0",
            "--target",
            &target,
            "--no-learn",
            "--recheck-interval",
            "1",
        ],
    )
    .unwrap();
    // Waits of 1, 2, 4 s after the first three unanswered searches (it was 1 s each time).
    for (n, wait) in [(1, 1), (2, 2), (3, 4)] {
        wait_for_log(&agent, &format!("in_a_row={n} next_search_secs={wait}"));
    }
    let unreachable = || {
        sample(
            &agent.metrics().unwrap(),
            "wslnet_unreachable_destinations",
            &[],
        )
    };
    assert_eq!(unreachable(), Some(1.0));

    // Once it answers, it is measured at the next search and no longer counted.
    lab.drop_icmp_echo(false).unwrap();
    wait_until(PATIENCE, "the path measured at 1500", || {
        (path_mtu(&agent, &target) == Some(1500.0)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.daemon.log()));
    assert_eq!(unreachable(), Some(0.0));
}
