//! The path-MTU manager inside `run`, in the black-hole lab: when it searches again, and what
//! happens when it fails. A network change that arrives while a destination is being measured
//! is not lost, and a destination that never answers is searched ever less often instead of
//! every interval forever. Faults injected into the debug build ([`wslnet_agent::fault`]): a
//! panicking probe job is counted and its destination measured again; a panicking manager ends
//! `run` with a failure (systemd restarts it); a hung manager makes `/healthz` unhealthy.

use wslnet_agent::{fault::Fault, health::MANAGER_STALL};
use wslnet_tests::{
    agent::{Agent, AgentOptions, RunFlag, sample},
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::{PATIENCE, require_root, wait_until},
};

/// A re-check interval no test waits for (seconds): only the behaviour under test can search
/// again.
const NEVER: u64 = 3600;

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
    // Nothing crosses the bottleneck: every search ends "unreachable" after two rounds of 1 s,
    // and the next one would wait the whole re-check interval (an hour).
    lab.set_loss(100.0).unwrap();
    let agent = AgentOptions::measuring(SRV_V4)
        .with(RunFlag::RecheckInterval(NEVER))
        .start_in_lab(&lab)
        .unwrap();
    // A route changes while the first search still waits for answers.
    lab.wsl
        .sh("ip route add 10.200.0.0/24 via 10.77.1.1")
        .unwrap();
    wait_for_log(&agent, "in_a_row=1 ");
    // The second search follows at once, not an hour later: the change came during the first,
    // whose result may describe the path before it.
    wait_for_log(&agent, "in_a_row=2 ");
    wait_for_log(&agent, "the network changed during its measurement");
}

#[test]
fn a_destination_that_never_answers_is_searched_ever_less_often() {
    require_root();
    let lab = Lab::new(1500).unwrap();
    lab.drop_icmp_echo(true).unwrap();
    let agent = AgentOptions::measuring(SRV_V4)
        .with(RunFlag::RecheckInterval(1))
        .start_in_lab(&lab)
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
    agent.wait_for_path_mtu(SRV_V4, 1500, PATIENCE);
    assert_eq!(unreachable(), Some(0.0));
}

#[test]
fn a_panicking_probe_job_is_counted_and_its_destination_measured_again() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let agent = AgentOptions::measuring(SRV_V4)
        .with(RunFlag::RecheckInterval(1))
        .with_fault(Fault::JobPanic)
        .start_in_lab(&lab)
        .unwrap();
    wait_for_log(&agent, "a path-MTU job failed");
    agent.wait_for_path_mtu(SRV_V4, VPN_MTU, PATIENCE);
    let panicked = sample(
        &agent.metrics().unwrap(),
        "wslnet_probe_searches_total",
        &[("outcome", "panicked")],
    );
    assert_eq!(panicked, Some(1.0));
}

#[test]
fn a_panicking_manager_ends_run_with_a_failure() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let mut agent = AgentOptions::measuring(SRV_V4)
        .with_fault(Fault::ManagerPanic)
        .start_in_lab(&lab)
        .unwrap();
    let status = agent.daemon.wait_for_exit(PATIENCE).unwrap();
    let log = agent.daemon.log();
    assert!(!status.success(), "{status}; log:\n{log}");
    assert!(log.contains("the path-MTU manager ended"), "{log}");
}

#[test]
fn a_hung_manager_makes_healthz_unhealthy() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let agent = AgentOptions::measuring(SRV_V4)
        .with_fault(Fault::ManagerStall)
        .start_in_lab(&lab)
        .unwrap();
    let body = wait_until(MANAGER_STALL + PATIENCE, "/healthz answering 503", || {
        let (code, body) = agent.healthz().ok()?;
        (code == 503).then_some(body)
    })
    .unwrap();
    assert!(
        body.contains("the path-MTU manager has not run for"),
        "{body}"
    );
}
