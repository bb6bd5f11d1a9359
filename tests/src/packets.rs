//! Crafted packets: builders for Ethernet / 802.1Q / IPv4 (with options) / IPv6 (with extension
//! headers) / TCP (with any option layout) / UDP / ICMP frames, and an Internet checksum
//! (RFC 1071) written from scratch to verify TCP checksums independently of both the datapath
//! and the reference model.

use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP flag bits.
pub use wslnet_common::proto::tcp_flags as flags;
/// EtherTypes and IP protocol numbers (`wslnet_common::proto`, the project's one list of them).
pub use wslnet_common::proto::{
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_TCP,
    IPPROTO_UDP,
};

/// TCP option encoders (raw bytes, concatenated by the caller).
pub mod opt {
    /// End of option list.
    pub use wslnet_common::proto::TCPOPT_EOL as EOL;
    /// No-operation.
    pub use wslnet_common::proto::TCPOPT_NOP as NOP;
    use wslnet_common::proto::{TCPOLEN_MSS, TCPOPT_MSS};

    /// MSS option (kind 2, length 4).
    pub fn mss(v: u16) -> Vec<u8> {
        let b = v.to_be_bytes();
        vec![TCPOPT_MSS, TCPOLEN_MSS, b[0], b[1]]
    }
    /// Window scale (kind 3, length 3).
    pub fn wscale(shift: u8) -> Vec<u8> {
        vec![3, 3, shift]
    }
    /// SACK permitted (kind 4, length 2).
    pub fn sack_perm() -> Vec<u8> {
        vec![4, 2]
    }
    /// Timestamps (kind 8, length 10).
    pub fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
        let mut v = vec![8, 10];
        v.extend_from_slice(&val.to_be_bytes());
        v.extend_from_slice(&ecr.to_be_bytes());
        v
    }
    /// SACK blocks (kind 5, length 2 + 8n).
    pub fn sack(blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut v = vec![5, (2 + 8 * blocks.len()) as u8];
        for (a, b) in blocks {
            v.extend_from_slice(&a.to_be_bytes());
            v.extend_from_slice(&b.to_be_bytes());
        }
        v
    }
}

