//! What ships under `packaging/` checked against the real tools and the real agent, so that
//! renaming a metric or a flag breaks the build, not a user's unit, alerts or dashboard:
//! the systemd unit (`systemd-analyze verify` and `security`, its ExecStart flags; the real
//! agent, in a test namespace, working with exactly its capabilities and failing without any one
//! of them, and staying within its system-call filter, address families and writable paths),
//! the Prometheus rules (`promtool check` and `test`, and evaluated by a real Prometheus scraping
//! the agent with the shipped config), the Grafana dashboard (importable, every panel answered by
//! that Prometheus), and the default config the .deb ships. The .deb itself is built and checked
//! by `cargo xtask package` (lintian, contents, `dpkg -i` in a throwaway root).
//!
//! The tools come from `scripts/bootstrap.sh`; a missing one fails its test with the package to
//! install, never skips it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use wslnet_agent::config::AttachMode;
use wslnet_tests::{
    agent::{
        AgentOptions, METRICS_PORT, Pair, RUNNING_LINE, RunFlag, attach_mode_name, metrics_in,
        run_command, sample,
    },
    lab::VPN_MTU,
    netns::{Bpffs, Daemon, Netns, agent_bin, require_root, wait_until},
    prometheus,
};

/// How long the agent may take to start (generous, for slow CI machines; not a timing claim).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agent may take to stop (detaching every interface).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the unit expects the binary (and the .deb installs it).
const UNIT_BINARY: &str = "/usr/bin/wslnet-agent";

/// `packaging/<rel>`.
fn packaging(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(rel)
}

/// The text of `packaging/<rel>`.
fn read(rel: &str) -> String {
    let p = packaging(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs `program` (from Debian package `package`), failing with one clear line when it is not
/// installed.
fn tool(program: &str, package: &str, args: &[&str]) -> Output {
    tool_in(Path::new("."), program, package, args)
}

/// [`tool`] run in directory `dir`.
fn tool_in(dir: &Path, program: &str, package: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed: run scripts/bootstrap.sh (or apt-get install {package})"
        ),
        Err(e) => panic!("running {program}: {e}"),
    }
}

/// A command's stdout and stderr, for failure messages.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `wslnet_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wslnet_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        // "wslnet_*" in prose names no metric.
        if name.len() > "wslnet_".len() {
            names.insert(name);
        }
    }
    names
}

