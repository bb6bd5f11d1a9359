//! Running the real `wslnet-agent` binary inside a test namespace: [`AgentOptions`], the typed
//! flags a test starts `run` with, the running [`Agent`] and what it reports (status, metrics),
//! and a two-namespace veth fixture for clamp tests ([`Pair`]).

use std::{
    ffi::OsStr,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use wslnet_agent::{config::AttachMode, fault::Fault};

use crate::{
    lab::Lab,
    netns::{Bpffs, Daemon, Netns, PATIENCE, agent_bin, veth, wait_until},
};

/// Port of the agent's metrics endpoint inside a namespace (each namespace has its own
/// loopback, so every test can use the default).
pub const METRICS_PORT: u16 = 9786;

/// The log line with which `run` says it has started.
pub const RUNNING_LINE: &str = "wslnet agent running";

/// One flag of `wslnet-agent run`, typed (see `wslnet-agent run --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFlag {
    /// `--config FILE`: the TOML config file (flags given besides it override it).
    Config(PathBuf),
    /// `--iface GLOB`: an interface glob to manage (repeatable).
    Iface(String),
    /// `--target ADDR`: a destination measured from the start (repeatable).
    Target(IpAddr),
    /// `--clamp CIDR=MTU`: a static path MTU, bytes, for a prefix; a host's (its /32 or /128)
    /// is spelled as the bare address (repeatable).
    Clamp(IpNet, u16),
    /// `--attach-mode MODE`.
    AttachMode(AttachMode),
    /// `--keep-attached`: programs and pins stay when the agent stops.
    KeepAttached,
    /// `--no-learn`: only the targets are measured, not the destinations of outgoing SYNs.
    NoLearn,
    /// `--recheck-interval SECS`: seconds between re-checks of measured path MTUs.
    RecheckInterval(u64),
    /// `--probe-tcp-port PORT`: the TCP port every destination is probed at.
    ProbeTcpPort(u16),
    /// `--first-contact-mtu BYTES`: the clamp, bytes, of destinations not yet measured (0:
    /// none).
    FirstContactMtu(u16),
    /// `--no-reflect`: oversize packets are left to the path, not answered.
    NoReflect,
    /// `--set-dscp DSCP`: every egress packet leaves with this DSCP (0-63).
    SetDscp(u8),
    /// `--reflect-per-sec N`: most ICMP errors a second about one destination.
    ReflectPerSec(u32),
}

impl RunFlag {
    /// The flag's name (without `--`) and its value, as `run` reads them.
    fn spelled(&self) -> (&'static str, Option<String>) {
        match self {
            Self::Config(file) => ("config", Some(file.display().to_string())),
            Self::Iface(glob) => ("iface", Some(glob.clone())),
            Self::Target(addr) => ("target", Some(addr.to_string())),
            Self::Clamp(net, mtu) if net.prefix_len() == net.max_prefix_len() => {
                ("clamp", Some(format!("{}={mtu}", net.addr())))
            }
            Self::Clamp(net, mtu) => ("clamp", Some(format!("{net}={mtu}"))),
            Self::AttachMode(mode) => ("attach-mode", Some(attach_mode_name(*mode))),
            Self::KeepAttached => ("keep-attached", None),
            Self::NoLearn => ("no-learn", None),
            Self::RecheckInterval(secs) => ("recheck-interval", Some(secs.to_string())),
            Self::ProbeTcpPort(port) => ("probe-tcp-port", Some(port.to_string())),
            Self::FirstContactMtu(bytes) => ("first-contact-mtu", Some(bytes.to_string())),
            Self::NoReflect => ("no-reflect", None),
            Self::SetDscp(dscp) => ("set-dscp", Some(dscp.to_string())),
            Self::ReflectPerSec(n) => ("reflect-per-sec", Some(n.to_string())),
        }
    }
}

/// The flags a test starts `wslnet-agent run` with, typed ([`RunFlag`]); [`AgentOptions::args`]
/// spells them as the agent's command line. [`AgentOptions::as_at_boot`] sets none; the other
/// constructors name the usual sets, and [`AgentOptions::with`] adds one flag more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// The flags, in command-line order.
    flags: Vec<RunFlag>,
    /// A fault to inject ([`wslnet_agent::fault`], debug builds), or none.
    fault: Option<Fault>,
}

