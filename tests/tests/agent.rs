//! The agent as a service, in namespaces: interfaces that come and go, kill -9 and restart,
//! `detach`, configuration errors, running without root, and a real Prometheus scraping it.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use wslnet_agent::config::AttachMode;
use wslnet_tests::{
    agent::{Agent, AgentOptions, Pair, RunFlag, run_command, sample, status_counter},
    lab::VPN_MTU,
    netns::{
        Bpffs, Daemon, Netns, PATIENCE, Transport, agent_bin, require_root, skip_in_vm, veth,
        wait_until,
    },
    prometheus,
};

/// The port [`listener`] holds connections on in [`Pair::b`].
const PEER_PORT: u16 = 7000;
/// The path MTU (bytes) the tests clamp [`Pair::b`] to: its MSS of 1460 becomes 1332, which
/// with timestamps makes `a` send segments of 1320 ([`CLAMPED_MSS`]).
const PEER_CLAMP: u16 = VPN_MTU;
/// What `a` sends to [`Pair::b`] with while it is clamped to [`PEER_CLAMP`].
const CLAMPED_MSS: u32 = 1320;
/// What `a` sends to [`Pair::b`] with unclamped: 1460 less 12 of timestamps.
const UNCLAMPED_MSS: u32 = 1448;

/// How long a stopping agent may take to detach and exit: generous, because the VM
/// runs under software emulation where netlink round trips are slow (an upper bound, not a
/// timing assertion).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends SIGTERM to a running agent and waits (up to [`STOP_TIMEOUT`]) for it to exit.
fn sigterm(daemon: &mut Daemon) -> std::process::ExitStatus {
    daemon.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT).unwrap()
}

/// A short-lived TCP connection from `a` to [`Pair::b`]'s [`listener`] (a SYN through the
/// datapath); returns the sender MSS the kernel uses for it.
fn mss_to_peer(pair: &Pair) -> u32 {
    pair.sender_mss(Pair::b4(), PEER_PORT).unwrap()
}

/// The agent as most tests here run it: `eth0` of [`Pair::a`], [`Pair::b`] clamped to
/// [`PEER_CLAMP`].
fn clamping_the_peer() -> AgentOptions {
    AgentOptions::clamping(Pair::b4(), PEER_CLAMP)
}

/// The agent [`clamping_the_peer`] with `flags` besides, started on a new [`Pair`] whose `b`
/// holds a [`listener`], and checked to clamp (one SYN, at [`CLAMPED_MSS`]). Bind the four in
/// this order, as in `let (pair, fs, _peer, agent) = ...`: they are dropped in reverse, the
/// agent first.
fn clamping_pair(flags: &[RunFlag]) -> (Pair, Bpffs, Daemon, Agent) {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let peer = listener(&pair.b, PEER_PORT);
    let options = flags
        .iter()
        .cloned()
        .fold(clamping_the_peer(), AgentOptions::with);
    let agent = options.start(&pair.a, &fs).unwrap();
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    (pair, fs, peer, agent)
}

/// A TCP listener on `port` in `ns` that accepts and holds connections.
fn listener(ns: &Netns, port: u16) -> Daemon {
    let d = ns
        .spawn(
            "python3",
            [
                "-c",
                &format!(
                    "import socket\ns=socket.socket(socket.AF_INET6)\n\
                     s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                     s.bind(('::', {port}))\ns.listen(128)\nc=[]\nwhile True: c.append(s.accept())"
                ),
            ],
        )
        .unwrap();
    ns.wait_for_listener(Transport::Tcp, port, PATIENCE)
        .unwrap();
    d
}

