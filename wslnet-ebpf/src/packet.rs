//! Header parsing: from the start of the frame to the transport header.
//!
//! Every read goes through [`read`]: a direct load from the skb's linear data when the bytes are
//! there (the common case, no helper call), else `bpf_skb_load_bytes` (`TcContext::load`), so
//! the parser also works on non-linear skbs. Both give the same bytes; offsets stay plain
//! bounded scalars, which every verifier since 5.x accepts.

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use wslnet_common::{FAMILY_V4, FAMILY_V6, L3_OFFSET_NONE};

/// Reads a `T` at `off` bytes from the start of the frame: directly from the linear data when it
/// holds those bytes, else through `bpf_skb_load_bytes`. `None` when the frame is shorter.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let size = if core::mem::size_of::<T>() == 1 {
        // Through a volatile read so that the compiler cannot turn the 1-byte check
        // `p + 1 <= end` into `p < end`, from which the verifier grants no readable byte.
        // SAFETY: a volatile read of a local.
        unsafe { core::ptr::read_volatile(&core::mem::size_of::<T>()) }
    } else {
        core::mem::size_of::<T>()
    };
    if start + off + size <= ctx.data_end() {
        // SAFETY: the bytes [start + off, start + off + size) lie inside the linear packet
        // data, checked against data_end just above; the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).ok()
    }
}

/// IPv6 extension headers skipped before giving up (hop-by-hop, routing, destination options).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// An IP packet the datapath understood up to its transport header.
pub struct Ip {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u32,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// End of the IP packet inside the skb: the smaller of the skb length and the IP length
    /// (Ethernet padding excluded; an IP length of 0, as in BIG TCP, means the skb length).
    pub end: usize,
    /// Transport protocol number.
    pub proto: u8,
    /// DF set; always true for IPv6, which routers never fragment.
    pub df: bool,
    /// A fragment whose transport header is not ours to touch: IPv4 with a non-zero fragment
    /// offset, or IPv6 with a fragment header.
    pub fragment: bool,
    /// Offset of the peer address (destination on egress, source on ingress), read by [`peer`]
    /// only on the paths that need it.
    pub peer_off: usize,
}

/// A peer address as four 32-bit words in packet byte order (IPv4: the first word, then zeros).
pub type Peer = [u32; 4];

/// What the parser made of a frame.
pub enum Parsed {
    /// An IPv4 or IPv6 packet.
    Ip(Ip),
    /// Not IP (ARP, LLDP, ...) or too short to tell: passed on, not counted.
    Other,
    /// IP, but with a broken or truncated header, or more IPv6 extension headers than
    /// [`MAX_IPV6_EXT_HEADERS`]: passed on, counted as unparseable for this family.
    Unparseable(u32),
}

/// A big-endian 16-bit field at `off`.
#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

