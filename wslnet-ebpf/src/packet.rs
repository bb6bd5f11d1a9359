//! Header parsing: from the start of the frame to the transport header.
//!
//! Reads are direct loads from the skb's linear data when the bytes are there (the common case,
//! no helper call), else `bpf_skb_load_bytes`, so the parser also works on non-linear skbs. Both
//! give the same bytes; offsets stay plain bounded scalars, which every verifier since 5.x
//! accepts. Single fields go through [`read`]; the IP header is checked once as a whole
//! ([`Header`]) and its fields are then read without further checks. Untagged Ethernet frames
//! (nearly all) have their Ethernet and IP headers checked together, and IPv6 packets without
//! extension headers skip the extension walk.

use aya_ebpf::{EbpfContext, cty::c_void, helpers::bpf_skb_load_bytes, programs::TcContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use wslnet_common::{
    FAMILY_V4, FAMILY_V6, L3_OFFSET_NONE, MAX_IPV6_EXT_HEADERS, peer_v4,
    proto::{
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN, VLAN_HLEN,
    },
};

// The header sizes below come from `network_types` (as const generic arguments); the rest of the
// datapath counts with the project's own (`wslnet_common::proto`).
const _: () = assert!(Ipv4Hdr::LEN == IPV4_HDR_LEN && Ipv6Hdr::LEN == IPV6_HDR_LEN);

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

/// One load of a `$size` ("u16", "u32", "u64") at byte `$off` (a constant) of header `$h`,
/// in native byte order, as a `u64`: the callers assert at compile time that the bytes lie
/// inside the header.
///
/// Written out because LLVM's BPF backend splits a load it cannot prove aligned into byte loads,
/// shifts and ORs (5 instructions for a 16-bit field, 40 for an IPv6 address as four words).
/// The kernel accepts unaligned packet loads on architectures with efficient unaligned access
/// (x86-64 and arm64, all WSL runs on), and the copy in [`HeaderBuf`] is 8-byte aligned, which
/// keeps every field loaded from it (at most 8 bytes, at offsets that are multiples of their
/// size within the IP header) aligned for the verifier's stack check.
macro_rules! load {
    ($h:expr, $size:literal, $off:expr) => {{
        let value: u64;
        // SAFETY: the caller asserted that the bytes at `$off` lie inside the header, i.e. in
        // packet data checked against data_end or in the caller's buffer; the instruction only
        // loads them into the output register.
        unsafe {
            core::arch::asm!(
                concat!("{0} = *(", $size, " *)({1} + {2})"),
                out(reg) value,
                in(reg) $h.ptr,
                const $off,
                options(readonly, nostack, preserves_flags)
            );
        }
        value
    }};
}

/// A fixed-size header of `N` bytes, checked once: a pointer to its first byte, in the skb's
/// linear data (no copy) or in the caller's [`HeaderBuf`]. Fields are read at compile-time
/// offsets below `N`, with no further bounds check.
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    ptr: *const u8,
}

impl<const N: usize> Header<N> {
    /// Byte `I`.
    #[inline(always)]
    pub fn u8<const I: usize>(&self) -> u8 {
        const { assert!(I < N) };
        // SAFETY: `ptr` points to `N` readable bytes (checked against data_end, or filled by
        // bpf_skb_load_bytes), and I < N at compile time.
        unsafe { *self.ptr.add(I) }
    }

    /// Big-endian 16-bit field at byte `I`, by one load (see [`load!`]).
    #[inline(always)]
    pub fn be16<const I: usize>(&self) -> u16 {
        const { assert!(I + 2 <= N) };
        u16::from_be(load!(self, "u16", I) as u16)
    }

    /// The `M` bytes at `I` as a header of their own.
    #[inline(always)]
    pub fn sub<const I: usize, const M: usize>(&self) -> Header<M> {
        const { assert!(I + M <= N) };
        Header {
            // SAFETY: I + M <= N at compile time: the result lies inside this header.
            ptr: unsafe { self.ptr.add(I) },
        }
    }

    /// Bytes `I..I + 4` as a native-endian word, by one load (see [`load!`]).
    #[inline(always)]
    pub fn word<const I: usize>(&self) -> u32 {
        const { assert!(I + 4 <= N) };
        load!(self, "u32", I) as u32
    }

    /// Bytes `I..I + 8` as a native-endian 64-bit word, by one load (see [`load!`]).
    #[inline(always)]
    pub fn dword<const I: usize>(&self) -> u64 {
        const { assert!(I + 8 <= N) };
        load!(self, "u64", I)
    }
}

/// Room for the IP header when it is not in the linear data (it then is copied here); 8-byte
/// aligned for the loads of [`load!`].
pub type HeaderBuf = core::mem::MaybeUninit<[u64; Ipv6Hdr::LEN / 8]>;

/// The `N` bytes at `off` as a [`Header`] when the linear data holds them.
#[inline(always)]
fn linear<const N: usize>(ctx: &TcContext, off: usize) -> Option<Header<N>> {
    let start = ctx.data();
    (start + off + N <= ctx.data_end()).then_some(Header {
        ptr: (start + off) as *const u8,
    })
}

