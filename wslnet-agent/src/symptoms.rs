//! Black-hole symptoms as the kernel sees them: local TCP connections that stall.
//!
//! When a path shrinks with nothing visible inside the VM (a Windows VPN connects), the first
//! sign is a connection that stops moving: a download, a TLS handshake or an SSH key exchange
//! sent its request and waits for an answer whose full-sized segments never arrive, or an upload
//! retransmits segments that never get through. The kernel knows both for every socket
//! (`tcp_info`), so the agent asks it, through `sock_diag`, every [`SCAN_INTERVAL`]: a socket
//! that [`Stall::Waiting`], [`Stall::Stopped`] or [`Stall::Retransmitting`] names a destination to
//! re-measure at once, instead of at its next periodic re-check, and (for the first two, whose
//! peer's segments are lost) a connection whose peer can be told so ([`crate::reflect`]).
//!
//! Only the agent's own network namespace is visible: connections forwarded for containers are
//! covered by the first-contact clamp, not by this.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr as IpSocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// How often the sockets are looked at.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// A stalled connection's kind of stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stall {
    /// It sent data, the peer acknowledged it, and no answer (or no full-sized segment of it)
    /// has come back for longer than the threshold: the answer's full-sized segments are lost
    /// on the way to us.
    Waiting,
    /// It was receiving and stopped in mid-stream: nothing for longer than the threshold, after
    /// data that arrived within the last moment before it (a download running when the path
    /// shrank). A connection that simply goes idle looks the same, once: this kind only
    /// re-measures, it never tells the peer anything by itself.
    Stopped,
    /// Its retransmission timer fired and nothing was acknowledged since: its own segments are
    /// lost on the way out.
    Retransmitting,
}

impl Stall {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Stall::Waiting => "waiting",
            Stall::Stopped => "stopped",
            Stall::Retransmitting => "retransmitting",
        }
    }

    /// True when the stall itself is reason to tell the peer its segments are too big (an
    /// unanswered request); the others wait for a re-measurement to find the path narrower.
    pub fn tells_the_peer(self) -> bool {
        self == Stall::Waiting
    }
}

/// Why a destination is re-measured ahead of its periodic re-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A local connection to it stalled.
    Stall(Stall),
    /// Another destination measured through the same interface was just found narrower: one
    /// tunnel usually carries them all, so their paths likely shrank together.
    Sibling,
}

impl Trigger {
    /// Every trigger, for metrics that list them all from the start.
    pub const ALL: [Trigger; 4] = [
        Trigger::Stall(Stall::Waiting),
        Trigger::Stall(Stall::Stopped),
        Trigger::Stall(Stall::Retransmitting),
        Trigger::Sibling,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Stall(s) => s.label(),
            Trigger::Sibling => "sibling",
        }
    }
}

/// One established TCP connection of this network namespace, as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Our end.
    pub local: IpSocketAddr,
    /// The peer's end.
    pub peer: IpSocketAddr,
    /// Bytes received in order (`tcpi_bytes_received`): with the peer's initial sequence number,
    /// our acknowledgement.
    pub bytes_received: u64,
}

/// One stalled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// The connection.
    pub flow: Flow,
    /// How it stalls.
    pub kind: Stall,
}

/// What one socket looked like to `sock_diag`.
struct Conn {
    inode: u32,
    flow: Flow,
    info: netlink_packet_sock_diag::inet::nlas::TcpInfo,
}

/// Finds stalled connections and reports each stall once (a socket that sends or receives
/// again and stalls again is a new stall).
pub struct Watcher {
    /// Milliseconds a connection may wait for an answer before it counts as stalled.
    stall_after_ms: u32,
    /// Stalls already reported, by socket inode: their kind and when the data they stalled
    /// after left or arrived.
    reported: HashMap<u32, (Stall, Instant)>,
    /// TCP segments in and out of this namespace at the last look (`/proc/net/snmp`).
    segments: Option<(u64, u64)>,
    /// Until when a stall can still show: segments moved less than the threshold and two scans
    /// before it.
    active_until: Instant,
}

/// Two stamps of one send, from two scans, differ by less than this (the kernel reports
/// milliseconds since the send, read at slightly different moments).
const SAME_SEND: Duration = Duration::from_millis(100);

impl Watcher {
    /// A watcher that counts a connection waiting longer than `stall_after` as stalled.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after_ms: stall_after.as_millis().min(u128::from(u32::MAX)) as u32,
            reported: HashMap::new(),
            segments: None,
            active_until: Instant::now(),
        }
    }

    /// True when a stall can show now: TCP segments moved in this namespace within the
    /// threshold and two scans (a connection stalls after its last segment, and shows it one
    /// threshold later), or the last scan still saw one. A dump walks the kernel's whole
    /// established-connection table (about 1.5 ms per family on a 24 GB machine, whatever the
    /// number of connections): an idle agent must not pay it twice a second.
    fn worth_a_look(&mut self, now: Instant) -> bool {
        let segments = tcp_segments();
        if segments.is_none() || segments != self.segments || !self.reported.is_empty() {
            let window = Duration::from_millis(self.stall_after_ms.into()) + 2 * SCAN_INTERVAL;
            self.active_until = now + window;
        }
        self.segments = segments;
        now <= self.active_until
    }

    /// Looks at every TCP socket of this network namespace (blocking: a netlink dump per
    /// family) and returns the stalls not reported before.
    pub fn scan(&mut self) -> Result<Vec<Stalled>> {
        let now = Instant::now();
        if !self.worth_a_look(now) {
            return Ok(Vec::new());
        }
        let mut fresh = Vec::new();
        let mut still = HashMap::new();
        for c in established()? {
            let Some(kind) = stall_of(&c.info, self.stall_after_ms) else {
                continue;
            };
            let ago = if kind == Stall::Stopped {
                c.info.last_data_recv
            } else {
                c.info.last_data_sent
            };
            let at = now
                .checked_sub(Duration::from_millis(ago.into()))
                .unwrap_or(now);
            let known = self
                .reported
                .get(&c.inode)
                .is_some_and(|&(k, seen)| k == kind && seen.max(at) - seen.min(at) < SAME_SEND);
            if !known {
                fresh.push(Stalled { flow: c.flow, kind });
            }
            still.insert(c.inode, (kind, at));
        }
        self.reported = still;
        Ok(fresh)
    }
}

