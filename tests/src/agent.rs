//! Running the real `wslnet-agent` binary inside a test namespace, and a two-namespace veth
//! fixture for clamp tests.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};

use crate::netns::{Bpffs, Daemon, Netns, agent_bin, veth, wait_until};

/// Port of the agent's metrics endpoint inside a namespace (each namespace has its own
/// loopback, so every test can use the default).
pub const METRICS_PORT: u16 = 9786;

/// A running `wslnet-agent run`, stopped (SIGTERM) on drop.
pub struct Agent {
    /// The process.
    pub daemon: Daemon,
    /// The pin directory passed to it.
    pub pin_dir: String,
    ns: String,
}

impl Agent {
    /// Starts `wslnet-agent run --pin-dir <bpffs>/wslnet ARGS` in `ns` and waits until it
    /// reports that it runs.
    pub fn start(ns: &Netns, fs: &Bpffs, args: &[&str]) -> Result<Self> {
        Self::start_within(ns, fs, args, crate::netns::PATIENCE)
    }

    /// [`Agent::start`], waiting up to `timeout` for it to run (for starts that attach to
    /// hundreds of interfaces; an upper bound, not a timing claim).
    pub fn start_within(ns: &Netns, fs: &Bpffs, args: &[&str], timeout: Duration) -> Result<Self> {
        let pin_dir = fs.path().join("wslnet").display().to_string();
        let mut all = vec!["run", "--pin-dir", &pin_dir];
        all.extend_from_slice(args);
        let mut cmd = ns.command(agent_bin());
        cmd.args(&all)
            .env(
                "RUST_LOG",
                std::env::var("WSLNET_TEST_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1");
        let mut daemon = Daemon::start(cmd)?;
        daemon.wait_for_log(timeout, |l| l.contains("wslnet agent running"))?;
        Ok(Self {
            daemon,
            pin_dir,
            ns: ns.name().to_string(),
        })
    }

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

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
            .output()?;
        anyhow::ensure!(out.status.success(), "scraping /metrics failed: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Agent {
    /// Waits until `status` shows a clamp entry of `mtu` for `host` alone (its /32 or /128);
    /// fails after `within`, with the agent's log.
    pub fn wait_for_clamp(&self, host: IpAddr, mtu: u64, within: Duration) -> Result<()> {
        wait_until(within, &format!("a clamp of {mtu} for {host}"), || {
            self.clamp(host)
                .is_some_and(|c| c["mtu"] == mtu)
                .then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.daemon.log()))
    }

    /// The exported path MTU of a configured target (`wslnet_path_mtu_bytes{target}`, 0 while
    /// unreachable), if the agent exports one.
    pub fn path_mtu(&self, target: &str) -> Option<f64> {
        sample(
            &self.metrics().ok()?,
            "wslnet_path_mtu_bytes",
            &[("target", target)],
        )
    }

    /// Waits until the exported path MTU of `target` is `mtu`; panics with the metrics and the
    /// log after `within`.
    pub fn wait_for_path_mtu(&self, target: &str, mtu: f64, within: Duration) {
        wait_until(
            within,
            &format!("wslnet_path_mtu_bytes{{target={target}}} == {mtu}"),
            || (self.path_mtu(target) == Some(mtu)).then_some(()),
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
}
