//! `pmtu` and `agent`: the largest packet that passes to each target, measured the way the
//! agent's prober measures it, against the MTU of the interface it leaves through; and whether
//! wslnet is attached and clamps each target to no more than what was measured.
//!
//! A path that carries less than its interface's MTU is a black hole for TCP unless the router
//! in the way says so with an ICMP error (then the kernel learns) or wslnet clamps it: `pmtu`
//! fails only when neither happens.

use std::{net::IpAddr, path::Path};

use super::{Budget, Check, Finding, Status};
use crate::{
    prober::{self, Method, SearchOptions, SearchReport},
    status::Status as AgentStatus,
};

/// Extra copies of every probe (against plain loss); the search then needs at most a few
/// dozen echo requests per target.
const PROBE_RETRIES: u32 = 1;

/// What the agent's pins say, as far as they could be read.
pub(crate) enum AgentView {
    /// Read.
    Running(Box<AgentStatus>),
    /// No pins: the agent is not running (or uses another pin directory).
    NotRunning(String),
    /// Not readable without root.
    NeedsRoot(String),
}

impl AgentView {
    /// Reads the pins under `pin_dir` (bpffs is root's alone).
    pub fn read(pin_dir: &Path, root: bool) -> Self {
        if !root {
            return AgentView::NeedsRoot(format!(
                "needs root to read wslnet's pins under {}",
                pin_dir.display()
            ));
        }
        if !crate::pins::maps_dir(pin_dir).is_dir() {
            return AgentView::NotRunning(format!("no pins under {}", pin_dir.display()));
        }
        match crate::status::read(pin_dir) {
            Ok(s) => AgentView::Running(Box::new(s)),
            Err(e) => AgentView::NotRunning(format!("{e:#}")),
        }
    }

    /// The path MTU (bytes) wslnet clamps SYNs to and from `target` leaving through `iface`:
    /// the longest matching clamp entry, else the interface's first-contact default; `None`
    /// when `iface` is not managed or nothing applies (0 in an entry: no clamp).
    fn clamp_for(&self, target: IpAddr, iface: &str) -> Option<u16> {
        let AgentView::Running(s) = self else {
            return None;
        };
        let managed = s.interfaces.iter().find(|i| i.name == iface)?;
        let entry = s
            .clamps
            .iter()
            .filter(|c| c.net.contains(&target))
            .max_by_key(|c| c.net.prefix_len());
        match entry {
            Some(e) => (e.mtu != 0).then_some(e.mtu),
            None => {
                let default = if target.is_ipv6() {
                    managed.default_mtu_v6
                } else {
                    managed.default_mtu_v4
                };
                (default != 0).then_some(default)
            }
        }
    }
}

/// One target's measurement.
pub(crate) struct Measured {
    pub target: IpAddr,
    /// The interface the path leaves through, and its MTU (bytes).
    pub iface: String,
    pub iface_mtu: u32,
    /// The search, or why it could not run.
    pub search: Result<SearchReport, String>,
}

impl Measured {
    /// The path carries less than the interface's MTU: `(path MTU, interface MTU)`.
    fn shortfall(&self) -> Option<(u16, u32)> {
        let r = self.search.as_ref().ok()?;
        let mtu = r.mtu?;
        ((mtu as u32) < self.iface_mtu).then_some((mtu, self.iface_mtu))
    }
}

/// Measures the path MTU to each target that answered echo.
pub(crate) async fn measure(
    answered: &[(IpAddr, String, u32)],
    budget: &mut Budget,
) -> Vec<Measured> {
    let opts = SearchOptions {
        retries: PROBE_RETRIES,
        ..SearchOptions::default()
    };
    let mut out = Vec::new();
    for (target, iface, iface_mtu) in answered {
        let search = prober::search(*target, &opts)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Ok(r) = &search {
            budget.sent += r.probes_sent;
        }
        out.push(Measured {
            target: *target,
            iface: iface.clone(),
            iface_mtu: *iface_mtu,
            search,
        });
    }
    out
}