/// The RFC 1071 one's-complement sum of `data` (odd length padded with a zero byte), added to
/// `initial`, as a 32-bit accumulator (fold it with [`fold`]).
pub fn sum_words(initial: u32, data: &[u8]) -> u32 {
    let mut acc = initial as u64;
    let (pairs, rest) = data.as_chunks::<2>();
    for c in pairs {
        acc += u16::from_be_bytes(*c) as u64;
    }
    if let [last] = rest {
        acc += (*last as u64) << 8;
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a 32-bit one's-complement accumulator to 16 bits.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (the value to store in a checksum field that is 0 in `data`).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

/// Where a frame's IP header starts, as a plain parser sees it: (IP version, offset). On an L3
/// device (`l3_offset` 0) the version nibble of the first byte; on Ethernet the EtherType after
/// at most one 802.1Q tag (4 for IPv4, 6 for IPv6). `None` for anything else.
pub fn ip_start(frame: &[u8], l3_offset: usize) -> Option<(u8, usize)> {
    if l3_offset == 0 {
        return Some((frame.first()? >> 4, 0));
    }
    let mut et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut l3 = 14;
    if et == ETH_P_8021Q {
        et = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        l3 = 18;
    }
    match et {
        ETH_P_IP => Some((4, l3)),
        ETH_P_IPV6 => Some((6, l3)),
        _ => None,
    }
}

/// Puts the DS field of `input` back into `out` (both frames with their IP header at `l3`),
/// with the IPv4 header checksum: undoes a DSCP rewrite, so that the rest of the frames can be
/// compared.
pub fn restore_ds(out: &mut [u8], input: &[u8], l3: usize) {
    if input[l3] >> 4 == 4 {
        out[l3 + 1] = input[l3 + 1];
        out[l3 + 10..l3 + 12].copy_from_slice(&input[l3 + 10..l3 + 12]);
    } else {
        out[l3..l3 + 2].copy_from_slice(&input[l3..l3 + 2]);
    }
}

/// Where the TCP segment of a frame is, as seen by a plain, permissive parser (not the model's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLocation {
    /// Pseudo-header addresses.
    pub src: Vec<u8>,
    /// Pseudo-header addresses.
    pub dst: Vec<u8>,
    /// Offset of the TCP header.
    pub l4: usize,
    /// End of the segment (IP length, bounded by the frame).
    pub end: usize,
}

/// Finds the TCP segment in a frame (link header of `l3_offset` bytes: 14 = Ethernet with an
/// optional 802.1Q tag, 0 = none); `None` for non-TCP, fragments and anything unparsable.
pub fn locate_tcp(frame: &[u8], l3_offset: usize) -> Option<TcpLocation> {
    let (version, l3) = ip_start(frame, l3_offset)?;
    match version {
        4 => {
            let h = frame.get(l3..l3 + 20)?;
            let ihl = (h[0] & 0xf) as usize * 4;
            let tot = u16::from_be_bytes([h[2], h[3]]) as usize;
            if h[0] >> 4 != 4 || ihl < 20 || h[9] != IPPROTO_TCP {
                return None;
            }
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            let end = if tot == 0 {
                frame.len()
            } else {
                frame.len().min(l3 + tot)
            };
            let l4 = l3 + ihl;
            (l4 + 20 <= end).then(|| TcpLocation {
                src: h[12..16].to_vec(),
                dst: h[16..20].to_vec(),
                l4,
                end,
            })
        }
        6 => {
            let h = frame.get(l3..l3 + 40)?;
            let pl = u16::from_be_bytes([h[4], h[5]]) as usize;
            let end = if pl == 0 {
                frame.len()
            } else {
                frame.len().min(l3 + 40 + pl)
            };
            let mut next = h[6];
            let mut l4 = l3 + 40;
            for _ in 0..16 {
                if !matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
                    break;
                }
                next = *frame.get(l4)?;
                l4 += (*frame.get(l4 + 1)? as usize + 1) * 8;
            }
            (next == IPPROTO_TCP && l4 + 20 <= end).then(|| TcpLocation {
                src: h[8..24].to_vec(),
                dst: h[24..40].to_vec(),
                l4,
                end,
            })
        }
        _ => None,
    }
}

/// The one's-complement sum over the TCP pseudo-header and segment, folded: 0xffff (or 0 for an
/// all-zero input) when the checksum in the segment is valid.
pub fn tcp_residual(frame: &[u8], loc: &TcpLocation) -> u16 {
    let seg = &frame[loc.l4..loc.end];
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&loc.src);
    pseudo.extend_from_slice(&loc.dst);
    if loc.src.len() == 4 {
        pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    }
    fold(sum_words(sum_words(0, &pseudo), seg))
}

/// True when the TCP checksum of the segment at `loc` is valid.
pub fn tcp_checksum_ok(frame: &[u8], loc: &TcpLocation) -> bool {
    matches!(tcp_residual(frame, loc), 0xffff | 0)
}

/// Rewrites the TCP checksum of the segment at `loc` to the correct value.
pub fn fix_tcp_checksum(frame: &mut [u8], loc: &TcpLocation) {
    frame[loc.l4 + 16] = 0;
    frame[loc.l4 + 17] = 0;
    let c = !tcp_residual(frame, loc);
    frame[loc.l4 + 16..loc.l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// A TCP segment.
#[derive(Clone, Debug)]
pub struct Tcp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Raw option bytes; padded with EOL (zero) bytes to a multiple of 4.
    pub options: Vec<u8>,
    /// Data offset to write instead of the computed one (for malformed headers).
    pub doff_override: Option<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A SYN (or SYN-ACK when `flags` say so) from port 40000 to 443.
    pub fn new(flags: u8, options: Vec<u8>) -> Self {
        Self {
            sport: 40000,
            dport: 443,
            seq: 0x1234_5678,
            ack: if flags & flags::ACK != 0 {
                0x0bad_cafe
            } else {
                0
            },
            flags,
            window: 64240,
            options,
            doff_override: None,
            payload: Vec::new(),
        }
    }

    /// The header and payload bytes, checksum field 0.
    pub fn bytes(&self) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(opt::EOL);
        }
        let doff = self.doff_override.unwrap_or(((20 + opts.len()) / 4) as u8);
        let mut v = Vec::with_capacity(20 + opts.len() + self.payload.len());
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.ack.to_be_bytes());
        v.push(doff << 4);
        v.push(self.flags);
        v.extend_from_slice(&self.window.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(&opts);
        v.extend_from_slice(&self.payload);
        v
    }
}

