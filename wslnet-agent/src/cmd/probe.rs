//! `wslnet-agent probe TARGET`: one search ([`crate::prober`]), printed as text or JSON.

use std::{net::IpAddr, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::prober::{Method, SearchOptions, Traffic, recheck, search};

/// Arguments of `wslnet-agent probe`.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Address (or host name) to measure the path MTU to.
    pub target: String,
    /// Send probes out of this interface; the upper bound becomes its MTU.
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,
    /// Measure the path this user's traffic takes: where policy routing (`ip rule ... uidrange`)
    /// sends it out of another interface than this command's own, probe out of that interface,
    /// from its route's source address (what `run` does for a destination it learned from that
    /// user's connections). With --tcp-port, rules on `ipproto tcp dport` are followed too.
    #[arg(long, value_name = "UID", conflicts_with = "iface")]
    pub uid: Option<u32>,
    /// Measure the path traffic with this firewall mark takes (`ip rule ... fwmark`), as --uid
    /// does for a user.
    #[arg(long, value_name = "MARK", value_parser = parse_mark, conflicts_with = "iface")]
    pub mark: Option<u32>,
    /// Lower bound in bytes (IPv4 default 552; IPv6 is always at least 1280).
    #[arg(long, value_name = "N")]
    pub min_mtu: Option<u16>,
    /// Upper bound in bytes (default and maximum: the egress interface's MTU).
    #[arg(long, value_name = "N")]
    pub max_mtu: Option<u16>,
    /// TCP port of the target (a service it runs: 443, 22, ...). What ICMP echo finds is checked
    /// with TCP segments to it (some paths carry echo of a size TCP does not get through), and
    /// it measures alone when the target does not answer ICMP echo. Each probe is a short
    /// connection that sends spaces and is then reset.
    #[arg(long, value_name = "PORT")]
    pub tcp_port: Option<u16>,
    /// Longest wait for the answers of one round, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Extra copies of each probe per round, and repeats of a round that got no answer.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retries: u32,
    /// Rate limit on probe packets, per second.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub rate: u32,
    /// Only re-check a known path MTU N (what `run` does periodically): one round of the lower
    /// bound, N, N+1 and the upper bound; prints whether N and something larger still pass.
    #[arg(long, value_name = "N")]
    pub recheck: Option<u16>,
    /// Print the report as JSON: target, mtu (null when unreachable), method (icmp, icmp-error,
    /// tcp, tcp-below-icmp, return-fragments), tcp_checked, return_fragments (largest fragment
    /// of an echo reply that came back fragmented, or null), rounds, probes_sent, elapsed_ms,
    /// upper_bound, lower_bound, interface (with --recheck: target,
    /// mtu, current_ok, larger_ok, probes_sent).
    #[arg(long)]
    pub json: bool,
}

impl ProbeArgs {
    /// `probe`: prints the path MTU to TARGET; fails (after printing) when the target is
    /// unreachable.
    pub async fn run(self) -> Result<ExitCode> {
        probe(self).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// One search (or re-check) as the flags say, printed.
async fn probe(args: ProbeArgs) -> Result<()> {
    let target = resolve(&args.target).await?;
    let opts = SearchOptions {
        iface: args.iface.clone(),
        min_mtu: args.min_mtu,
        max_mtu: args.max_mtu,
        tcp_port: args.tcp_port,
        tcp_check: args.tcp_port.is_some(),
        round_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        retries: args.retries,
        max_probes_per_sec: args.rate,
        // A running agent's clamp may cap the TCP fallback's sizes; `run` registers its own
        // probes, this command does not touch the agent's maps.
        tcp_hook: None,
        traffic: Traffic {
            uid: args.uid,
            mark: args.mark.unwrap_or(0),
            dport: args.tcp_port,
        },
    };
    if let Some(mtu) = args.recheck {
        let r = recheck(target, mtu, &opts).await?;
        if args.json {
            let mut v = serde_json::to_value(r)?;
            v["target"] = target.to_string().into();
            v["mtu"] = mtu.into();
            println!("{v}");
        } else {
            println!(
                "{target}: {mtu} bytes {}; larger packets {} ({} probes)",
                if r.current_ok {
                    "still pass"
                } else {
                    "no longer pass"
                },
                if r.larger_ok {
                    "pass too"
                } else {
                    "do not pass"
                },
                r.probes_sent
            );
        }
        return Ok(());
    }
    let report = search(target, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let how = format!(
            "{} rounds, {} probes, {:.0} ms; bounds {}..{} via {}",
            report.rounds,
            report.probes_sent,
            report.elapsed.as_secs_f64() * 1000.0,
            report.lower_bound,
            report.upper_bound,
            report.interface
        );
        match (report.mtu, report.method) {
            (Some(mtu), method) => {
                let method = match method {
                    Some(Method::Tcp) => "TCP",
                    Some(Method::IcmpError) => "ICMP error, confirmed",
                    Some(Method::TcpBelowIcmp) => "TCP (ICMP echo passes more)",
                    Some(Method::ReturnFragments) => "echo replies fragmented on the way back",
                    Some(Method::Icmp) | None => "ICMP echo",
                };
                let method = if report.tcp_checked && report.method != Some(Method::Tcp) {
                    format!("{method}, TCP agrees")
                } else {
                    method.to_string()
                };
                let mss = mtu.saturating_sub(if target.is_ipv6() { 60 } else { 40 });
                println!("path MTU to {target}: {mtu} bytes (TCP MSS {mss}) by {method}; {how}");
            }
            (None, _) => println!("{target}: unreachable; {how}"),
        }
    }
    if report.mtu.is_none() {
        let tcp = match args.tcp_port {
            Some(p) => format!(" nor TCP port {p}"),
            None => " (add --tcp-port PORT for targets that drop ICMP echo)".into(),
        };
        bail!(
            "{target} is unreachable: no answer to ICMP echo{tcp} at any size from {} to {} \
             bytes (or its path MTU is below the floor; see --min-mtu)",
            report.lower_bound,
            report.upper_bound
        );
    }
    Ok(())
}

async fn resolve(target: &str) -> Result<IpAddr> {
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(ip);
    }
    tokio::net::lookup_host((target, 0))
        .await
        .with_context(|| format!("resolving {target:?}: give an IP address or a resolvable name"))?
        .next()
        .map(|a| a.ip())
        .with_context(|| format!("{target:?} resolved to no address"))
}

/// A firewall mark as `ip rule` writes it: decimal or `0x` hexadecimal.
fn parse_mark(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a mark (decimal or 0x hexadecimal): {e}"))
}
