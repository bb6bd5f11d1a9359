//! ICMP echo probes with DF set, ignoring the kernel's cached path MTU.
//!
//! A datagram ICMP socket ("ping socket") is used where `net.ipv4.ping_group_range` allows it,
//! a raw socket otherwise (root / `CAP_NET_RAW`). Each probe of `size` bytes is an IP packet of
//! exactly `size` bytes: ICMP header, an 8-byte random token of this prober, the size, filler.
//! Replies are matched by identifier (raw sockets see every echo reply of the namespace),
//! sequence number and token. `IP_RECVERR` / `IPV6_RECVERR` delivers frag-needed / packet-too-big
//! about our probes with the MTU they name; `IP_RECVFRAGSIZE` / `IPV6_RECVFRAGSIZE` the size of
//! the largest fragment of a reply that arrived fragmented (the return path's MTU).
use std::{
    collections::{BTreeSet, HashMap},
    io::IoSliceMut,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Heard, Prober, RoundResult, SearchOptions, sys};

/// `IP_PMTUDISC_PROBE` and `IPV6_PMTUDISC_PROBE` (the same value): DF set, the cached path MTU
/// ignored.
const PMTUDISC_PROBE: libc::c_int = 3;
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;

/// ICMP header (8) + token (8) + size (2).
const MIN_ICMP_LEN: usize = 18;

/// One search's ICMP socket and the probes it has in flight.
pub(crate) struct IcmpProber {
    fd: AsyncFd<Socket>,
    target: IpAddr,
    raw: bool,
    ident: u16,
    token: [u8; 8],
    next_seq: u16,
    round: u32,
    /// seq -> (size in bytes, sent at, round)
    inflight: HashMap<u16, (u16, Instant, u32)>,
    /// Smallest "largest fragment" (bytes) of our replies that arrived fragmented.
    return_fragments: Option<u16>,
    /// Sizes (bytes) whose replies arrived whole: the return path carries them.
    whole: BTreeSet<u16>,
}

