//! The path-MTU manager inside `run`: decides which destinations to measure and when, runs the
//! prober ([`crate::prober`]), and writes the results into the clamp maps.
//!
//! - Configured targets are searched at start; destinations the datapath saw in outgoing SYNs
//!   (the learned map) are searched as they appear, rate-limited and bounded.
//! - Every `recheck_interval` each measured destination gets a cheap re-check (its current MTU
//!   and one above): a failure (a VPN came up) or a larger size passing (it went down) starts a
//!   new search.
//! - A route or link change (netlink) starts a new search of everything at once.
//! - Symptoms start a re-check at once ([`Manager::trigger`]): a local connection to the
//!   destination that stalls ([`crate::symptoms`]), or another destination of the same
//!   interface found narrower than before.
//! - Evidence beyond ICMP echo: every search checks its result with TCP segments to the
//!   destination's service port (the port of its first SYN, from the learned map, or of a
//!   stalled connection), and echo replies that came back fragmented cap it at the return path
//!   ([`crate::prober`]); a destination TCP measured below echo is re-checked with TCP too.
//! - Static clamps win: a destination inside a static prefix is measured (and exported for
//!   configured targets) but its result is not written.
//! - Safe first contact: a destination not yet measured is clamped by its interface's default
//!   path MTU ([`Manager::update_first_contact`]) until its own result is written.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    task::JoinSet,
};
use wslnet_common::{IfaceConfig, LearnedKey};

use crate::{
    config::Config,
    fault::Fault,
    maps::Origin,
    prober::{self, SearchOptions},
    shared::Shared,
    symptoms::{self, Trigger, Watcher},
};

/// Most searches or re-checks running at once.
const MAX_CONCURRENT: usize = 4;
/// How often the manager starts due searches and re-checks.
const TICK: Duration = Duration::from_millis(500);
/// How often the whole learned map is scanned. New destinations arrive at once through the
/// datapath's ring buffer; the scan catches what a full ring dropped and refreshes SYN times.
const LEARN_RESCAN: Duration = Duration::from_secs(30);

/// Shortest time between two re-measurements of one destination started by symptoms: a
/// connection that waits for a reason other than the path (a long poll) costs at most one cheap
/// re-check this often.
const SYMPTOM_COOLDOWN: Duration = Duration::from_secs(5);

/// Longest wait before searching an unreachable destination again (unless the re-check
/// interval is longer): each search in a row that gets no answer doubles the wait from the
/// re-check interval up to this ([`unreachable_wait`]).
const MAX_UNREACHABLE_WAIT: Duration = Duration::from_secs(3600);

/// What the manager is told by the service.
enum Cmd {
    NetworkChanged,
    Reconfigure(Box<Settings>),
    Stop,
}

/// A handle to the running manager.
pub struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// The manager's task; `None` once it ended (see [`Handle::ended`]).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// A route or link changed: search everything again now.
    pub fn network_changed(&self) {
        let _ = self.tx.send(Cmd::NetworkChanged);
    }

    /// Applies a reloaded configuration.
    pub fn reconfigure(&self, cfg: &Config) {
        let _ = self
            .tx
            .send(Cmd::Reconfigure(Box::new(Settings::from(cfg))));
    }

    /// Stops the manager and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Resolves when the manager ended without being stopped (a panic: a bug), with why; never
    /// otherwise. No path would be measured again, so `run` stops instead of going on as a
    /// zombie, and systemd starts it again.
    pub async fn ended(&mut self) -> String {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let why = match task.await {
            Ok(()) => "it returned".to_string(),
            Err(e) => e.to_string(),
        };
        self.task = None;
        why
    }
}

/// The manager's view of the configuration.
#[derive(Clone)]
struct Settings {
    targets: Vec<IpAddr>,
    learn: bool,
    recheck: Duration,
    max_destinations: usize,
    searches_per_minute: u32,
    /// Options of every job; `tcp_port` is the configured `probe.tcp_port`, which wins over a
    /// destination's own port.
    options: SearchOptions,
    min_mtu_v4: u16,
    static_nets: Vec<IpNet>,
    first_contact_mtu: u16,
    /// How long a local connection may wait for an answer before it is a symptom; `None`:
    /// symptoms are not looked for.
    stall_after: Option<Duration>,
    /// Tell peers of running connections when their segments are too big (`Config::reflect`).
    reflect: bool,
    /// Errors a second per destination (`Config::reflect_per_sec`).
    reflect_per_sec: u32,
}

