//! `wslnet-agent run`: the long-running service.
//!
//! Start-up: load the datapath (adopting pinned maps), write the static clamps, attach to every
//! interface matching the globs (adopting attachments of an earlier run, cleaning up stale ones),
//! serve metrics, start the path-MTU manager. Then follow netlink events and signals:
//! SIGHUP reloads the config, SIGINT/SIGTERM stop (detaching unless `keep_attached_on_exit`).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use tokio::signal::unix::{SignalKind, signal};
use wslnet_common::{ABI_VERSION, IfaceConfig, MAX_IFACE_SLOTS};

use crate::{
    attach,
    config::{AttachMode, Config, datapath_log_level},
    ifaces::{self, Link, NetEvent},
    maps::{self, Maps},
    pins, pmtu,
    shared::{Attached, Shared},
};

/// Where the config came from, so SIGHUP can read it again and re-apply the CLI overrides.
pub struct ConfigSource {
    /// The file and whether it was named explicitly (`--config`).
    pub path: PathBuf,
    /// True when given with `--config` (a missing file is then an error).
    pub explicit: bool,
    /// Applies the command-line overrides on top of a file's config.
    pub overrides: Box<dyn Fn(&mut Config) + Send>,
}

impl ConfigSource {
    /// Reads, overrides and validates the config.
    pub fn load(&self) -> Result<Config> {
        let mut cfg = Config::load(&self.path, self.explicit)?;
        (self.overrides)(&mut cfg);
        cfg.validate().map_err(anyhow::Error::from)?;
        Ok(cfg)
    }
}

/// The running service.
struct Service {
    cfg: Config,
    mode: AttachMode,
    ebpf: Ebpf,
    shared: Arc<Shared>,
    pmtu: pmtu::Handle,
    /// Present interfaces whose names match the globs, attached or not, by ifindex: the
    /// `wslnet_interface_matched` series (an attach that fails shows as matched, not attached).
    matched: BTreeMap<u32, String>,
    /// The TCX links this run holds open, by ifindex (see [`attach::HeldLink`]).
    held: BTreeMap<u32, Vec<attach::HeldLink>>,
}