/// The sample names (metric names, with `_bucket`/`_sum`/`_count` for histograms) in a
/// Prometheus text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The values of every `key=` line of the unit, split on whitespace, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The unit with ExecStart pointing at the agent built by cargo, in a temporary directory (so
/// that `systemd-analyze verify` finds the binary it checks).
fn unit_with_built_binary() -> (tempfile::TempDir, PathBuf) {
    let unit = read("systemd/wslnet-agent.service");
    assert!(
        unit.contains(&format!("ExecStart={UNIT_BINARY} ")),
        "ExecStart no longer starts {UNIT_BINARY}: update this test and the .deb"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wslnet-agent.service");
    let bin = agent_bin().canonicalize().unwrap();
    std::fs::write(
        &path,
        unit.replace(
            &format!("ExecStart={UNIT_BINARY}"),
            &format!("ExecStart={}", bin.display()),
        ),
    )
    .unwrap();
    (dir, path)
}

/// `promtool check rules` accepts the alerting rules and `promtool check config` the example
/// scrape config (including the rule file it loads).
#[test]
fn prometheus_rules_and_config_pass_promtool_check() {
    for (what, file) in [
        ("rules", "prometheus/wslnet.rules.yml"),
        ("config", "prometheus/prometheus.yml"),
    ] {
        let path = packaging(file);
        let out = tool(
            "promtool",
            "prometheus",
            &["check", what, path.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "promtool check {what}:\n{}",
            text(&out)
        );
    }
}

/// `promtool test rules` passes, and the tests cover every alert twice: at least one case where
/// it fires (expected alerts listed) and one where it stays silent (`exp_alerts: []`).
#[test]
fn every_alert_fires_on_a_crafted_series_and_stays_silent_on_a_healthy_one() {
    let tests = packaging("prometheus/wslnet.rules.test.yml");
    // promtool resolves rule_files relative to its working directory.
    let out = tool_in(
        tests.parent().unwrap(),
        "promtool",
        "prometheus",
        &["test", "rules", "wslnet.rules.test.yml"],
    );
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));

    let alerts: BTreeSet<String> = read("prometheus/wslnet.rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_string())
        .collect();
    assert!(!alerts.is_empty(), "no alert found in wslnet.rules.yml");
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let mut current = None;
    for line in read("prometheus/wslnet.rules.test.yml").lines() {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("alertname:") {
            current = Some(a.trim().to_string());
        } else if let Some(exp) = line.strip_prefix("exp_alerts:") {
            let a = current.take().expect("exp_alerts without alertname");
            if exp.trim() == "[]" {
                silent.insert(a);
            } else {
                fires.insert(a);
            }
        }
    }
    for a in &alerts {
        assert!(fires.contains(a), "no promtool test makes {a} fire");
        assert!(silent.contains(a), "no promtool test keeps {a} silent");
    }
    let unknown: Vec<_> = fires
        .union(&silent)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

/// `systemd-analyze ARGS UNIT` on [`unit_with_built_binary`]: how it exited and what it said.
fn systemd_analyze(args: &[&str]) -> (Output, String) {
    let (_dir, unit) = unit_with_built_binary();
    let out = tool(
        "systemd-analyze",
        "systemd",
        &[args, &[unit.to_str().unwrap()]].concat(),
    );
    let said = text(&out);
    (out, said)
}

/// `systemd-analyze verify` reports nothing about the unit (run against the built binary, since
/// verify checks that ExecStart's program exists).
#[test]
fn systemd_unit_verifies_clean() {
    let (out, said) = systemd_analyze(&["verify"]);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// `systemd-analyze security --offline=yes` rates the unit's exposure at most 4.0 (of 10).
#[test]
fn systemd_unit_exposure_is_at_most_4() {
    let (_, said) = systemd_analyze(&["security", "--offline=yes", "--no-pager"]);
    let line = said
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    eprintln!("{}", line.trim());
    assert!(score <= 4.0, "exposure {score} > 4.0:\n{said}");
}

/// Every flag the unit passes to the agent (ExecStart) is one `wslnet-agent run --help` lists,
/// and the command line parses (clap rejects unknown flags before printing help).
#[test]
fn systemd_unit_exec_start_uses_only_known_flags() {
    let unit = read("systemd/wslnet-agent.service");
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.first().map(String::as_str), Some(UNIT_BINARY));
    assert_eq!(exec.get(1).map(String::as_str), Some("run"), "{exec:?}");
    let help = Command::new(agent_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{}", text(&help));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<_> = exec.iter().filter(|a| a.starts_with("--")).collect();
    assert!(!flags.is_empty(), "{exec:?}");
    for flag in flags {
        let name = flag.split('=').next().unwrap();
        assert!(
            help.split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == name),
            "{name} is not a `wslnet-agent run` flag:\n{help}"
        );
    }
    let out = Command::new(agent_bin())
        .args(&exec[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{exec:?} --help:\n{}", text(&out));
}

/// The capabilities the unit keeps, as setpriv's `--bounding-set` list (`+bpf,+net_admin,...`).
fn unit_caps() -> Vec<String> {
    let unit = read("systemd/wslnet-agent.service");
    let bounding = unit_values(&unit, "CapabilityBoundingSet");
    let ambient = unit_values(&unit, "AmbientCapabilities");
    assert_eq!(
        bounding, ambient,
        "CapabilityBoundingSet and AmbientCapabilities differ"
    );
    bounding
        .iter()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{c}"))
                .to_lowercase()
        })
        .collect()
}

/// Starts `prefix... wslnet-agent run --pin-dir <bpffs>/wslnet OPTIONS` in `ns` (as
/// [`AgentOptions::start`] does, with a wrapper such as setpriv or strace in front).
fn start_wrapped(ns: &Netns, fs: &Bpffs, prefix: &[String], options: &AgentOptions) -> Daemon {
    Daemon::start(run_command(ns, prefix, &fs.pin_dir(), options.args())).unwrap()
}

/// `setpriv` keeping only `caps` (root keeps exactly the bounding set across exec, as under the
/// unit).
fn setpriv(caps: &[String]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{list}"),
        "--inh-caps=-all".into(),
    ]
}

/// The `/metrics` text of the agent in `ns`, once it answers.
fn scrape(ns: &Netns) -> Option<String> {
    metrics_in(ns.name()).ok()
}

/// Sends one SYN from `ns` to `addr` port 9 (closed: the peer answers with a reset; the SYN
/// still passes the egress hook).
fn send_syn(ns: &Netns, addr: &str) {
    let _ = ns.sh_output(&format!(
        "python3 -c \"import socket; s=socket.socket(); s.settimeout(2); s.connect_ex(('{addr}', 9))\""
    ));
}

/// The agent on eth0 measuring [`Pair::b`], learning on: attached, with a target and its prober,
/// the state in which every metric family has a series.
fn measuring_b() -> AgentOptions {
    AgentOptions::eth0().with(RunFlag::Target(Pair::b4()))
}

/// The agent flags the capability tests use: eth0, a target to measure (needs the prober), a
/// static clamp for the peer (so a SYN is rewritten), and pins kept on stop.
fn cap_test_options() -> AgentOptions {
    measuring_b()
        .with(RunFlag::Clamp(Pair::b4().into(), VPN_MTU))
        .with(RunFlag::KeepAttached)
}

/// With exactly the unit's capabilities (setpriv's bounding set, in a test namespace) the agent
/// attaches, measures the target's path MTU, clamps a SYN, keeps its pins on SIGTERM, and a
/// second start adopts them; in clsact mode too.
#[test]
fn the_units_capabilities_are_enough() {
    require_root();
    let caps = unit_caps();
    for mode in [AttachMode::Tcx, AttachMode::Clsact] {
        let (pair, fs) = Pair::with_bpffs().unwrap();
        let options = cap_test_options().with(RunFlag::AttachMode(mode));
        let mode = attach_mode_name(mode);
        let mut agent = start_wrapped(&pair.a, &fs, &setpriv(&caps), &options);
        agent
            .wait_for_log(START_TIMEOUT, |l| l.contains(RUNNING_LINE))
            .unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        eprintln!(
            "{mode}: {}",
            status.lines().find(|l| l.starts_with("CapEff")).unwrap()
        );
        let metrics = wait_until(START_TIMEOUT, "target measured", || {
            scrape(&pair.a).filter(|m| {
                sample(m, "wslnet_path_mtu_bytes", &[("target", Pair::B4)]) == Some(1500.0)
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        assert_eq!(
            sample(
                &metrics,
                "wslnet_interface_attached",
                &[("interface", "eth0"), ("mode", &mode)]
            ),
            Some(1.0),
            "{metrics}"
        );
        send_syn(&pair.a, Pair::B4);
        wait_until(Duration::from_secs(10), "a clamped SYN", || {
            scrape(&pair.a).filter(|m| {
                sample(
                    m,
                    "wslnet_mss_clamped_total",
                    &[
                        ("interface", "eth0"),
                        ("direction", "egress"),
                        ("family", "ipv4"),
                    ],
                )
                .is_some_and(|v| v >= 1.0)
            })
        })
        .unwrap();
        let exit = agent.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT).unwrap();
        assert!(exit.success(), "{exit}\n{}", agent.log());
        assert!(!fs.list().is_empty(), "--keep-attached left no pins");

        let mut again = start_wrapped(&pair.a, &fs, &setpriv(&caps), &options);
        again
            .wait_for_log(START_TIMEOUT, |l| l.contains(RUNNING_LINE))
            .unwrap();
        assert!(again.log().contains("adopted=true"), "{}", again.log());
        let exit = again.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT).unwrap();
        assert!(exit.success(), "{exit}\n{}", again.log());
    }
}

/// True once process `pid` (our child) has exited: gone, or a zombie not yet reaped.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Each of the unit's capabilities is needed: without any one of them the agent either fails
/// to start (BPF, NET_ADMIN, PERFMON: the datapath does not load or attach) or cannot measure
/// path MTUs (NET_RAW: raw ICMP sockets; a fresh network namespace allows no datagram ICMP,
/// net.ipv4.ping_group_range = "1 0").
#[test]
fn each_of_the_units_capabilities_is_needed() {
    require_root();
    let caps = unit_caps();
    for dropped in &caps {
        let fewer: Vec<_> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let (pair, fs) = Pair::with_bpffs().unwrap();
        let mut agent = start_wrapped(&pair.a, &fs, &setpriv(&fewer), &cap_test_options());
        // Either it exits, or it runs and its searches end in errors.
        let outcome = wait_until(START_TIMEOUT, "the agent to fail", || {
            if exited(agent.pid()) {
                return Some("exited".to_string());
            }
            let m = scrape(&pair.a)?;
            let errors = sample(&m, "wslnet_probe_searches_total", &[("outcome", "error")])?;
            let mtu = sample(&m, "wslnet_path_mtu_bytes", &[("target", Pair::B4)]);
            assert_ne!(
                mtu,
                Some(1500.0),
                "measured the path MTU without CAP_{}",
                dropped.to_uppercase()
            );
            (errors >= 1.0).then(|| "searches fail".to_string())
        })
        .unwrap_or_else(|e| {
            panic!(
                "the agent works without CAP_{}: {e}\n{}",
                dropped.to_uppercase(),
                agent.log()
            )
        });
        eprintln!("without CAP_{}: {outcome}", dropped.to_uppercase());
        let _ = agent.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT);
    }
}

/// Every system call in `filter` (SystemCallFilter syntax: names and @groups), groups expanded
/// by `systemd-analyze syscall-filter`.
fn allowed_syscalls(filter: &[String]) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut todo: Vec<String> = filter.to_vec();
    let mut seen = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if !seen.insert(item.clone()) {
            continue;
        }
        if !item.starts_with('@') {
            allowed.insert(item);
            continue;
        }
        let out = tool("systemd-analyze", "systemd", &["syscall-filter", &item]);
        assert!(out.status.success(), "{}", text(&out));
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let l = line.trim();
            if !l.is_empty() && !l.starts_with('#') {
                todo.push(l.to_string());
            }
        }
    }
    allowed
}