impl From<&Config> for Settings {
    fn from(cfg: &Config) -> Self {
        let p = &cfg.probe;
        let options = SearchOptions {
            tcp_port: p.tcp_port,
            tcp_check: p.tcp_check,
            max_probes_per_sec: (p.max_probes_per_sec / MAX_CONCURRENT as u32).max(1),
            ..SearchOptions::default()
        };
        Self {
            targets: cfg.targets.clone(),
            learn: p.learn,
            recheck: Duration::from_secs(p.recheck_interval_secs),
            max_destinations: p.max_destinations,
            searches_per_minute: p.searches_per_minute,
            options,
            min_mtu_v4: p.min_mtu_v4,
            static_nets: cfg.clamp.iter().map(|c| c.cidr.trunc()).collect(),
            first_contact_mtu: p.first_contact_mtu,
            stall_after: (p.stall_after_ms != 0).then(|| Duration::from_millis(p.stall_after_ms)),
            reflect: cfg.reflect,
            reflect_per_sec: cfg.reflect_per_sec,
        }
    }
}

impl Settings {
    /// Options of a job for `addr`; `d` gives the port to probe with TCP (unless configured)
    /// and whether a re-check must check with TCP.
    fn options_for(&self, addr: IpAddr, d: &Dest) -> SearchOptions {
        let mut o = self.options.clone();
        if addr.is_ipv4() {
            o.min_mtu = Some(self.min_mtu_v4);
        }
        o.tcp_port = o.tcp_port.or(d.tcp_port);
        o.traffic = prober::Traffic {
            uid: d.uid,
            mark: d.mark,
            dport: o.tcp_port,
        };
        // A full search always checks with TCP; a re-check only where echo is known to
        // mislead (TCP set the result) or a connection just stalled.
        o.tcp_check &= d.search || d.tcp_limited || d.symptom;
        o
    }

    fn is_static(&self, addr: IpAddr) -> bool {
        self.static_nets.iter().any(|n| n.contains(&addr))
    }
}

/// One destination being kept measured.
struct Dest {
    configured: bool,
    mtu: Option<u16>,
    /// When to look at it next; `None` while a job runs.
    due: Option<Instant>,
    /// The next look must be a full search (new, failed re-check, network change).
    search: bool,
    /// Interface of its latest SYN (learned destinations) or of its latest search.
    ifindex: Option<u32>,
    /// Kernel jiffies of its latest SYN (learned destinations; 0 for configured ones): orders
    /// destinations for eviction.
    last_syn_jiffies: u64,
    /// When a symptom last made it due early ([`SYMPTOM_COOLDOWN`]).
    triggered_at: Option<Instant>,
    /// A service port of the destination to probe with TCP: its first SYN's destination port
    /// (learned map), or the port of a stalled connection to it.
    tcp_port: Option<u16>,
    /// Its MTU came from TCP carrying less than ICMP echo: re-checks must check with TCP.
    tcp_limited: bool,
    /// The next job was made due by a symptom: a re-check checks with TCP too.
    symptom: bool,
    /// The network changed while a job ran: its result may describe the old path, so the
    /// destination is searched again as soon as the job ends.
    changed_during_job: bool,
    /// Searches in a row that got no answer at all (0 once one does): sets the wait before
    /// the next ([`unreachable_wait`]).
    unreachable_streak: u32,
    /// The user whose connections it was learned from (the latest SYN's socket owner): its
    /// probes follow that user's route. `None` for configured targets and forwarded traffic.
    uid: Option<u32>,
    /// The firewall mark of its latest SYN (0: none, and for configured targets): its probes
    /// follow the route of marked traffic.
    mark: u32,
}

impl Dest {
    /// A destination not measured yet, due now.
    fn new(
        configured: bool,
        ifindex: Option<u32>,
        last_syn_jiffies: u64,
        port: Option<u16>,
    ) -> Self {
        Self {
            configured,
            mtu: None,
            due: Some(Instant::now()),
            search: true,
            ifindex,
            last_syn_jiffies,
            triggered_at: None,
            tcp_port: port,
            tcp_limited: false,
            symptom: false,
            changed_during_job: false,
            unreachable_streak: 0,
            uid: None,
            mark: 0,
        }
    }

    /// A destination learned from `l`, its latest SYN, not measured yet, due now.
    fn learned(l: &crate::maps::Learned) -> Self {
        Self {
            uid: l.uid,
            mark: l.mark,
            ..Self::new(false, Some(l.ifindex), l.last_seen_jiffies, l.port)
        }
    }
}

/// How a search or re-check ended, as `wslnet_probe_searches_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOutcome {
    /// A path MTU was found.
    Found,
    /// No probe of any size was answered.
    Unreachable,
    /// A local error (no route, no socket).
    Error,
    /// The job panicked (a bug): the destination is searched again after the interval.
    Panicked,
}