/// A UDP datagram (checksum 0) with `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// An ICMP echo request (checksum filled for ICMPv4).
pub fn icmp_echo(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0x12, 0x34, 0, 1];
    v.extend_from_slice(payload);
    if !v6 {
        let c = internet_checksum(&v);
        v[2..4].copy_from_slice(&c.to_be_bytes());
    }
    v
}

/// IPv4 header fields.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Don't Fragment.
    pub df: bool,
    /// More Fragments.
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Raw IP options, padded with EOL to a multiple of 4.
    pub options: Vec<u8>,
    /// IHL to write instead of the computed one.
    pub ihl_override: Option<u8>,
    /// Total length to write instead of the computed one.
    pub tot_len_override: Option<u16>,
}

impl Ipv4 {
    /// A plain header with DF set.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
            ihl_override: None,
            tot_len_override: None,
        }
    }

    /// Header + `payload`, with a valid header checksum.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let ihl = self.ihl_override.unwrap_or((hlen / 4) as u8);
        let tot = self
            .tot_len_override
            .unwrap_or((hlen + payload.len()) as u16);
        let frag = (self.frag_offset & 0x1fff)
            | if self.df { 0x4000 } else { 0 }
            | if self.mf { 0x2000 } else { 0 };
        let mut v = Vec::with_capacity(hlen + payload.len());
        v.push(0x40 | (ihl & 0xf));
        v.push(0);
        v.extend_from_slice(&tot.to_be_bytes());
        v.extend_from_slice(&0x4242u16.to_be_bytes());
        v.extend_from_slice(&frag.to_be_bytes());
        v.push(64);
        v.push(self.proto);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&self.src.octets());
        v.extend_from_slice(&self.dst.octets());
        v.extend_from_slice(&opts);
        let c = internet_checksum(&v);
        v[10..12].copy_from_slice(&c.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }
}

/// Sets the DS field (DSCP << 2 | ECN) of the IP packet `ip` starting at byte 0: the IPv4 TOS
/// byte, with the header checksum recomputed, or the IPv6 traffic class. Other versions and
/// packets too short are left alone.
pub fn set_ds(ip: &mut [u8], ds: u8) {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => {
            let ihl = (usize::from(ip[0] & 0x0f) * 4).clamp(20, ip.len());
            ip[1] = ds;
            ip[10..12].fill(0);
            let c = internet_checksum(&ip[..ihl]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        Some(6) if ip.len() >= 2 => {
            ip[0] = (ip[0] & 0xf0) | (ds >> 4);
            ip[1] = (ds << 4) | (ip[1] & 0x0f);
        }
        _ => {}
    }
}

/// The DS field (DSCP << 2 | ECN) of the IP packet starting at byte 0 (IPv4 or IPv6).
pub fn ds_of(ip: &[u8]) -> Option<u8> {
    match ip.first()? >> 4 {
        4 => ip.get(1).copied(),
        6 => Some((ip[0] << 4) | (ip.get(1)? >> 4)),
        _ => None,
    }
}

/// The IPv4 packets (from the IP header on) of a pcap file with Ethernet framing (a capture on
/// `lo` or a veth).
pub fn pcap_ipv4(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24; // global header
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + incl).min(pcap.len())];
        if frame.len() > 14 && frame[12..14] == [0x08, 0x00] {
            out.push(frame[14..].to_vec());
        }
        at += 16 + incl;
    }
    out
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options padded to `8 * (len + 1)` bytes.
    HopByHop(u8),
    /// Routing header (type 0 / segments left 0) of `8 * (len + 1)` bytes.
    Routing(u8),
    /// Destination options of `8 * (len + 1)` bytes.
    DstOpts(u8),
    /// Fragment header: offset (8-byte units), more fragments.
    Fragment(u16, bool),
}

