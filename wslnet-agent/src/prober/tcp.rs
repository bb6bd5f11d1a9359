//! TCP fallback probe, for targets that drop ICMP echo.
//!
//! A probe of `size` bytes is one connection to the target's configured port with
//! `TCP_MAXSEG = size - IP header - 20`, DF set (`IP_PMTUDISC_DO`; IPv6 never fragments in
//! flight): once connected, exactly one full-sized segment of data is written, whose IP packet is
//! `size` bytes (TCP options such as timestamps come out of the MSS). The size passes when the
//! peer acknowledges that data (`tcpi_bytes_acked`) while the socket's path MTU still allows it
//! (a frag-needed / packet-too-big lowers `tcpi_pmtu`, makes the stack re-segment, and is then
//! reported as a hint instead). Connections are reset (`SO_LINGER` 0) when the round ends.
//! Each connection is bound to its local port before it connects and announced to
//! [`SearchOptions::tcp_hook`], so that `run`'s own clamp leaves its SYN-ACK alone.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::{StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpStream;

use super::{Heard, ProbeHook, Prober, RoundResult, SearchOptions, early_deadline, sys};

const IP_PMTUDISC_DO: libc::c_int = 2;
const IPV6_PMTUDISC_DO: libc::c_int = 2;
/// TCP header without options (bytes).
const TCP_HDR: u32 = 20;
/// Timestamps option with padding (bytes).
const TS_OPT: u32 = 12;
/// How often a probe looks at `TCP_INFO` for the acknowledgement.
const POLL: Duration = Duration::from_millis(2);
/// The longest a round waits for a taken connection's segment before judging its size.
const JUDGE_MAX: Duration = Duration::from_secs(3);

/// One search's TCP probes to `target`.
pub(crate) struct TcpProber {
    target: SocketAddr,
    iface: Option<String>,
    /// Source address of the connections (`None`: the kernel's choice).
    source: Option<IpAddr>,
    /// This round's probe connections, each ending with its size and outcome.
    inflight: FuturesUnordered<BoxFuture<'static, (u16, Outcome)>>,
    /// Sizes of this round with a connection the service took (it acknowledged the first
    /// byte) -> when that connection's full segment is judged unanswered: twice the first
    /// byte's round trip (+15 ms) after the segment was written (the earliest of its copies).
    connected: Arc<Mutex<BTreeMap<u16, Instant>>>,
}

/// A probe connection announced to a [`ProbeHook`]; announced closed on drop.
struct Announced {
    hook: ProbeHook,
    peer: IpAddr,
    local_port: u16,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.hook.0.closed(self.peer, self.local_port);
    }
}

enum Outcome {
    Passed(Duration),
    /// The socket's PMTU was lowered by an ICMP error naming this MTU.
    Hint(u16),
    /// The connection cannot carry a full segment of this size (peer MSS); carries the largest
    /// size it can.
    Untestable(u32),
    Failed,
}

impl TcpProber {
    pub fn new(target: IpAddr, port: u16, iface: Option<String>, source: Option<IpAddr>) -> Self {
        Self {
            target: SocketAddr::new(target, port),
            iface,
            source,
            inflight: FuturesUnordered::new(),
            connected: Arc::default(),
        }
    }

    fn ip_hdr(&self) -> u32 {
        if self.target.is_ipv6() { 40 } else { 20 }
    }

