//! What `/healthz` says: whether the agent is doing its job, not merely whether it runs.
//!
//! Two things can fail while the process lives on:
//! - the path-MTU manager stops turning (a task stuck in a loop or blocked): it beats every
//!   tick ([`Health::manager_beat`]); no beat for [`MANAGER_STALL`] is unhealthy;
//! - the datapath is gone from an interface (somebody deleted the clsact qdisc or our tc filter,
//!   as a network reset in WSL may) and could not be attached again
//!   ([`Health::datapath_broken`]; the service re-attaches every few seconds and clears it).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long the path-MTU manager may go without a beat (it beats every 500 ms) before
/// `/healthz` reports it stalled.
pub const MANAGER_STALL: Duration = Duration::from_secs(30);

/// The agent's health, shared by the service, the manager and the HTTP endpoint.
pub struct Health {
    /// The clock the beats are counted on.
    epoch: Instant,
    /// Milliseconds after `epoch` of the manager's latest beat.
    manager_beat_ms: AtomicU64,
    /// Interfaces (by ifindex) whose datapath is missing and could not be attached again, with
    /// the reason.
    datapath: Mutex<BTreeMap<u32, String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Healthy: the manager beat just now, every datapath in place.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            manager_beat_ms: AtomicU64::new(0),
            datapath: Mutex::new(BTreeMap::new()),
        }
    }

    /// The manager is turning (called on every tick).
    pub fn manager_beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.manager_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// The datapath of `ifindex` is missing and could not be attached again: `why`.
    pub fn datapath_broken(&self, ifindex: u32, why: String) {
        self.datapath().insert(ifindex, why);
    }

    /// The datapath of `ifindex` is in place (or the interface is gone).
    pub fn datapath_ok(&self, ifindex: u32) {
        self.datapath().remove(&ifindex);
    }

    /// `Ok` when healthy, else every reason, one a line.
    pub fn verdict(&self) -> Result<(), String> {
        let mut why = Vec::new();
        let beat = Duration::from_millis(self.manager_beat_ms.load(Ordering::Relaxed));
        let silent = self.epoch.elapsed().saturating_sub(beat);
        if silent > MANAGER_STALL {
            why.push(format!(
                "the path-MTU manager has not run for {} s",
                silent.as_secs()
            ));
        }
        why.extend(self.datapath().values().cloned());
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("\n"))
        }
    }

    fn datapath(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, String>> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_datapath_is_unhealthy_until_it_is_back() {
        let h = Health::new();
        assert_eq!(h.verdict(), Ok(()));
        h.datapath_broken(7, "no tc filter on eth0: EPERM".into());
        assert_eq!(h.verdict(), Err("no tc filter on eth0: EPERM".into()));
        h.datapath_ok(7);
        assert_eq!(h.verdict(), Ok(()));
    }

    #[test]
    fn a_manager_without_a_beat_is_stalled() {
        let h = Health::new();
        h.manager_beat();
        assert_eq!(h.verdict(), Ok(()));
        // As if the last beat was long ago.
        let h = Health {
            epoch: Instant::now() - MANAGER_STALL * 2,
            ..Health::new()
        };
        let why = h.verdict().unwrap_err();
        assert!(
            why.starts_with("the path-MTU manager has not run for"),
            "{why}"
        );
    }
}
