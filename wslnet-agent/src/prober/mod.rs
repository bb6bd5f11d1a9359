//! Path-MTU prober (placeholder: being written).
use clap::Args;

/// Arguments of `wslnet-agent probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Address to measure the path MTU to.
    pub target: String,
}

/// `wslnet-agent probe`.
pub async fn run_cli(_args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("probe is not implemented yet")
}

// ---- temporary stubs of the promised engine API (lead), replaced by the real prober ----
/// Search options.
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    /// Egress interface.
    pub iface: Option<String>,
    /// Lower bound.
    pub min_mtu: Option<u16>,
    /// Upper bound.
    pub max_mtu: Option<u16>,
    /// TCP fallback port.
    pub tcp_port: Option<u16>,
    /// Round timeout.
    pub round_timeout: std::time::Duration,
    /// Retries.
    pub retries: u32,
    /// Rate limit.
    pub max_probes_per_sec: u32,
}
/// Report.
#[derive(Debug)]
pub struct SearchReport {
    /// MTU.
    pub mtu: Option<u16>,
    /// Probes.
    pub probes_sent: u32,
    /// Elapsed.
    pub elapsed: std::time::Duration,
}
/// Recheck.
#[derive(Debug)]
pub struct Recheck {
    /// Current ok.
    pub current_ok: bool,
    /// Larger ok.
    pub larger_ok: bool,
    /// Probes.
    pub probes_sent: u32,
}
/// Search.
pub async fn search(_t: std::net::IpAddr, _o: &SearchOptions) -> anyhow::Result<SearchReport> {
    anyhow::bail!("stub")
}
/// Recheck.
pub async fn recheck(_t: std::net::IpAddr, _m: u16, _o: &SearchOptions) -> anyhow::Result<Recheck> {
    anyhow::bail!("stub")
}