/// Parses the frame in `ctx`, whose IP header follows `l3_offset` bytes of link header
/// (14: Ethernet, possibly followed by one 802.1Q tag; 0: L3 device).
///
/// Only the fields the datapath uses are read, each as a scalar: copying whole headers cost
/// more than the rest of the fast path.
#[inline(always)]
pub fn parse(ctx: &TcContext, l3_offset: u16, egress: bool) -> Parsed {
    let len = ctx.len() as usize;
    let (family, l3) = if l3_offset == L3_OFFSET_NONE {
        match read::<u8>(ctx, 0) {
            Some(b) if b >> 4 == 4 => (FAMILY_V4, 0),
            Some(b) if b >> 4 == 6 => (FAMILY_V6, 0),
            _ => return Parsed::Other,
        }
    } else {
        let Some(mut ether_type) = be16(ctx, 12) else {
            return Parsed::Other;
        };
        let mut l3 = EthHdr::LEN;
        if ether_type == ETH_P_8021Q {
            // One 802.1Q tag: TCI, then the real EtherType.
            let Some(inner) = be16(ctx, EthHdr::LEN + 2) else {
                return Parsed::Other;
            };
            ether_type = inner;
            l3 += 4;
        }
        if ether_type == ETH_P_IP {
            (FAMILY_V4, l3)
        } else if ether_type == ETH_P_IPV6 {
            (FAMILY_V6, l3)
        } else {
            return Parsed::Other;
        }
    };
    if family == FAMILY_V4 {
        parse_ipv4(ctx, l3, len, egress)
    } else {
        parse_ipv6(ctx, l3, len, egress)
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize, len: usize, egress: bool) -> Parsed {
    // Bytes 0-7: version and IHL, DSCP, total length, ID, flags and fragment offset. Byte 9:
    // protocol. The read of the last byte proves the whole fixed header is there.
    let (Some([vihl, _, tot0, tot1, _, _, frag0, frag1]), Some([_, proto])) =
        (read::<[u8; 8]>(ctx, l3), read::<[u8; 2]>(ctx, l3 + 8))
    else {
        return Parsed::Unparseable(FAMILY_V4);
    };
    if read::<u8>(ctx, l3 + Ipv4Hdr::LEN - 1).is_none() {
        return Parsed::Unparseable(FAMILY_V4);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || l3 + ihl > len {
        return Parsed::Unparseable(FAMILY_V4);
    }
    let tot_len = u16::from_be_bytes([tot0, tot1]) as usize;
    let end = if tot_len == 0 || l3 + tot_len > len {
        len
    } else {
        l3 + tot_len
    };
    let frags = u16::from_be_bytes([frag0, frag1]);
    Parsed::Ip(Ip {
        family: FAMILY_V4,
        l3,
        l4: l3 + ihl,
        end,
        proto,
        df: frags & 0x4000 != 0,
        fragment: frags & 0x1fff != 0,
        // Source address at byte 12, destination at 16.
        peer_off: l3 + if egress { 16 } else { 12 },
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize, len: usize, egress: bool) -> Parsed {
    // Bytes 0-7: version, traffic class and flow label, payload length, next header, hop limit.
    // The read of the last byte proves the whole fixed header is there.
    let Some([version, _, _, _, pl0, pl1, next_hdr, _]) = read::<[u8; 8]>(ctx, l3) else {
        return Parsed::Unparseable(FAMILY_V6);
    };
    if version >> 4 != 6 || read::<u8>(ctx, l3 + Ipv6Hdr::LEN - 1).is_none() {
        return Parsed::Unparseable(FAMILY_V6);
    }
    let payload_len = u16::from_be_bytes([pl0, pl1]) as usize;
    let ip_end = l3 + Ipv6Hdr::LEN + payload_len;
    let end = if payload_len == 0 || ip_end > len {
        len
    } else {
        ip_end
    };
    let mut next = next_hdr;
    let mut l4 = l3 + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_FRAGMENT {
            fragment = true;
            break;
        }
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        // Every one of these starts with (next header, length in 8-octet units, not counting
        // the first 8).
        let Some(ext) = read::<[u8; 2]>(ctx, l4) else {
            return Parsed::Unparseable(FAMILY_V6);
        };
        next = ext[0];
        l4 += (ext[1] as usize + 1) * 8;
    }
    if !fragment && (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS)
    {
        return Parsed::Unparseable(FAMILY_V6);
    }
    if l4 > end {
        return Parsed::Unparseable(FAMILY_V6);
    }
    Parsed::Ip(Ip {
        family: FAMILY_V6,
        l3,
        l4,
        end,
        proto: next,
        df: true,
        fragment,
        // Source address at byte 8, destination at 24.
        peer_off: l3 + if egress { 24 } else { 8 },
    })
}

/// The peer address of `ip`. `None` cannot happen for a parsed packet (the fixed IP header was
/// read), but the verifier needs the check.
#[inline(always)]
pub fn peer(ctx: &TcContext, ip: &Ip) -> Option<Peer> {
    let word = |i: usize| read::<[u8; 4]>(ctx, ip.peer_off + 4 * i).map(u32::from_ne_bytes);
    if ip.family == FAMILY_V4 {
        Some([word(0)?, 0, 0, 0])
    } else {
        Some([word(0)?, word(1)?, word(2)?, word(3)?])
    }
}

/// Bytes of the transport header for sizing GSO segments: the TCP data offset, 8 for UDP,
/// 0 when unknown or unreadable.
#[inline(always)]
pub fn transport_header_len(ctx: &TcContext, ip: &Ip) -> usize {
    match ip.proto {
        IPPROTO_TCP => match read::<u8>(ctx, ip.l4 + 12) {
            Some(b) => ((b >> 4) as usize) * 4,
            None => 0,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    }
}

/// True for TCP.
#[inline(always)]
pub fn is_tcp(ip: &Ip) -> bool {
    ip.proto == IPPROTO_TCP
}