#[test]
fn zerotier_interface_appearing_later_is_attached_and_detached() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let _l = listener(&pair.b, PEER_PORT);
    let zt_peer = IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2));
    let agent = AgentOptions::clamping(zt_peer, PEER_CLAMP)
        .with(RunFlag::Iface("zt*".into()))
        .start(&pair.a, &fs)
        .unwrap();
    assert_eq!(agent.interface_names().unwrap(), vec!["eth0"]);
    let mode = agent.status().unwrap()["interfaces"][0]["mode"]
        .as_str()
        .unwrap()
        .to_string();

    for round in 0..2 {
        // ZeroTier creates its TAP device after boot: zt + 10 hex digits, MTU 2800.
        let start = Instant::now();
        veth(&pair.a, "zt3f8a9c2e1b", &pair.b, "ztpeer").unwrap();
        for (ns, dev, addr) in [
            (&pair.a, "zt3f8a9c2e1b", "10.98.0.1/24"),
            (&pair.b, "ztpeer", "10.98.0.2/24"),
        ] {
            ns.ip(&["link", "set", dev, "mtu", "2800"]).unwrap();
            ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
        }
        wait_until(PATIENCE, "zt interface attached", || {
            agent
                .interface_names()
                .unwrap()
                .contains(&"zt3f8a9c2e1b".to_string())
                .then_some(())
        })
        .unwrap();
        eprintln!(
            "round {round}: zt interface attached after {:?}",
            start.elapsed()
        );
        // Its SYNs are clamped: the peer's MSS (2760) is lowered to 1332 at our ingress.
        assert_eq!(pair.sender_mss(zt_peer, PEER_PORT).unwrap(), CLAMPED_MSS);
        let st = agent.status().unwrap();
        assert!(status_counter(&st, "zt3f8a9c2e1b", "ingress/ipv4", "mss_clamped") >= 1);

        pair.a.ip(&["link", "del", "zt3f8a9c2e1b"]).unwrap();
        wait_until(PATIENCE, "zt interface detached", || {
            (!agent
                .interface_names()
                .unwrap()
                .contains(&"zt3f8a9c2e1b".to_string()))
            .then_some(())
        })
        .unwrap();
        // TCX: its link pins are gone, eth0's remain (clsact filters went with the device).
        if mode == "tcx" {
            let pins = fs.list();
            let links: Vec<_> = pins.iter().filter(|p| p.contains("links/if")).collect();
            assert_eq!(links.len(), 2, "{pins:?}");
        }
    }
}

#[test]
fn kill_9_keeps_clamping_and_restart_adopts_pins() {
    let (pair, fs, _peer, mut agent) = clamping_pair(&[]);
    let before = status_counter(
        &agent.status().unwrap(),
        "eth0",
        "ingress/ipv4",
        "mss_clamped",
    );
    assert_eq!(before, 1);

    // kill -9: no chance to clean up. Clamping goes on from the pinned links and maps.
    agent
        .daemon
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    let pin_dir = agent.pin_dir.clone();
    let st = wslnet_tests::agent::status_json(pair.a.name(), &pin_dir).unwrap();
    assert_eq!(
        status_counter(&st, "eth0", "ingress/ipv4", "mss_clamped"),
        2
    );
    drop(agent);

    // A new agent adopts the pins: counters continue, one program per hook, and one SYN moves
    // the counter by exactly one (a double attachment would count it twice).
    let agent = clamping_the_peer().start(&pair.a, &fs).unwrap();
    assert!(
        agent.daemon.log().contains("adopted=true"),
        "{}",
        agent.daemon.log()
    );
    let st = agent.status().unwrap();
    assert_eq!(
        status_counter(&st, "eth0", "ingress/ipv4", "mss_clamped"),
        2
    );
    if st["interfaces"][0]["mode"] == "tcx" {
        assert_eq!(st["interfaces"][0]["tcx_programs"]["ingress"], 1, "{st:#}");
        assert_eq!(st["interfaces"][0]["tcx_programs"]["egress"], 1, "{st:#}");
    } else {
        for hook in ["ingress", "egress"] {
            let f = pair
                .a
                .sh(&format!("tc filter show dev eth0 {hook}"))
                .unwrap();
            assert_eq!(f.matches("handle 0x5754").count(), 1, "{f}");
        }
    }
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    let st = agent.status().unwrap();
    assert_eq!(
        status_counter(&st, "eth0", "ingress/ipv4", "mss_clamped"),
        3
    );
    assert_eq!(status_counter(&st, "eth0", "egress/ipv4", "syn"), 3);
    // The metrics start from the adopted values too.
    let m = agent.metrics().unwrap();
    assert_eq!(
        sample(
            &m,
            "wslnet_mss_clamped_total",
            &[
                ("interface", "eth0"),
                ("direction", "ingress"),
                ("family", "ipv4")
            ]
        ),
        Some(3.0)
    );
}

