//! The state `run` shares between its parts: the service ([`crate::service`]), the path-MTU
//! manager ([`crate::pmtu`]), the reflector ([`crate::reflect`]) and the metrics endpoint
//! ([`crate::metrics`]). Each holds an `Arc<Shared>`; none of them owns another.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use anyhow::Result;

use crate::{
    attach,
    health::Health,
    maps::{Maps, Origin},
    metrics::{IfaceLabel, Metrics},
};

/// An interface the datapath is attached to.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Current name.
    pub name: String,
    /// Counter slot.
    pub slot: u32,
    /// [`wslnet_common::iface_flags`] of the attachment.
    pub flags: u16,
}

impl Attached {
    /// Its labels in the interface metrics.
    pub fn label(&self) -> IfaceLabel {
        IfaceLabel {
            slot: self.slot,
            name: self.name.clone(),
            mode: attach::Mode::of(self.flags),
        }
    }
}

/// State shared by the service, the path-MTU manager and the metrics endpoint.
pub struct Shared {
    /// The pinned maps.
    pub maps: Mutex<Maps>,
    /// The same maps opened a second time, for `/metrics` alone: a scrape walks the clamp
    /// table and up to 16,384 learned destinations (a system call each) and must never hold
    /// up the path-MTU manager's writes; the kernel serialises access to the maps themselves.
    pub scrape_maps: Mutex<Maps>,
    /// Attached interfaces by ifindex.
    pub attached: Mutex<BTreeMap<u32, Attached>>,
    /// Exported metrics.
    pub metrics: Metrics,
    /// What `/healthz` says.
    pub health: Health,
}

impl Shared {
    /// Opens the maps pinned under `pin_dir` (twice: see [`Shared::scrape_maps`]), with no
    /// interface attached yet and fresh metrics.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            maps: Mutex::new(Maps::open(pin_dir)?),
            scrape_maps: Mutex::new(Maps::open(pin_dir)?),
            attached: Mutex::new(BTreeMap::new()),
            metrics: Metrics::new()?,
            health: Health::new(),
        })
    }

    /// Locks the maps (a poisoned lock is still usable: map writes are single syscalls).
    pub fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the attached interfaces (a poisoned lock is still usable: every change is one
    /// insert or removal).
    pub fn attached(&self) -> MutexGuard<'_, BTreeMap<u32, Attached>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of an attached interface, for labels ("unknown" when not attached).
    pub fn interface_name(&self, ifindex: u32) -> String {
        self.attached()
            .get(&ifindex)
            .map_or_else(|| "unknown".to_string(), |a| a.name.clone())
    }

    /// Reads the datapath counters into the metrics and renders them.
    pub fn render_metrics(&self) -> String {
        let labels: Vec<IfaceLabel> = self.attached().values().map(Attached::label).collect();
        {
            let maps = self.scrape_maps.lock().unwrap_or_else(|e| e.into_inner());
            self.metrics
                .update_counters(&labels, |slot, dir, fam| maps.counters(slot, dir, fam).ok());
            let clamps = maps.clamps();
            for o in Origin::ALL {
                let n = clamps.iter().filter(|c| c.origin == Some(o)).count();
                self.metrics
                    .clamp_entries
                    .with_label_values(&[o.name()])
                    .set(n as i64);
            }
            self.metrics.learned.set(maps.learned().len() as i64);
        }
        self.metrics.render()
    }
}