/// What the agent does while starting, attaching, measuring, clamping, serving a scrape,
/// reloading on SIGHUP and stopping (traced with strace, under the unit's capabilities) stays
/// within the unit's sandbox: every system call is allowed by SystemCallFilter (so its EPERM
/// never hits the agent), every socket is of a family RestrictAddressFamilies allows, and every
/// file it creates, writes or removes is under its pin directory, which the unit's only
/// ReadWritePaths (bpffs) holds by default (ProtectSystem=strict makes the rest read-only).
#[test]
fn the_agent_stays_within_the_units_sandbox() {
    require_root();
    let unit = read("systemd/wslnet-agent.service");
    let filter = unit_values(&unit, "SystemCallFilter");
    assert!(
        !filter.iter().any(|f| f.starts_with('~')),
        "this test expects an allow list: {filter:?}"
    );
    let allowed = allowed_syscalls(&filter);
    let _ = tool("strace", "strace", &["-V"]);

    let (pair, fs) = Pair::with_bpffs().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut prefix = setpriv(&unit_caps());
    prefix.extend(
        [
            "strace",
            "-f",
            "-qq",
            "-s",
            "256",
            "-o",
            trace.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut tracer = start_wrapped(&pair.a, &fs, &prefix, &cap_test_options());
    tracer
        .wait_for_log(START_TIMEOUT * 2, |l| l.contains(RUNNING_LINE))
        .unwrap();
    wait_until(START_TIMEOUT, "target measured", || {
        scrape(&pair.a)
            .filter(|m| sample(m, "wslnet_path_mtu_bytes", &[("target", Pair::B4)]) == Some(1500.0))
    })
    .unwrap();
    send_syn(&pair.a, Pair::B4);
    scrape(&pair.a).unwrap();
    // The agent is strace's child; signals go to it, strace exits with it.
    let children = format!("/proc/{0}/task/{0}/children", tracer.pid());
    let agent: i32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("strace has no child")
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the agent we started (strace's only child).
    unsafe { libc::kill(agent, libc::SIGHUP) };
    tracer
        .wait_for_log(START_TIMEOUT, |l| {
            l.contains("SIGHUP: configuration reloaded")
        })
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent, libc::SIGTERM) };
    // Signal 0 sends nothing: this only waits for strace to exit with the agent.
    let exit = tracer.signal_and_wait(0, STOP_TIMEOUT).unwrap();
    assert!(exit.success(), "{exit}\n{}", tracer.log());

    let trace = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = trace
        .lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| name.to_string())
        })
        .collect();
    assert!(used.contains("bpf"), "trace has no bpf(): {used:?}");
    let denied: Vec<_> = used.difference(&allowed).collect();
    eprintln!("{} distinct system calls, all allowed", used.len());
    assert!(
        denied.is_empty(),
        "system calls the unit's SystemCallFilter ({filter:?}) denies: {denied:?}"
    );

    let families: BTreeSet<String> = trace
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(" socket(")? + " socket(".len()..];
            Some(rest[..rest.find(',')?].to_string())
        })
        .collect();
    let allowed_families = unit_values(&unit, "RestrictAddressFamilies");
    assert!(families.contains("AF_NETLINK"), "{families:?}");
    for f in &families {
        assert!(
            allowed_families.contains(f),
            "the agent opens {f} sockets; RestrictAddressFamilies={allowed_families:?}"
        );
    }

    // Files written, created, pinned or removed: every quoted path of those calls.
    let writes = [
        "open(",
        "openat(",
        "creat(",
        "mkdir(",
        "mkdirat(",
        "unlink(",
        "unlinkat(",
        "rmdir(",
        "rename(",
        "renameat(",
        "renameat2(",
        "bpf(BPF_OBJ_PIN",
    ];
    let pin_dir = fs.pin_dir();
    let mut written = BTreeSet::new();
    for line in trace.lines() {
        let Some(call) = line.split_once(' ').map(|(_, c)| c.trim_start()) else {
            continue;
        };
        let opens = call.starts_with("open") || call.starts_with("creat(");
        if !writes.iter().any(|w| call.starts_with(w))
            || (opens
                && !["O_WRONLY", "O_RDWR", "O_CREAT"]
                    .iter()
                    .any(|f| call.contains(f)))
        {
            continue;
        }
        for path in call.split('"').skip(1).step_by(2) {
            written.insert(path.to_string());
        }
    }
    assert!(!written.is_empty(), "no pin written? {trace}");
    eprintln!(
        "{} paths written, all under the pin directory",
        written.len()
    );
    let outside: Vec<_> = written
        .iter()
        .filter(|p| !Path::new(p).starts_with(&pin_dir))
        .collect();
    assert!(
        outside.is_empty(),
        "the agent writes outside its pin directory {}: {outside:?}",
        pin_dir.display()
    );
    let rw = unit_values(&unit, "ReadWritePaths");
    assert_eq!(rw, ["/sys/fs/bpf"], "update this test's reasoning");
    assert!(Path::new(wslnet_agent::pins::DEFAULT_PIN_DIR).starts_with(&rw[0]));
}