/// TCX only: a link pin removed under the running agent (by hand, or by a tool that cleans
/// bpffs) used to detach the datapath at once, clamping stopped while the agent said
/// "running". The agent holds its links open, so nothing detaches, and pins them again.
#[test]
fn removed_link_pins_detach_nothing_and_are_pinned_again() {
    require_root();
    if wslnet_tests::netns::skip_without_tcx() {
        return;
    }
    let (pair, _fs, _peer, agent) = clamping_pair(&[RunFlag::AttachMode(AttachMode::Tcx)]);
    let links = std::path::Path::new(&agent.pin_dir).join("links");
    let pins: Vec<std::path::PathBuf> = std::fs::read_dir(&links)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pins.len(), 2, "{pins:?}");
    std::fs::remove_dir_all(&links).unwrap();

    // Still clamped at once: the agent's own fds keep both links attached.
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    let st = agent.status().unwrap();
    assert_eq!(st["interfaces"][0]["tcx_programs"]["ingress"], 1, "{st:#}");
    assert_eq!(st["interfaces"][0]["tcx_programs"]["egress"], 1, "{st:#}");
    // And pinned again, so the attachment outlives the agent as designed.
    wait_until(PATIENCE, "the link pins pinned again", || {
        pins.iter().all(|p| p.exists()).then_some(())
    })
    .unwrap();
    let m = agent.metrics().unwrap();
    assert_eq!(
        sample(&m, "wslnet_link_pins_restored_total", &[]),
        Some(2.0)
    );
    // The restored pins carry the attachment across a kill -9.
    let mut agent = agent;
    agent
        .daemon
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
}

fn tc_state(ns: &Netns) -> String {
    ns.sh("tc qdisc show dev eth0; tc filter show dev eth0 ingress; tc filter show dev eth0 egress")
        .unwrap()
}

wslnet_tests::in_both_attach_modes! {
    detach_leaves_nothing_behind,
    tcx: detach_leaves_nothing_behind_tcx,
    clsact: detach_leaves_nothing_behind_clsact,
}

fn detach_leaves_nothing_behind(mode: AttachMode) {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let _l = listener(&pair.b, PEER_PORT);
    let clean = tc_state(&pair.a);
    let mut agent = clamping_the_peer()
        .with(RunFlag::AttachMode(mode))
        .with(RunFlag::KeepAttached)
        .start(&pair.a, &fs)
        .unwrap();
    let status = sigterm(&mut agent.daemon);
    assert!(status.success(), "{mode:?}: {status}");
    // --keep-attached: still there, and still clamping, after the agent stopped.
    assert!(!fs.list().is_empty());
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    if mode == AttachMode::Clsact {
        assert!(
            tc_state(&pair.a).contains("clsact"),
            "{}",
            tc_state(&pair.a)
        );
    }
    let out = agent.cli(&["detach", "--pin-dir", &agent.pin_dir]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tc_state(&pair.a), clean, "{mode:?}: tc state after detach");
    assert_eq!(
        fs.list(),
        Vec::<String>::new(),
        "{mode:?}: pins after detach"
    );
    // Nothing clamps any more.
    assert_eq!(mss_to_peer(&pair), UNCLAMPED_MSS, "{mode:?}");
}

#[test]
fn sigterm_without_keep_detaches_everything() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let clean = tc_state(&pair.a);
    let mut agent = AgentOptions::eth0()
        .with(RunFlag::AttachMode(AttachMode::Clsact))
        .start(&pair.a, &fs)
        .unwrap();
    assert_ne!(tc_state(&pair.a), clean);
    let status = sigterm(&mut agent.daemon);
    assert!(status.success());
    assert_eq!(tc_state(&pair.a), clean);
    assert_eq!(fs.list(), Vec::<String>::new());
}