/// The `N` bytes at `off` as a [`Header`]: in place when the linear data holds them (the
/// common case), else copied into `buf` by `bpf_skb_load_bytes`. `None` when the frame is
/// shorter.
#[inline(always)]
fn header<const N: usize>(ctx: &TcContext, off: usize, buf: &mut HeaderBuf) -> Option<Header<N>> {
    const { assert!(N <= Ipv6Hdr::LEN) };
    if let Some(h) = linear(ctx, off) {
        return Some(h);
    }
    // SAFETY: the helper writes N bytes (at most the buffer's size) into `buf` or fails.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            off as u32,
            buf.as_mut_ptr() as *mut c_void,
            N as u32,
        )
    };
    (ret == 0).then_some(Header {
        ptr: buf.as_ptr() as *const u8,
    })
}

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
    /// The peer address (destination on egress, source on ingress) inside the checked IP
    /// header: 4 bytes for IPv4, 16 for IPv6. Read by [`peer`] only on the paths that need it.
    pub peer: *const u8,
}

pub use wslnet_common::Peer;

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
pub fn parse(ctx: &TcContext, l3_offset: u16, egress: bool, buf: &mut HeaderBuf) -> Parsed {
    let len = ctx.len() as usize;
    // Fast path, most frames: untagged Ethernet with the IP header in the linear data, checked
    // together.
    if l3_offset != L3_OFFSET_NONE
        && let Some(frame) = linear::<{ EthHdr::LEN + Ipv4Hdr::LEN }>(ctx, 0)
    {
        let ether_type = frame.be16::<12>();
        if ether_type == ETH_P_IP {
            let h = frame.sub::<{ EthHdr::LEN }, { Ipv4Hdr::LEN }>();
            return ipv4(h, EthHdr::LEN, len, egress);
        }
        if ether_type == ETH_P_IPV6
            && let Some(frame) = linear::<{ EthHdr::LEN + Ipv6Hdr::LEN }>(ctx, 0)
        {
            let h = frame.sub::<{ EthHdr::LEN }, { Ipv6Hdr::LEN }>();
            return ipv6(ctx, h, EthHdr::LEN, len, egress);
        }
    }
    let Some((family, l3)) = ip_start(ctx, l3_offset) else {
        return Parsed::Other;
    };
    if family == FAMILY_V4 {
        parse_ipv4(ctx, l3, len, egress, buf)
    } else {
        parse_ipv6(ctx, l3, len, egress, buf)
    }
}

/// The family and offset of the IP header of the frame in `ctx`, from its link layer: the
/// version nibble on an L3 device, the EtherType (after at most one 802.1Q tag) on Ethernet.
/// `None` for anything but IPv4 and IPv6, or a frame too short to tell.
#[inline(always)]
pub fn ip_start(ctx: &TcContext, l3_offset: u16) -> Option<(u32, usize)> {
    if l3_offset == L3_OFFSET_NONE {
        return match read::<u8>(ctx, 0) {
            Some(b) if b >> 4 == 4 => Some((FAMILY_V4, 0)),
            Some(b) if b >> 4 == 6 => Some((FAMILY_V6, 0)),
            _ => None,
        };
    }
    let mut ether_type = be16(ctx, 12)?;
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        // One 802.1Q tag: TCI, then the real EtherType.
        ether_type = be16(ctx, EthHdr::LEN + 2)?;
        l3 += VLAN_HLEN;
    }
    if ether_type == ETH_P_IP {
        Some((FAMILY_V4, l3))
    } else if ether_type == ETH_P_IPV6 {
        Some((FAMILY_V6, l3))
    } else {
        None
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize, len: usize, egress: bool, buf: &mut HeaderBuf) -> Parsed {
    let Some(h) = header::<{ Ipv4Hdr::LEN }>(ctx, l3, buf) else {
        return Parsed::Unparseable(FAMILY_V4);
    };
    ipv4(h, l3, len, egress)
}

