//! The agent's configuration: a TOML file (`--config`, default [`DEFAULT_CONFIG_PATH`]) with
//! command-line flags overriding it, validated before anything touches the kernel.
//!
//! ```toml
//! interfaces = ["eth0", "zt*"]        # globs of interfaces to manage
//! targets = ["10.8.0.1"]              # destinations to probe at start and keep measured
//! metrics_addr = "127.0.0.1:9786"
//! pin_dir = "/sys/fs/bpf/wslnet"
//! attach_mode = "auto"                # auto | tcx | clsact
//! reflect = true                      # answer oversize packets with the ICMP error (rescue)
//! reflect_per_sec = 10                # at most this many errors a second per destination
//!
//! [[clamp]]                           # static path MTUs: the manual override
//! cidr = "10.8.0.0/16"
//! mtu = 1372
//!
//! [probe]
//! learn = true                        # probe destinations of outgoing connections
//! recheck_interval_secs = 30
//! first_contact_mtu = 1280            # clamp for destinations not yet measured (0 = off)
//! stall_after_ms = 1000               # a stalled connection re-measures its path (0 = off)
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Largest [`ProbeConfig::recheck_interval_secs`], seconds: a week.
pub const MAX_RECHECK_INTERVAL_SECS: u64 = 7 * 24 * 3600;

/// Largest [`ProbeConfig::stall_after_ms`], milliseconds: an hour.
pub const MAX_STALL_AFTER_MS: u64 = 3600 * 1000;

/// [`ProbeConfig::first_contact_mtu`]'s default, bytes: the IPv6 minimum link MTU (RFC 8200),
/// which every IPv6 path carries and the tunnels WSL users meet (1280-1420) carry too. What a
/// first connection pays over IPv4 (MSS 1240 instead of 1460): 18% more segments for the same
/// data, and 99.5% of the payload per byte on the wire (1240/1280 against 1460/1500).
pub const DEFAULT_FIRST_CONTACT_MTU: u16 = MIN_MTU_V6;

/// [`ProbeConfig::stall_after_ms`]'s default: a second without an answer is several round trips
/// on any path a WSL user meets (a black hole never answers), yet short enough that the next
/// connection finds the path re-measured.
pub const DEFAULT_STALL_AFTER_MS: u64 = 1000;

/// [`Config::reflect_per_sec`]'s default: ten errors a second per destination, well inside
/// Linux's own per-destination ICMP budget, and a handful of retries for errors lost on the way.
pub const DEFAULT_REFLECT_PER_SEC: u32 = 10;

/// Where `run` looks for its config file when `--config` is not given (absent = defaults).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wslnet/wslnet.toml";
/// Default Prometheus endpoint: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9786";
/// Smallest IPv4 path MTU accepted in a clamp or found by a probe, bytes.
pub const MIN_MTU_V4: u16 = wslnet_common::MIN_PATH_MTU_V4;
/// Smallest IPv6 path MTU, bytes.
pub const MIN_MTU_V6: u16 = wslnet_common::MIN_PATH_MTU_V6;
/// Largest path MTU accepted, bytes.
pub const MAX_MTU: u16 = 65_535;

/// How the datapath is attached to interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX on kernels >= 6.6, clsact + netlink filters below.
    #[default]
    Auto,
    /// TCX links (kernel >= 6.6).
    Tcx,
    /// A clsact qdisc with cls_bpf filters (any kernel with sch_ingress and cls_bpf).
    Clsact,
}

impl AttachMode {
    /// The name in the config file, on the command line (`--attach-mode`), in `status` and in
    /// metric labels.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        }
    }
}

/// A static path MTU for a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Clamp {
    /// The prefix, e.g. `10.8.0.0/16` or `fd00::/8`; a bare address means a host route.
    pub cidr: IpNet,
    /// Path MTU for peers in the prefix, bytes (IPv4 552..=65535, IPv6 1280..=65535).
    pub mtu: u16,
}

impl std::str::FromStr for Clamp {
    type Err = anyhow::Error;

    /// Parses `CIDR=MTU`, e.g. `10.8.0.0/16=1372`.
    fn from_str(s: &str) -> Result<Self> {
        let (cidr, mtu) = s
            .split_once('=')
            .with_context(|| format!("`{s}`: expected CIDR=MTU, e.g. 10.8.0.0/16=1372"))?;
        let cidr = parse_net(cidr)?;
        let mtu = mtu
            .trim()
            .parse()
            .with_context(|| format!("`{s}`: MTU `{mtu}` is not a number of bytes"))?;
        Ok(Self { cidr, mtu })
    }
}

