//! Static and probed clamp entries agree with the configuration and the measurements after
//! every reload and every start: a static prefix wins over the probed entry of a destination
//! inside it, a destination whose static clamp is removed gets its probed entry back, and a
//! probed entry that an earlier run left for a destination nobody measures any more is removed.

use std::{path::Path, time::Duration};

use wslnet_tests::{
    agent::{Agent, AgentOptions, RunFlag},
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::{Bpffs, PATIENCE, require_root, wait_until},
};

/// Writes the agent's config: `eth0`, no learning, `srv` as a target when `target`, and the
/// static clamps `clamps` (`(cidr, mtu)`).
fn write_config(path: &Path, target: bool, clamps: &[(&str, u16)]) {
    let mut text = String::from("interfaces = [\"eth0\"]\n");
    if target {
        text += &format!("targets = [\"{SRV_V4}\"]\n");
    }
    text += "[probe]\nlearn = false\nrecheck_interval_secs = 3600\n";
    for (cidr, mtu) in clamps {
        text += &format!("[[clamp]]\ncidr = \"{cidr}\"\nmtu = {mtu}\n");
    }
    std::fs::write(path, text).unwrap();
}

/// Sends SIGHUP and waits for the reload to be logged `n` times in all.
fn reload(agent: &Agent, n: usize) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGHUP) };
    wait_until(PATIENCE, "the reload", || {
        (agent.daemon.log().matches("configuration reloaded").count() >= n).then_some(())
    })
    .unwrap();
}

/// The clamp entry for exactly `net` (`"10.77.3.0/24"`) as `status` shows it: (MTU, origin).
fn entry(agent: &Agent, net: &str) -> Option<(u64, String)> {
    let status = agent.status().unwrap();
    status["clamps"].as_array()?.iter().find_map(|c| {
        (c["net"] == net).then(|| (c["mtu"].as_u64().unwrap(), c["origin"].to_string()))
    })
}

/// Waits until the entry for `net` is `want`; panics with the status and log otherwise.
fn wait_for_entry(agent: &Agent, net: &str, want: Option<(u64, &str)>) {
    let want = want.map(|(mtu, origin)| (mtu, format!("\"{origin}\"")));
    wait_until(PATIENCE, &format!("clamp entry {net} = {want:?}"), || {
        (entry(agent, net) == want).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; status: {}\nlog:\n{}",
            agent.status().unwrap(),
            agent.daemon.log()
        )
    });
}

#[test]
fn sighup_reconciles_static_and_probed_clamps_both_ways() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let config = lab.tmp_dir().join("wslnet.toml");
    let host = format!("{SRV_V4}/32");
    write_config(&config, true, &[]);
    let agent = AgentOptions::as_at_boot()
        .with(RunFlag::Config(config.clone()))
        .start_in_lab(&lab)
        .unwrap();
    agent
        .wait_for_clamp(SRV_V4, VPN_MTU, Duration::from_secs(30))
        .unwrap();
    wait_for_entry(&agent, &host, Some((VPN_MTU.into(), "probed")));

    // A static prefix over the measured destination: it wins, the probed /32 (which the
    // longest-prefix lookup would prefer) goes.
    write_config(&config, true, &[("10.77.3.0/24", 1200)]);
    reload(&agent, 1);
    wait_for_entry(&agent, "10.77.3.0/24", Some((1200, "static")));
    wait_for_entry(&agent, &host, None);

    // A static clamp of exactly its address replaces it; removing that brings the measured
    // value back instead of leaving the destination with no entry.
    write_config(&config, true, &[(&host, 1200)]);
    reload(&agent, 2);
    wait_for_entry(&agent, &host, Some((1200, "static")));
    wait_for_entry(&agent, "10.77.3.0/24", None);
    write_config(&config, true, &[]);
    reload(&agent, 3);
    wait_for_entry(&agent, &host, Some((VPN_MTU.into(), "probed")));
}

#[test]
fn probed_entries_an_earlier_run_left_for_nobody_are_removed_at_start() {
    require_root();
    let lab = Lab::new(VPN_MTU).unwrap();
    let fs = Bpffs::new().unwrap();
    let config = lab.tmp_dir().join("wslnet.toml");
    let host = format!("{SRV_V4}/32");
    write_config(&config, true, &[]);
    let options = AgentOptions::as_at_boot().with(RunFlag::Config(config.clone()));
    let mut first = options
        .clone()
        .with(RunFlag::KeepAttached)
        .start(&lab.wsl, &fs)
        .unwrap();
    wait_for_entry(&first, &host, Some((VPN_MTU.into(), "probed")));
    first
        .daemon
        .signal_and_wait(libc::SIGTERM, PATIENCE)
        .unwrap();
    // The next run no longer measures `srv` (not a target, nothing learned): its entry is
    // nobody's measurement, and goes.
    write_config(&config, false, &[]);
    let second = options.start(&lab.wsl, &fs).unwrap();
    wait_for_entry(&second, &host, None);
    assert!(
        second
            .daemon
            .log()
            .contains("removing a probed clamp entry nothing stands for"),
        "{}",
        second.daemon.log()
    );
}