impl AgentOptions {
    /// No flags: the agent as at boot, with its defaults (every `eth0` and `zt*` interface,
    /// destinations learned from outgoing connections, no target).
    pub fn as_at_boot() -> Self {
        Self::default()
    }

    /// Managing `eth0` alone (the uplink of the lab's `wsl` and of [`Pair::a`]).
    pub fn eth0() -> Self {
        Self::as_at_boot().with(RunFlag::Iface("eth0".into()))
    }

    /// Managing `eth0` and measuring `target` there, nothing else (no learning from outgoing
    /// connections): more targets with [`RunFlag::Target`].
    pub fn measuring(target: impl Into<IpAddr>) -> Self {
        Self::eth0()
            .with(RunFlag::Target(target.into()))
            .with(RunFlag::NoLearn)
    }

    /// Managing `eth0` with the static path MTU `mtu` (bytes) for `host`, nothing measured or
    /// learned: more clamps with [`RunFlag::Clamp`].
    pub fn clamping(host: impl Into<IpAddr>, mtu: u16) -> Self {
        Self::eth0()
            .with(RunFlag::Clamp(host.into().into(), mtu))
            .with(RunFlag::NoLearn)
    }

    /// These options and `flag`.
    pub fn with(mut self, flag: RunFlag) -> Self {
        self.flags.push(flag);
        self
    }

    /// These options, with `fault` injected into the agent.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The flags as `run`'s command line (after `run`; without `--pin-dir`, which
    /// [`run_command`] adds).
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for flag in &self.flags {
            let (name, value) = flag.spelled();
            args.push(format!("--{name}"));
            args.extend(value);
        }
        args
    }

    /// Starts `run` with these flags in `ns`, its pins in `fs` ([`Bpffs::pin_dir`]), and waits
    /// until it reports that it runs.
    pub fn start(&self, ns: &Netns, fs: &Bpffs) -> Result<Agent> {
        self.start_within(ns, fs, PATIENCE)
    }

    /// [`AgentOptions::start`], waiting up to `timeout` for it to run (for starts that attach
    /// to hundreds of interfaces; an upper bound, not a timing claim).
    pub fn start_within(&self, ns: &Netns, fs: &Bpffs, timeout: Duration) -> Result<Agent> {
        let pin_dir = fs.pin_dir();
        let mut cmd = run_command(ns, &[], &pin_dir, self.args());
        if let Some(fault) = self.fault {
            cmd.env(wslnet_agent::fault::ENV, fault.name());
        }
        let mut daemon = Daemon::start(cmd)?;
        daemon.wait_for_log(timeout, |l| l.contains(RUNNING_LINE))?;
        Ok(Agent {
            daemon,
            pin_dir: pin_dir.display().to_string(),
            ns: ns.name().to_string(),
            bpffs: None,
        })
    }

    /// Starts `run` with these flags in the lab's `wsl`, on a bpffs of its own (unmounted once
    /// the agent has stopped).
    pub fn start_in_lab(&self, lab: &Lab) -> Result<Agent> {
        let fs = Bpffs::new()?;
        let mut agent = self.start(&lab.wsl, &fs)?;
        agent.bpffs = Some(fs);
        Ok(agent)
    }
}

/// The name of an attach mode on the command line and in `status --json` (`auto`, `tcx`,
/// `clsact`), as the agent spells it.
pub fn attach_mode_name(mode: AttachMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("an attach mode serialises as its name")
}

/// Runs `test` with `mode`, unless this kernel cannot attach that way (TCX before Linux 6.6):
/// then the test skips itself ([`crate::netns::skip_without_tcx`]).
pub fn with_attach_mode(mode: AttachMode, test: impl FnOnce(AttachMode)) {
    if mode == AttachMode::Tcx && crate::netns::skip_without_tcx() {
        return;
    }
    test(mode)
}

/// Two tests of one body, `fn(AttachMode)`: `$tcx` runs it attached with TCX (skipped on
/// kernels without), `$clsact` with clsact ([`with_attach_mode`]).
///
/// ```ignore
/// wslnet_tests::in_both_attach_modes! {
///     detach_leaves_nothing_behind,
///     tcx: detach_leaves_nothing_behind_tcx,
///     clsact: detach_leaves_nothing_behind_clsact,
/// }
/// ```
#[macro_export]
macro_rules! in_both_attach_modes {
    ($body:path, tcx: $tcx:ident, clsact: $clsact:ident $(,)?) => {
        #[test]
        fn $tcx() {
            $crate::agent::with_attach_mode(::wslnet_agent::config::AttachMode::Tcx, $body);
        }

        #[test]
        fn $clsact() {
            $crate::agent::with_attach_mode(::wslnet_agent::config::AttachMode::Clsact, $body);
        }
    };
}