/// Parses a prefix or a bare address (a host prefix).
pub fn parse_net(s: &str) -> Result<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    bail!("`{s}` is not a CIDR prefix (e.g. 10.8.0.0/16, fd00::/8) or an address")
}

/// Prober settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Probe destinations the datapath saw in outgoing SYNs (besides the configured targets).
    pub learn: bool,
    /// Seconds between cheap re-checks of each measured destination (current MTU and one above).
    pub recheck_interval_secs: u64,
    /// Most learned destinations kept measured at once; the least recently used are dropped.
    pub max_destinations: usize,
    /// Most new searches started per minute for learned destinations.
    pub searches_per_minute: u32,
    /// Most probe packets sent per second, all searches together.
    pub max_probes_per_sec: u32,
    /// TCP port to probe every destination with: when it does not answer ICMP echo, and (with
    /// `tcp_check`) to check what echo measured. None: each learned destination is probed at
    /// the destination port of its first SYN; configured targets use ICMP only.
    pub tcp_port: Option<u16>,
    /// Check every ICMP echo result with TCP segments of that size to the destination's port
    /// (`tcp_port`, or the port its first SYN went to): some paths (VPNs, middleboxes) carry
    /// echo of a size that TCP does not get through, and a clamp resting on echo alone would
    /// stall there. Costs each search 4 short connections to that port (spaces sent, then a
    /// reset), more when TCP carries less; re-checks use TCP only after a symptom or when TCP
    /// set the result.
    pub tcp_check: bool,
    /// Smallest IPv4 path MTU a search may report, bytes (at least 552).
    pub min_mtu_v4: u16,
    /// Safe first contact: the path MTU, bytes, that a destination not yet measured is clamped
    /// to from its very first SYN, on every managed interface, until its own measurement
    /// replaces it (raising or lowering it). When destinations measured through the interface
    /// are smaller (one tunnel usually carries them all), their smallest result is used
    /// instead. 0 = off: destinations are not clamped before they are measured (their first
    /// connection may stall in a black hole). At least 1280, so IPv6 can use it too.
    pub first_contact_mtu: u16,
    /// React to symptoms: a local TCP connection that has waited this long (milliseconds) for
    /// an answer after sending, or that retransmits, makes its destination be re-measured at
    /// once (and, when its path shrank, every destination measured through the same
    /// interface), instead of at the next periodic re-check. 0 = off.
    pub stall_after_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            learn: true,
            recheck_interval_secs: 30,
            max_destinations: 1024,
            searches_per_minute: 60,
            max_probes_per_sec: 200,
            tcp_port: None,
            tcp_check: true,
            min_mtu_v4: MIN_MTU_V4,
            first_contact_mtu: DEFAULT_FIRST_CONTACT_MTU,
            stall_after_ms: DEFAULT_STALL_AFTER_MS,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Globs of interface names to manage (`*`, `?`, `[..]`), e.g. `eth0`, `zt*`.
    pub interfaces: Vec<String>,
    /// Destinations whose path MTU is measured at start and kept measured; each gets a
    /// `wslnet_path_mtu_bytes{target}` series.
    pub targets: Vec<IpAddr>,
    /// Static path MTUs (the manual override); they win over measurements for their prefix.
    pub clamp: Vec<Clamp>,
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`).
    pub metrics_addr: SocketAddr,
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// How to attach to interfaces.
    pub attach_mode: AttachMode,
    /// Leave programs attached and pins in place when the agent stops (for upgrades);
    /// `wslnet-agent detach` removes them.
    pub keep_attached_on_exit: bool,
    /// Level of the datapath's own log messages (aya-log) forwarded to the agent's log:
    /// off, error, warn, info, debug, trace.
    pub datapath_log: String,
    /// Prober settings.
    pub probe: ProbeConfig,
    /// Rescue what the clamp cannot: an egress DF packet larger than the path MTU measured (or
    /// set) for its destination is dropped and its sender gets the ICMP "fragmentation needed"
    /// / "packet too big" the path never sent, so running connections and UDP senders lower
    /// their packet size. Never for destinations clamped only for first contact.
    pub reflect: bool,
    /// Most ICMP errors a second sent about one destination (errors; a burst of as many is
    /// allowed). One is enough to lower its path MTU for every socket.
    pub reflect_per_sec: u32,
    /// Normalise marks: every egress IPv4 and IPv6 packet on the managed interfaces leaves with
    /// this DSCP (0-63; the two ECN bits are kept), for NATs and VPN clients that drop marked
    /// packets (OpenSSH's default `IPQoS af21 cs1` behind VMware's NAT). None: marks are left
    /// alone.
    pub set_dscp: Option<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: vec!["eth0".into(), "zt*".into()],
            targets: Vec::new(),
            clamp: Vec::new(),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default"),
            pin_dir: PathBuf::from(crate::pins::DEFAULT_PIN_DIR),
            attach_mode: AttachMode::Auto,
            keep_attached_on_exit: false,
            datapath_log: "off".into(),
            probe: ProbeConfig::default(),
            reflect: true,
            reflect_per_sec: DEFAULT_REFLECT_PER_SEC,
            set_dscp: None,
        }
    }
}

/// A configuration problem: the message names the field and the fix. `run` exits 2 on it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path`; when `explicit` is false a missing file means the defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(ConfigError(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                ))
                .into());
            }
        };
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())).into())
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError(toml_message(text, &e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field, naming the first bad one and how to fix it.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.interfaces.is_empty() {
            return err(
                "interfaces: empty; name at least one glob, e.g. [\"eth0\", \"zt*\"]".into(),
            );
        }
        for (i, g) in self.interfaces.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(g) {
                return err(format!("interfaces[{i}]: `{g}` is not a valid glob: {e}"));
            }
        }
        for (i, c) in self.clamp.iter().enumerate() {
            let min = match c.cidr {
                IpNet::V4(_) => MIN_MTU_V4,
                IpNet::V6(_) => MIN_MTU_V6,
            };
            if c.mtu < min {
                return err(format!(
                    "clamp[{i}].mtu: {} is out of range for {}: path MTUs are {min}..={MAX_MTU} \
                     bytes for {}",
                    c.mtu,
                    c.cidr,
                    if min == MIN_MTU_V4 { "IPv4" } else { "IPv6" }
                ));
            }
        }
        let p = &self.probe;
        if p.min_mtu_v4 < MIN_MTU_V4 {
            return err(format!(
                "probe.min_mtu_v4: {} is below {MIN_MTU_V4}, the smallest IPv4 path MTU wslnet \
                 will set",
                p.min_mtu_v4
            ));
        }
        if p.first_contact_mtu != 0 && p.first_contact_mtu < MIN_MTU_V6 {
            return err(format!(
                "probe.first_contact_mtu: {} is below {MIN_MTU_V6}; use 0 (off) or \
                 {MIN_MTU_V6}..={MAX_MTU}",
                p.first_contact_mtu
            ));
        }
        if self.reflect_per_sec == 0 {
            return err(
                "reflect_per_sec: must be at least 1; to send no ICMP errors set reflect = false"
                    .into(),
            );
        }
        // Upper bounds keep every deadline computed from these (now + interval) representable:
        // near u64::MAX the addition overflows and the probe manager would panic.
        if !(1..=MAX_RECHECK_INTERVAL_SECS).contains(&p.recheck_interval_secs) {
            return err(format!(
                "probe.recheck_interval_secs: {} is out of range 1..={MAX_RECHECK_INTERVAL_SECS} \
                 (a week)",
                p.recheck_interval_secs
            ));
        }
        if p.stall_after_ms > MAX_STALL_AFTER_MS {
            return err(format!(
                "probe.stall_after_ms: {} is out of range 0..={MAX_STALL_AFTER_MS} (an hour; 0 \
                 is off)",
                p.stall_after_ms
            ));
        }
        if p.max_probes_per_sec == 0 {
            return err("probe.max_probes_per_sec: must be at least 1".into());
        }
        if p.tcp_port == Some(0) {
            return err("probe.tcp_port: 0 is not a port; remove it or use e.g. 443".into());
        }
        if let Some(d) = self.set_dscp
            && d > wslnet_common::MAX_DSCP
        {
            return err(format!(
                "set_dscp: {d} is out of range: a DSCP is 0..={} (0 clears every mark)",
                wslnet_common::MAX_DSCP
            ));
        }
        if datapath_log_level(&self.datapath_log).is_none() {
            return err(format!(
                "datapath_log: `{}` is not one of off, error, warn, info, debug, trace",
                self.datapath_log
            ));
        }
        Ok(())
    }

    /// [`IfaceConfig::dscp`](wslnet_common::IfaceConfig::dscp) for `set_dscp`.
    pub fn dscp_setting(&self) -> u8 {
        self.set_dscp.map_or(0, |d| wslnet_common::DSCP_SET | d)
    }

    /// True when `name` matches one of the interface globs.
    pub fn matches_interface(&self, name: &str) -> bool {
        self.interfaces
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .any(|p| p.matches(name))
    }
}