impl SearchOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [SearchOutcome; 4] = [
        SearchOutcome::Found,
        SearchOutcome::Unreachable,
        SearchOutcome::Error,
        SearchOutcome::Panicked,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SearchOutcome::Found => "found",
            SearchOutcome::Unreachable => "unreachable",
            SearchOutcome::Error => "error",
            SearchOutcome::Panicked => "panicked",
        }
    }
}

/// What a job found.
enum JobResult {
    Searched(anyhow::Result<prober::SearchReport>),
    Rechecked(u16, anyhow::Result<prober::Recheck>),
}

/// Starts the manager.
pub fn spawn(shared: Arc<Shared>, cfg: &Config) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let ring = match crate::maps::open_ring(&cfg.pin_dir, wslnet_common::map_names::NEW_DESTS)
        .and_then(|rb| {
            // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
            // AsyncFd holds it.
            unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("registering the ring buffer: {e}"))
        }) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no new-destination notifications; scanning the learned map instead");
            None
        }
    };
    let task = tokio::spawn(Manager::new(shared, Settings::from(cfg)).run(rx, ring));
    Handle {
        tx,
        task: Some(task),
    }
}

/// Exempts the prober's TCP connections from the clamp, through the datapath's probe map.
struct ExemptProbes(Arc<Shared>);

impl prober::ProbeConnections for ExemptProbes {
    fn opened(&self, peer: IpAddr, local_port: u16) {
        if let Err(e) = self.0.maps().add_probe(peer, local_port) {
            tracing::warn!(error = %format!("{e:#}"), "the TCP probe may be capped by the clamp");
        }
    }

    fn closed(&self, peer: IpAddr, local_port: u16) {
        if let Err(e) = self.0.maps().remove_probe(peer, local_port) {
            tracing::warn!(error = %format!("{e:#}"), "a stale probe entry stays until the agent stops");
        }
    }
}

struct Manager {
    shared: Arc<Shared>,
    /// Given to every search: keeps the TCP probes clear of the clamp.
    tcp_hook: prober::ProbeHook,
    settings: Settings,
    dests: HashMap<IpAddr, Dest>,
    jobs: JoinSet<(IpAddr, JobResult)>,
    /// The destination of every running job, by task: a job that panics yields only its id.
    job_dests: HashMap<tokio::task::Id, IpAddr>,
    /// Searches of learned destinations started in the current minute.
    /// New searches allowed ([`SearchBudget`], `searches_per_minute`).
    budget: SearchBudget,
    /// Learned destinations waiting for the budget, by address: admitted most recently seen
    /// first ([`Manager::admit`]), so a burst of SYNs to many addresses (one process's scan or
    /// flood) cannot keep a destination a user just connected to waiting; at most
    /// `max_destinations` wait (the least recently seen goes).
    pending: HashMap<IpAddr, crate::maps::Learned>,
    /// Finds stalled local connections; `None` while a scan runs or when symptoms are off.
    watcher: Option<Watcher>,
    /// Sends the errors that tell peers their segments are too big; `None` when reflection is
    /// off or raw sockets cannot be had.
    peer_errors: Option<crate::reflect::Sender>,
}

impl Manager {
    fn new(shared: Arc<Shared>, settings: Settings) -> Self {
        let per_minute = settings.searches_per_minute;
        let mut m = Self {
            tcp_hook: prober::ProbeHook(Arc::new(ExemptProbes(shared.clone()))),
            shared,
            settings,
            dests: HashMap::new(),
            jobs: JoinSet::new(),
            job_dests: HashMap::new(),
            budget: SearchBudget::new(per_minute),
            pending: HashMap::new(),
            watcher: None,
            peer_errors: None,
        };
        m.watcher = m.settings.stall_after.map(Watcher::new);
        m.peer_errors = m.new_peer_errors();
        m.add_targets();
        m
    }