/// `pmtu`: each answering target's path MTU against its interface's.
pub(crate) fn pmtu_finding(
    targets: &[IpAddr],
    measured: &[Measured],
    agent: &AgentView,
) -> Finding {
    if measured.is_empty() {
        let why = if targets.is_empty() {
            "no target (--target)".to_string()
        } else {
            "no target answered echo (see reach)".to_string()
        };
        return Finding::new(Check::Pmtu, Status::Skip, why);
    }
    let mut status = Status::Ok;
    let mut parts = Vec::new();
    let mut unclamped = Vec::new();
    for m in measured {
        let r = match &m.search {
            Ok(r) => r,
            Err(e) => {
                parts.push(format!("{}: search failed: {e}", m.target));
                status = status.max(Status::Warn);
                continue;
            }
        };
        let Some(mtu) = r.mtu else {
            parts.push(format!("{}: no probe answered", m.target));
            status = status.max(Status::Warn);
            continue;
        };
        let Some((mtu, iface_mtu)) = m.shortfall() else {
            parts.push(format!(
                "{}: {mtu} bytes pass, {}'s full MTU",
                m.target, m.iface
            ));
            continue;
        };
        let mut line = format!(
            "{}: the path carries {mtu} of {}'s {iface_mtu} bytes",
            m.target, m.iface
        );
        if r.method == Some(Method::IcmpError) {
            line.push_str(" (a router says so with ICMP errors: the kernel adapts)");
            status = status.max(Status::Warn);
        } else {
            match agent.clamp_for(m.target, &m.iface) {
                Some(c) if c <= mtu => {
                    line.push_str(&format!(
                        ": a black hole of {mtu}, clamped by wslnet to {c}"
                    ));
                    status = status.max(Status::Warn);
                }
                _ => {
                    line.push_str(&format!(
                        ": a PMTU black hole of {mtu} (no ICMP error comes back; TLS and SSH \
                         stall after their first large packet)"
                    ));
                    status = Status::Fail;
                    unclamped.push(m.target);
                }
            }
        }
        parts.push(line);
    }
    let finding = Finding::new(Check::Pmtu, status, parts.join("; "));
    if unclamped.is_empty() {
        finding
    } else {
        finding.fix(format!(
            "run wslnet at boot (`systemctl enable --now wslnet`), or `wslnet-agent run{}`; \
             do not lower the interface MTU, it slows every other path",
            unclamped
                .iter()
                .map(|t| format!(" --target {t}"))
                .collect::<String>()
        ))
    }
}

/// `agent`: wslnet attached, and each measured black hole clamped to no more than its MTU.
pub(crate) fn agent_finding(measured: &[Measured], agent: &AgentView) -> Finding {
    let holes: Vec<&Measured> = measured
        .iter()
        .filter(|m| {
            m.shortfall().is_some()
                && m.search
                    .as_ref()
                    .is_ok_and(|r| r.method != Some(Method::IcmpError))
        })
        .collect();
    let status = match agent {
        AgentView::NeedsRoot(why) => return Finding::new(Check::Agent, Status::Skip, why.clone()),
        AgentView::NotRunning(why) => {
            let status = if holes.is_empty() {
                Status::Warn
            } else {
                Status::Fail
            };
            return Finding::new(
                Check::Agent,
                status,
                format!("wslnet is not running: {why}"),
            )
            .fix("`systemctl enable --now wslnet` (or `wslnet-agent run`)");
        }
        AgentView::Running(s) => s,
    };
    let ifaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode.name()))
        .collect();
    if ifaces.is_empty() {
        return Finding::new(
            Check::Agent,
            Status::Fail,
            "wslnet runs but manages no interface",
        )
        .fix("check `wslnet-agent status` and the interface globs (`--iface`)");
    }
    let mut parts = vec![format!("attached to {}", ifaces.join(", "))];
    let mut wrong = Vec::new();
    for m in &holes {
        let Some((mtu, _)) = m.shortfall() else {
            continue;
        };
        match agent.clamp_for(m.target, &m.iface) {
            Some(c) if c <= mtu => parts.push(format!("{} clamped to {c}", m.target)),
            Some(c) => wrong.push(format!("{} clamped to {c}, path carries {mtu}", m.target)),
            None => wrong.push(format!(
                "{} not clamped on {} (path carries {mtu})",
                m.target, m.iface
            )),
        }
    }
    if wrong.is_empty() {
        Finding::new(Check::Agent, Status::Ok, parts.join("; "))
    } else {
        parts.extend(wrong);
        Finding::new(Check::Agent, Status::Fail, parts.join("; ")).fix(format!(
            "let wslnet measure them: `wslnet-agent run{}`, or add `--iface` for their interface",
            holes
                .iter()
                .map(|m| format!(" --target {}", m.target))
                .collect::<String>()
        ))
    }
}