/// How often the agent looks for link pins that were removed under it, to pin them again.
const PIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(source: ConfigSource) -> Result<()> {
    // First of all: a stop requested while the agent starts (or right after it logs that it
    // runs) is then held until the loop below, which stops cleanly, instead of killing the
    // agent half-attached or, where SIGTERM was inherited as ignored, being lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let cfg = source.load()?;
    let mode = attach::resolve_mode(cfg.attach_mode);
    if mode == AttachMode::Tcx && !attach::kernel_has_tcx() {
        bail!("TCX needs Linux 6.6 or later; use --attach-mode clsact (or auto)");
    }
    refuse_foreign_pins(&cfg)?;
    let log_level = datapath_log_level(&cfg.datapath_log).unwrap_or(0);
    let mut ebpf = maps::load(&cfg.pin_dir, log_level)?;
    if log_level > 0 {
        spawn_datapath_logger(&mut ebpf);
    }
    attach::load_programs(&mut ebpf)?;
    // Loaded: what loading needed beyond running (CAP_PERFMON, CAP_SYS_ADMIN) goes now.
    match crate::privileges::drop_unneeded() {
        Ok(kept) => tracing::debug!(
            ?kept,
            "dropped the capabilities the running agent does not use"
        ),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not drop capabilities; running with those it has")
        }
    }
    let shared = Arc::new(Shared::open(&cfg.pin_dir)?);
    {
        let mut maps = shared.maps();
        maps.reflect = cfg.reflect;
        maps.refresh_floor()?;
    }
    let _reflector = crate::reflect::spawn(shared.clone(), &cfg).map(AbortOnDrop);
    let render = {
        let shared = shared.clone();
        Arc::new(move || shared.render_metrics())
    };
    let health = {
        let shared = shared.clone();
        Arc::new(move || shared.health.verdict())
    };
    let _metrics = crate::metrics::serve(cfg.metrics_addr, render, health).await?;

    // Subscribe before listing so that no interface slips through in between.
    let mut events = ifaces::watch()?;
    let pmtu = pmtu::spawn(shared.clone(), &cfg);
    let mut svc = Service {
        cfg,
        mode,
        ebpf,
        shared,
        pmtu,
        matched: BTreeMap::new(),
        held: BTreeMap::new(),
    };
    svc.apply_static_clamps()?;
    svc.sync_interfaces().await?;
    tracing::info!(
        mode = ?svc.mode,
        interfaces = ?svc.shared.attached().values().map(|a| a.name.clone()).collect::<Vec<_>>(),
        "wslnet agent running"
    );

    let mut pin_check = tokio::time::interval(PIN_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    // Interfaces and routes would go unnoticed from now on: stop, and let
                    // systemd start a run that listens again.
                    tracing::error!("the netlink event stream ended; stopping");
                    if let Err(stop) = svc.shutdown().await {
                        tracing::error!(error = %format!("{stop:#}"), "stopping after the event stream ended");
                    }
                    bail!("the netlink event stream ended (interfaces and routes would go unnoticed)");
                };
                if let Err(e) = svc.handle_event(event).await {
                    tracing::warn!(error = %format!("{e:#}"), "handling a network event");
                }
            }
            _ = sighup.recv() => match source.load() {
                Ok(cfg) => {
                    tracing::info!("SIGHUP: configuration reloaded");
                    if let Err(e) = svc.reload(cfg).await {
                        // Half applied: stop as on SIGTERM (detaching unless told to keep the
                        // attachments), and exit non-zero so that systemd starts a clean run.
                        tracing::error!(error = %format!("{e:#}"), "SIGHUP: the reload failed; stopping");
                        if let Err(stop) = svc.shutdown().await {
                            tracing::error!(error = %format!("{stop:#}"), "stopping after the failed reload");
                        }
                        return Err(e.context("applying the reloaded configuration"));
                    }
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: keeping the old configuration"),
            },
            _ = pin_check.tick() => {
                svc.restore_pins();
                svc.restore_filters().await;
            }
            why = svc.pmtu.ended() => {
                tracing::error!(%why, "the path-MTU manager ended; stopping");
                if let Err(stop) = svc.shutdown().await {
                    tracing::error!(error = %format!("{stop:#}"), "stopping after the manager ended");
                }
                bail!("the path-MTU manager ended ({why}): no path would be measured again");
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    svc.shutdown().await
}

/// Aborts a background task when dropped (when `run` returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses pins written by an incompatible agent version.
fn refuse_foreign_pins(cfg: &Config) -> Result<()> {
    if !pins::map_pin(&cfg.pin_dir, wslnet_common::map_names::GLOBALS).exists() {
        return Ok(());
    }
    let detach = format!("wslnet-agent detach --pin-dir {}", cfg.pin_dir.display());
    // A map whose layout changed does not even open with this version's types.
    let maps = Maps::open(&cfg.pin_dir).with_context(|| {
        format!(
            "the pins under {} do not fit this wslnet's maps (left by another version?); \
             remove them with `{detach}`",
            cfg.pin_dir.display()
        )
    })?;
    if let Ok(g) = maps.globals()
        && g.abi_version != 0
        && g.abi_version != ABI_VERSION
    {
        bail!(
            "the pins under {} come from an incompatible wslnet (map ABI {} instead of {}); \
             remove them with `{detach}`",
            cfg.pin_dir.display(),
            g.abi_version,
            ABI_VERSION,
        );
    }
    Ok(())
}

fn spawn_datapath_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns its ring-buffer fd, which stays open and unchanged
                // for as long as the logger lives inside the AsyncFd.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let Ok(mut fd) = registered else {
                    return;
                };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "datapath log unavailable"),
    }
}

impl Service {
    /// Makes the static entries of the clamp table equal to the config's.
    fn apply_static_clamps(&mut self) -> Result<()> {
        let mut maps = self.shared.maps();
        let plan = crate::reconcile::statics(&maps.clamps(), &self.cfg.clamp);
        for net in plan.remove {
            maps.remove_clamp(net)?;
        }
        for (net, mtu, origin) in plan.write {
            maps.set_clamp(net, mtu, origin)?;
        }
        Ok(())
    }