/// The aya-log level number for a name (0 off .. 5 trace).
pub fn datapath_log_level(name: &str) -> Option<u8> {
    Some(match name {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

/// A toml error as one line that names the field (`clamp[1].cidr: ...`) and the line.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return msg;
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // The key on the offending line, inside the table (or array of tables) that holds it.
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for l in text.lines().take(line_no) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let n = counts.entry(name.trim().to_string()).or_insert(0);
            table = format!("{}[{}]", name.trim(), *n);
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.trim().to_string();
        }
    }
    let field = match (table.is_empty(), key) {
        (_, None) if msg.contains('`') => return format!("{msg} (line {line_no})"),
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) => table,
    };
    format!("{field}: {msg} (line {line_no})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg, Config::default());
        assert!(cfg.matches_interface("eth0"));
        assert!(cfg.matches_interface("zt3jn4p2qk"));
        assert!(!cfg.matches_interface("eth1"));
    }

    #[test]
    fn full_file_parses() {
        let cfg = Config::parse(
            r#"
            interfaces = ["eth*"]
            targets = ["10.1.2.3", "fd00::1"]
            metrics_addr = "127.0.0.1:9999"
            attach_mode = "clsact"
            [[clamp]]
            cidr = "10.0.0.0/8"
            mtu = 1372
            [probe]
            learn = false
            tcp_port = 443
            "#,
        )
        .unwrap();
        assert_eq!(cfg.clamp[0].mtu, 1372);
        assert_eq!(cfg.attach_mode, AttachMode::Clsact);
        assert_eq!(cfg.probe.tcp_port, Some(443));
        assert!(!cfg.probe.learn);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Config::parse("interfacez = [\"eth0\"]").unwrap_err();
        assert!(e.0.contains("interfacez"), "{e}");
    }

    #[test]
    fn bad_cidr_is_named() {
        let e = Config::parse("[[clamp]]\ncidr = \"10.0.0.1/8\"\nmtu = 1400\n[[clamp]]\ncidr = \"10.0.0.300/8\"\nmtu = 1400").unwrap_err();
        assert!(e.0.starts_with("clamp[1].cidr:"), "{e}");
    }

    #[test]
    fn mtu_out_of_range_is_named() {
        let e = Config::parse("[[clamp]]\ncidr = \"fd00::/8\"\nmtu = 1000").unwrap_err();
        assert!(e.0.contains("clamp[0].mtu"), "{e}");
        let e = Config::parse("[[clamp]]\ncidr = \"10.0.0.0/8\"\nmtu = 70000").unwrap_err();
        assert!(e.0.contains("mtu"), "{e}");
    }

    #[test]
    fn durations_are_bounded_so_that_no_deadline_overflows() {
        let e = Config::parse("[probe]\nrecheck_interval_secs = 9223372036854775807").unwrap_err();
        assert!(
            e.0.contains("probe.recheck_interval_secs: 9223372036854775807"),
            "{e}"
        );
        let e = Config::parse("[probe]\nstall_after_ms = 9223372036854775807").unwrap_err();
        assert!(e.0.contains("probe.stall_after_ms"), "{e}");
        let week = format!("[probe]\nrecheck_interval_secs = {MAX_RECHECK_INTERVAL_SECS}");
        assert!(Config::parse(&week).is_ok());
    }

    #[test]
    fn set_dscp_is_range_checked_and_becomes_the_interface_setting() {
        let e = Config::parse("set_dscp = 64").unwrap_err();
        assert!(format!("{e:#}").contains("set_dscp: 64"), "{e:#}");
        let c = Config::parse("set_dscp = 0").unwrap();
        assert_eq!(c.dscp_setting(), wslnet_common::DSCP_SET);
        let c = Config::parse("set_dscp = 46").unwrap();
        assert_eq!(c.dscp_setting(), wslnet_common::DSCP_SET | 46);
        assert_eq!(Config::default().dscp_setting(), 0);
    }

    #[test]
    fn attach_mode_names_are_the_config_and_flag_values() {
        use clap::ValueEnum as _;
        for &m in AttachMode::value_variants() {
            let flag = m.to_possible_value().expect("no variant is skipped");
            assert_eq!(flag.get_name(), m.name());
            let toml = toml::Value::try_from(m).unwrap();
            assert_eq!(toml.as_str(), Some(m.name()));
        }
    }

    #[test]
    fn clamp_flag_parses() {
        let c: Clamp = "10.8.0.0/16=1372".parse().unwrap();
        assert_eq!(c.mtu, 1372);
        let c: Clamp = "fd00::1=1400".parse().unwrap();
        assert_eq!(c.cidr.prefix_len(), 128);
        assert!("10.8.0.0/16".parse::<Clamp>().is_err());
        assert!("nonsense=12".parse::<Clamp>().is_err());
    }
}