/// `wrapper... wslnet-agent run --pin-dir PIN_DIR ARGS` in `ns`, logging at `$WSLNET_TEST_LOG`
/// (default `info`) without colours. `wrapper`: a program and its arguments run in front of the
/// agent (setpriv, strace), or nothing.
pub fn run_command<S: AsRef<OsStr>>(
    ns: &Netns,
    wrapper: &[String],
    pin_dir: &Path,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = ns.command(program);
            cmd.args(rest).arg(agent_bin());
            cmd
        }
        None => ns.command(agent_bin()),
    };
    cmd.arg("run")
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("WSLNET_TEST_LOG").unwrap_or("info".into()),
        )
        .env("NO_COLOR", "1");
    cmd
}

/// A running `wslnet-agent run` ([`AgentOptions::start`]), stopped (SIGTERM) on drop.
pub struct Agent {
    /// The process.
    pub daemon: Daemon,
    /// The pin directory passed to it.
    pub pin_dir: String,
    ns: String,
    /// The bpffs of [`AgentOptions::start_in_lab`], unmounted after the process has stopped
    /// (fields drop in order).
    bpffs: Option<Bpffs>,
}

impl Agent {
    /// Runs another `wslnet-agent` command in the agent's namespace (e.g. `status --json`).
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(agent_bin())
            .args(args)
            .output()
            .context("running wslnet-agent")
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        status_json(&self.ns, &self.pin_dir)
    }

    /// The names of the interfaces `status` reports attached.
    pub fn interface_names(&self) -> Result<Vec<String>> {
        let st = self.status()?;
        let ifaces = st["interfaces"]
            .as_array()
            .context("status has no interfaces")?;
        ifaces
            .iter()
            .map(|i| {
                i["name"]
                    .as_str()
                    .map(str::to_string)
                    .context("an interface without a name in status")
            })
            .collect()
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        metrics_in(&self.ns)
    }

    /// What `/healthz` answers: the HTTP status and the body, trimmed (`(200, "ok")` when
    /// healthy).
    pub fn healthz(&self) -> Result<(u16, String)> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "5"])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{METRICS_PORT}/healthz"))
            .output()
            .context("running curl")?;
        anyhow::ensure!(out.status.success(), "asking /healthz failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("no HTTP status")?;
        Ok((code.trim().parse()?, body.trim().to_string()))
    }
}

/// The `/metrics` text of the agent running in namespace `ns` (at [`METRICS_PORT`]).
pub fn metrics_in(ns: &str) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
        .output()
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "scraping /metrics failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Agent {
    /// Waits until `status` shows a clamp entry of `mtu` bytes for `host` alone (its /32 or
    /// /128); fails after `within`, with the agent's log.
    pub fn wait_for_clamp(
        &self,
        host: impl Into<IpAddr>,
        mtu: u16,
        within: Duration,
    ) -> Result<()> {
        let host = host.into();
        wait_until(within, &format!("a clamp of {mtu} for {host}"), || {
            self.clamp(host)
                .is_some_and(|c| c["mtu"] == mtu)
                .then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.daemon.log()))
    }

    /// The exported path MTU (bytes) of a configured target (`wslnet_path_mtu_bytes{target}`,
    /// 0 while unreachable), if the agent exports one.
    pub fn path_mtu(&self, target: impl Into<IpAddr>) -> Option<f64> {
        sample(
            &self.metrics().ok()?,
            "wslnet_path_mtu_bytes",
            &[("target", &target.into().to_string())],
        )
    }

    /// Waits until the exported path MTU of `target` is `mtu` bytes; panics with the metrics
    /// and the log after `within`.
    pub fn wait_for_path_mtu(&self, target: impl Into<IpAddr>, mtu: u16, within: Duration) {
        let target = target.into();
        wait_until(
            within,
            &format!("wslnet_path_mtu_bytes{{target={target}}} == {mtu}"),
            || (self.path_mtu(target) == Some(f64::from(mtu))).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}; metrics:\n{}\nlog:\n{}",
                self.metrics().unwrap_or_default(),
                self.daemon.log()
            )
        });
    }

    /// The clamp entry `status` shows for `host` alone, if any (see [`host_clamp`]).
    pub fn clamp(&self, host: IpAddr) -> Option<serde_json::Value> {
        host_clamp(&self.status().ok()?, host)
    }
}

