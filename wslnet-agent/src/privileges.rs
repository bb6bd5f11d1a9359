//! The capabilities `run` keeps once the datapath is loaded: only what it still uses.
//!
//! Loading needs more than running: `CAP_PERFMON` (the verifier accepts the datapath's
//! pointer arithmetic only with it) and `CAP_SYS_ADMIN` (mounting bpffs when it is missing).
//! After [`crate::attach::load_programs`] the agent only
//! - updates its maps, pins and re-pins links, creates TCX links: `CAP_BPF` (`CAP_SYS_ADMIN`
//!   on kernels older than 5.8, which have no `CAP_BPF`);
//! - attaches programs (TCX links, clsact qdiscs and filters), marks probe packets (`SO_MARK`):
//!   `CAP_NET_ADMIN`;
//! - sends ICMP probes and reflected errors on raw sockets: `CAP_NET_RAW`.
//!
//! Everything else goes from the effective, permitted, inheritable, ambient and bounding sets
//! ([`drop_unneeded`]), so a bug in a running agent cannot be used to do more. Capabilities are
//! per thread: this runs on the runtime's only thread before any other thread exists
//! (`cli.rs` builds a current-thread runtime; threads started later, such as tokio's blocking
//! pool, inherit the reduced sets).

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities a running agent uses (see the module docs), where the kernel has `CAP_BPF`.
pub const RUNNING: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
];

/// What to keep: [`RUNNING`] (with `CAP_SYS_ADMIN` for `CAP_BPF` on kernels without it), as
/// far as the process has them now.
pub fn kept() -> Result<CapsHashSet> {
    let supported = caps::runtime::thread_all_supported();
    let mut keep: CapsHashSet = RUNNING.into_iter().collect();
    if !supported.contains(&Capability::CAP_BPF) {
        keep.remove(&Capability::CAP_BPF);
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    Ok(keep.intersection(&permitted).copied().collect())
}

/// Drops every capability but [`kept`] from the calling thread (and so from the threads it
/// starts later): the bounding set first (that needs `CAP_SETPCAP`, when the process has it),
/// then ambient, inheritable, permitted and effective.
pub fn drop_unneeded() -> Result<CapsHashSet> {
    let keep = kept()?;
    let supported = caps::runtime::thread_all_supported();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in supported.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, &keep).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting the permitted set")?;
    Ok(keep)
}