/// Every `wslnet_*` series the alerting rules, their tests and the Grafana dashboard name is in
/// a live scrape of the agent (attached to an interface, measuring a target: the state in which
/// every metric family has a series; histograms by their `_bucket` sample name, as PromQL uses
/// them).
#[test]
fn every_metric_in_the_rules_and_the_dashboard_is_in_a_live_scrape() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let agent = measuring_b().start(&pair.a, &fs).unwrap();
    let metrics = wait_until(START_TIMEOUT, "target measured", || {
        agent
            .metrics()
            .ok()
            .filter(|m| sample(m, "wslnet_path_mtu_bytes", &[("target", Pair::B4)]) == Some(1500.0))
    })
    .unwrap();
    let scraped = sample_names(&metrics);
    for file in [
        "prometheus/wslnet.rules.yml",
        "prometheus/wslnet.rules.test.yml",
        "grafana/wslnet.json",
    ] {
        let names = metric_names(&read(file));
        assert!(!names.is_empty(), "{file} names no wslnet metric");
        let missing: Vec<_> = names.difference(&scraped).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, which the agent does not export:\n{metrics}"
        );
    }
}

/// The Grafana dashboard is importable as is: valid JSON whose datasource is the
/// `${DS_PROMETHEUS}` input everywhere, unique panel ids, a query in every panel, and a panel
/// for each thing the issue asks for (clamped SYNs, path MTU, oversize DF, probe outcomes,
/// attachment state).
#[test]
fn grafana_dashboard_is_importable() {
    let dash: serde_json::Value = serde_json::from_str(&read("grafana/wslnet.json")).unwrap();
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    assert!(dash["id"].is_null(), "an exported dashboard has id null");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", v["name"]);
    }
    for metric in [
        "wslnet_mss_clamped_total",
        "wslnet_path_mtu_bytes",
        "wslnet_oversize_df_packets_total",
        "wslnet_probe_searches_total",
        "wslnet_interface_attached",
    ] {
        assert!(exprs.contains(metric), "no panel queries {metric}");
    }
}