    fn add_targets(&mut self) {
        for &t in &self.settings.targets {
            let d = self
                .dests
                .entry(t)
                .or_insert_with(|| Dest::new(true, None, 0, None));
            d.configured = true;
            self.shared
                .metrics
                .path_mtu
                .with_label_values(&[&t.to_string()])
                .set(d.mtu.unwrap_or(0).into());
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut ring: Option<AsyncFd<RingBuf<MapData>>>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let mut rescan = tokio::time::interval(if ring.is_some() { LEARN_RESCAN } else { TICK });
        let mut symptom_scan = tokio::time::interval(symptoms::SCAN_INTERVAL);
        // One scan of the learned map serves both start-up steps; the rescan starts a period on.
        let learned = if self.settings.learn {
            self.learn()
        } else {
            HashSet::new()
        };
        self.reconcile_clamps(&learned);
        rescan.reset();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::NetworkChanged) => {
                        for d in self.dests.values_mut() {
                            d.search = true;
                            if d.due.is_some() {
                                d.due = Some(Instant::now());
                            } else {
                                // A job runs: `finish` would take its result as current.
                                d.changed_during_job = true;
                            }
                        }
                    }
                    Some(Cmd::Reconfigure(s)) => {
                        let old_targets = std::mem::take(&mut self.settings.targets);
                        self.settings = *s;
                        for t in old_targets {
                            if !self.settings.targets.contains(&t) {
                                let _ = self.shared.metrics.path_mtu.remove_label_values(&[&t.to_string()]);
                                if let Some(d) = self.dests.get_mut(&t) {
                                    d.configured = false;
                                }
                            }
                        }
                        self.add_targets();
                        let learned = if self.settings.learn {
                            self.shared.maps().learned().iter().map(|l| l.addr).collect()
                        } else {
                            HashSet::new()
                        };
                        self.reconcile_clamps(&learned);
                        self.update_first_contact();
                        self.watcher = self.settings.stall_after.map(Watcher::new);
                        self.peer_errors = self.new_peer_errors();
                    }
                    Some(Cmd::Stop) | None => {
                        self.jobs.abort_all();
                        return;
                    }
                },
                Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    match joined {
                        Ok((id, (addr, outcome))) => {
                            self.job_dests.remove(&id);
                            self.finish(addr, outcome);
                        }
                        Err(e) => self.job_failed(e),
                    }
                    // A failed re-check or a narrower result makes more work due now.
                    self.start_due_jobs();
                }
                addrs = new_destinations(&mut ring), if self.settings.learn => {
                    for addr in addrs {
                        let entry = self.shared.maps().learned_entry(addr);
                        if let Some(l) = entry {
                            self.consider(l);
                        }
                    }
                    self.start_due_jobs();
                }
                _ = rescan.tick(), if self.settings.learn => {
                    let _ = self.learn();
                    self.start_due_jobs();
                }
                _ = symptom_scan.tick(), if self.watcher.is_some() => {
                    self.scan_symptoms().await;
                    self.start_due_jobs();
                }
                _ = tick.tick() => {
                    if Fault::ManagerPanic.strikes() {
                        panic!("injected fault: {}", Fault::ManagerPanic.name());
                    }
                    if Fault::ManagerStall.strikes() {
                        std::future::pending::<()>().await;
                    }
                    self.shared.health.manager_beat();
                    self.start_due_jobs();
                }
            }
        }
    }

    /// Makes the probed clamp entries agree with the configuration and the measurements, at
    /// start and after every reload ([`crate::reconcile::probed`] says how).
    /// `learned`: the addresses in the learned map (none when learning is off).
    fn reconcile_clamps(&mut self, learned: &HashSet<IpAddr>) {
        let measured: Vec<(IpAddr, u16)> = self
            .dests
            .iter()
            .filter_map(|(&a, d)| Some((a, d.mtu?)))
            .collect();
        let mut maps = self.shared.maps();
        let plan = crate::reconcile::probed(
            &maps.clamps(),
            &self.settings.static_nets,
            &measured,
            learned,
        );
        for net in plan.remove {
            tracing::info!(%net, "removing a probed clamp entry nothing stands for");
            if let Err(e) = maps.remove_clamp(net) {
                tracing::warn!(%net, error = %format!("{e:#}"), "removing a probed clamp entry");
            }
        }
        for (net, mtu, origin) in plan.write {
            if let Err(e) = maps.set_clamp(net, mtu, origin) {
                tracing::warn!(%net, error = %format!("{e:#}"), "writing the clamp");
            }
        }
    }

    /// Scans the whole learned map (at start and every [`LEARN_RESCAN`]).
    /// Returns the addresses it found.
    fn learn(&mut self) -> HashSet<IpAddr> {
        let learned = self.shared.maps().learned();
        let addrs = learned.iter().map(|l| l.addr).collect();
        for l in learned {
            self.consider(l);
        }
        addrs
    }

    /// Takes note of a destination of outgoing connections: refreshes a known one; a new one
    /// waits in `pending` for [`Manager::admit`].
    fn consider(&mut self, l: crate::maps::Learned) {
        if let Some(d) = self.dests.get_mut(&l.addr) {
            d.ifindex = Some(l.ifindex);
            d.last_syn_jiffies = l.last_seen_jiffies;
            d.tcp_port = d.tcp_port.or(l.port);
            if !d.configured {
                d.uid = l.uid;
                d.mark = l.mark;
            }
            return;
        }
        if !probe_worthy(l.addr) {
            return;
        }
        if !self.pending.contains_key(&l.addr)
            && self.pending.len() >= self.settings.max_destinations
        {
            let oldest = self
                .pending
                .values()
                .min_by_key(|p| p.last_seen_jiffies)
                .copied();
            match oldest {
                Some(o) if o.last_seen_jiffies < l.last_seen_jiffies => {
                    self.pending.remove(&o.addr);
                }
                _ => return,
            }
        }
        self.pending.insert(l.addr, l);
    }

    /// Starts measuring waiting destinations, most recently seen first, as far as the search
    /// budget allows (`searches_per_minute`, a burst of as many at once, then one every
    /// `60 / searches_per_minute` s).
    fn admit(&mut self) {
        while !self.pending.is_empty() && self.budget.take(self.settings.searches_per_minute) {
            let newest = self
                .pending
                .values()
                .max_by_key(|p| p.last_seen_jiffies)
                .copied()
                .expect("not empty");
            self.pending.remove(&newest.addr);
            self.evict_if_full();
            self.dests.insert(newest.addr, Dest::learned(&newest));
        }
        self.shared.metrics.pending.set(self.pending.len() as i64);
    }

    /// Drops the least recently used learned destination when the bound is reached.
    fn evict_if_full(&mut self) {
        let learned = self.dests.values().filter(|d| !d.configured).count();
        if learned < self.settings.max_destinations {
            return;
        }
        if let Some((&addr, _)) = self
            .dests
            .iter()
            .filter(|(_, d)| !d.configured && d.due.is_some())
            .min_by_key(|(_, d)| d.last_syn_jiffies)
        {
            self.dests.remove(&addr);
            let mut maps = self.shared.maps();
            // Its probed entry goes; a static clamp for exactly this address stays.
            if !self.settings.is_static(addr)
                && let Err(e) = maps.remove_clamp(IpNet::from(addr))
            {
                tracing::warn!(%addr, error = %format!("{e:#}"), "removing the clamp of an evicted destination");
            }
            maps.forget_learned(addr);
            drop(maps);
            self.update_first_contact();
        }
    }

    /// The sender of peer errors the settings ask for.
    fn new_peer_errors(&self) -> Option<crate::reflect::Sender> {
        if !self.settings.reflect {
            return None;
        }
        let kind = crate::reflect::ErrorKind::Peer;
        crate::reflect::Sender::new(kind, self.shared.clone(), self.settings.reflect_per_sec)
            .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "peers will not be told"))
            .ok()
    }

    /// Looks for stalled local connections and makes their destinations due now.
    async fn scan_symptoms(&mut self) {
        let Some(mut watcher) = self.watcher.take() else {
            return;
        };
        let scanned = tokio::task::spawn_blocking(move || {
            let found = watcher.scan();
            (watcher, found)
        })
        .await;
        let Ok((watcher, found)) = scanned else {
            tracing::warn!("the symptom scan panicked; looking for symptoms no more");
            return;
        };
        self.watcher = Some(watcher);
        match found {
            Ok(stalls) => {
                for s in stalls {
                    let addr = s.flow.peer.ip();
                    // The stalled connection's port is a service of the destination, for its
                    // TCP check when no SYN told one.
                    let mtu = self.dests.get_mut(&addr).and_then(|d| {
                        d.tcp_port = d.tcp_port.or(Some(s.flow.peer.port()));
                        d.mtu
                    });
                    if s.kind.tells_the_peer()
                        && let Some(mtu) = mtu
                    {
                        self.tell_peer(&s.flow, mtu);
                    }
                    self.trigger(addr, Trigger::Stall(s.kind));
                }
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "symptom scan failed"),
        }
    }

    /// Tells the peer of a local connection that the path to us carries `mtu`
    /// ([`crate::reflect::peer_error`]), when reflection is on and the datapath saw the peer's
    /// handshake (its initial sequence number).
    fn tell_peer(&mut self, flow: &crate::symptoms::Flow, mtu: u16) {
        let Some(sender) = self.peer_errors.as_mut() else {
            return;
        };
        let Some(isn) = self.shared.maps().peer_isn(flow.peer, flow.local.port()) else {
            tracing::debug!(peer = %flow.peer, local = %flow.local, "the peer's handshake was not seen; it cannot be told");
            return;
        };
        if let Some(err) = crate::reflect::peer_error(flow, isn, mtu) {
            let ifindex = self
                .dests
                .get(&flow.peer.ip())
                .and_then(|d| d.ifindex)
                .unwrap_or(0);
            tracing::info!(peer = %flow.peer, mtu, "telling the peer its segments are too big");
            sender.send(&err, ifindex);
        }
    }

    /// Re-measures a measured destination now, ahead of its periodic re-check, unless a job
    /// for it runs or a symptom did so less than [`SYMPTOM_COOLDOWN`] ago. Destinations not
    /// measured yet are being searched already, or are clamped for first contact.
    fn trigger(&mut self, addr: IpAddr, why: Trigger) {
        let now = Instant::now();
        let Some(d) = self.dests.get_mut(&addr) else {
            return;
        };
        if d.mtu.is_none()
            || d.due.is_none()
            || d.triggered_at
                .is_some_and(|t| now.duration_since(t) < SYMPTOM_COOLDOWN)
        {
            return;
        }
        d.triggered_at = Some(now);
        d.due = Some(now);
        d.symptom = true;
        self.shared
            .metrics
            .symptom_rechecks
            .with_label_values(&[why.label()])
            .inc();
        tracing::info!(%addr, why = why.label(), "black-hole symptom: re-measuring now");
    }

    fn start_due_jobs(&mut self) {
        self.admit();
        let now = Instant::now();
        let mut due: Vec<(&IpAddr, &Dest)> = self
            .dests
            .iter()
            .filter(|(_, d)| d.due.is_some_and(|t| t <= now))
            .collect();
        // Configured targets and symptoms first, then the most recently used destinations:
        // many due at once (a burst of new ones) must not hold up one a user just connected to.
        due.sort_by_key(|(_, d)| {
            (
                std::cmp::Reverse(d.configured || d.symptom),
                std::cmp::Reverse(d.last_syn_jiffies),
            )
        });
        let due: Vec<IpAddr> = due.into_iter().map(|(a, _)| *a).collect();
        for addr in due {
            if self.jobs.len() >= MAX_CONCURRENT {
                break;
            }
            let d = self.dests.get_mut(&addr).expect("listed above");
            d.due = None;
            let opts = SearchOptions {
                tcp_hook: Some(self.tcp_hook.clone()),
                ..self.settings.options_for(addr, d)
            };
            d.symptom = false;
            let job = match (d.search, d.mtu) {
                (false, Some(mtu)) => self.jobs.spawn(async move {
                    (
                        addr,
                        JobResult::Rechecked(mtu, prober::recheck(addr, mtu, &opts).await),
                    )
                }),
                _ => self.jobs.spawn(async move {
                    if Fault::JobPanic.strikes() {
                        panic!("injected fault: {}", Fault::JobPanic.name());
                    }
                    (addr, JobResult::Searched(prober::search(addr, &opts).await))
                }),
            };
            self.job_dests.insert(job.id(), addr);
        }
    }

    /// A job that panicked (a bug in the prober): logged and counted, and its destination is
    /// due again after the re-check interval instead of never.
    fn job_failed(&mut self, e: tokio::task::JoinError) {
        let addr = self.job_dests.remove(&e.id());
        tracing::error!(?addr, error = %e, "a path-MTU job failed; its destination is searched again later");
        self.shared
            .metrics
            .searches
            .with_label_values(&[SearchOutcome::Panicked.label()])
            .inc();
        if let Some(d) = addr.and_then(|a| self.dests.get_mut(&a)) {
            d.search = true;
            d.changed_during_job = false;
            d.due = Some(Instant::now() + self.settings.recheck);
        }
    }

    /// Takes a job's outcome; searches again at once when the network changed meanwhile.
    fn finish(&mut self, addr: IpAddr, outcome: JobResult) {
        let rerun = self
            .dests
            .get_mut(&addr)
            .is_some_and(|d| std::mem::take(&mut d.changed_during_job));
        self.record(addr, outcome);
        if rerun && let Some(d) = self.dests.get_mut(&addr) {
            tracing::info!(%addr, "the network changed during its measurement: searching again");
            d.search = true;
            d.due = Some(Instant::now());
        }
    }

    /// Records a job's outcome: the clamp, the next look, the metrics.
    fn record(&mut self, addr: IpAddr, outcome: JobResult) {
        if let JobResult::Searched(Err(e)) | JobResult::Rechecked(_, Err(e)) = &outcome
            && e.is::<prober::LocalTarget>()
            && self.dests.get(&addr).is_some_and(|d| !d.configured)
        {
            // A learned address of this host (its route is local): nothing to measure, ever.
            tracing::info!(%addr, "an address of this host: not measured");
            self.shared
                .metrics
                .searches
                .with_label_values(&[SearchOutcome::Error.label()])
                .inc();
            self.dests.remove(&addr);
            self.shared.maps().forget_learned(addr);
            return;
        }
        let recheck = self.settings.recheck;
        let metrics = &self.shared.metrics;
        let Some(d) = self.dests.get_mut(&addr) else {
            return;
        };
        d.due = Some(Instant::now() + recheck);
        d.search = false;
        let found = match outcome {
            JobResult::Rechecked(mtu, Ok(r)) => {
                metrics.probe_packets.inc_by(r.probes_sent.into());
                if !r.current_ok || r.larger_ok {
                    tracing::info!(%addr, mtu, still_ok = r.current_ok, larger_ok = r.larger_ok, "path changed, searching again");
                    d.search = true;
                    d.due = Some(Instant::now());
                }
                return;
            }
            JobResult::Rechecked(_, Err(e)) | JobResult::Searched(Err(e)) => {
                metrics
                    .searches
                    .with_label_values(&[SearchOutcome::Error.label()])
                    .inc();
                tracing::warn!(%addr, error = %format!("{e:#}"), "path-MTU probe failed");
                return;
            }
            JobResult::Searched(Ok(report)) => {
                metrics.probe_packets.inc_by(report.probes_sent.into());
                // Configured targets learn their interface here (learned destinations from
                // their SYNs): the first-contact clamp is per interface.
                if let Ok(ifindex) = nix::net::if_::if_nametoindex(report.interface.as_str()) {
                    d.ifindex = Some(ifindex);
                }
                metrics
                    .search_duration
                    .observe(report.elapsed.as_secs_f64());
                d.tcp_limited = report.method == Some(prober::Method::TcpBelowIcmp);
                if let Some(m) = report.method {
                    metrics.search_methods.with_label_values(&[m.label()]).inc();
                }
                report.mtu
            }
        };
        let Some(mtu) = found else {
            metrics
                .searches
                .with_label_values(&[SearchOutcome::Unreachable.label()])
                .inc();
            d.unreachable_streak = d.unreachable_streak.saturating_add(1);
            let wait = unreachable_wait(recheck, d.unreachable_streak);
            tracing::info!(
                %addr,
                in_a_row = d.unreachable_streak,
                next_search_secs = wait.as_secs(),
                "unreachable: no probe answered; leaving its clamp as it was"
            );
            if d.configured {
                metrics
                    .path_mtu
                    .with_label_values(&[&addr.to_string()])
                    .set(0);
            }
            // Keep looking, ever less often while nothing answers.
            d.search = true;
            d.due = Some(Instant::now() + wait);
            self.count_unreachable();
            return;
        };
        d.unreachable_streak = 0;
        metrics
            .searches
            .with_label_values(&[SearchOutcome::Found.label()])
            .inc();
        let changed = d.mtu != Some(mtu);
        let narrowed = d.mtu.is_some_and(|old| mtu < old);
        // Connections to it may carry segments wider than `mtu` from the peer: those that
        // started before this result, clamped to what was in force then (an older result, or
        // the first-contact default).
        let in_force = d.mtu.unwrap_or(match self.settings.first_contact_mtu {
            0 => u16::MAX,
            f => f,
        });
        let ifindex = d.ifindex;
        d.mtu = Some(mtu);
        if d.configured {
            metrics
                .path_mtu
                .with_label_values(&[&addr.to_string()])
                .set(mtu.into());
        }
        if changed {
            tracing::info!(%addr, mtu, "path MTU measured");
        }
        if !self.settings.is_static(addr) {
            let mut maps = self.shared.maps();
            if let Err(e) = maps.set_clamp(IpNet::from(addr), mtu, Origin::Probed) {
                tracing::warn!(%addr, error = %format!("{e:#}"), "writing the clamp");
            }
        }
        self.update_first_contact();
        self.count_unreachable();
        if mtu < in_force {
            match crate::symptoms::connections_to(addr) {
                Ok(flows) => {
                    tracing::debug!(%addr, connections = flows.len(), "narrower than in force");
                    for flow in flows {
                        self.tell_peer(&flow, mtu);
                    }
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "listing connections"),
            }
        }
        if narrowed {
            // The path shrank: the others measured through the same interface wider than this
            // likely shrank with it (one tunnel carries them all).
            let siblings: Vec<IpAddr> = self
                .dests
                .iter()
                .filter(|(a, d)| {
                    **a != addr && d.ifindex == ifindex && d.mtu.is_some_and(|m| m > mtu)
                })
                .map(|(a, _)| *a)
                .collect();
            for s in siblings {
                self.trigger(s, Trigger::Sibling);
            }
        }
    }

    /// Exports how many destinations got no answer at their latest search.
    fn count_unreachable(&self) {
        let n = self
            .dests
            .values()
            .filter(|d| d.unreachable_streak > 0)
            .count();
        self.shared.metrics.unreachable.set(n as i64);
    }

    /// Safe first contact: sets each interface's default path MTU (what a destination without
    /// a clamp entry of its own is clamped to, from its first SYN) to `first_contact_mtu`, or
    /// to the smallest path MTU currently measured through that interface when that is smaller:
    /// one tunnel usually carries every destination behind it. Never above `first_contact_mtu`,
    /// so that one destination on a wide path cannot open the interface to first contacts
    /// behind a narrow one; 0 when first contact is off.
    fn update_first_contact(&self) {
        let first_contact = self.settings.first_contact_mtu;
        let mut maps = self.shared.maps();
        for (ifindex, cfg) in maps.ifaces() {
            let default_for = |v4: bool| {
                if first_contact == 0 {
                    return 0;
                }
                self.dests
                    .iter()
                    .filter(|(a, d)| a.is_ipv4() == v4 && d.ifindex == Some(ifindex))
                    .filter_map(|(_, d)| d.mtu)
                    .fold(first_contact, u16::min)
            };
            let new = IfaceConfig {
                default_mtu_v4: default_for(true),
                default_mtu_v6: default_for(false),
                ..cfg
            };
            if new != cfg
                && let Err(e) = maps.set_iface(ifindex, new)
            {
                tracing::warn!(ifindex, error = %format!("{e:#}"), "writing the first-contact clamp");
            }
        }
    }
}

