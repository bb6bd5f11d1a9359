//! `status` (read the pinned maps) and `detach` (remove every attachment and pin).

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;
use wslnet_common::{Counters, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6};

use crate::{
    attach,
    maps::{ClampEntry, Learned, Maps},
};

/// One interface in `status`.
#[derive(Debug, Serialize)]
pub struct IfaceStatus {
    /// Kernel index.
    pub ifindex: u32,
    /// Name, or "(gone)".
    pub name: String,
    /// tcx or clsact.
    pub mode: &'static str,
    /// Counter slot.
    pub slot: u32,
    /// Bytes before the IP header.
    pub l3_offset: u16,
    /// Default path MTUs for unmeasured peers, bytes (0 = none).
    pub default_mtu_v4: u16,
    /// Default path MTUs for unmeasured IPv6 peers, bytes (0 = none).
    pub default_mtu_v6: u16,
    /// The DSCP every egress packet leaves with (`set_dscp`); None: marks left alone.
    pub set_dscp: Option<u8>,
    /// wslnet programs attached at each hook ("ingress", "egress") as the kernel reports them
    /// (TCX mode; absent for clsact). More than 1 would mean a double attachment.
    pub tcx_programs: Option<std::collections::BTreeMap<&'static str, usize>>,
    /// Counters by "direction/family", e.g. "egress/ipv4".
    pub counters: std::collections::BTreeMap<String, Counters>,
}

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The pin directory read.
    pub pin_dir: String,
    /// Managed interfaces.
    pub interfaces: Vec<IfaceStatus>,
    /// The clamp table.
    pub clamps: Vec<ClampEntry>,
    /// Destinations of outgoing SYNs.
    pub learned: Vec<Learned>,
}

/// Reads the status from the pins under `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Status> {
    let maps = Maps::open(pin_dir).with_context(|| {
        format!(
            "no wslnet pins under {}: the agent is not running (start `wslnet-agent run`) or \
             uses another --pin-dir",
            pin_dir.display()
        )
    })?;
    let mut interfaces = Vec::new();
    for (ifindex, cfg) in maps.ifaces() {
        let mut counters = std::collections::BTreeMap::new();
        for (dir, dname) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
            for (fam, fname) in [(FAMILY_V4, "ipv4"), (FAMILY_V6, "ipv6")] {
                let c = maps.counters(cfg.slot, dir, fam)?;
                counters.insert(format!("{dname}/{fname}"), c);
            }
        }
        interfaces.push(IfaceStatus {
            ifindex,
            name: attach::interface_name(ifindex).unwrap_or_else(|| "(gone)".into()),
            mode: attach::mode_name(cfg.flags),
            slot: cfg.slot,
            l3_offset: cfg.l3_offset,
            default_mtu_v4: cfg.default_mtu_v4,
            default_mtu_v6: cfg.default_mtu_v6,
            set_dscp: (cfg.dscp & wslnet_common::DSCP_SET != 0)
                .then_some(cfg.dscp & wslnet_common::MAX_DSCP),
            tcx_programs: (cfg.flags & wslnet_common::iface_flags::TCX != 0)
                .then(|| tcx_programs(ifindex)),
            counters,
        });
    }
    interfaces.sort_by_key(|i| i.ifindex);
    let mut clamps = maps.clamps();
    clamps.sort_by_key(|c| (c.net.addr(), c.net.prefix_len()));
    let mut learned = maps.learned();
    learned.sort_by_key(|l| std::cmp::Reverse(l.last_seen_jiffies));
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        interfaces,
        clamps,
        learned,
    })
}

/// How many wslnet programs the kernel has at each TCX hook of `ifindex`.
fn tcx_programs(ifindex: u32) -> std::collections::BTreeMap<&'static str, usize> {
    attach::HOOKS
        .iter()
        .map(|&hook| {
            let n = aya::programs::SchedClassifier::query_tcx(ifindex, hook)
                .map(|(_, progs)| {
                    progs
                        .iter()
                        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("wslnet_")))
                        .count()
                })
                .unwrap_or(0);
            (attach::hook_name(hook), n)
        })
        .collect()
}

/// `status`: prints the status as tables or JSON.
pub fn run(pin_dir: &Path, json: bool) -> Result<()> {
    let s = read(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("pins: {}", s.pin_dir);
    println!(
        "\nINTERFACE        MODE    L3  DEFAULT-MTU(v4/v6)  SYN(in/out)  CLAMPED(in/out)  OVERSIZE-DF  DSCP"
    );
    for i in &s.interfaces {
        let sum = |dir: &str, f: fn(&Counters) -> u64| -> u64 {
            ["ipv4", "ipv6"]
                .iter()
                .map(|fam| i.counters.get(&format!("{dir}/{fam}")).map(f).unwrap_or(0))
                .sum()
        };
        println!(
            "{:<16} {:<7} {:<3} {:>8}/{:<10} {:>5}/{:<6} {:>7}/{:<8} {:<12} {}",
            i.name,
            i.mode,
            i.l3_offset,
            i.default_mtu_v4,
            i.default_mtu_v6,
            sum("ingress", |c| c.syn),
            sum("egress", |c| c.syn),
            sum("ingress", |c| c.mss_clamped),
            sum("egress", |c| c.mss_clamped),
            sum("egress", |c| c.oversize_df),
            i.set_dscp.map_or_else(
                || "as sent".to_string(),
                |d| format!(
                    "set {d} ({} rewritten)",
                    sum("egress", |c| c.dscp_rewritten)
                )
            ),
        );
    }
    println!("\nCLAMP TABLE ({} entries)", s.clamps.len());
    for c in &s.clamps {
        println!("  {:<43} mtu {:>5}  {}", c.net.to_string(), c.mtu, c.origin);
    }
    println!("\nLEARNED DESTINATIONS ({})", s.learned.len());
    for l in s.learned.iter().take(50) {
        println!(
            "  {:<40} syns {:>6}  ifindex {}  port {}",
            l.addr.to_string(),
            l.syns,
            l.ifindex,
            l.port.map_or_else(|| "-".to_string(), |p| p.to_string())
        );
    }
    if s.learned.len() > 50 {
        println!("  ... {} more (see --json)", s.learned.len() - 50);
    }
    Ok(())
}

/// `detach`: removes every attachment recorded in the pins and then the pins themselves.
pub async fn detach_all(pin_dir: &Path) -> Result<()> {
    if !crate::maps::maps_dir(pin_dir).exists() && !crate::maps::links_dir(pin_dir).exists() {
        println!("nothing to detach: no pins under {}", pin_dir.display());
        return Ok(());
    }
    let recorded = crate::maps::recorded_ifaces(pin_dir).unwrap_or_default();
    for (ifindex, cfg) in &recorded {
        attach::detach(pin_dir, *ifindex, cfg.flags).await?;
        println!(
            "detached {} ({})",
            attach::interface_name(*ifindex).unwrap_or_else(|| format!("ifindex {ifindex}")),
            attach::mode_name(cfg.flags)
        );
    }
    // TCX link pins of interfaces missing from the map (an interrupted start) go too.
    crate::service::remove_pins(pin_dir)?;
    println!("removed pins under {}", pin_dir.display());
    Ok(())
}