/// A dashboard query with Grafana's variables replaced by what they stand for over the whole
/// test: every instance, a one-minute rate window.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".+")
}

/// The shipped `prometheus.yml` (scrape intervals shortened to 1 s) and `wslnet.rules.yml` in a
/// real Prometheus in `ns` ([`prometheus::start`]), its files and data under `dir`.
fn shipped_prometheus(ns: &Netns, dir: &Path) -> Daemon {
    let config = read("prometheus/prometheus.yml");
    let fast = config
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    assert_ne!(
        fast, config,
        "prometheus.yml's intervals changed: update this test"
    );
    assert!(
        config.contains(&format!("127.0.0.1:{METRICS_PORT}")),
        "prometheus.yml does not scrape the agent's default address"
    );
    std::fs::write(dir.join("prometheus.yml"), fast).unwrap();
    std::fs::copy(
        packaging("prometheus/wslnet.rules.yml"),
        dir.join("wslnet.rules.yml"),
    )
    .unwrap();
    let _ = tool("prometheus", "prometheus", &["--version"]);
    prometheus::start(ns, &dir.join("prometheus.yml"), &dir.join("data")).unwrap()
}

/// The shipped `prometheus.yml` (scrape intervals shortened to 1 s) in a real Prometheus next to
/// the agent: the target is up, every rule of `wslnet.rules.yml` evaluates without error and none
/// is pending or firing for a healthy agent, and every panel of the dashboard gets data.
#[test]
fn shipped_prometheus_config_rules_and_dashboard_work_against_the_agent() {
    let (pair, fs) = Pair::with_bpffs().unwrap();
    let _agent = measuring_b().start(&pair.a, &fs).unwrap();
    send_syn(&pair.a, Pair::B4);

    let dir = tempfile::tempdir().unwrap();
    let _prom = shipped_prometheus(&pair.a, dir.path());

    // Target up, and a few evaluations behind us.
    wait_until(Duration::from_secs(30), "the agent scraped", || {
        prometheus::first_value(&pair.a, "sum(count_over_time(up{job=\"wslnet\"}[1m]))")
            .filter(|&n| n >= 5.0)
    })
    .unwrap();
    let up = prometheus::query(&pair.a, "up{job=\"wslnet\"}").unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    let rules = prometheus::api(&pair.a, "rules", None).unwrap();
    let loaded: Vec<_> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    let shipped = read("prometheus/wslnet.rules.yml")
        .matches("- alert:")
        .count();
    assert_eq!(loaded.len(), shipped, "{rules}");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
        assert_eq!(r["state"], "inactive", "alert on a healthy agent: {r}");
    }

    // Every panel gets data (some queries, like "attached before, not now", are empty on a
    // healthy agent; each panel has at least one that is not).
    let dash: serde_json::Value = serde_json::from_str(&read("grafana/wslnet.json")).unwrap();
    for p in dash["panels"].as_array().unwrap() {
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let queries: Vec<_> = targets
            .iter()
            .map(|t| grafana_to_promql(t["expr"].as_str().unwrap()))
            .collect();
        wait_until(
            Duration::from_secs(30),
            &format!("data for panel {}", p["title"]),
            || {
                queries
                    .iter()
                    .map(|q| prometheus::query(&pair.a, q).unwrap_or_default())
                    .any(|r| !r.is_empty())
                    .then_some(())
            },
        )
        .unwrap();
    }
}