fn run_with_config(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wslnet.toml");
    std::fs::write(&path, toml).unwrap();
    std::process::Command::new(agent_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    require_root();
    for (toml, field) in [
        ("interfacez = [\"eth0\"]\n", "interfacez"),
        ("[[clamp]]\ncidr = \"10.0.0.300/8\"\nmtu = 1400\n", "cidr"),
        (
            "[[clamp]]\ncidr = \"10.0.0.0/8\"\nmtu = 100\n",
            "clamp[0].mtu",
        ),
        (
            "[[clamp]]\ncidr = \"fd00::/8\"\nmtu = 1000\n",
            "clamp[0].mtu",
        ),
        (
            "[probe]\nrecheck_interval_secs = 0\n",
            "probe.recheck_interval_secs",
        ),
        ("set_dscp = 64\n", "set_dscp"),
    ] {
        let out = run_with_config(toml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(
            err.contains(field),
            "{toml}: message should name {field}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
    let out = std::process::Command::new(agent_bin())
        .args(["run", "--config", "/nonexistent/wslnet.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn without_root_one_clear_line_and_exit_2() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(["run", "--iface", "eth0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("root"), "{err}");
}

#[test]
fn prometheus_scrapes_the_agent() {
    if skip_in_vm("Prometheus and the metrics endpoint are user space") {
        return;
    }
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let _l = listener(&pair.b, PEER_PORT);
    let agent = clamping_the_peer().start(&pair.a, &fs).unwrap();
    for _ in 0..3 {
        assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);
    }

    // promtool lints the exposition.
    let scrape = agent.metrics().unwrap();
    let lint = pair
        .a
        .sh_output(&format!(
            "curl -s http://127.0.0.1:{}/metrics | promtool check metrics",
            wslnet_tests::agent::METRICS_PORT
        ))
        .unwrap();
    let lint_out = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && lint_out.trim().is_empty(),
        "promtool: {lint_out}\n{scrape}"
    );

    // A real Prometheus server in the agent's namespace scrapes it every second.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wslnet\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            wslnet_tests::agent::METRICS_PORT
        ),
    )
    .unwrap();
    let _prom = prometheus::start(&pair.a, &cfg, &dir.path().join("data")).unwrap();
    let value = wait_until(Duration::from_secs(30), "prometheus query result", || {
        prometheus::first_value(&pair.a, "sum(wslnet_mss_clamped_total)")
    })
    .unwrap();
    // 3 SYNs clamped at egress and 3 SYN-ACKs at ingress.
    assert_eq!(value, 6.0);
}

#[test]
fn sighup_reloads_the_config_file() {
    if skip_in_vm("reading and applying the config file is user space") {
        return;
    }
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wslnet.toml");
    let write = |mtu: u16| {
        std::fs::write(
            &path,
            format!(
                "interfaces = [\"eth0\"]\n[probe]\nlearn = false\n[[clamp]]\ncidr = \"10.99.0.0/24\"\nmtu = {mtu}\n"
            ),
        )
        .unwrap()
    };
    write(1400);
    let agent = AgentOptions::default()
        .with(RunFlag::Config(path.clone()))
        .start(&pair.a, &fs)
        .unwrap();
    let clamps = |a: &Agent| a.status().unwrap()["clamps"].clone();
    assert_eq!(clamps(&agent)[0]["mtu"], 1400);
    write(1300);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGHUP) };
    wait_until(PATIENCE, "reloaded clamp", || {
        (clamps(&agent)[0]["mtu"] == 1300).then_some(())
    })
    .unwrap();
    assert_eq!(clamps(&agent).as_array().unwrap().len(), 1);
    // A broken file on SIGHUP keeps the running configuration.
    std::fs::write(&path, "interfaces = 5\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(clamps(&agent)[0]["mtu"], 1300);
    assert!(agent.daemon.log().contains("keeping the old configuration"));
}