    /// Attaches to every matching interface, adopting earlier attachments and removing those
    /// of interfaces that are gone or no longer match.
    async fn sync_interfaces(&mut self) -> Result<()> {
        let links = ifaces::list().await?;
        let recorded = self.shared.maps().ifaces();
        for (ifindex, rec) in recorded {
            let keep = links
                .iter()
                .any(|l| l.ifindex == ifindex && self.cfg.matches_interface(&l.name));
            if !keep {
                tracing::info!(ifindex, "removing a stale attachment of an earlier run");
                self.held.remove(&ifindex);
                attach::detach(&self.cfg.pin_dir, ifindex, rec.flags).await?;
                self.shared.maps().remove_iface(ifindex)?;
            }
        }
        let gone: Vec<u32> = self
            .matched
            .keys()
            .copied()
            .filter(|i| !links.iter().any(|l| l.ifindex == *i))
            .collect();
        for ifindex in gone {
            self.forget_match(ifindex);
        }
        for link in links {
            // One interface that cannot be attached must not keep the others unclamped.
            let result = if self.follow_match(&link) {
                self.attach(&link)
            } else if self.shared.attached().contains_key(&link.ifindex) {
                self.detach(link.ifindex).await
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::error!(interface = %link.name, error = %format!("{e:#}"), "skipping interface");
            }
        }
        Ok(())
    }

    /// Whether `link` matches the interface globs, kept in `matched` and its metric (a rename
    /// moves the series).
    fn follow_match(&mut self, link: &Link) -> bool {
        let matches = self.cfg.matches_interface(&link.name);
        let metrics = &self.shared.metrics;
        match self.matched.get(&link.ifindex) {
            Some(old) if matches && *old == link.name => return true,
            Some(old) => metrics.interface_matched(old, false),
            None => {}
        }
        if matches {
            metrics.interface_matched(&link.name, true);
            self.matched.insert(link.ifindex, link.name.clone());
        } else {
            self.matched.remove(&link.ifindex);
        }
        matches
    }

    /// Drops a vanished interface from `matched` and its metric.
    fn forget_match(&mut self, ifindex: u32) {
        if let Some(name) = self.matched.remove(&ifindex) {
            self.shared.metrics.interface_matched(&name, false);
        }
    }

    fn attach(&mut self, link: &Link) -> Result<()> {
        if let Some(a) = self.shared.attached().get_mut(&link.ifindex) {
            // Already on it: follow a rename.
            if a.name != link.name {
                self.shared
                    .metrics
                    .interface_detached(&a.name, attach::Mode::of(a.flags));
                a.name = link.name.clone();
                self.shared.metrics.interface_attached(&a.label());
            }
            return Ok(());
        }
        let previous = self.shared.maps().iface(link.ifindex);
        let slot = match previous {
            Some(p) if p.slot != 0 => p.slot,
            _ => self.free_slot()?,
        };
        // Write the settings first so the very first packet is parsed right, and clamped for
        // first contact (the path-MTU manager lowers it as measurements come in).
        let first_contact = self.cfg.probe.first_contact_mtu;
        let mut cfg = IfaceConfig {
            slot,
            l3_offset: link.l3_offset,
            default_mtu_v4: first_contact,
            default_mtu_v6: first_contact,
            flags: previous.map(|p| p.flags).unwrap_or(0),
            dscp: self.cfg.dscp_setting(),
            reserved: [0; 3],
        };
        self.shared.maps().set_iface(link.ifindex, cfg)?;
        let attachment = attach::attach(
            &mut self.ebpf,
            &self.cfg.pin_dir,
            link.ifindex,
            self.mode,
            previous,
        )
        .with_context(|| format!("attaching to {}", link.name))?;
        let flags = attachment.flags;
        self.held.insert(link.ifindex, attachment.links);
        cfg.flags = flags;
        self.shared.maps().set_iface(link.ifindex, cfg)?;
        let attached = Attached {
            name: link.name.clone(),
            slot,
            flags,
        };
        self.shared.metrics.interface_attached(&attached.label());
        self.shared.attached().insert(link.ifindex, attached);
        tracing::info!(
            interface = %link.name,
            ifindex = link.ifindex,
            mode = attach::Mode::of(flags).name(),
            l3_offset = link.l3_offset,
            adopted = previous.is_some(),
            "attached"
        );
        Ok(())
    }

