//! Path-MTU prober: finds, to the byte, the largest IP packet that reaches a target unfragmented,
//! without relying on ICMP "fragmentation needed" / "packet too big" coming back.
//!
//! # Method
//! - **ICMP echo** with DF set that ignores the kernel's cached path MTU (`IP_PMTUDISC_PROBE`;
//!   IPv6 `IPV6_PMTUDISC_PROBE` + `IPV6_DONTFRAG`), on a datagram ICMP socket where
//!   `net.ipv4.ping_group_range` allows it, else on a raw socket (`icmp.rs`).
//! - **TCP** to a port of the target (`tcp.rs`): one connection per probe, with `TCP_MAXSEG`
//!   chosen so that one full segment is exactly the probed size; the size passes when that
//!   segment's data is acknowledged. It checks what ICMP found ([`SearchOptions::tcp_check`]:
//!   some paths carry echo requests of a size that TCP segments do not get through) and
//!   measures alone for targets that drop echo.
//! - **The return path** (IPv4): an echo reply that comes back fragmented crossed a link
//!   narrower than itself on the way back (Linux sends echo replies without DF, so routers
//!   fragment them where they would drop a TCP segment). `IP_RECVFRAGSIZE` gives the largest
//!   fragment, and the result is never above it. IPv6 routers never fragment: an echo reply that
//!   comes back whole crossed the return path at its size.
//! - **Bounds**: upper = MTU of the egress device for the route to the target (`route.rs`),
//!   optionally lowered by [`SearchOptions::max_mtu`]; lower = 1280 for IPv6, a configurable floor
//!   (default [`DEFAULT_MIN_MTU_V4`] = 552) for IPv4. No size below the lower bound is ever
//!   probed or reported.
//!
//! # Search
//! Each round sends [`SIZES_PER_ROUND`] sizes at once (each `1 + retries` times against plain
//! loss), largest first: points spread over the unknown range, always including its top, and
//! last a *control* size known (or, in the first round, assumed) to pass. Largest first, a
//! target that polices its echo replies to a few per second answers the largest sizes that pass
//! and drops smaller ones, never a size above one it answered. A size is only *suspected* too big
//! when it stays unanswered while a smaller size of the same round is answered; the next round
//! sends it again, first (in place of one planned size), and it is judged too big only when it
//! fails there again while a smaller size passes: plain loss or a policer never lowers a result.
//! A round where nothing is answered says nothing and is repeated (up to `retries + 1` times,
//! then the target is reported unreachable). Any frag-needed / packet-too-big that does arrive
//! (`IP_RECVERR`) lowers the unknown range to its MTU at once, and the next round confirms it.
//! From 552 to 1500 the search needs at most 4 rounds (1 when nothing below the device MTU
//! limits the path).
//! Rounds end early: once replies come back, a round waits only twice the observed round trip
//! (+15 ms) after its last probe for the rest, never more than [`SearchOptions::round_timeout`].
//!
//! Every search opens its own sockets and filters replies by ICMP identifier, sequence and a
//! random token in the payload, so searches can run concurrently.

mod icmp;
mod route;
mod sys;
mod tcp;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

pub(crate) use sys::random_bytes;

/// Default IPv4 floor (bytes): the smallest path MTU the prober considers.
pub const DEFAULT_MIN_MTU_V4: u16 = wslnet_common::MIN_PATH_MTU_V4;
/// IPv6 minimum link MTU (bytes); the IPv6 lower bound.
pub const MIN_MTU_V6: u16 = wslnet_common::MIN_PATH_MTU_V6;
/// Smallest IPv4 floor accepted (bytes, RFC 791).
pub const MIN_MTU_V4_ABSOLUTE: u16 = 68;
/// Sizes probed per ICMP round (the control size included).
pub const SIZES_PER_ROUND: usize = 16;
/// Sizes probed per TCP round: each copy of each size is a connection to the target's service,
/// and a listener with a short accept queue must not be flooded into failing sizes that pass.
pub const TCP_SIZES_PER_ROUND: usize = 4;

/// Told of each TCP probe connection before its SYN leaves and when it ends. `run` passes one
/// that exempts the connection from wslnet's own clamp: the datapath would otherwise lower the
/// MSS of the probe's SYN-ACK to the clamp in force, and no size above it could be tested.
pub trait ProbeConnections: Send + Sync {
    /// The connection from `local_port` to `peer` is about to send its SYN.
    fn opened(&self, peer: IpAddr, local_port: u16);
    /// The connection from `local_port` to `peer` has ended.
    fn closed(&self, peer: IpAddr, local_port: u16);
}

/// A shared [`ProbeConnections`], as [`SearchOptions`] carries it.
#[derive(Clone)]
pub struct ProbeHook(pub Arc<dyn ProbeConnections>);

impl std::fmt::Debug for ProbeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHook")
    }
}

/// Marks a probe socket's packets as the agent's ([`wslnet_common::PROBE_MARK`]), so that the
/// datapath never drops them for reflection: a probe above the path MTU in force is how a path
/// that grew is found. Needs CAP_NET_ADMIN; without it (`probe` run unprivileged, no agent
/// dropping anything) the packets go unmarked.
pub(crate) fn mark_as_probe(sock: &socket2::Socket) {
    if let Err(e) = sock.set_mark(wslnet_common::PROBE_MARK) {
        tracing::debug!(error = %e, "probe packets unmarked");
    }
}

/// The target is an address of this host (its route is local): there is no path to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTarget(pub IpAddr);

impl std::fmt::Display for LocalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is an address of this host: its packets never leave it, there is no path MTU \
             to measure (probe a remote address)",
            self.0
        )
    }
}

