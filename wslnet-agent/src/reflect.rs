//! Rescue for packets the clamp cannot shape: the ICMP errors a router on the path would have
//! sent.
//!
//! A connection that was running when its path shrank, or a UDP sender with DF, keeps sending
//! packets the path drops, and the "fragmentation needed" / "packet too big" that would lower
//! its path MTU never comes back. The datapath drops such a packet on egress when its
//! destination has a clamp entry (`oversize` in `wslnet-ebpf`) and hands its first bytes to the
//! agent through the `WSLNET_REFLECT` ring; [`Reflector`] answers with the error a router would
//! have sent, naming the entry's MTU and quoting the packet, and delivers it to the local stack
//! (a raw socket to the packet's source, which is local): `tcp_v4_err` / `tcp_v6_err` find the
//! socket by the quoted header (its sequence number is in flight, so the window check passes),
//! lower the path MTU and retransmit smaller; UDP senders get `EMSGSIZE`. A packet forwarded for
//! a container behind the VM's own NAT left with the VM's address as its source: the error is
//! addressed to that, and conntrack recognises it as related to the masqueraded connection and
//! translates it back to the container, as it does for errors arriving from the network.
//!
//! A download running when the path shrank is the mirror image: the peer's segments are the
//! ones lost. The path-MTU manager tells the peer ([`peer_error`], [`ErrorKind::Peer`]) when a
//! re-measurement finds the path narrower, for every connection to that destination, and when a
//! connection's request stays unanswered ([`crate::symptoms::Stall::Waiting`]).
//!
//! Errors are rate-limited per destination of the dropped packet
//! ([`crate::config::Config::reflect_per_sec`]); one error per destination is enough to lower its
//! path MTU for every socket, so the limit costs nothing but repeated answers.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};
use wslnet_common::{FAMILY_V4, FAMILY_V6, ReflectEvent, map_names};

use crate::{config::Config, metrics::Metrics, shared::Shared};

/// Who an ICMP error goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The local stack, for a packet the datapath dropped.
    Local,
    /// The peer of a local connection whose segments are too big for the path to us.
    Peer,
}

impl ErrorKind {
    /// Every kind, for metrics that list them all from the start.
    pub const ALL: [ErrorKind; 2] = [ErrorKind::Local, ErrorKind::Peer];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Local => "local",
            ErrorKind::Peer => "peer",
        }
    }
}

/// ICMP type "destination unreachable" (RFC 792).
const ICMP_DEST_UNREACH: u8 = 3;
/// Its code "fragmentation needed and DF set".
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 type "packet too big" (RFC 4443).
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// IP protocol numbers.
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_TCP: u8 = 6;
/// Bytes of transport header an IPv4 error quotes after the IP header (RFC 792): the ports and
/// the sequence number, all a stack needs to find the socket.
const V4_QUOTED_TRANSPORT: usize = 8;
/// Hop limit / TTL of the errors: they only travel from the agent to its own stack (or to a
/// container behind it).
const TTL: u8 = 64;
/// DSCP CS6 (network control), as routers mark their ICMP errors.
const TOS_NETWORK_CONTROL: u8 = 0xc0;

/// An ICMP error ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpError {
    /// Where it goes: the dropped packet's source.
    pub to: IpAddr,
    /// The dropped packet's destination, whose path it is about.
    pub about: IpAddr,
    /// The whole IP packet (header included).
    pub packet: Vec<u8>,
}