    /// The smallest counter slot no interface uses, with its counters zeroed.
    fn free_slot(&self) -> Result<u32> {
        let mut maps = self.shared.maps();
        let used: Vec<u32> = maps.ifaces().iter().map(|(_, c)| c.slot).collect();
        let slot = (1..MAX_IFACE_SLOTS)
            .find(|s| !used.contains(s))
            .context("no free counter slot: too many managed interfaces")?;
        maps.zero_counters(slot)?;
        self.shared.metrics.forget_slot(slot);
        Ok(slot)
    }

    async fn detach(&mut self, ifindex: u32) -> Result<()> {
        let Some(a) = self.shared.attached().remove(&ifindex) else {
            return Ok(());
        };
        // Our fds would keep the TCX links attached after their pins are removed.
        self.held.remove(&ifindex);
        attach::detach(&self.cfg.pin_dir, ifindex, a.flags).await?;
        self.shared.maps().remove_iface(ifindex)?;
        self.shared
            .metrics
            .interface_detached(&a.name, attach::Mode::of(a.flags));
        tracing::info!(interface = %a.name, ifindex, "detached");
        Ok(())
    }

    /// Pins again every held TCX link whose pin was removed while the agent runs, so that the
    /// attachment outlives the agent as designed (the held fd keeps it attached meanwhile).
    fn restore_pins(&mut self) {
        if self
            .held
            .values()
            .all(|links| links.iter().all(|l| l.pin_path().exists()))
        {
            return;
        }
        // Recreates a removed links directory (mode 0700), refuses one another user replaced.
        if let Err(e) = pins::secure_pin_dirs(&self.cfg.pin_dir) {
            tracing::error!(error = %format!("{e:#}"), "link pins were removed; not pinning them again under an unsafe pin directory");
            return;
        }
        for link in self.held.values_mut().flatten() {
            match link.restore_pin() {
                Ok(true) => {
                    self.shared.metrics.link_pins_restored.inc();
                    tracing::warn!(pin = %link.pin_path().display(), "a link pin was removed under the running agent; re-pinned (the link stayed attached)");
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %format!("{e:#}"), "re-pinning a TCX link"),
            }
        }
    }