impl std::error::Error for LocalTarget {}

/// Settings of one search or re-check.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Send probes out of this interface (`SO_BINDTODEVICE`) and take the upper bound from its
    /// MTU; `None` follows the routing table.
    pub iface: Option<String>,
    /// Lower bound in bytes (IP packet size). IPv4 default [`DEFAULT_MIN_MTU_V4`] (552), never
    /// below 68; IPv6 is always at least 1280.
    pub min_mtu: Option<u16>,
    /// Upper bound in bytes (IP packet size); never above the egress device's MTU.
    pub max_mtu: Option<u16>,
    /// TCP port of the target: for the fallback probe when ICMP echo gets no answer at all, and
    /// for checking an ICMP result ([`SearchOptions::tcp_check`]); `None`: ICMP only.
    pub tcp_port: Option<u16>,
    /// Check what ICMP echo found with TCP segments to `tcp_port` (an echo that passes is no
    /// proof for TCP): a search lowers its result to what TCP carries, a re-check fails when
    /// TCP no longer carries the known MTU. Costs a search 4 connections (the lower bound as a
    /// control and the result, 2 copies each), more only when TCP carries less.
    pub tcp_check: bool,
    /// Longest wait for the answers of one round (a round usually ends much earlier: twice the
    /// observed round trip, plus 15 ms, after its last probe).
    pub round_timeout: Duration,
    /// Extra copies of every probe in a round (against plain loss), and how many times a round
    /// that got no answer at all is repeated before the method gives up.
    pub retries: u32,
    /// Rate limit on probe packets (ICMP echoes or TCP connections) of this search, per second;
    /// bursts of up to one second's worth are allowed. `0` is treated as 1.
    pub max_probes_per_sec: u32,
    /// Told of every TCP probe connection (`None`: nobody needs to know).
    pub tcp_hook: Option<ProbeHook>,
    /// The traffic to the target that the measurement stands for: where policy routing sends
    /// it out of another interface than this process's own route, the probes go that way, from
    /// that route's source address. Empty (the default): along this process's own route.
    pub traffic: Traffic,
}

/// Traffic as policy routing (`ip rule`) sees it: what can send it another way than the
/// prober's own packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// The owner of its sockets (`uidrange`); `None`: any.
    pub uid: Option<u32>,
    /// Its firewall mark (`fwmark`); 0: none.
    pub mark: u32,
    /// It is TCP to this port (`ipproto tcp dport`); `None`: not known.
    pub dport: Option<u16>,
}

impl Traffic {
    /// Nothing known that could route it differently.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for SearchOptions {
    /// No interface, default bounds, no TCP, 1 s round timeout, 1 retry, 200 probes/s.
    fn default() -> Self {
        Self {
            iface: None,
            min_mtu: None,
            max_mtu: None,
            tcp_port: None,
            tcp_check: false,
            round_timeout: Duration::from_secs(1),
            retries: 1,
            max_probes_per_sec: 200,
            tcp_hook: None,
            traffic: Traffic::default(),
        }
    }
}

/// How the reported MTU was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ICMP echo with DF: the largest answered size.
    Icmp,
    /// TCP fallback: the largest size whose full-sized segment was acknowledged.
    Tcp,
    /// A frag-needed / packet-too-big message named this MTU and a probe of that size passed.
    IcmpError,
    /// ICMP echo passed larger sizes, TCP segments only this one ([`SearchOptions::tcp_check`]).
    TcpBelowIcmp,
    /// Echo replies came back fragmented: the largest fragment, the return path's MTU.
    ReturnFragments,
}

impl Method {
    /// Every method, in declaration order.
    pub const ALL: [Method; 5] = [
        Method::Icmp,
        Method::Tcp,
        Method::IcmpError,
        Method::TcpBelowIcmp,
        Method::ReturnFragments,
    ];

    /// The name in JSON and in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Method::Icmp => "icmp",
            Method::Tcp => "tcp",
            Method::IcmpError => "icmp-error",
            Method::TcpBelowIcmp => "tcp-below-icmp",
            Method::ReturnFragments => "return-fragments",
        }
    }
}

/// Result of [`search`].
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    /// The probed address.
    pub target: IpAddr,
    /// Path MTU in bytes (largest IP packet that passed); `None` = unreachable: no probe of any
    /// size between the bounds was answered, by ICMP nor (when configured) TCP.
    pub mtu: Option<u16>,
    /// How `mtu` was established; `None` when unreachable.
    pub method: Option<Method>,
    /// TCP segments of `mtu` bytes were acknowledged ([`SearchOptions::tcp_check`], or the TCP
    /// fallback measured it).
    pub tcp_checked: bool,
    /// The return path's MTU (bytes) as echo replies that came back fragmented tell it (their
    /// largest fragment, refined by the replies that came back whole); the result is never
    /// above it. `None`: every reply that was no larger than the result came back whole.
    pub return_fragments: Option<u16>,
    /// Rounds of probes sent (all methods together).
    pub rounds: u32,
    /// Probe packets sent (ICMP echoes plus TCP connections).
    pub probes_sent: u32,
    /// Wall-clock duration of the search (serialized as `elapsed_ms`, milliseconds, float).
    #[serde(rename = "elapsed_ms", serialize_with = "ser_ms")]
    pub elapsed: Duration,
    /// Upper bound in bytes: egress device MTU (or `max_mtu` when lower).
    pub upper_bound: u16,
    /// Lower bound in bytes: 1280 (IPv6) or the IPv4 floor.
    pub lower_bound: u16,
    /// Egress interface the probes left through.
    pub interface: String,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Result of [`recheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recheck {
    /// A probe of exactly the known MTU passed.
    pub current_ok: bool,
    /// A probe of `mtu + 1` or of the upper bound passed: the path got larger.
    pub larger_ok: bool,
    /// Probe packets sent.
    pub probes_sent: u32,
}

/// Size (bytes) of the IP packet [`echo`] sends: `ping`'s default (56 bytes of data).
pub const ECHO_SIZE_V4: u16 = 84;
/// Size (bytes) of the IPv6 packet [`echo`] sends.
pub const ECHO_SIZE_V6: u16 = 104;

/// Result of [`echo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// An echo reply came back.
    pub answered: bool,
    /// Echo requests sent.
    pub probes_sent: u32,
}