/// The default `/etc/wslnet/wslnet.toml` the .deb ships (`packaging/deb/wslnet.toml`) is
/// accepted by the agent both as shipped (all commented out) and with every example line
/// uncommented, so that no example names a field the agent rejects (it exits 2 on those).
#[test]
fn packaged_config_and_its_examples_are_accepted_by_the_agent() {
    require_root();
    let shipped = read("deb/wslnet.toml");
    // Example lines are `#key = ...` / `#[section]`; prose comments are `# text`.
    let uncommented: String = shipped
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(uncommented, shipped, "no example line found");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("shipped", &shipped), ("uncommented", &uncommented)] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let (pair, fs) = Pair::with_bpffs().unwrap();
        let agent = AgentOptions::default()
            .with(RunFlag::Config(path.clone()))
            .start(&pair.a, &fs)
            .unwrap_or_else(|e| panic!("{name} config:\n{text}\n{e}"));
        let status = agent.status().unwrap();
        assert!(
            status["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["name"] == "eth0"),
            "{name}: eth0 not attached: {status}"
        );
    }
}

/// Every interface slot taken: the agent matches `MAX_IFACE_SLOTS` interfaces with `zt*` and
/// can attach to one fewer (slot 0 is never used). The one it skips is matched and not attached
/// in `/metrics`, and a real Prometheus with the shipped rules holds
/// `WslnetInterfaceMatchedNotAttached` for exactly that interface (pending: `for: 5m`).
#[test]
fn an_interface_that_matches_but_cannot_be_attached_is_in_metrics_and_alerts() {
    require_root();
    let ns = Netns::new("wm").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let pairs = wslnet_common::MAX_IFACE_SLOTS / 2;
    let batch: String = (0..pairs)
        .map(|i| format!("link add zta{i} type veth peer name ztb{i}\n"))
        .collect();
    let out = ns
        .sh(&format!("ip -batch - <<'BATCH'\n{batch}BATCH"))
        .unwrap();
    assert!(out.trim().is_empty(), "{out}");
    let fs = Bpffs::new().unwrap();
    let agent = AgentOptions::default()
        .with(RunFlag::Iface("zt*".into()))
        .with(RunFlag::NoLearn)
        .start_within(&ns, &fs, Duration::from_secs(180))
        .unwrap();

    let names = |metrics: &str, metric: &str| -> BTreeSet<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) && l.ends_with(" 1"))
            .filter_map(|l| Some(l.split("interface=\"").nth(1)?.split('"').next()?.into()))
            .collect()
    };
    let metrics = scrape(&ns).unwrap();
    let matched = names(&metrics, "wslnet_interface_matched");
    let attached = names(&metrics, "wslnet_interface_attached");
    assert_eq!(matched.len(), 2 * pairs as usize, "{matched:?}");
    assert_eq!(attached.len(), 2 * pairs as usize - 1);
    let skipped: Vec<_> = matched.difference(&attached).cloned().collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let skipped = &skipped[0];
    let log = agent.daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("skipping interface") && l.contains(skipped.as_str())),
        "the agent did not log why it skipped {skipped}:\n{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let _prom = shipped_prometheus(&ns, dir.path());
    let alerts = wait_until(Duration::from_secs(60), "the alert pending", || {
        let v = prometheus::api(&ns, "alerts", None)?;
        let alerts = v["data"]["alerts"].as_array()?.clone();
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "WslnetInterfaceMatchedNotAttached")
            .then_some(alerts)
    })
    .unwrap();
    let ours: Vec<_> = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "WslnetInterfaceMatchedNotAttached")
        .collect();
    assert_eq!(ours.len(), 1, "{alerts:?}");
    assert_eq!(ours[0]["labels"]["interface"], skipped.as_str(), "{ours:?}");
    assert_eq!(ours[0]["state"], "pending", "{ours:?}");
}