/// The established TCP connections of this network namespace to `peer` (blocking).
pub fn connections_to(peer: IpAddr) -> Result<Vec<Flow>> {
    Ok(established()?
        .into_iter()
        .filter(|c| c.flow.peer.ip() == peer)
        .map(|c| c.flow)
        .collect())
}

/// Bytes a connection may have received in small segments and still count as waiting for its
/// first full-sized one: an HTTP response header or a TLS alert fits, a small-message protocol
/// that has been talking for a while does not.
const WAITING_MAX_RECEIVED: u64 = 16 * 1024;

/// How recently a connection must have been receiving, beyond the threshold, to count as
/// [`Stall::Stopped`] (milliseconds): two scans, so that no stop is missed between them.
const STOPPED_WITHIN_MS: u32 = 2 * SCAN_INTERVAL.as_millis() as u32;

/// Most bytes of TCP options in a segment: a segment that much short of `advmss` is still
/// full-sized.
const TCP_MAX_OPTIONS: u32 = 40;

/// `TCP_ESTABLISHED` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// TCP segments received and sent in this network namespace (`InSegs`, `OutSegs` of
/// `/proc/net/snmp`); `None` when unreadable (then every scan dumps).
fn tcp_segments() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let field = |name: &str| {
        let at = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(at)?.parse().ok()
    };
    Some((field("InSegs")?, field("OutSegs")?))
}

/// Every established TCP connection of this network namespace, both families (blocking).
fn established() -> Result<Vec<Conn>> {
    let mut all = Vec::new();
    for family in [AF_INET, AF_INET6] {
        all.extend(dump(family)?);
    }
    Ok(all)
}

/// Dumps the established TCP sockets of `family` with their `tcp_info`.
fn dump(family: u8) -> Result<Vec<Conn>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::ESTABLISHED,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .context("reading the sock_diag answer")?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                .context("parsing the sock_diag answer")?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    // Only established connections are asked for; some kernels list more.
                    let info = r.nlas.iter().find_map(|nla| match nla {
                        Nla::TcpInfo(i) => Some(i.clone()),
                        _ => None,
                    });
                    if r.header.state == TCP_ESTABLISHED
                        && let Some(info) = info
                    {
                        let id = &r.header.socket_id;
                        out.push(Conn {
                            inode: r.header.inode,
                            flow: Flow {
                                local: IpSocketAddr::new(id.source_address, id.source_port),
                                peer: IpSocketAddr::new(
                                    id.destination_address,
                                    id.destination_port,
                                ),
                                bytes_received: info.bytes_received,
                            },
                            info,
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => bail!("sock_diag: {e}"),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The stall a socket's `tcp_info` shows, if any.
fn stall_of(
    i: &netlink_packet_sock_diag::inet::nlas::TcpInfo,
    stall_after_ms: u32,
) -> Option<Stall> {
    if i.retransmits > 0 {
        return Some(Stall::Retransmitting);
    }
    // Sent data (beyond the SYN, which counts one), all of it acknowledged, and silence both
    // ways for long enough, while either
    // - what we sent is the latest data, unanswered (a request: HTTP, TLS ClientHello, SSH's
    //   key exchange). The stamps count jiffies, so a request sent in the tick the handshake
    //   completed has the handshake's stamp; it is then unanswered if nothing came at all;
    // - or the answer began with small segments (an HTTP header) and no full-sized segment ever
    //   arrived (`rcv_mss`, the largest segment seen, short of `advmss`, what we allow, by more
    //   than TCP options can take), with little received: the full-sized ones are lost on the
    //   way.
    let silent = i.bytes_acked > 1
        && i.unacked == 0
        && i.last_data_sent.min(i.last_data_recv) >= stall_after_ms;
    let unanswered = i.last_data_sent < i.last_data_recv
        || (i.last_data_sent == i.last_data_recv && i.bytes_received == 0);
    let no_full_segment =
        i.rcv_mss + TCP_MAX_OPTIONS < i.advmss && i.bytes_received < WAITING_MAX_RECEIVED;
    if silent && (unanswered || no_full_segment) {
        return Some(Stall::Waiting);
    }
    // Receiving, then nothing: data was arriving until just before the threshold, and we sent
    // nothing since. (An idle connection looks the same once; it costs one re-check.)
    let stopped = i.bytes_received > 0
        && i.last_data_recv >= stall_after_ms
        && i.last_data_recv < stall_after_ms + STOPPED_WITHIN_MS
        && i.last_data_sent > i.last_data_recv;
    stopped.then_some(Stall::Stopped)
}