/// Whether `target` answers ICMP echo of `ping`'s size: `1 + retries` requests, one wait of
/// `timeout` for the reply. Errors only on local problems (no ICMP socket allowed).
pub async fn echo(target: IpAddr, retries: u32, timeout: Duration) -> Result<Echo> {
    let mut p = icmp::IcmpProber::open(target, None, None)?;
    let opts = SearchOptions {
        retries,
        round_timeout: timeout,
        ..SearchOptions::default()
    };
    let size = if target.is_ipv6() {
        ECHO_SIZE_V6
    } else {
        ECHO_SIZE_V4
    };
    let mut st = Stats::default();
    let mut limiter = RateLimiter::new(opts.max_probes_per_sec);
    let r = round(&mut p, &[size], &opts, &mut limiter, &mut st).await?;
    Ok(Echo {
        answered: r.answered.contains(&size),
        probes_sent: st.probes_sent,
    })
}

/// The egress interface (name, MTU in bytes) of the route to `target`, like `ip route get`.
pub async fn egress(target: IpAddr) -> Result<(String, u32)> {
    let e = route::egress(target, None, &Traffic::default()).await?;
    Ok((e.iface, e.mtu))
}

/// One-shot search for the path MTU (bytes) to `target`; see the module docs for the method.
///
/// Errors only on local problems (no route, no permission for raw sockets, bad bounds); a target
/// that answers nothing is `Ok` with `mtu: None`.
pub async fn search(target: IpAddr, opts: &SearchOptions) -> Result<SearchReport> {
    let start = Instant::now();
    let bounds = route::bounds(target, opts).await?;
    let mut st = Stats::default();
    let mut limiter = RateLimiter::new(opts.max_probes_per_sec);
    let mut return_fragments = None;
    let mut found = match icmp::IcmpProber::open(target, bounds.bind.as_deref(), bounds.source) {
        Ok(mut p) => {
            let mut found = run_search(&mut p, &bounds, opts, &mut limiter, &mut st).await?;
            if let (Some((mtu, _)), Some(f)) = (found, p.return_fragments())
                && f < mtu
            {
                // Replies came back fragmented: the sizes just above the largest fragment
                // tell the return path's MTU to the byte (see `IcmpProber::return_mtu`).
                let sizes: Vec<u16> = (f + 1..=mtu.min(f.saturating_add(7))).collect();
                round(&mut p, &sizes, opts, &mut limiter, &mut st).await?;
                if let Some(ret) = p.return_mtu().filter(|&r| r < mtu) {
                    found = Some((ret.max(bounds.lower), false));
                    return_fragments = Some(ret);
                }
            }
            found.map(|(mtu, hinted)| {
                let method = if return_fragments.is_some() {
                    Method::ReturnFragments
                } else if hinted {
                    Method::IcmpError
                } else {
                    Method::Icmp
                };
                (mtu, method)
            })
        }
        // Without ICMP sockets the TCP probe can still measure, when configured.
        Err(e) if opts.tcp_port.is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "no ICMP probes; using TCP only");
            None
        }
        Err(e) => return Err(e),
    };
    let mut tcp_checked = false;
    if let Some(port) = opts.tcp_port {
        let mut p = tcp::TcpProber::new(target, port, bounds.bind.clone(), bounds.source);
        match found {
            None => {
                tracing::debug!(%target, port, "no ICMP echo answered; trying TCP");
                found = run_search(&mut p, &bounds, opts, &mut limiter, &mut st)
                    .await?
                    .map(|(mtu, hinted)| {
                        tcp_checked = !hinted;
                        let method = if hinted {
                            Method::IcmpError
                        } else {
                            Method::Tcp
                        };
                        (mtu, method)
                    });
            }
            Some((mtu, _)) if opts.tcp_check => {
                match check_with_tcp(&mut p, mtu, &bounds, opts, &mut limiter, &mut st).await? {
                    TcpCheck::Carries => tcp_checked = true,
                    TcpCheck::CarriesOnly(tcp) => {
                        tracing::info!(%target, port, icmp = mtu, tcp, "TCP carries less than ICMP echo");
                        tcp_checked = true;
                        found = Some((tcp, Method::TcpBelowIcmp));
                    }
                    TcpCheck::Untestable => {
                        tracing::debug!(%target, port, "no TCP answer at any size; keeping the ICMP result");
                    }
                }
            }
            Some(_) => {}
        }
    }
    Ok(SearchReport {
        target,
        mtu: found.map(|f| f.0),
        method: found.map(|f| f.1),
        tcp_checked,
        return_fragments,
        rounds: st.rounds,
        probes_sent: st.probes_sent,
        elapsed: start.elapsed(),
        upper_bound: bounds.upper,
        lower_bound: bounds.lower,
        interface: bounds.iface,
    })
}

/// What TCP said of a size ICMP echo passed.
enum TcpCheck {
    /// A full segment of that size was acknowledged.
    Carries,
    /// Only segments up to this size (bytes) were acknowledged.
    CarriesOnly(u16),
    /// No probe was acknowledged at any size, not even the lower bound (nothing listens on the
    /// port, or TCP is filtered): TCP can tell nothing.
    Untestable,
}