/// The IPv4 packet whose header `h` is, at `l3` in a frame of `len` bytes.
#[inline(always)]
fn ipv4(h: Header<{ Ipv4Hdr::LEN }>, l3: usize, len: usize, egress: bool) -> Parsed {
    let vihl = h.u8::<0>();
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || l3 + ihl > len {
        return Parsed::Unparseable(FAMILY_V4);
    }
    let tot_len = h.be16::<2>() as usize;
    let end = if tot_len == 0 || l3 + tot_len > len {
        len
    } else {
        l3 + tot_len
    };
    let frags = h.be16::<6>();
    Parsed::Ip(Ip {
        family: FAMILY_V4,
        l3,
        l4: l3 + ihl,
        end,
        proto: h.u8::<9>(),
        df: frags & 0x4000 != 0,
        fragment: frags & 0x1fff != 0,
        // Source address at byte 12, destination at 16.
        peer: if egress {
            h.sub::<16, 4>()
        } else {
            h.sub::<12, 4>()
        }
        .ptr,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize, len: usize, egress: bool, buf: &mut HeaderBuf) -> Parsed {
    let Some(h) = header::<{ Ipv6Hdr::LEN }>(ctx, l3, buf) else {
        return Parsed::Unparseable(FAMILY_V6);
    };
    ipv6(ctx, h, l3, len, egress)
}

/// The IPv6 packet whose fixed header `h` is, at `l3` in a frame of `len` bytes; extension
/// headers are read from `ctx`.
#[inline(always)]
fn ipv6(
    ctx: &TcContext,
    h: Header<{ Ipv6Hdr::LEN }>,
    l3: usize,
    len: usize,
    egress: bool,
) -> Parsed {
    if h.u8::<0>() >> 4 != 6 {
        return Parsed::Unparseable(FAMILY_V6);
    }
    let next_hdr = h.u8::<6>();
    let payload_len = h.be16::<4>() as usize;
    let ip_end = l3 + Ipv6Hdr::LEN + payload_len;
    let end = if payload_len == 0 || ip_end > len {
        len
    } else {
        ip_end
    };
    let ip = |l4, proto, fragment| {
        Parsed::Ip(Ip {
            family: FAMILY_V6,
            l3,
            l4,
            end,
            proto,
            df: true,
            fragment,
            // Source address at byte 8, destination at 24.
            peer: if egress {
                h.sub::<24, 16>()
            } else {
                h.sub::<8, 16>()
            }
            .ptr,
        })
    };
    // Nearly every packet: no extension header, the transport header follows (inside the
    // packet: `end` is at least the fixed header's end).
    if next_hdr != IPPROTO_FRAGMENT && !is_skipped_extension(next_hdr) {
        return ip(l3 + Ipv6Hdr::LEN, next_hdr, false);
    }
    let mut next = next_hdr;
    let mut l4 = l3 + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_FRAGMENT {
            fragment = true;
            break;
        }
        if !is_skipped_extension(next) {
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
    if (!fragment && is_skipped_extension(next)) || l4 > end {
        return Parsed::Unparseable(FAMILY_V6);
    }
    ip(l4, next, fragment)
}

/// IPv6 extension headers the parser skips to find the transport header.
#[inline(always)]
fn is_skipped_extension(next: u8) -> bool {
    next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS
}

/// The peer address of `ip`, from the IP header [`parse`] checked.
#[inline(always)]
pub fn peer(ip: &Ip) -> Peer {
    // `ip.peer` was made by `Header::sub` from the header `parse` checked, with the address's
    // length for the family: each `Header` below covers readable bytes only.
    if ip.family == FAMILY_V4 {
        peer_v4(Header::<4> { ptr: ip.peer }.word::<0>())
    } else {
        let a = Header::<16> { ptr: ip.peer };
        [a.dword::<0>(), a.dword::<8>()]
    }
}

/// Bytes 12 (data offset) and 13 (flags) of a TCP header, and whether they could be read.
///
/// Not an `Option<[u8; 2]>`: the bytes of a `None` are undefined, and LLVM may load them all
/// the same (a select on the tag). That reads an uninitialised stack slot, which verifiers
/// before Linux 5.12 (no `allow_uninit_stack`) reject. Every field here is always written.
#[derive(Clone, Copy)]
pub struct TcpWord {
    /// The packet is TCP and both bytes were read.
    pub present: bool,
    /// Data offset (high nibble, in 32-bit words) and reserved bits; 0 when not present.
    pub doff: u8,
    /// The flags byte (CWR..FIN); 0 when not present.
    pub flags: u8,
}

impl TcpWord {
    /// Reads the two bytes when `ip` is TCP.
    #[inline(always)]
    pub fn read(ctx: &TcContext, ip: &Ip) -> Self {
        let bytes = if is_tcp(ip) {
            read::<[u8; 2]>(ctx, ip.l4 + 12)
        } else {
            None
        };
        match bytes {
            Some([doff, flags]) => Self {
                present: true,
                doff,
                flags,
            },
            None => Self {
                present: false,
                doff: 0,
                flags: 0,
            },
        }
    }
}

/// Bytes of the transport header for sizing GSO segments: the TCP data offset, 8 for UDP,
/// 0 when unknown or unreadable. `tcp`: bytes 12-13 of the TCP header, when already read.
#[inline(always)]
pub fn transport_header_len(ctx: &TcContext, ip: &Ip, tcp: TcpWord) -> usize {
    match ip.proto {
        // The data offset alone, when the frame ends right after it.
        IPPROTO_TCP => {
            let doff = if tcp.present {
                Some(tcp.doff)
            } else {
                read::<u8>(ctx, ip.l4 + 12)
            };
            match doff {
                Some(b) => ((b >> 4) as usize) * 4,
                None => 0,
            }
        }
        IPPROTO_UDP => 8,
        _ => 0,
    }
}

/// True for TCP.
#[inline(always)]
pub fn is_tcp(ip: &Ip) -> bool {
    ip.proto == IPPROTO_TCP
}
