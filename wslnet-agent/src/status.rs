//! What `status` shows: the interfaces, clamp table, learned destinations and counters, read
//! from the pinned maps (also for `doctor`'s agent check). Printed by [`crate::cmd::status`].

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
    /// How it is attached.
    pub mode: attach::Mode,
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
            mode: attach::Mode::of(cfg.flags),
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