    /// Attaches again, on every clsact interface, a wslnet tc filter that was removed while
    /// the agent runs (`tc filter del`, or the whole clsact qdisc deleted, as a network reset
    /// may do): clamping would otherwise stop unnoticed. An interface where that fails is
    /// reported by `/healthz` until it works.
    async fn restore_filters(&mut self) {
        let clsact: Vec<(u32, String)> = self
            .shared
            .attached()
            .iter()
            .filter(|(_, a)| attach::Mode::of(a.flags) == attach::Mode::Clsact)
            .map(|(&i, a)| (i, a.name.clone()))
            .collect();
        for (ifindex, name) in clsact {
            let missing = match attach::missing_clsact_filters(ifindex).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(interface = %name, error = %format!("{e:#}"), "checking the tc filters");
                    continue;
                }
            };
            if missing.is_empty() || !attach::interface_exists(ifindex) {
                self.shared.health.datapath_ok(ifindex);
                continue;
            }
            let hooks: Vec<&str> = missing.iter().map(|&h| attach::hook_name(h)).collect();
            tracing::warn!(interface = %name, ?hooks, "a wslnet tc filter was removed under the running agent; attaching it again");
            match self.reattach_clsact(ifindex) {
                Ok(()) => {
                    self.shared.metrics.filters_restored.inc();
                    self.shared.health.datapath_ok(ifindex);
                }
                Err(e) => {
                    let why = format!("no wslnet datapath on {name} ({}): {e:#}", hooks.join(", "));
                    tracing::error!("{why}");
                    self.shared.health.datapath_broken(ifindex, why);
                }
            }
        }
    }

    /// Attaches both clsact filters of `ifindex` again (replacing one still there) and records
    /// whether the qdisc is now ours.
    fn reattach_clsact(&mut self, ifindex: u32) -> Result<()> {
        let previous = self.shared.maps().iface(ifindex);
        let attachment = attach::attach(
            &mut self.ebpf,
            &self.cfg.pin_dir,
            ifindex,
            AttachMode::Clsact,
            previous,
        )?;
        if let Some(mut c) = previous
            && c.flags != attachment.flags
        {
            c.flags = attachment.flags;
            self.shared.maps().set_iface(ifindex, c)?;
            if let Some(a) = self.shared.attached().get_mut(&ifindex) {
                a.flags = attachment.flags;
            }
        }
        Ok(())
    }

    async fn handle_event(&mut self, event: NetEvent) -> Result<()> {
        match event {
            NetEvent::LinkUp(link) => {
                if self.follow_match(&link) {
                    self.attach(&link)?;
                } else if self.shared.attached().contains_key(&link.ifindex) {
                    // Renamed to something we do not manage.
                    self.detach(link.ifindex).await?;
                }
                self.pmtu.network_changed();
            }
            NetEvent::LinkGone(ifindex) => {
                self.forget_match(ifindex);
                self.detach(ifindex).await?;
                self.pmtu.network_changed();
            }
            NetEvent::RouteChanged => self.pmtu.network_changed(),
            NetEvent::Overrun => {
                tracing::warn!(
                    "netlink events were lost (buffer overrun); listing interfaces again"
                );
                self.shared.metrics.netlink_overruns.inc();
                self.sync_interfaces().await?;
                self.pmtu.network_changed();
            }
        }
        Ok(())
    }

    async fn reload(&mut self, cfg: Config) -> Result<()> {
        if cfg.pin_dir != self.cfg.pin_dir || cfg.metrics_addr != self.cfg.metrics_addr {
            tracing::warn!("pin_dir and metrics_addr changes take effect at the next start");
        }
        let pin_dir = self.cfg.pin_dir.clone();
        let metrics_addr = self.cfg.metrics_addr;
        self.cfg = cfg;
        self.cfg.pin_dir = pin_dir;
        self.cfg.metrics_addr = metrics_addr;
        {
            let mut maps = self.shared.maps();
            maps.reflect = self.cfg.reflect;
            maps.refresh_floor()?;
            let dscp = self.cfg.dscp_setting();
            for (ifindex, c) in maps.ifaces() {
                if c.dscp != dscp {
                    maps.set_iface(ifindex, IfaceConfig { dscp, ..c })?;
                }
            }
        }
        self.apply_static_clamps()?;
        self.sync_interfaces().await?;
        self.pmtu.reconfigure(&self.cfg);
        Ok(())
    }

    async fn shutdown(mut self) -> Result<()> {
        self.pmtu.stop().await;
        if self.cfg.keep_attached_on_exit {
            // Clamping goes on; dropping oversize packets does not, with nobody to answer them.
            let mut maps = self.shared.maps();
            maps.reflect = false;
            maps.refresh_floor()?;
            drop(maps);
            // The pins keep the links; a pin removed since the last check is put back first.
            self.restore_pins();
            self.held.clear();
            tracing::info!(
                pin_dir = %self.cfg.pin_dir.display(),
                "stopping; programs stay attached (keep_attached_on_exit)"
            );
            return Ok(());
        }
        let ifindexes: Vec<u32> = self.shared.attached().keys().copied().collect();
        for ifindex in ifindexes {
            self.detach(ifindex).await?;
        }
        drop(self.ebpf);
        pins::remove_pins(&self.cfg.pin_dir)?;
        tracing::info!("stopped; every attachment and pin removed");
        Ok(())
    }
}