/// The error a router with next-hop MTU `mtu` sends for the packet whose first bytes are
/// `quote` (from its IP header on, `quote_len` of them real): IPv4 "fragmentation needed" quoting
/// the IP header and 8 bytes, IPv6 "packet too big" quoting all of `quote`. Its source is the
/// dropped packet's destination; `None` when `quote` is not a whole IP header of `family`.
pub fn icmp_error(family: u32, quote: &[u8], mtu: u16) -> Option<IcmpError> {
    match family {
        FAMILY_V4 => {
            let ihl = usize::from(*quote.first()? & 0x0f) * 4;
            if quote[0] >> 4 != 4 || ihl < 20 {
                return None;
            }
            let quoted = quote.get(..ihl + V4_QUOTED_TRANSPORT)?;
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&quote[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&quote[16..20]).ok()?);
            let mut icmp = vec![ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0];
            icmp.extend_from_slice(&mtu.to_be_bytes());
            icmp.extend_from_slice(quoted);
            let sum = crate::checksum::internet(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let total = (20 + icmp.len()) as u16;
            let mut ip = ipv4_header(TOS_NETWORK_CONTROL, total, false, IPPROTO_ICMP, dst, src);
            ip.extend_from_slice(&icmp);
            Some(IcmpError {
                to: src.into(),
                about: dst.into(),
                packet: ip,
            })
        }
        FAMILY_V6 => {
            if quote.len() < 40 || quote[0] >> 4 != 6 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&quote[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&quote[24..40]).ok()?);
            let mut icmp = vec![ICMPV6_PKT_TOOBIG, 0, 0, 0];
            icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
            icmp.extend_from_slice(quote);
            // Summed over the pseudo-header (RFC 8200 8.1: source, destination, length, next
            // header) and the message.
            let mut summed = Vec::with_capacity(40 + icmp.len());
            summed.extend_from_slice(&dst.octets());
            summed.extend_from_slice(&src.octets());
            summed.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            summed.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
            summed.extend_from_slice(&icmp);
            let sum = crate::checksum::internet(&summed);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut ip = ipv6_header(icmp.len() as u16, IPPROTO_ICMPV6, dst, src);
            ip.extend_from_slice(&icmp);
            Some(IcmpError {
                to: src.into(),
                about: dst.into(),
                packet: ip,
            })
        }
        _ => None,
    }
}