impl IcmpProber {
    /// Opens and configures the socket (connected to `target`, bound to `iface` and sending
    /// from `source` if given). Must be called inside a tokio runtime.
    pub fn open(target: IpAddr, iface: Option<&str>, source: Option<IpAddr>) -> Result<Self> {
        let v6 = target.is_ipv6();
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let (sock, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, false),
            Err(dgram_err) => {
                let s = Socket::new(domain, Type::RAW, Some(proto)).with_context(|| {
                    format!(
                        "opening an ICMP socket: datagram ICMP is not allowed ({dgram_err}) and \
                         raw sockets need root or CAP_NET_RAW; run as root, grant CAP_NET_RAW, or \
                         include your group in sysctl net.ipv4.ping_group_range"
                    )
                })?;
                (s, true)
            }
        };
        tracing::debug!(
            kind = if raw { "raw" } else { "datagram" },
            "ICMP probe socket"
        );
        sock.set_nonblocking(true)?;
        super::mark_as_probe(&sock);
        if let Some(name) = iface {
            sock.bind_device(Some(name.as_bytes()))
                .with_context(|| format!("binding the ICMP socket to interface {name:?}"))?;
        }
        if let Some(src) = source {
            sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .with_context(|| format!("sending ICMP probes from {src}"))?;
        }
        // The same three options, by family: ignore the cached path MTU (DF set), queue ICMP
        // errors about our probes, tell the largest fragment of a reply.
        let (level, [discover, recverr, fragsize]) = if v6 {
            (
                libc::IPPROTO_IPV6,
                [
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_RECVERR,
                    libc::IPV6_RECVFRAGSIZE,
                ],
            )
        } else {
            (
                libc::IPPROTO_IP,
                [
                    libc::IP_MTU_DISCOVER,
                    libc::IP_RECVERR,
                    libc::IP_RECVFRAGSIZE,
                ],
            )
        };
        sys::setsockopt(&sock, level, discover, PMTUDISC_PROBE)
            .context("setting path-MTU discovery to PROBE")?;
        sys::setsockopt(&sock, level, recverr, 1i32).context("setting RECVERR")?;
        sys::setsockopt(&sock, level, fragsize, 1i32).context("setting RECVFRAGSIZE")?;
        if v6 {
            sys::setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1i32)
                .context("setting IPV6_DONTFRAG")?;
        }
        if raw && v6 {
            // Linux semantics: a set bit blocks that type. Pass echo replies only.
            let mut filter = [u32::MAX; 8];
            filter[usize::from(ICMP6_ECHO_REPLY) >> 5] &= !(1u32 << (ICMP6_ECHO_REPLY & 31));
            sys::setsockopt(&sock, libc::IPPROTO_ICMPV6, ICMP6_FILTER, filter)
                .context("setting ICMP6_FILTER")?;
        } else if raw {
            let filter: u32 = !(1u32 << ICMP_ECHO_REPLY);
            sys::setsockopt(&sock, SOL_RAW, ICMP_FILTER, filter).context("setting ICMP_FILTER")?;
        }
        sock.connect(&SockAddr::from(SocketAddr::new(target, 0)))
            .with_context(|| format!("no route to {target}"))?;
        // SAFETY: the socket is owned by the AsyncFd for its whole registration and is never
        // replaced, so the fd stays open and refers to the same socket.
        let fd =
            unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::ERROR) }
                .map_err(|e| e.into_parts().1)
                .context("registering the ICMP socket with tokio")?;
        let rnd: [u8; 10] = sys::random_bytes();
        Ok(Self {
            fd,
            target,
            raw,
            ident: u16::from_ne_bytes([rnd[0], rnd[1]]),
            token: rnd[2..10].try_into().unwrap(),
            next_seq: 0,
            round: 0,
            inflight: HashMap::new(),
            return_fragments: None,
            whole: BTreeSet::new(),
        })
    }

    /// The smallest "largest fragment" (bytes, IP header included) of the replies to this
    /// prober's probes that arrived fragmented; `None` when every reply arrived whole.
    pub fn return_fragments(&self) -> Option<u16> {
        self.return_fragments
    }

    /// What the replies say of the return path's MTU (bytes), when one arrived fragmented:
    /// fragments carry payload in multiples of 8 bytes, so a largest fragment `F` means a
    /// return MTU from `F` to `F + 7`, and a reply of that range that arrived whole proves its
    /// size. `None` when every reply arrived whole (the return path carried them all).
    pub fn return_mtu(&self) -> Option<u16> {
        Some(return_mtu(self.return_fragments?, &self.whole))
    }

    fn v6(&self) -> bool {
        self.target.is_ipv6()
    }

    /// The ICMP message of a probe whose IP packet is `size` bytes.
    fn build(&self, size: u16, seq: u16) -> Vec<u8> {
        let ip_hdr = if self.v6() { 40 } else { 20 };
        let len = (usize::from(size).saturating_sub(ip_hdr)).max(MIN_ICMP_LEN);
        let mut b = vec![0u8; len];
        b[0] = if self.v6() { ICMP6_ECHO } else { ICMP_ECHO };
        b[4..6].copy_from_slice(&self.ident.to_be_bytes());
        b[6..8].copy_from_slice(&seq.to_be_bytes());
        b[8..16].copy_from_slice(&self.token);
        b[16..18].copy_from_slice(&size.to_be_bytes());
        for (i, x) in b[MIN_ICMP_LEN..].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        // Datagram sockets and ICMPv6 raw sockets get their checksum from the kernel.
        if self.raw && !self.v6() {
            let c = crate::checksum::internet(&b);
            b[2..4].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    fn send_packet(&self, pkt: &[u8]) -> std::io::Result<()> {
        let mut tries = 0;
        loop {
            match self.fd.get_ref().send(pkt) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 3 => {
                    // A pending socket error (e.g. from an earlier ICMP error) or a full buffer:
                    // retry; a real EMSGSIZE repeats.
                    tracing::trace!(error = %e, "ICMP send failed; retrying");
                    tries += 1;
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The sequence number of one of our echo replies in `buf` (as received), if it is one.
    fn parse_reply(&self, buf: &[u8]) -> Option<u16> {
        let icmp = if self.raw && !self.v6() {
            let ihl = usize::from(buf.first()? & 0x0f) * 4;
            if *buf.get(9)? != libc::IPPROTO_ICMP as u8 {
                return None;
            }
            buf.get(ihl..)?
        } else {
            buf
        };
        if icmp.len() < MIN_ICMP_LEN {
            return None;
        }
        let want = if self.v6() {
            ICMP6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        if icmp[0] != want || icmp[1] != 0 {
            return None;
        }
        // Datagram sockets: the kernel rewrote the identifier and demultiplexes by it.
        if self.raw && icmp[4..6] != self.ident.to_be_bytes() {
            return None;
        }
        if icmp[8..16] != self.token {
            return None;
        }
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        let size = u16::from_be_bytes([icmp[16], icmp[17]]);
        match self.inflight.get(&seq) {
            Some(&(s, _, _)) if s == size => Some(seq),
            _ => None,
        }
    }

    /// Reads everything queued (replies and errors) into `r`; returns the round trip of the
    /// first reply to a probe of the current round, if any.
    fn drain(&mut self, r: &mut RoundResult) -> Option<Duration> {
        let mut rtt = None;
        let fd = self.fd.get_ref().as_raw_fd();
        let mut buf = [0u8; 65_536];
        for _ in 0..4096 {
            let (n, from, fragment) = {
                let mut cmsg = nix::cmsg_space!(libc::c_int);
                let mut iov = [IoSliceMut::new(&mut buf)];
                match recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(msg) => (msg.bytes, msg.address, largest_fragment(&msg)),
                    Err(Errno::EAGAIN) => break,
                    // A pending error (reported via the error queue too): keep reading.
                    Err(e) => {
                        tracing::trace!(error = %e, "ICMP recv");
                        continue;
                    }
                }
            };
            if let Some(from) = from.as_ref().and_then(sockaddr_ip)
                && from != self.target
            {
                continue;
            }
            if let Some(seq) = self.parse_reply(&buf[..n]) {
                let (size, sent, round) = self.inflight[&seq];
                r.answered.insert(size);
                match fragment.filter(|&f| f < size) {
                    Some(f) => {
                        tracing::debug!(
                            size,
                            largest_fragment = f,
                            "an echo reply came back fragmented"
                        );
                        self.return_fragments = Some(self.return_fragments.map_or(f, |m| m.min(f)));
                    }
                    None => {
                        self.whole.insert(size);
                    }
                }
                if round == self.round && rtt.is_none() {
                    rtt = Some(sent.elapsed());
                }
            }
        }
        for _ in 0..4096 {
            let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (bytes, errs) = match recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let mut errs = Vec::new();
                    if let Ok(it) = msg.cmsgs() {
                        for c in it {
                            match c {
                                ControlMessageOwned::Ipv4RecvErr(e, _)
                                | ControlMessageOwned::Ipv6RecvErr(e, _) => errs.push(e),
                                _ => {}
                            }
                        }
                    }
                    (msg.bytes, errs)
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::trace!(error = %e, "ICMP error queue");
                    break;
                }
            };
            let payload = &buf[..bytes];
            for e in errs {
                let too_big = (e.ee_origin == SO_EE_ORIGIN_ICMP
                    && e.ee_type == ICMP_DEST_UNREACH
                    && e.ee_code == ICMP_FRAG_NEEDED)
                    || (e.ee_origin == SO_EE_ORIGIN_ICMP6 && e.ee_type == ICMP6_PACKET_TOO_BIG);
                if !too_big || !self.is_our_probe(payload) {
                    tracing::debug!(
                        origin = e.ee_origin,
                        r#type = e.ee_type,
                        code = e.ee_code,
                        "ICMP error about a probe (not frag-needed / packet-too-big, or not ours)"
                    );
                    continue;
                }
                let mtu = e.ee_info.min(u32::from(u16::MAX)) as u16;
                tracing::debug!(mtu, "frag-needed / packet-too-big");
                r.mtu_hint = Some(r.mtu_hint.map_or(mtu, |h| h.min(mtu)));
            }
        }
        rtt
    }

    /// Whether the quoted packet of an ICMP error (our ICMP header onwards) is one of ours.
    fn is_our_probe(&self, quoted: &[u8]) -> bool {
        if quoted.len() < 8 {
            return false;
        }
        let want = if self.v6() { ICMP6_ECHO } else { ICMP_ECHO };
        if quoted[0] != want {
            return false;
        }
        if self.raw && quoted[4..6] != self.ident.to_be_bytes() {
            return false;
        }
        if quoted.len() >= 16 && quoted[8..16] != self.token {
            return false;
        }
        self.inflight
            .contains_key(&u16::from_be_bytes([quoted[6], quoted[7]]))
    }
}

impl Prober for IcmpProber {
    fn begin_round(&mut self, r: &mut RoundResult) {
        self.round += 1;
        // Late replies to earlier rounds still count.
        let _ = self.drain(r);
    }

    fn send(
        &mut self,
        size: u16,
        _opts: &SearchOptions,
        _r: &mut RoundResult,
    ) -> std::io::Result<()> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let pkt = self.build(size, seq);
        self.send_packet(&pkt)?;
        self.inflight
            .insert(seq, (size, Instant::now(), self.round));
        Ok(())
    }

    async fn wait(&mut self, r: &mut RoundResult, until: Instant) -> Result<Heard> {
        tokio::select! {
            g = self.fd.ready(Interest::READABLE | Interest::ERROR) => {
                g.context("waiting for ICMP replies")?.clear_ready();
            }
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        Ok(Heard::Progress(self.drain(r)))
    }
}

/// The return path's MTU (bytes) that a largest fragment `f` and the sizes of the replies that
/// arrived `whole` tell (see [`IcmpProber::return_mtu`]).
fn return_mtu(f: u16, whole: &BTreeSet<u16>) -> u16 {
    let w = whole.range(f..=f.saturating_add(7)).next_back();
    w.map_or(f, |&w| w.max(f))
}

/// The size of the largest fragment (bytes) of a datagram that arrived fragmented, from its
/// `IP_RECVFRAGSIZE` / `IPV6_RECVFRAGSIZE` control message (none: it arrived whole).
fn largest_fragment<S>(msg: &nix::sys::socket::RecvMsg<'_, '_, S>) -> Option<u16> {
    msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::Unknown(u)
            if (u.cmsg_header.cmsg_level == libc::IPPROTO_IP
                && u.cmsg_header.cmsg_type == libc::IP_RECVFRAGSIZE)
                || (u.cmsg_header.cmsg_level == libc::IPPROTO_IPV6
                    && u.cmsg_header.cmsg_type == libc::IPV6_RECVFRAGSIZE) =>
        {
            let v = i32::from_ne_bytes(u.data_bytes.get(..4)?.try_into().ok()?);
            u16::try_from(v).ok().filter(|&v| v > 0)
        }
        _ => None,
    })
}

fn sockaddr_ip(s: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_and_whole_replies_tell_the_return_mtu_to_the_byte() {
        let whole = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
        // A 1372 link: fragments of 1372 (1352 bytes of payload, a multiple of 8).
        assert_eq!(return_mtu(1372, &whole(&[552, 1000, 1372])), 1372);
        // A 1400 link fragments at 1396; replies of 1397..=1400 arriving whole prove 1400.
        assert_eq!(
            return_mtu(1396, &whole(&[1000, 1396, 1397, 1398, 1399, 1400])),
            1400
        );
        // Without whole replies above the fragment, only the fragment is proven.
        assert_eq!(return_mtu(1396, &whole(&[1000])), 1396);
        // A whole reply far above the fragment is not of this path (it changed): ignored.
        assert_eq!(return_mtu(1252, &whole(&[1500])), 1252);
    }
}