/// Waits for the datapath's notifications of new destinations and returns their addresses;
/// never returns without a ring buffer.
async fn new_destinations(ring: &mut Option<AsyncFd<RingBuf<MapData>>>) -> Vec<IpAddr> {
    let Some(fd) = ring.as_mut() else {
        return std::future::pending().await;
    };
    let Ok(mut guard) = fd.readable_mut().await else {
        return std::future::pending().await;
    };
    let mut out = Vec::new();
    while let Some(item) = guard.get_inner_mut().next() {
        if item.len() >= std::mem::size_of::<LearnedKey>() {
            // SAFETY: the datapath writes whole LearnedKey values (plain old data, any bit
            // pattern valid); the length was checked just above.
            let key: LearnedKey = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            out.extend(crate::maps::learned_addr(&key));
        }
    }
    guard.clear_ready();
    out
}

/// The wait before searching again a destination whose last `streak` searches got no answer:
/// the re-check interval, doubled for each further one, at most [`MAX_UNREACHABLE_WAIT`] (or
/// the re-check interval when that is longer). A burst of connections to addresses that never
/// answer then costs a few searches each, not one every interval forever.
fn unreachable_wait(recheck: Duration, streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(31);
    recheck
        .saturating_mul(1 << doublings)
        .min(MAX_UNREACHABLE_WAIT.max(recheck))
}