/// Runs `check` with `agent` (the agent binary, or a wrapper in front of it); returns its exit
/// code and what it printed.
fn check(mut agent: std::process::Command) -> (Option<i32>, String) {
    let out = agent.arg("check").output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_reports_readiness_and_what_is_missing() {
    require_root();
    let (code, text) = check(std::process::Command::new(agent_bin()));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[ok  ] bpf() syscall"), "{text}");
    assert!(text.contains("wslnet can run here"), "{text}");
    // Without privileges: the missing pieces are FAIL lines with their fix, exit 2.
    let mut unprivileged = std::process::Command::new("setpriv");
    unprivileged
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent_bin());
    let (code, text) = check(unprivileged);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("[FAIL] privileges"), "{text}");
    assert!(text.contains("fix: run as root"), "{text}");
}

#[test]
fn attachments_of_a_crashed_run_are_cleaned_up_or_adopted() {
    require_root();
    let clsact_clamp = clamping_the_peer().with(RunFlag::AttachMode(AttachMode::Clsact));
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let _l = listener(&pair.b, PEER_PORT);
    let clean = tc_state(&pair.a);
    let mut agent = clsact_clamp.start(&pair.a, &fs).unwrap();
    agent
        .daemon
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    drop(agent);
    // The crashed run's filters still clamp.
    assert_eq!(mss_to_peer(&pair), CLAMPED_MSS);

    // Same interfaces: the filters are replaced in place (one filter per hook, not two).
    let mut agent = clsact_clamp.start(&pair.a, &fs).unwrap();
    let filters = pair.a.sh("tc filter show dev eth0 ingress").unwrap();
    assert_eq!(filters.matches("handle 0x5754").count(), 1, "{filters}");
    agent
        .daemon
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    drop(agent);

    // eth0 no longer configured: a new run removes what the crashed one left on it.
    let agent = AgentOptions::default()
        .with(RunFlag::Iface("nothing*".into()))
        .with(RunFlag::NoLearn)
        .start(&pair.a, &fs)
        .unwrap();
    assert!(
        agent.daemon.log().contains("stale attachment"),
        "{}",
        agent.daemon.log()
    );
    assert_eq!(tc_state(&pair.a), clean);
    assert_eq!(mss_to_peer(&pair), UNCLAMPED_MSS);
}

/// Pins `name` under `dir`: a one-entry array map with `value_size`-byte values, created with
/// raw `bpf(2)` calls (as another build of wslnet would have left it).
fn pin_foreign_array(path: &std::path::Path, value_size: u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let sys = |cmd: libc::c_long, attr: *const libc::c_void, size: usize| {
        // SAFETY: `attr` points to a live, initialised bpf_attr prefix of `size` bytes.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
    };
    let create = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size,
        max_entries: 1,
    };
    let fd = sys(
        0,
        &create as *const _ as _,
        std::mem::size_of::<MapCreate>(),
    );
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    let r = sys(6, &pin as *const _ as _, std::mem::size_of::<ObjPin>()); // BPF_OBJ_PIN
    assert!(r == 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor created above; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Pins left by a build with another map layout (map ABI 2 had 8-byte global settings): `run`
/// refuses them with one line that names `detach`, `detach` removes them, then `run` starts.
#[test]
fn pins_of_another_map_layout_are_refused_until_detached() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let maps_dir = wslnet_agent::pins::maps_dir(&fs.pin_dir());
    std::fs::create_dir_all(&maps_dir).unwrap();
    pin_foreign_array(&maps_dir.join(wslnet_common::map_names::GLOBALS), 8);
    refused_until_detached(&pair, &fs);
}