/// Checks `mtu` (bytes), which ICMP echo passed, with TCP: one round of the lower bound (the
/// control) and `mtu`; when only the control passes, once more (a lost segment is not a
/// narrower path), then a TCP search below `mtu`.
async fn check_with_tcp<P: Prober>(
    p: &mut P,
    mtu: u16,
    b: &Bounds,
    opts: &SearchOptions,
    limiter: &mut RateLimiter,
    st: &mut Stats,
) -> Result<TcpCheck> {
    let sizes: Vec<u16> = if b.lower < mtu {
        largest_first(vec![b.lower, mtu])
    } else {
        vec![mtu]
    };
    let mut control = false;
    for _ in 0..2 {
        let r = round(p, &sizes, opts, limiter, st).await?;
        if r.answered.contains(&mtu) {
            return Ok(TcpCheck::Carries);
        }
        control |= !r.answered.is_empty();
    }
    if !control || mtu <= b.lower {
        return Ok(TcpCheck::Untestable);
    }
    let below = Bounds {
        upper: mtu - 1,
        ..b.clone()
    };
    Ok(match run_search(p, &below, opts, limiter, st).await? {
        Some((tcp, _)) => TcpCheck::CarriesOnly(tcp),
        None => TcpCheck::Untestable,
    })
}

/// Cheap re-check of a known path MTU `mtu` (bytes): one round of the lower bound (control),
/// `mtu`, `mtu + 1` and the upper bound (ICMP, then TCP when configured and ICMP got no answer
/// at all; a round where not even the control size is answered is repeated up to `retries`
/// times). Both flags false with the control unanswered means the target went silent. With
/// [`SearchOptions::tcp_check`], TCP must carry `mtu` too (and `mtu + 1` for `larger_ok`) when
/// it answers at all; an echo reply that came back fragmented counts for the forward path only.
pub async fn recheck(target: IpAddr, mtu: u16, opts: &SearchOptions) -> Result<Recheck> {
    let bounds = route::bounds(target, opts).await?;
    let mut limiter = RateLimiter::new(opts.max_probes_per_sec);
    let mtu = mtu.clamp(bounds.lower, bounds.upper);
    let mut sizes = vec![mtu];
    if bounds.lower < mtu {
        sizes.insert(0, bounds.lower);
    }
    if mtu < bounds.upper {
        sizes.push(mtu + 1);
        if mtu + 1 < bounds.upper {
            sizes.push(bounds.upper);
        }
    }
    let sizes = largest_first(sizes);
    let mut st = Stats::default();
    let mut out = None;
    let mut return_limit = u16::MAX;
    match icmp::IcmpProber::open(target, bounds.bind.as_deref(), bounds.source) {
        Ok(mut p) => {
            out = answered_round(&mut p, &sizes, opts, &mut limiter, &mut st).await?;
            return_limit = p.return_mtu().unwrap_or(u16::MAX);
        }
        Err(e) if opts.tcp_port.is_some() => {
            tracing::debug!(error = %format!("{e:#}"), "no ICMP probes; using TCP only");
        }
        Err(e) => return Err(e),
    }
    let mut tcp_round = None;
    if let Some(port) = opts.tcp_port
        && (out.is_none() || opts.tcp_check)
    {
        let tcp_sizes: Vec<u16> = if out.is_none() {
            sizes.clone()
        } else {
            // ICMP answered: TCP checks the known MTU and one above, with a control.
            sizes
                .iter()
                .copied()
                .filter(|&s| s <= mtu.saturating_add(1))
                .collect()
        };
        let mut p = tcp::TcpProber::new(target, port, bounds.bind.clone(), bounds.source);
        tcp_round = answered_round(&mut p, &tcp_sizes, opts, &mut limiter, &mut st).await?;
    }
    let passes = |s: u16| {
        let icmp = match &out {
            Some(r) => r.answered.contains(&s) && s <= return_limit,
            None => true,
        };
        let tcp = match &tcp_round {
            Some(r) => r.answered.contains(&s),
            None => out.is_some(),
        };
        icmp && tcp
    };
    Ok(Recheck {
        current_ok: sizes.iter().any(|&s| s >= mtu && passes(s)),
        larger_ok: sizes.iter().any(|&s| s > mtu && passes(s)),
        probes_sent: st.probes_sent,
    })
}

