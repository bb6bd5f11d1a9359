//! `wslnet-agent run`: its flags, applied over the config file, and the start of the service
//! ([`crate::service`]).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{
    config::{AttachMode, Clamp, Config, DEFAULT_CONFIG_PATH},
    service::ConfigSource,
};

/// `run` flags.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML config file [default: /etc/wslnet/wslnet.toml, used only if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface glob to manage; repeat for several (replaces the config's list)
    /// [default: eth0 and zt*].
    #[arg(long = "iface", value_name = "GLOB")]
    pub ifaces: Vec<String>,
    /// Destination whose path MTU is measured at start and kept measured; repeatable.
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<std::net::IpAddr>,
    /// Static path MTU for a prefix, e.g. 10.8.0.0/16=1372; repeatable (replaces the config's
    /// [[clamp]] list).
    #[arg(long = "clamp", value_name = "CIDR=MTU")]
    pub clamps: Vec<Clamp>,
    /// Prometheus endpoint address [default: 127.0.0.1:9786].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/wslnet].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// How to attach: auto (TCX on Linux >= 6.6, else clsact), tcx, clsact.
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach_mode: Option<AttachMode>,
    /// Leave programs attached and pins in place on exit (for restarts and upgrades).
    #[arg(long)]
    pub keep_attached: bool,
    /// Do not probe destinations learned from outgoing connections (only --target ones).
    #[arg(long)]
    pub no_learn: bool,
    /// Seconds between re-checks of measured path MTUs [default: 30].
    #[arg(long, value_name = "SECS")]
    pub recheck_interval: Option<u64>,
    /// TCP port to probe every destination with (e.g. 443): for those that drop ICMP echo, and
    /// to check what echo measured. Without it each learned destination is checked at the port
    /// of its first connection.
    #[arg(long, value_name = "PORT")]
    pub probe_tcp_port: Option<u16>,
    /// Trust ICMP echo alone: do not check its result with TCP segments to the destination's
    /// port (paths that carry echo of a size TCP does not get through then stall).
    #[arg(long)]
    pub no_tcp_check: bool,
    /// Safe first contact: path MTU that destinations not yet measured are clamped to from
    /// their first SYN, until measured; the smallest path measured through an interface is used
    /// there when lower. 0 turns it off (a first connection may then stall) [default: 1280].
    #[arg(long, value_name = "BYTES")]
    pub first_contact_mtu: Option<u16>,
    /// React to symptoms: a local TCP connection waiting this long (ms) for an answer after
    /// sending, or retransmitting, re-measures its destination at once. 0 turns it off (paths
    /// that shrink are then found by the periodic re-check) [default: 1000].
    #[arg(long, value_name = "MS")]
    pub stall_after_ms: Option<u64>,
    /// Do not rescue running connections: oversize packets to destinations with a measured
    /// path MTU are left to the path (which drops them) instead of being answered with the ICMP
    /// error that makes their sender send smaller.
    #[arg(long)]
    pub no_reflect: bool,
    /// Every egress packet on the managed interfaces leaves with this DSCP (0-63, ECN kept):
    /// for NATs and VPN clients that drop marked packets, such as OpenSSH's default IPQoS
    /// af21 cs1 behind VMware's NAT [default: marks left alone].
    #[arg(long, value_name = "0-63")]
    pub set_dscp: Option<u8>,
    /// Most ICMP errors a second about one destination [default: 10].
    #[arg(long, value_name = "N")]
    pub reflect_per_sec: Option<u32>,
    /// Datapath log level forwarded to the agent's log (off, error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    pub datapath_log: Option<String>,
}

impl RunArgs {
    /// Applies these flags on top of a config.
    pub fn apply(&self, cfg: &mut Config) {
        if !self.ifaces.is_empty() {
            cfg.interfaces = self.ifaces.clone();
        }
        cfg.targets.extend(self.targets.iter().copied());
        cfg.targets.dedup();
        if !self.clamps.is_empty() {
            cfg.clamp = self.clamps.clone();
        }
        if let Some(a) = self.metrics_addr {
            cfg.metrics_addr = a;
        }
        if let Some(p) = &self.pin_dir {
            cfg.pin_dir = p.clone();
        }
        if let Some(m) = self.attach_mode {
            cfg.attach_mode = m;
        }
        if self.keep_attached {
            cfg.keep_attached_on_exit = true;
        }
        if self.no_learn {
            cfg.probe.learn = false;
        }
        if let Some(s) = self.recheck_interval {
            cfg.probe.recheck_interval_secs = s;
        }
        if let Some(p) = self.probe_tcp_port {
            cfg.probe.tcp_port = Some(p);
        }
        if self.no_tcp_check {
            cfg.probe.tcp_check = false;
        }
        if let Some(b) = self.first_contact_mtu {
            cfg.probe.first_contact_mtu = b;
        }
        if let Some(ms) = self.stall_after_ms {
            cfg.probe.stall_after_ms = ms;
        }
        if self.no_reflect {
            cfg.reflect = false;
        }
        if let Some(d) = self.set_dscp {
            cfg.set_dscp = Some(d);
        }
        if let Some(n) = self.reflect_per_sec {
            cfg.reflect_per_sec = n;
        }
        if let Some(l) = &self.datapath_log {
            cfg.datapath_log = l.clone();
        }
    }
    /// `run`: the agent, until SIGINT or SIGTERM, with these flags over the config file
    /// (read again, and the flags applied again, on SIGHUP).
    pub async fn run(self) -> Result<ExitCode> {
        let explicit = self.config.is_some();
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let source = ConfigSource {
            path,
            explicit,
            overrides: Box::new(move |cfg| self.apply(cfg)),
        };
        crate::service::run(source).await?;
        Ok(ExitCode::SUCCESS)
    }
}