/// Pins of the same layout written by another map ABI (ABI 3 stamped learned destinations in
/// nanoseconds, ABI 4 in jiffies), as an agent left them with `--keep-attached`: refused the
/// same way.
#[test]
fn pins_of_another_map_abi_are_refused_until_detached() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let mut agent = AgentOptions::eth0()
        .with(RunFlag::NoLearn)
        .with(RunFlag::KeepAttached)
        .start(&pair.a, &fs)
        .unwrap();
    let status = sigterm(&mut agent.daemon);
    assert!(status.success(), "{status}");
    let mut maps = wslnet_agent::maps::Maps::open(&fs.pin_dir()).unwrap();
    let older = wslnet_common::Globals {
        abi_version: wslnet_common::ABI_VERSION - 1,
        ..maps.globals().unwrap()
    };
    maps.globals.set(0, &older, 0).unwrap();
    drop(maps);
    refused_until_detached(&pair, &fs);
}

/// `run` on the pins under `fs` fails at once, naming `detach`; `detach` removes every pin;
/// `run` then starts.
fn refused_until_detached(pair: &Pair, fs: &Bpffs) {
    let pin_dir = fs.pin_dir();
    let pin_arg = pin_dir.to_str().unwrap();
    let out = run_expecting_refusal(&pair.a, &pin_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on foreign pins: {stderr}");
    assert_ne!(out.status.code(), Some(124), "did not exit: {stderr}");
    assert!(
        stderr.contains(&format!("wslnet-agent detach --pin-dir {pin_arg}")),
        "{stderr}"
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", pair.a.name()])
        .arg(agent_bin())
        .args(["detach", "--pin-dir", pin_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs.list(), Vec::<String>::new());
    let agent = AgentOptions::eth0()
        .with(RunFlag::NoLearn)
        .start(&pair.a, fs)
        .unwrap();
    assert_eq!(agent.interface_names().unwrap(), ["eth0"]);
}

/// `run --iface eth0 --no-learn` on `pin_dir` in `ns`, expected to refuse it and exit (killed
/// after 30 s if it does not, exit code 124); its output. Without the test log settings of
/// [`run_command`]: the refusal is judged as a user sees it.
fn run_expecting_refusal(ns: &Netns, pin_dir: &Path) -> Output {
    std::process::Command::new("timeout")
        .args(["30", "ip", "netns", "exec", ns.name()])
        .arg(agent_bin())
        .args(["run", "--iface", "eth0", "--no-learn", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .unwrap()
}

/// SIGTERM while the agent is still starting (its metrics are up, interfaces not yet attached):
/// the stop is held until start-up ends and then done cleanly, not a kill that leaves a
/// half-attached interface and pins behind.
#[test]
fn sigterm_during_startup_stops_cleanly() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let clean = tc_state(&pair.a);
    let options = AgentOptions::eth0().with(RunFlag::AttachMode(AttachMode::Clsact));
    let cmd = run_command(&pair.a, &[], &fs.pin_dir(), options.args());
    let mut daemon = Daemon::start(cmd).unwrap();
    daemon
        .wait_for_log(Duration::from_secs(20), |l| l.contains("serving metrics"))
        .unwrap();
    let status = sigterm(&mut daemon);
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    assert_eq!(tc_state(&pair.a), clean, "log:\n{}", daemon.log());
    assert_eq!(fs.list(), Vec::<String>::new());
}

/// `check --kernel-config` judges a kernel config alone, for a custom WSL kernel before it is
/// built: Microsoft's WSL 5.15 config (`tests/data/config-wsl-5.15`, a copy) and the project's
/// fragment (`packaging/wsl-kernel/wslnet.config`) are ready; the same WSL config without
/// `CONFIG_NET_CLS_BPF` is not, and the report names the line to add.
#[test]
fn check_judges_a_kernel_config_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = |path: &std::path::Path| {
        let out = std::process::Command::new(agent_bin())
            .arg("check")
            .arg("--kernel-config")
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let wsl = root.join("tests/data/config-wsl-5.15");
    for ready in [&wsl, &root.join("packaging/wsl-kernel/wslnet.config")] {
        let (code, text) = check(ready);
        assert_eq!(code, Some(0), "{}: {text}", ready.display());
        assert!(text.contains("ready for wslnet"), "{text}");
    }
    let lacking = std::env::temp_dir().join(format!("wslnet-config-{}", std::process::id()));
    let text = std::fs::read_to_string(&wsl)
        .unwrap()
        .replace("CONFIG_NET_CLS_BPF=y", "# CONFIG_NET_CLS_BPF is not set");
    std::fs::write(&lacking, text).unwrap();
    let (code, text) = check(&lacking);
    let _ = std::fs::remove_file(&lacking);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("[FAIL] CONFIG_NET_CLS_BPF is not set"),
        "{text}"
    );
    assert!(
        text.contains("not ready for wslnet; add:\nCONFIG_NET_CLS_BPF=y"),
        "{text}"
    );
}

/// A pin directory another user could have prepared (on a bpffs every user may write to) is
/// refused before anything is loaded or attached: a symbolic link, a directory owned by someone
/// else, a `maps/` that others may write. Exit 2 (systemd does not restart into the same
/// refusal), one line naming the directory and what is wrong, nothing attached; a directory the
/// agent made itself works.
#[test]
fn a_pin_directory_another_user_could_have_prepared_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    if skip_in_vm("the pin directory's ownership and mode checks are user space") {
        return;
    }
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let clean = tc_state(&pair.a);
    let root = fs.path();
    std::fs::create_dir(root.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(root.join("elsewhere"), root.join("linked")).unwrap();
    std::fs::create_dir(root.join("foreign")).unwrap();
    std::os::unix::fs::chown(root.join("foreign"), Some(65534), Some(65534)).unwrap();
    std::fs::create_dir_all(root.join("open/maps")).unwrap();
    std::fs::set_permissions(
        root.join("open/maps"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    for (dir, problem) in [
        ("linked", "is a symbolic link"),
        ("foreign", "is owned by uid 65534"),
        ("open", "is writable by group or others (mode 777)"),
    ] {
        let out = run_expecting_refusal(&pair.a, &root.join(dir));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{dir}: {err}");
        assert!(err.contains(problem), "{dir}: {err}");
        assert!(err.contains("refusing pin directory"), "{dir}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{dir}: one clear line: {err}"
        );
        assert_eq!(tc_state(&pair.a), clean, "{dir}: something was attached");
    }
    assert!(
        std::fs::read_dir(root.join("elsewhere"))
            .unwrap()
            .next()
            .is_none(),
        "something was pinned through the symbolic link"
    );
    let agent = AgentOptions::eth0()
        .with(RunFlag::NoLearn)
        .start(&pair.a, &fs)
        .unwrap();
    let mode = std::fs::metadata(root.join("wslnet/maps"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "maps/ should be private to root: {mode:o}");
    drop(agent);
}

/// Clients that connect to the metrics endpoint and never finish a request (any local user can)
/// cost the agent a bounded number of file descriptors, not one each: 300 of them add at most
/// the endpoint's connection cap (16) and a few more. Once they are gone, `/healthz` and
/// `/metrics` answer again.
#[test]
fn clients_that_never_finish_a_request_cost_a_bounded_number_of_descriptors() {
    if skip_in_vm("the metrics endpoint's connection handling is user space") {
        return;
    }
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let agent = AgentOptions::eth0()
        .with(RunFlag::NoLearn)
        .start(&pair.a, &fs)
        .unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.daemon.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    let held = 300;
    let script = format!(
        "import socket, time\n\
         socks = []\n\
         for _ in range({held}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {}))\n\
         \x20   s.send(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n')\n\
         \x20   socks.append(s)\n\
         print('open', flush=True)\n\
         time.sleep(120)\n",
        wslnet_tests::agent::METRICS_PORT
    );
    let mut slow = pair.a.spawn("python3", ["-c", &script]).unwrap();
    slow.wait_for_log(Duration::from_secs(60), |l| l.contains("open"))
        .unwrap();
    // Let the agent accept whatever it is going to accept.
    std::thread::sleep(Duration::from_secs(2));
    let during = fds();
    assert!(
        during <= before + 16 + 4,
        "{held} unfinished requests took the agent from {before} to {during} descriptors"
    );
    drop(slow);
    wait_until(Duration::from_secs(60), "/healthz answers again", || {
        (agent.healthz().ok()?.1 == "ok").then_some(())
    })
    .unwrap();
    assert!(agent.metrics().unwrap().contains("wslnet_build_info"));
}

/// Runs `removal` (a `tc` command taking `what` away) in `a` and waits until the agent has
/// attached its egress filter again; panics with the agent's log otherwise.
fn remove_and_wait_for_the_filter(pair: &Pair, agent: &Agent, what: &str, removal: &str) {
    pair.a.sh(removal).unwrap();
    wait_until(PATIENCE, &format!("{what} attached again"), || {
        let shown = pair.a.sh("tc filter show dev eth0 egress").ok()?;
        shown.contains("bpf").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.daemon.log()));
}

/// In clsact mode the filters are the datapath: somebody (a network reset, an admin's `tc`)
/// deleting one, or the whole clsact qdisc, under the running agent would stop clamping
/// unnoticed. The agent sees it within seconds and attaches them again; `/healthz` stays ok.
#[test]
fn removed_clsact_filters_are_attached_again() {
    let (pair, _fs, _peer, agent) = clamping_pair(&[RunFlag::AttachMode(AttachMode::Clsact)]);
    for (what, removal) in [
        ("the egress filter", "tc filter del dev eth0 egress"),
        ("the clsact qdisc", "tc qdisc del dev eth0 clsact"),
    ] {
        remove_and_wait_for_the_filter(&pair, &agent, what, removal);
        assert_eq!(mss_to_peer(&pair), CLAMPED_MSS, "after removing {what}");
    }
    let restored = sample(
        &agent.metrics().unwrap(),
        "wslnet_filters_restored_total",
        &[],
    );
    assert_eq!(restored, Some(2.0));
    assert_eq!(agent.healthz().unwrap(), (200, "ok".to_string()));
    // The agent re-created the qdisc it did not create at first: `detach` removes it now.
    drop(agent);
    let qdiscs = pair.a.sh("tc qdisc show dev eth0").unwrap();
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

/// The capability sets (`CapEff`, `CapPrm`, `CapBnd`, `CapInh`, `CapAmb`) of every thread of
/// process `pid`, as `/proc/<pid>/task/<tid>/status` shows them.
fn thread_capabilities(pid: u32) -> Vec<(String, [u64; 5])> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let set = |name: &str| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
                .unwrap();
            u64::from_str_radix(line.trim(), 16).unwrap()
        };
        let name = task.file_name().unwrap().to_string_lossy().into_owned();
        let sets = ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"].map(set);
        out.push((name, sets));
    }
    out
}

/// Once the datapath is loaded, `run` keeps CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW alone, in
/// every thread (effective, permitted and bounding; nothing inheritable or ambient), and still
/// does its work: clamps, scrapes, re-attaches, detaches.
#[test]
fn the_running_agent_keeps_only_the_capabilities_it_uses() {
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_NET_RAW: u64 = 1 << 13;
    const CAP_BPF: u64 = 1 << 39;
    let kept = CAP_BPF | CAP_NET_ADMIN | CAP_NET_RAW;
    let (pair, _fs, _peer, mut agent) = clamping_pair(&[RunFlag::AttachMode(AttachMode::Clsact)]);
    // A scrape renders on a thread started after the drop.
    assert!(agent.metrics().unwrap().contains("wslnet_build_info"));
    let threads = thread_capabilities(agent.daemon.pid());
    for (tid, sets) in &threads {
        assert_eq!(
            *sets,
            [kept, kept, kept, 0, 0],
            "thread {tid}: {threads:x?}"
        );
    }
    // What it still does needs no more: attach again, then detach everything on stop.
    remove_and_wait_for_the_filter(
        &pair,
        &agent,
        "the egress filter",
        "tc filter del dev eth0 egress",
    );
    assert!(
        sigterm(&mut agent.daemon).success(),
        "{}",
        agent.daemon.log()
    );
    let left = pair.a.sh("tc filter show dev eth0 ingress").unwrap();
    assert!(!left.contains("bpf"), "{left}");
}