/// One round of `sizes`, repeated up to `opts.retries` times while nothing at all is answered;
/// `None` when no round got an answer.
async fn answered_round<P: Prober>(
    p: &mut P,
    sizes: &[u16],
    opts: &SearchOptions,
    limiter: &mut RateLimiter,
    st: &mut Stats,
) -> Result<Option<RoundResult>> {
    for _ in 0..=opts.retries {
        let r = round(p, sizes, opts, limiter, st).await?;
        if !r.answered.is_empty() {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Bounds of one search (bytes), the egress interface, and where the probes leave from.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    pub lower: u16,
    pub upper: u16,
    pub iface: String,
    /// The interface probes are bound to (`SO_BINDTODEVICE`): [`SearchOptions::iface`], or the
    /// interface of the route [`SearchOptions::traffic`] takes where it differs from ours.
    pub bind: Option<String>,
    /// The source address probes are sent from (the traffic's route's), `None`: the kernel's
    /// choice.
    pub source: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub rounds: u32,
    pub probes_sent: u32,
}

/// What one round established.
#[derive(Debug, Default)]
pub(crate) struct RoundResult {
    /// Sizes (bytes) proven to pass (late answers to earlier rounds included).
    pub answered: BTreeSet<u16>,
    /// Sizes the local stack refused to send as too big (`EMSGSIZE`) or that the transport
    /// could not test at full size (e.g. the TCP peer's MSS is smaller).
    pub refused: BTreeSet<u16>,
    /// MTU (bytes) named by a frag-needed / packet-too-big about one of our probes.
    pub mtu_hint: Option<u16>,
    /// Planned sizes no probe of which got far enough to test the size (TCP: no connection
    /// completed its handshake, e.g. the service's accept queue was full): unanswered, but no
    /// evidence that they are too big. Always empty for ICMP, which cannot tell.
    pub untested: BTreeSet<u16>,
}

/// What [`Prober::wait`] heard.
pub(crate) enum Heard {
    /// Something arrived, or the wait ended; with the round trip of an answer to a probe of
    /// this round, if one came.
    Progress(Option<Duration>),
    /// Nothing more can arrive this round: every probe has ended.
    Done,
}

/// A probe transport: sends probes of the sizes asked and tells what passed. [`round`] drives
/// one round of it; the transports differ only in how a probe is sent and answered.
pub(crate) trait Prober {
    /// Sizes a search round plans (the control size included).
    fn sizes_per_round(&self) -> usize {
        SIZES_PER_ROUND
    }

    /// A round begins: what arrived since the last one and still counts goes into `r`.
    fn begin_round(&mut self, _r: &mut RoundResult) {}

    /// Sends one probe of `size` bytes (`EMSGSIZE`: the local stack refuses the size).
    fn send(&mut self, size: u16, opts: &SearchOptions, r: &mut RoundResult)
    -> std::io::Result<()>;

    /// Waits until something about this round's probes arrives, or until `until`, and records
    /// it in `r`.
    async fn wait(&mut self, r: &mut RoundResult, until: Instant) -> Result<Heard>;

    /// How long the round must wait at least for probes not judged yet (TCP: a connection that
    /// got through its handshake late gets its fair time); `None`: no such probe.
    fn pending_until(&self, _r: &RoundResult) -> Option<Instant> {
        None
    }

    /// The round ends: what is still unanswered is settled in `r` (TCP: untested sizes).
    fn end_round(&mut self, _planned: &BTreeSet<u16>, _r: &mut RoundResult) {}
}

/// One round: every size in `sizes`, in that order, sent `1 + opts.retries` times; answers are
/// collected until all are in or the round ends (see the module docs).
pub(crate) async fn round<P: Prober>(
    p: &mut P,
    sizes: &[u16],
    opts: &SearchOptions,
    limiter: &mut RateLimiter,
    st: &mut Stats,
) -> Result<RoundResult> {
    st.rounds += 1;
    let mut r = RoundResult::default();
    p.begin_round(&mut r);
    for _ in 0..=opts.retries {
        for &size in sizes {
            limiter.acquire().await;
            match p.send(size, opts, &mut r) {
                Ok(()) => st.probes_sent += 1,
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    tracing::debug!(size, "the local stack refuses this size (EMSGSIZE)");
                    r.refused.insert(size);
                }
                Err(e) => tracing::debug!(size, error = %e, "sending a probe failed"),
            }
        }
    }
    let planned: BTreeSet<u16> = sizes.iter().copied().collect();
    let sent_done = Instant::now();
    let hard = sent_done + opts.round_timeout;
    let mut deadline = hard;
    loop {
        if planned
            .iter()
            .all(|s| r.answered.contains(s) || r.refused.contains(s))
        {
            break;
        }
        let until = p
            .pending_until(&r)
            .map_or(deadline, |t| deadline.max(t.min(hard)));
        if Instant::now() >= until {
            break;
        }
        match p.wait(&mut r, until).await? {
            Heard::Progress(Some(rtt)) => {
                deadline = deadline.min(early_deadline(sent_done, rtt, hard));
            }
            Heard::Progress(None) => {}
            Heard::Done => break,
        }
    }
    p.end_round(&planned, &mut r);
    Ok(r)
}

/// The search loop shared by both transports. Returns the MTU found (bytes) and whether it is
/// the one an ICMP error named, or `None` when nothing at all was answered.
pub(crate) async fn run_search<P: Prober>(
    p: &mut P,
    b: &Bounds,
    opts: &SearchOptions,
    limiter: &mut RateLimiter,
    st: &mut Stats,
) -> Result<Option<(u16, bool)>> {
    // Invariant: every size <= good passed; every size >= bad was judged too big. `suspect`
    // (between them) stayed unanswered while a smaller size of the same round passed; it is sent
    // again, first, in the next round, and judged too big only when it fails there again while
    // a smaller size passes: plain loss or a policer never lowers the result.
    let mut good: Option<u16> = None;
    let mut bad: u32 = u32::from(b.upper) + 1;
    let mut suspect: Option<u16> = None;
    let mut hint: Option<u16> = None;
    let mut silent = 0u32;
    // How crowded the service is (up with every round that left sizes untested, down with
    // every round that did not): each step halves the probes of a round. And the rounds in a
    // row, and in all, that passed nothing while leaving sizes untested.
    let mut crowded = 0u32;
    let mut stalled = 0u32;
    let mut stalled_total = 0u32;
    let mut judged = 0u32;
    while judged < MAX_ROUNDS {
        if let Some(g) = good
            && u32::from(g) + 1 >= bad
        {
            return Ok(Some((g, hint == Some(g))));
        }
        let control = good.unwrap_or(b.lower);
        let top = suspect.map_or(bad, u32::from);
        // Fewer probes at once while the service cannot take them all.
        let per_round = (p.sizes_per_round() >> crowded.min(8)).max(2);
        let n = per_round - usize::from(suspect.is_some());
        let spread = if crowded == 0 {
            Spread::ToTop
        } else {
            Spread::Inside
        };
        let mut sizes = plan_round(control, top, n, spread);
        sizes.extend(suspect);
        let sizes = largest_first(sizes);
        let r = round(p, &sizes, opts, limiter, st).await?;
        if let Some(h) = r.mtu_hint
            && h >= b.lower
            && u32::from(h) < bad
        {
            tracing::debug!(mtu = h, "an ICMP error named the path MTU");
            hint = Some(h);
            bad = u32::from(h) + 1;
        }
        for &s in &r.refused {
            if good.is_none_or(|g| s > g) {
                bad = bad.min(u32::from(s));
            }
        }
        suspect = suspect.filter(|&s| u32::from(s) < bad);
        crowded = if r.untested.is_empty() {
            crowded.saturating_sub(1)
        } else {
            (crowded + 1).min(8)
        };
        // The service took a connection, now or in an earlier round.
        let alive = good.is_some()
            || sizes
                .iter()
                .any(|s| !r.untested.contains(s) && !r.refused.contains(s));
        if r.answered.is_empty() && !r.untested.is_empty() && alive {
            // The service is there, and this round nothing passed while some sizes (the
            // smaller ones, sent last) were never tested (a busy service's full accept queue):
            // no evidence either way. Give the service time to drain, then try again with
            // fewer probes at once.
            stalled += 1;
            stalled_total += 1;
            if stalled_total > MAX_STALLED_ROUNDS {
                // Stopping here with `good` would report a size that may be too low.
                tracing::info!(
                    good,
                    "the service took too few probe connections to finish the search"
                );
                return Ok(None);
            }
            tracing::debug!(stalled, "no probe of this round was tested; waiting");
            tokio::time::sleep(opts.round_timeout * stalled).await;
            continue;
        }
        stalled = 0;
        judged += 1;
        let Some(&max) = r.answered.iter().next_back() else {
            silent += 1;
            if silent > opts.retries {
                // Keep what earlier rounds proved (conservative), else report nothing.
                return Ok(good.map(|g| (g, hint == Some(g))));
            }
            continue;
        };
        silent = 0;
        if good.is_none_or(|g| max > g) {
            good = Some(max);
        }
        let g = good.unwrap_or(max);
        if u32::from(g) >= bad {
            // A size judged too big passed after all (it was loss): search above it again.
            bad = u32::from(b.upper) + 1;
            if hint.is_some_and(|h| h < g) {
                hint = None;
            }
        }
        // Still a suspect: it was not tested this round (TCP: no handshake completed).
        let mut kept = None;
        if let Some(s) = suspect.take()
            && max < s
        {
            if r.untested.contains(&s) {
                kept = Some(s);
            } else {
                // Sent first, tested, unanswered again, while a smaller size passed: too big.
                bad = bad.min(u32::from(s));
            }
        }
        suspect = sizes
            .iter()
            .copied()
            .filter(|&s| {
                s > max
                    && !r.answered.contains(&s)
                    && !r.untested.contains(&s)
                    && u32::from(s) < bad
            })
            .chain(kept)
            .min();
    }
    // Only a path whose answers keep contradicting each other gets here.
    tracing::warn!(
        rounds = MAX_ROUNDS,
        "search did not converge; keeping the largest size that passed"
    );
    Ok(good.map(|g| (g, hint == Some(g))))
}

/// Safety stop for one method's search (rounds that tested something); a normal search needs at
/// most 4 (+ repeats).
const MAX_ROUNDS: u32 = 24;
/// Rounds of a search that may pass nothing while leaving sizes untested (TCP connections the
/// service did not take) after the target answered. Each is followed by a pause of as many
/// round timeouts as such rounds came in a row; after the last the search reports nothing
/// rather than a size that may be too low.
const MAX_STALLED_ROUNDS: u32 = 12;

/// The order in which a round sends its sizes: largest first. A target or router that polices
/// echo replies (or TCP connections) to a few per second answers the first few of a burst and
/// drops the rest; sent largest first, what it answers are the largest sizes that pass, and the
/// sizes it drops are smaller than one that passed, so they are never judged too big.
fn largest_first(mut sizes: Vec<u16>) -> Vec<u16> {
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

/// Where a round puts its sizes in the unknown range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spread {
    /// Gaps as even as possible, always including `bad - 1`: many paths carry all the device
    /// does, and one round then settles it.
    ToTop,
    /// Equal parts (one size: the middle), without `bad - 1` unless it is all that is unknown:
    /// when few probes get through, each must halve what is unknown.
    Inside,
}

/// Sizes of one round: `control` (known or assumed to pass) first, then up to `n - 1` sizes in
/// `(control, bad)` placed as `spread` says.
pub(crate) fn plan_round(control: u16, bad: u32, n: usize, spread: Spread) -> Vec<u16> {
    let c = u32::from(control);
    let mut out = vec![control];
    if bad <= c + 1 {
        return out;
    }
    let unknown = bad - c - 1; // c+1 ..= bad-1
    let k = unknown.min(n.saturating_sub(1).max(1) as u32);
    match spread {
        Spread::ToTop => {
            let rest = unknown - k; // unknown values left unprobed, spread over k gaps
            let mut x = c;
            for i in 0..k {
                let gap = rest / k + u32::from(i < rest % k);
                x += gap + 1;
                out.push(x as u16);
            }
            debug_assert_eq!(x, bad - 1);
        }
        Spread::Inside => {
            out.extend((1..=k).map(|i| (c + (i * (unknown + 1)).div_ceil(k + 1)) as u16));
            out.dedup();
        }
    }
    out
}

/// Token bucket for probe packets: `rate` per second, bursts of up to `rate`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Waits until one probe may be sent.
    pub async fn acquire(&mut self) {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.rate);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// When a round that started sending at `sent_done` should stop waiting, given the first round
/// trip observed in it.
pub(crate) fn early_deadline(sent_done: Instant, rtt: Duration, hard: Instant) -> Instant {
    (sent_done + rtt * 2 + Duration::from_millis(15)).min(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path with MTU `mtu`, losing the `n`-th probes listed in `lose`, optionally naming its
    /// MTU in ICMP errors, optionally answering only the first `answers_per_round` probes of a
    /// round that cross the path (a target that polices its echo replies).
    struct Sim {
        mtu: u16,
        lose: Vec<u32>,
        sent: u32,
        icmp_errors: bool,
        dead: bool,
        answers_per_round: Option<u32>,
        /// Connections each round's handshakes get through, by round (cycled; empty: all),
        /// like a service's accept queue filling up: the others test nothing (`untested`).
        accept_queue: Vec<u32>,
        rounds_seen: usize,
        /// This round's state: answers the target still gives, connections the queue still
        /// takes, sizes tested.
        answers_left: u32,
        queue: u32,
        tested: BTreeSet<u16>,
    }

    impl Prober for Sim {
        fn begin_round(&mut self, _r: &mut RoundResult) {
            self.answers_left = self.answers_per_round.unwrap_or(u32::MAX);
            self.queue = match self.accept_queue.len() {
                0 => u32::MAX,
                n => self.accept_queue[self.rounds_seen % n],
            };
            self.rounds_seen += 1;
            self.tested.clear();
        }

        fn send(&mut self, s: u16, _: &SearchOptions, r: &mut RoundResult) -> std::io::Result<()> {
            self.sent += 1;
            if self.dead || self.lose.contains(&self.sent) || self.queue == 0 {
                return Ok(());
            }
            self.queue -= 1;
            self.tested.insert(s);
            if s > self.mtu {
                if self.icmp_errors {
                    r.mtu_hint = Some(self.mtu);
                }
            } else if self.answers_left > 0 {
                self.answers_left -= 1;
                r.answered.insert(s);
            }
            Ok(())
        }

        async fn wait(&mut self, _: &mut RoundResult, _: Instant) -> Result<Heard> {
            Ok(Heard::Done)
        }

        fn end_round(&mut self, planned: &BTreeSet<u16>, r: &mut RoundResult) {
            if !self.accept_queue.is_empty() {
                r.untested = planned
                    .iter()
                    .copied()
                    .filter(|s| !self.tested.contains(s))
                    .collect();
            }
        }
    }

    fn sim(mtu: u16, lose: Vec<u32>, icmp_errors: bool) -> Sim {
        Sim {
            mtu,
            lose,
            sent: 0,
            icmp_errors,
            dead: false,
            answers_per_round: None,
            accept_queue: Vec::new(),
            rounds_seen: 0,
            answers_left: 0,
            queue: 0,
            tested: BTreeSet::new(),
        }
    }

    fn run(p: &mut Sim, lower: u16, upper: u16, retries: u32) -> (Option<(u16, bool)>, Stats) {
        let b = Bounds {
            lower,
            upper,
            iface: "eth0".into(),
            bind: None,
            source: None,
        };
        let opts = SearchOptions {
            retries,
            // The simulated path answers at once; this is only the pause after a round that
            // tested nothing.
            round_timeout: Duration::from_millis(1),
            ..SearchOptions::default()
        };
        let mut st = Stats::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut lim = RateLimiter::new(1_000_000);
        let r = rt
            .block_on(run_search(p, &b, &opts, &mut lim, &mut st))
            .unwrap();
        (r, st)
    }

    #[test]
    fn a_crowded_round_halves_the_unknown_range() {
        assert_eq!(plan_round(1000, 1501, 2, Spread::Inside), [1000, 1251]);
        assert_eq!(
            plan_round(1000, 1501, 4, Spread::Inside),
            [1000, 1126, 1251, 1376]
        );
        assert_eq!(plan_round(1000, 1002, 2, Spread::Inside), [1000, 1001]);
        assert_eq!(plan_round(1000, 1001, 2, Spread::Inside), [1000]);
        assert_eq!(
            plan_round(1000, 1003, 4, Spread::Inside),
            [1000, 1001, 1002]
        );
    }

    #[test]
    fn plan_includes_control_and_top_and_spreads_evenly() {
        let s = plan_round(552, 1501, 16, Spread::ToTop);
        assert_eq!(s.len(), 16);
        assert_eq!(s[0], 552);
        assert_eq!(*s.last().unwrap(), 1500);
        let gaps: Vec<u16> = s.windows(2).map(|w| w[1] - w[0] - 1).collect();
        let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(max - min <= 1, "{gaps:?}");
        assert_eq!(plan_round(1372, 1373, 16, Spread::ToTop), vec![1372]);
        assert_eq!(
            plan_round(1370, 1374, 16, Spread::ToTop),
            vec![1370, 1371, 1372, 1373]
        );
    }

    #[test]
    fn every_ipv4_mtu_is_found_exactly_in_at_most_four_rounds() {
        for mtu in 552..=1500 {
            let (r, st) = run(&mut sim(mtu, vec![], false), 552, 1500, 1);
            assert_eq!(r, Some((mtu, false)), "mtu {mtu}");
            assert!(st.rounds <= 4, "mtu {mtu}: {} rounds", st.rounds);
        }
        let (_, st) = run(&mut sim(1500, vec![], false), 552, 1500, 1);
        assert_eq!(st.rounds, 1);
    }

    #[test]
    fn every_ipv6_mtu_is_found_exactly_in_at_most_three_rounds() {
        for mtu in 1280..=1500 {
            let (r, st) = run(&mut sim(mtu, vec![], false), 1280, 1500, 1);
            assert_eq!(r, Some((mtu, false)));
            assert!(st.rounds <= 3, "mtu {mtu}: {} rounds", st.rounds);
        }
    }

    #[test]
    fn a_target_that_answers_a_few_probes_a_round_is_measured_exactly() {
        for per_round in [1, 3, 5, 10] {
            for mtu in [552, 553, 1000, 1280, 1372, 1499, 1500] {
                let mut p = sim(mtu, vec![], false);
                p.answers_per_round = Some(per_round);
                let (r, _) = run(&mut p, 552, 1500, 1);
                assert_eq!(r, Some((mtu, false)), "mtu {mtu}, {per_round} a round");
            }
        }
    }

    #[test]
    fn sizes_whose_connections_never_got_through_the_handshake_are_not_judged() {
        // TCP to a service whose accept queue takes this many connections a round (of the
        // sizes x 2 copies sent, largest first): the rest test nothing and must not count as too
        // big. A queue that lets some connections through every few rounds is measured exactly;
        // one that lets only the largest (too big) size through most rounds may leave the search
        // without a result, never with one too low.
        for (queue, exact) in [
            (vec![8], true),
            (vec![6], true),
            (vec![5, 2], true),
            (vec![3, 8, 1], false),
        ] {
            for mtu in [552, 1000, 1372, 1499, 1500] {
                let mut p = sim(mtu, vec![], false);
                p.accept_queue = queue.clone();
                let (r, _) = run(&mut p, 552, 1500, 1);
                let want = Some((mtu, false));
                assert!(
                    r == want || (!exact && r.is_none()),
                    "mtu {mtu}, accept queue {queue:?}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn a_size_whose_every_copy_is_lost_is_sent_again_not_judged_too_big() {
        // Round 1 sends 16 sizes largest first, twice: probes 1 and 17 are both copies of 1500.
        let (r, st) = run(&mut sim(1500, vec![1, 17], false), 552, 1500, 1);
        assert_eq!(r, Some((1500, false)));
        assert_eq!(st.rounds, 2, "1500 sent again, first, in round 2");
    }

    #[test]
    fn a_single_lost_copy_does_not_change_the_result() {
        // 16 sizes x 2 copies per round: lose each probe of the first two rounds in turn.
        for lost in 1..=64 {
            let (r, _) = run(&mut sim(1372, vec![lost], false), 552, 1500, 1);
            assert_eq!(r, Some((1372, false)), "lost probe #{lost}");
        }
    }

    #[test]
    fn a_lost_round_is_repeated() {
        let (r, st) = run(&mut sim(1000, (1..=32).collect(), false), 552, 1500, 1);
        assert_eq!(r, Some((1000, false)));
        assert_eq!(st.rounds, 4);
    }

    #[test]
    fn icmp_errors_are_used_at_once() {
        let (r, st) = run(&mut sim(1372, vec![], true), 552, 1500, 1);
        assert_eq!(r, Some((1372, true)));
        assert!(st.rounds <= 2);
    }

    fn check(p: &mut Sim, mtu: u16, lower: u16) -> TcpCheck {
        let b = Bounds {
            lower,
            upper: 1500,
            iface: "eth0".into(),
            bind: None,
            source: None,
        };
        let opts = SearchOptions::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut lim = RateLimiter::new(1_000_000);
        rt.block_on(check_with_tcp(
            p,
            mtu,
            &b,
            &opts,
            &mut lim,
            &mut Stats::default(),
        ))
        .unwrap()
    }

    #[test]
    fn tcp_checks_an_icmp_result_and_finds_what_tcp_carries_below_it() {
        assert!(matches!(
            check(&mut sim(1500, vec![], false), 1372, 552),
            TcpCheck::Carries
        ));
        assert!(matches!(
            check(&mut sim(1372, vec![], false), 1372, 552),
            TcpCheck::Carries
        ));
        for tcp in [552, 1000, 1257, 1371] {
            assert!(
                matches!(check(&mut sim(tcp, vec![], false), 1372, 552), TcpCheck::CarriesOnly(t) if t == tcp),
                "tcp {tcp}"
            );
        }
        let mut dead = sim(1257, vec![], false);
        dead.dead = true;
        assert!(matches!(check(&mut dead, 1372, 552), TcpCheck::Untestable));
        // Below the floor TCP tells nothing the clamp could use.
        assert!(matches!(
            check(&mut sim(500, vec![], false), 1372, 552),
            TcpCheck::Untestable
        ));
        // Both copies of the checked size lost in the first round (2 sizes x 2 copies): loss,
        // not a narrower path.
        assert!(matches!(
            check(&mut sim(1500, vec![1, 3], false), 1372, 552),
            TcpCheck::Carries
        ));
    }

    #[test]
    fn silence_is_unreachable_not_a_small_mtu() {
        let mut p = sim(1372, vec![], false);
        p.dead = true;
        let (r, st) = run(&mut p, 552, 1500, 1);
        assert_eq!(r, None);
        assert_eq!(st.rounds, 2);
        // A path narrower than the floor is not reported below the floor.
        let (r, _) = run(&mut sim(500, vec![], false), 552, 1500, 1);
        assert_eq!(r, None);
        // An ICMP error naming an MTU below the floor is ignored.
        let (r, _) = run(&mut sim(500, vec![], true), 552, 1500, 1);
        assert_eq!(r, None);
    }
}