/// The entry of a `status --json` clamp table for `host` alone: its /32 (IPv4) or /128 (IPv6),
/// as a measurement writes it.
pub fn host_clamp(status: &serde_json::Value, host: IpAddr) -> Option<serde_json::Value> {
    let net = format!("{host}/{}", if host.is_ipv4() { 32 } else { 128 });
    status["clamps"]
        .as_array()?
        .iter()
        .find(|c| c["net"] == net.as_str())
        .cloned()
}

/// `wslnet-agent status --json --pin-dir DIR` in namespace `ns`, parsed.
pub fn status_json(ns: &str, pin_dir: &str) -> Result<serde_json::Value> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .args(["status", "--json", "--pin-dir", pin_dir])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The value of one sample (`name{labels}`) in a Prometheus text exposition; the labels are
/// given as `key="value"` pairs, in any order, and need only be a subset.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// A counter of `status --json` for an interface: `counters["<dir>/<family>"][field]`.
pub fn status_counter(status: &serde_json::Value, iface: &str, dirfam: &str, field: &str) -> u64 {
    status["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == iface))
        .and_then(|i| i["counters"][dirfam][field].as_u64())
        .unwrap_or(0)
}

/// Two namespaces joined by a veth pair named `eth0` on both sides:
/// `a` = 10.99.0.1/24 + fd99::1/64, `b` = 10.99.0.2/24 + fd99::2/64.
pub struct Pair {
    /// The side the agent runs on ("wsl").
    pub a: Netns,
    /// The peer.
    pub b: Netns,
}

impl Pair {
    /// Address of `a`.
    pub const A4: &str = "10.99.0.1";
    /// Address of `b`.
    pub const B4: &str = "10.99.0.2";
    /// IPv6 address of `a`.
    pub const A6: &str = "fd99::1";
    /// IPv6 address of `b`.
    pub const B6: &str = "fd99::2";

    /// [`Pair::B4`] as an address.
    pub fn b4() -> IpAddr {
        Self::B4.parse().expect("Pair::B4 is an IPv4 address")
    }

    /// [`Pair::B6`] as an address.
    pub fn b6() -> IpAddr {
        Self::B6.parse().expect("Pair::B6 is an IPv6 address")
    }

    /// Builds the pair with both links up and addresses ready (no DAD wait).
    pub fn new() -> Result<Self> {
        let a = Netns::new("wa")?;
        let b = Netns::new("wb")?;
        veth(&a, "eth0", &b, "eth0")?;
        for (ns, v4, v6) in [(&a, Self::A4, Self::A6), (&b, Self::B4, Self::B6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        }
        Ok(Self { a, b })
    }

    /// Where the tests on a pair start: root checked, the pair built, and a private bpffs for
    /// the agent's pins.
    pub fn with_bpffs() -> Result<(Self, Bpffs)> {
        crate::netns::require_root();
        Ok((Self::new()?, Bpffs::new()?))
    }

    /// The MSS the kernel in `a` sends with on a fresh TCP connection to `addr:port` (which
    /// must listen): `TCP_MAXSEG`, the peer's MSS option after `a`'s ingress clamp, less the
    /// TCP options in use.
    pub fn sender_mss(&self, addr: IpAddr, port: u16) -> Result<u32> {
        let out = self.a.sh(&format!(
            "python3 -c \"import socket; s=socket.create_connection(('{addr}', {port}), timeout=5); \
             print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))\""
        ))?;
        out.trim()
            .parse()
            .with_context(|| format!("TCP_MAXSEG of a connection to {addr}:{port}: {out:?}"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn options_are_spelled_as_runs_flags_in_order() {
        let host = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
        let options = AgentOptions::clamping(host, 1372)
            .with(RunFlag::Target(host))
            .with(RunFlag::AttachMode(AttachMode::Clsact))
            .with(RunFlag::RecheckInterval(2));
        assert_eq!(
            options.args(),
            [
                "--iface",
                "eth0",
                "--clamp",
                "10.99.0.2=1372",
                "--no-learn",
                "--target",
                "10.99.0.2",
                "--attach-mode",
                "clsact",
                "--recheck-interval",
                "2",
            ]
        );
        assert!(AgentOptions::as_at_boot().args().is_empty());
    }
}