/// The budget for new searches: a token bucket of `per_minute` tokens that refills at
/// `per_minute` a minute. Unlike a fixed window, a burst that empties it delays the next
/// destination by one refill (`60 / per_minute` s), not until the minute is over.
struct SearchBudget {
    tokens: f64,
    last: Instant,
}

impl SearchBudget {
    /// A full bucket.
    fn new(per_minute: u32) -> Self {
        Self {
            tokens: f64::from(per_minute),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one (`per_minute` as configured now).
    fn take(&mut self, per_minute: u32) -> bool {
        let cap = f64::from(per_minute);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * cap / 60.0).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Addresses worth probing: unicast destinations that can be beyond a router. Not loopback,
/// unspecified ("this network", 0.0.0.0/8), multicast, link-local, broadcast or reserved
/// (240.0.0.0/4), and not an IPv4 address in IPv6 clothing (v4-mapped `::ffff:a.b.c.d`, the
/// deprecated v4-compatible `::a.b.c.d`), which no packet on the wire carries.
fn probe_worthy(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let first = a.octets()[0];
            !(a.is_loopback()
                || first == 0
                || first >= 240
                || a.is_multicast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            let v4_compatible =
                a.segments()[..6] == [0; 6] && !a.is_unspecified() && !a.is_loopback();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some()
                || v4_compatible)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_destinations_wait_ever_longer_up_to_an_hour() {
        let s = Duration::from_secs;
        let waits: Vec<Duration> = (1..=9).map(|n| unreachable_wait(s(30), n)).collect();
        assert_eq!(
            waits,
            [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
                .map(s)
                .to_vec()
        );
        assert_eq!(unreachable_wait(s(30), u32::MAX), s(3600));
        assert_eq!(
            unreachable_wait(s(7200), 5),
            s(7200),
            "never below the interval"
        );
        assert_eq!(unreachable_wait(s(604_800), 3), s(604_800));
    }

    #[test]
    fn only_unicast_destinations_beyond_a_router_are_probe_worthy() {
        for ok in [
            "10.77.3.2",
            "192.0.2.1",
            "1.1.1.1",
            "223.255.255.254",
            "fd77:3::2",
            "2001:db8::1",
        ] {
            assert!(probe_worthy(ok.parse().unwrap()), "{ok}");
        }
        for not in [
            "127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "169.254.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(!probe_worthy(not.parse().unwrap()), "{not}");
        }
    }
}