impl Ext {
    fn code(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext::Routing(_) => IPPROTO_ROUTING,
            Ext::DstOpts(_) => IPPROTO_DSTOPTS,
            Ext::Fragment(..) => IPPROTO_FRAGMENT,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(len) | Ext::DstOpts(len) => {
                let n = (*len as usize + 1) * 8;
                let mut v = vec![next, *len];
                // PadN covering the rest.
                v.push(1);
                v.push((n - 4) as u8);
                v.resize(n, 0);
                v
            }
            Ext::Routing(len) => {
                let n = (*len as usize + 1) * 8;
                let mut v = vec![next, *len, 0, 0];
                v.resize(n, 0);
                v
            }
            Ext::Fragment(off, more) => {
                let f = (off << 3) | u16::from(*more);
                let mut v = vec![next, 0];
                v.extend_from_slice(&f.to_be_bytes());
                v.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                v
            }
        }
    }
}

/// An IPv6 packet: header, extension headers, then `payload` of protocol `proto`.
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    exts: &[Ext],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, Ext::code);
        body.extend_from_slice(&e.bytes(next));
    }
    body.extend_from_slice(payload);
    let first = exts.first().map_or(proto, Ext::code);
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.push(first);
    v.push(64);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(&body);
    v
}

/// An Ethernet frame (with one 802.1Q tag when `vlan` is set) around `l3`.
pub fn ethernet(ethertype: u16, vlan: Option<u16>, l3: &[u8]) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    if let Some(tci) = vlan {
        v.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(l3);
    v
}

/// Addresses used by the tests.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    /// Our side (the WSL guest).
    pub const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    /// The server behind the narrow path.
    pub const REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 7);
    /// Our side (IPv6).
    pub const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    /// The server (IPv6).
    pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 7);
}

/// An Ethernet IPv4 TCP frame from `src` to `dst` with a valid TCP checksum.
pub fn tcp4_frame(src: Ipv4Addr, dst: Ipv4Addr, tcp: &Tcp) -> Vec<u8> {
    tcp4_frame_with(&Ipv4::new(src, dst, IPPROTO_TCP), None, tcp)
}

/// An Ethernet IPv4 TCP frame with the given IP header and VLAN tag; valid TCP checksum when the
/// segment is locatable.
pub fn tcp4_frame_with(ip: &Ipv4, vlan: Option<u16>, tcp: &Tcp) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IP, vlan, &ip.packet(&tcp.bytes()));
    fix_checksum_if_tcp(&mut f, 14);
    f
}

/// An Ethernet IPv6 TCP frame from `src` to `dst` with extension headers and a valid checksum.
pub fn tcp6_frame(src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], tcp: &Tcp) -> Vec<u8> {
    let mut f = ethernet(
        ETH_P_IPV6,
        None,
        &ipv6_packet(src, dst, exts, IPPROTO_TCP, &tcp.bytes()),
    );
    fix_checksum_if_tcp(&mut f, 14);
    f
}

/// Recomputes the TCP checksum when the frame has a locatable TCP segment.
pub fn fix_checksum_if_tcp(frame: &mut [u8], l3_offset: usize) {
    if let Some(loc) = locate_tcp(frame, l3_offset) {
        fix_tcp_checksum(frame, &loc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(0, &data)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn built_frames_have_valid_checksums() {
        let tcp = Tcp::new(flags::SYN, opt::mss(1460));
        let f = tcp4_frame(addr::LOCAL4, addr::REMOTE4, &tcp);
        let loc = locate_tcp(&f, 14).unwrap();
        assert!(tcp_checksum_ok(&f, &loc));
        let mut bad = f.clone();
        bad[loc.l4 + 22] ^= 1;
        assert!(!tcp_checksum_ok(&bad, &loc));
        let f6 = tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[Ext::HopByHop(0)], &tcp);
        let loc6 = locate_tcp(&f6, 14).unwrap();
        assert_eq!(loc6.l4, 14 + 48);
        assert!(tcp_checksum_ok(&f6, &loc6));
        // IPv4 header checksum.
        assert_eq!(fold(sum_words(0, &f[14..34])), 0xffff);
    }
}