    /// Creates the socket for a probe of `size` bytes, announces it to `hook`, and starts
    /// connecting.
    fn start(
        &self,
        size: u16,
        hook: Option<&ProbeHook>,
    ) -> std::io::Result<(TcpStream, Option<Announced>)> {
        let v6 = self.target.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        super::mark_as_probe(&sock);
        if let Some(name) = &self.iface {
            sock.bind_device(Some(name.as_bytes()))?;
        }
        let mss = u32::from(size)
            .saturating_sub(self.ip_hdr() + TCP_HDR)
            .max(88);
        sys::setsockopt(
            &sock,
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            mss as libc::c_int,
        )?;
        if v6 {
            sys::setsockopt(
                &sock,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                IPV6_PMTUDISC_DO,
            )?;
        } else {
            sys::setsockopt(
                &sock,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                IP_PMTUDISC_DO,
            )?;
        }
        sock.set_tcp_nodelay(true)?;
        sock.set_linger(Some(Duration::ZERO))?;
        // The local port must be known before the SYN leaves: bind first (the source address
        // or any, a port of the kernel's choice), then announce, then connect.
        let unspecified: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let local = SocketAddr::new(self.source.unwrap_or(unspecified), 0);
        sock.bind(&SockAddr::from(local))?;
        let announced = match hook {
            Some(hook) => {
                let local_port = sock.local_addr()?.as_socket().map_or(0, |a| a.port());
                hook.0.opened(self.target.ip(), local_port);
                Some(Announced {
                    hook: hook.clone(),
                    peer: self.target.ip(),
                    local_port,
                })
            }
            None => None,
        };
        match sock.connect(&SockAddr::from(self.target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok((
            TcpStream::from_std(std::net::TcpStream::from(sock))?,
            announced,
        ))
    }

    /// Tests one size on a connecting `stream`; `connected` learns the size, and when its
    /// segment is judged, once the service took the connection (from then on a missing
    /// acknowledgement says something about the size).
    async fn probe(
        stream: TcpStream,
        size: u16,
        hdr: u32,
        started: Instant,
        connected: Arc<Mutex<BTreeMap<u16, Instant>>>,
    ) -> Outcome {
        let r: std::io::Result<Outcome> = async {
            stream.writable().await?;
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
            // One byte first: once it is acknowledged the service took the connection, and a
            // full segment that is not acknowledged says the size is too big. A service whose
            // accept queue is full drops the handshake's last ACK, and the connection looks
            // established here while nothing sent on it is ever acknowledged.
            // (`tcpi_bytes_acked` counts the SYN too: measure from what it says now.)
            let before = sys::tcp_info(&stream)?.bytes_acked;
            write_all(&stream, b" ").await?;
            let byte_sent = Instant::now();
            loop {
                tokio::time::sleep(POLL).await;
                if sys::tcp_info(&stream)?.bytes_acked > before {
                    break;
                }
            }
            let byte_rtt = byte_sent.elapsed();
            let info = sys::tcp_info(&stream)?;
            let opts = if info.options & sys::TCPI_OPT_TIMESTAMPS != 0 {
                TS_OPT
            } else {
                0
            };
            let seg = info.snd_mss + hdr + opts;
            if seg < u32::from(size) {
                return Ok(Outcome::Untestable(seg));
            }
            let payload = vec![b' '; info.snd_mss as usize];
            write_all(&stream, &payload).await?;
            // A segment that passes is acknowledged within about the first byte's round trip;
            // the round waits that long (twice, +15 ms) before it may judge the size.
            let judged_at = early_deadline(Instant::now(), byte_rtt, Instant::now() + JUDGE_MAX);
            connected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(size)
                .and_modify(|t| *t = (*t).min(judged_at))
                .or_insert(judged_at);
            loop {
                tokio::time::sleep(POLL).await;
                let i = sys::tcp_info(&stream)?;
                if i.pmtu < u32::from(size) {
                    return Ok(Outcome::Hint(i.pmtu.min(u32::from(u16::MAX)) as u16));
                }
                if i.bytes_acked > before + payload.len() as u64 {
                    return Ok(Outcome::Passed(started.elapsed()));
                }
            }
        }
        .await;
        r.unwrap_or_else(|e| {
            tracing::trace!(size, error = %e, "TCP probe failed");
            Outcome::Failed
        })
    }
}

impl Prober for TcpProber {
    fn sizes_per_round(&self) -> usize {
        super::TCP_SIZES_PER_ROUND
    }

    fn send(
        &mut self,
        size: u16,
        opts: &SearchOptions,
        _r: &mut RoundResult,
    ) -> std::io::Result<()> {
        let (stream, announced) = self.start(size, opts.tcp_hook.as_ref())?;
        let started = Instant::now();
        let hdr = self.ip_hdr() + TCP_HDR;
        let connected = Arc::clone(&self.connected);
        self.inflight.push(Box::pin(async move {
            let outcome = Self::probe(stream, size, hdr, started, connected).await;
            drop(announced);
            (size, outcome)
        }));
        Ok(())
    }

    async fn wait(&mut self, r: &mut RoundResult, until: Instant) -> Result<Heard> {
        tokio::select! {
            Some((size, o)) = self.inflight.next() => Ok(Heard::Progress(match o {
                Outcome::Passed(rtt) => {
                    r.answered.insert(size);
                    Some(rtt)
                }
                Outcome::Hint(mtu) => {
                    r.mtu_hint = Some(r.mtu_hint.map_or(mtu, |h| h.min(mtu)));
                    None
                }
                Outcome::Untestable(max) => {
                    tracing::debug!(size, max, "the TCP peer's MSS is too small to test this size");
                    r.refused.insert(size);
                    None
                }
                Outcome::Failed => None,
            })),
            _ = tokio::time::sleep_until(until.into()) => Ok(Heard::Progress(None)),
            else => Ok(Heard::Done),
        }
    }

    fn pending_until(&self, r: &RoundResult) -> Option<Instant> {
        let connected = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        connected
            .iter()
            .filter(|(s, _)| !r.answered.contains(s) && !r.refused.contains(s))
            .map(|(_, &t)| t)
            .max()
    }

    fn end_round(&mut self, planned: &BTreeSet<u16>, r: &mut RoundResult) {
        // Resets every connection still open (`SO_LINGER` 0).
        self.inflight.clear();
        // A size none of whose connections the service took, or whose segment did not get its
        // fair time before the round ended, was not tested: its SYNs (small whatever the size)
        // went unanswered, or the service's accept queue was full.
        let now = Instant::now();
        let connected =
            std::mem::take(&mut *self.connected.lock().unwrap_or_else(|p| p.into_inner()));
        r.untested = planned
            .iter()
            .copied()
            .filter(|s| {
                !r.answered.contains(s)
                    && !r.refused.contains(s)
                    && connected.get(s).is_none_or(|&t| t > now)
            })
            .collect();
    }
}

/// Writes all of `data` on a non-blocking stream.
async fn write_all(stream: &TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        stream.writable().await?;
        match stream.try_write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