/// The error telling `flow`'s peer that the path to us carries `mtu`, as a router between us
/// would send it: quoting a segment of the peer's (source the peer, destination us, the two
/// ports) whose sequence number is our acknowledgement, `isn + 1 + bytes_received`. That is the
/// peer's `snd_una` once our latest ACK arrived, inside `snd_una..=snd_nxt` either way, so
/// Linux's `tcp_v4_err` / `tcp_v6_err` accept it, lower the path MTU and retransmit smaller.
/// `None` for an IPv6 MTU below 1280 (ignored by every stack) or a flow mixing families.
pub fn peer_error(flow: &crate::symptoms::Flow, isn: u32, mtu: u16) -> Option<IcmpError> {
    let seq = isn.wrapping_add(1).wrapping_add(flow.bytes_received as u32);
    let mut tcp = Vec::with_capacity(8);
    tcp.extend_from_slice(&flow.peer.port().to_be_bytes());
    tcp.extend_from_slice(&flow.local.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    // The quoted segment is one byte larger than the path: the size a router would have dropped.
    let size = mtu.saturating_add(1);
    let (family, mut quote) = match (flow.peer.ip(), flow.local.ip()) {
        (IpAddr::V4(peer), IpAddr::V4(local)) => (
            FAMILY_V4,
            ipv4_header(0, size, true, IPPROTO_TCP, peer, local),
        ),
        (IpAddr::V6(peer), IpAddr::V6(local)) => {
            if mtu < wslnet_common::MIN_PATH_MTU_V6 {
                return None;
            }
            (FAMILY_V6, ipv6_header(size - 40, IPPROTO_TCP, peer, local))
        }
        _ => return None,
    };
    quote.extend_from_slice(&tcp);
    icmp_error(family, &quote, mtu)
}

/// An IPv4 header without options (20 bytes, TTL [`TTL`], checksum filled in) of a packet of
/// `total` bytes; `df` sets "don't fragment".
fn ipv4_header(
    tos: u8,
    total: u16,
    df: bool,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let flags = if df { 0x40 } else { 0 };
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, flags, 0, TTL, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = crate::checksum::internet(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// An IPv6 header (40 bytes, hop limit [`TTL`]) of a packet with `payload_len` bytes after it.
fn ipv6_header(payload_len: u16, next_header: u8, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&payload_len.to_be_bytes());
    ip.extend_from_slice(&[next_header, TTL]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip
}

/// A token bucket per destination: `per_sec` errors a second, as many at once.
struct Limiter {
    per_sec: u32,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// Destinations whose buckets are kept; beyond this, full buckets are forgotten.
const MAX_BUCKETS: usize = 4096;

impl Limiter {
    fn allow(&mut self, about: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.per_sec);
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&about) {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = self.buckets.entry(about).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sends ICMP errors of one [`ErrorKind`], rate-limited per destination they are about.
pub struct Sender {
    kind: ErrorKind,
    shared: Arc<Shared>,
    limiter: Limiter,
    v4: Socket,
    v6: Socket,
}

impl Sender {
    /// Raw sockets that send whole IP packets (`IPPROTO_RAW`: the header is ours), and a limit
    /// of `per_sec` errors a second per destination.
    pub fn new(kind: ErrorKind, shared: Arc<Shared>, per_sec: u32) -> Result<Self> {
        let raw = |domain| {
            Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
                .context("opening a raw socket for ICMP errors (needs CAP_NET_RAW)")
        };
        Ok(Self {
            kind,
            shared,
            limiter: Limiter {
                per_sec: per_sec.max(1),
                buckets: HashMap::new(),
            },
            v4: raw(Domain::IPV4)?,
            v6: raw(Domain::IPV6)?,
        })
    }

    /// Sends `err` unless its destination's limit is spent; counts it under `ifindex`.
    pub fn send(&mut self, err: &IcmpError, ifindex: u32) {
        let family = Metrics::family_label(if err.to.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        });
        let m = &self.shared.metrics;
        if !self.limiter.allow(err.about, Instant::now()) {
            m.icmp_errors_limited.with_label_values(&[family]).inc();
            return;
        }
        let sock = if err.to.is_ipv4() { &self.v4 } else { &self.v6 };
        match sock.send_to(&err.packet, &SockAddr::from(SocketAddr::new(err.to, 0))) {
            Ok(_) => {
                let iface = self.shared.interface_name(ifindex);
                m.icmp_errors
                    .with_label_values(&[iface.as_str(), family, self.kind.label()])
                    .inc();
                tracing::debug!(to = %err.to, about = %err.about, kind = self.kind.label(), "ICMP error sent");
            }
            Err(e) => tracing::warn!(to = %err.to, error = %e, "sending an ICMP error"),
        }
    }
}

/// Reads the dropped packets and answers them.
pub struct Reflector(Sender);

impl Reflector {
    /// A reflector sending at most `per_sec` errors a second per destination.
    pub fn new(shared: Arc<Shared>, per_sec: u32) -> Result<Self> {
        Ok(Self(Sender::new(ErrorKind::Local, shared, per_sec)?))
    }

    /// Answers one dropped packet (rate limit permitting).
    pub fn answer(&mut self, ev: &ReflectEvent) {
        let quote = &ev.quote[..(ev.quote_len as usize).min(ev.quote.len())];
        if let Some(err) = icmp_error(ev.family, quote, ev.mtu.min(u32::from(u16::MAX)) as u16) {
            self.0.send(&err, ev.ifindex);
        }
    }
}

/// Starts answering the datapath's dropped packets; `None` (with a warning) when the ring or
/// the raw sockets cannot be had: the drops then go unanswered.
pub fn spawn(shared: Arc<Shared>, cfg: &Config) -> Option<tokio::task::JoinHandle<()>> {
    let ring = crate::maps::open_ring(&cfg.pin_dir, map_names::REFLECT).and_then(|rb| {
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
        // AsyncFd holds it.
        unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the reflection ring: {e}"))
    });
    let reflector = Reflector::new(shared, cfg.reflect_per_sec);
    match (ring, reflector) {
        (Ok(ring), Ok(reflector)) => Some(tokio::spawn(run(ring, reflector))),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "oversize packets will not be answered");
            None
        }
    }
}

async fn run(mut ring: AsyncFd<RingBuf<MapData>>, mut reflector: Reflector) {
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<ReflectEvent>() {
                // SAFETY: the datapath writes whole ReflectEvent values (plain old data, any bit
                // pattern valid); the length was checked just above.
                let ev: ReflectEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                drop(item);
                reflector.answer(&ev);
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_its_rate_per_destination() {
        let mut l = Limiter {
            per_sec: 10,
            buckets: HashMap::new(),
        };
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!((0..100).filter(|_| l.allow(a, t)).count(), 10);
        assert!(l.allow(b, t), "another destination has its own bucket");
        let later = t + std::time::Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| l.allow(a, later)).count(), 5);
    }

    #[test]
    fn a_quote_that_is_not_an_ip_header_is_refused() {
        assert_eq!(icmp_error(FAMILY_V4, &[0x65; 40], 1372), None);
        assert_eq!(
            icmp_error(FAMILY_V4, &[0x45; 20], 1372),
            None,
            "no 8 transport bytes"
        );
        assert_eq!(icmp_error(FAMILY_V6, &[0x60; 39], 1372), None);
        assert_eq!(icmp_error(7, &[0x45; 64], 1372), None);
    }
}
