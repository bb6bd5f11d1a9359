//! A pure-Rust reference model of wslnet's clamp rules: the oracle for differential tests.
//!
//! Written from DESIGN.md and netfilter's `xt_TCPMSS` (clamp-mss-to-pmtu) semantics, without
//! looking at how the eBPF datapath is structured: it takes the same inputs (frame bytes,
//! direction, the tables the agent writes) and produces the same observable outputs (frame
//! bytes, tc verdict, the counter row that moved and by how much, the learned destination).
//! It shares only facts with the datapath: protocol numbers and header lengths
//! ([`wslnet_common::proto`]) and the map ABI's constants; every rule below is its own code.
//!
//! The rules, in order:
//! 1. Link layer: on an Ethernet-like interface (L3 offset 14) the EtherType at byte 12 picks
//!    IPv4/IPv6, after at most one 802.1Q tag; on an L3 device (offset 0) the version nibble of
//!    the first byte does. Anything else, or a frame too short to tell, is not IP: passed, not
//!    counted.
//! 2. IP: a header that is truncated, has the wrong version, an IPv4 IHL below 5 or past the
//!    frame, more than [`MAX_IPV6_EXT_HEADERS`] IPv6 extension headers or a transport offset past
//!    the packet end is `unparseable`. The packet ends at the smaller of the frame length and the
//!    IP length (0 = frame length). IPv4 fragments with a non-zero offset and IPv6 packets with
//!    a fragment header are never touched at the transport layer.
//! 3. Egress, DF set (every IPv6 packet): a packet (a segment, for GSO) bigger than the
//!    family's floor ([`Globals`]) and than a non-zero path MTU in force for the destination is
//!    `oversize_df`. When that path MTU comes from a clamp entry (not the interface default), is
//!    at least 552 (IPv4) / 1280 (IPv6), and [`Globals::flags`] has `REFLECT`, the packet is also
//!    `reflected`: dropped (`TC_ACT_SHOT`) and handed to the agent with its first 128 bytes from
//!    the IP header on (when it has that many); nothing else happens to it. The agent's own probes
//!    (`PROBE_MARK`) are never dropped; the model's inputs carry no mark.
//! 4. TCP: a header shorter than 20 bytes inside the packet is `unparseable`. SYN set, RST
//!    clear: `syn` (pure egress SYNs are learned; an arriving SYN or SYN-ACK records the peer's
//!    initial sequence number for its connection). Data offset below 5, the header past the packet
//!    or a malformed option list (length below 2, past the header, MSS length not 4) is
//!    `unparseable`; no MSS option before EOL / the header end is `no_mss`; otherwise the first MSS
//!    option is compared with path MTU - 40 (IPv4) / - 60 (IPv6) for the peer (destination on
//!    egress, source on ingress): no sane path MTU is `no_clamp`, at or below is `mss_ok`, above is
//!    lowered (`mss_clamped`) with the TCP checksum updated incrementally (RFC 1624), exactly as the
//!    kernel's `bpf_l4_csum_replace` does it; except an arriving SYN-ACK that answers one of the
//!    agent's TCP probes (its source and destination port are in [`Tables::probes`]): it is left
//!    as it is and counted `no_clamp`, so that the probe can test sizes above the clamp.
//!
//! 0. Egress, the interface's DSCP set ([`IfaceConfig::dscp`] has `DSCP_SET`), before everything
//!    else: an IPv4 packet (rule 1) whose header is whole (version 4, IHL at least 5, inside the
//!    frame) or an IPv6 packet whose fixed header is (version 6) gets that DSCP in its DS field
//!    (IPv4 TOS, IPv6 traffic class), its two ECN bits kept, and IPv4 its header checksum
//!    updated the same incremental way as in rule 4; a packet already carrying the value is not
//!    written. Counted `dscp_rewritten` in the family's row. The rules below see the packet as
//!    rewritten.
//!
//! The verdict is `TC_ACT_UNSPEC` (-1) for every other packet.

use std::net::IpAddr;

pub use wslnet_common::{
    Counters, FlowKey, Globals, IfaceConfig, LearnedKey, MAX_IPV6_EXT_HEADERS,
};
use wslnet_common::{
    DSCP_SET, FAMILY_V4, FAMILY_V6, MAX_DSCP, REFLECT_QUOTE, global_flags,
    proto::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN,
        TCP_HDR_LEN, TCPOLEN_MSS, TCPOPT_EOL, TCPOPT_MSS, TCPOPT_NOP, VLAN_HLEN, tcp_flags,
    },
};

/// The tc verdict of every packet but a reflected one: `TC_ACT_UNSPEC`.
pub const TC_ACT_UNSPEC: i32 = -1;
/// The tc verdict of a reflected (dropped) packet.
pub const TC_ACT_SHOT: i32 = 2;
/// Smallest path MTU that is believed (RFC 791's minimum link MTU).
const SANE_MTU_FLOOR: u16 = 68;

/// Which tc hook the packet goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Arriving: the peer is the source address.
    Ingress,
    /// Leaving: the peer is the destination address.
    Egress,
}

impl Direction {
    /// The counter direction index (`DIR_INGRESS` / `DIR_EGRESS`).
    pub fn index(self) -> u32 {
        match self {
            Direction::Ingress => wslnet_common::DIR_INGRESS,
            Direction::Egress => wslnet_common::DIR_EGRESS,
        }
    }
}

/// A path MTU for a prefix, as in the clamp LPM maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clamp {
    /// Prefix address (bits beyond `prefix_len` are ignored).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
    /// Path MTU, bytes (0 = an entry that says "no clamp").
    pub mtu: u16,
}

/// Everything the agent writes that changes the datapath's behaviour.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// Interface settings by ifindex; a missing ifindex is counter slot 0, Ethernet, no default.
    pub ifaces: Vec<(u32, IfaceConfig)>,
    /// Clamp entries (both families); the longest matching prefix of the peer's family wins.
    pub clamps: Vec<Clamp>,
    /// Oversize pre-check floors.
    pub globals: Globals,
    /// The agent's TCP probe connections in flight: (peer address, local port).
    pub probes: Vec<(IpAddr, u16)>,
}

impl Tables {
    /// The settings in force for an interface.
    pub fn iface(&self, ifindex: u32) -> IfaceConfig {
        self.ifaces
            .iter()
            .rev()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, c)| *c)
            .unwrap_or(IfaceConfig {
                slot: 0,
                l3_offset: 14,
                ..IfaceConfig::default()
            })
    }

    /// The path MTU in force for `peer`: the longest matching prefix, else the interface default
    /// for the family (0 = none).
    pub fn path_mtu(&self, peer: IpAddr, cfg: &IfaceConfig) -> u16 {
        match (self.clamp_entry(peer), peer) {
            (Some(mtu), _) => mtu,
            (None, IpAddr::V4(_)) => cfg.default_mtu_v4,
            (None, IpAddr::V6(_)) => cfg.default_mtu_v6,
        }
    }

    /// The path MTU of the longest clamp entry matching `peer`, if any.
    pub fn clamp_entry(&self, peer: IpAddr) -> Option<u16> {
        self.clamps
            .iter()
            .filter(|c| prefix_matches(c.addr, c.prefix_len, peer))
            .max_by_key(|c| c.prefix_len)
            .map(|c| c.mtu)
    }
}

fn prefix_matches(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    let (a, b): (Vec<u8>, Vec<u8>) = match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (n.octets().to_vec(), a.octets().to_vec()),
        (IpAddr::V6(n), IpAddr::V6(a)) => (n.octets().to_vec(), a.octets().to_vec()),
        _ => return false,
    };
    let len = (len as usize).min(a.len() * 8);
    (0..len).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        a[bit / 8] & mask == b[bit / 8] & mask
    })
}

/// One packet through one hook.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The frame as the program sees it (from the link header on).
    pub frame: &'a [u8],
    /// The hook.
    pub dir: Direction,
    /// The interface (`__sk_buff.ifindex`).
    pub ifindex: u32,
    /// `__sk_buff.gso_size` (0: not a GSO packet).
    pub gso_size: u32,
}

/// The counter row that moved and by how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterMove {
    /// Interface counter slot.
    pub slot: u32,
    /// `DIR_INGRESS` / `DIR_EGRESS`.
    pub dir: u32,
    /// `FAMILY_V4` / `FAMILY_V6`.
    pub family: u32,
    /// Increments of each counter.
    pub delta: Counters,
}

/// A destination the datapath records for the prober from an egress SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The learned-map key.
    pub key: LearnedKey,
    /// The SYN's destination port as the packet carries it (network byte order); a new entry
    /// keeps it (`LearnedDest::port_be`).
    pub port_be: u16,
}

/// What the datapath does to a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The frame after the program.
    pub frame: Vec<u8>,
    /// The tc verdict.
    pub retval: i32,
    /// The counters that moved (None: nothing counted).
    pub counters: Option<CounterMove>,
    /// The destination recorded for the prober (egress pure SYNs).
    pub learned: Option<Learned>,
    /// The MSS rewrite done: (old, new).
    pub rewrite: Option<(u16, u16)>,
    /// A dropped oversize packet handed to the agent: the MTU to name and the quoted bytes.
    pub reflect: Option<Reflect>,
    /// The peer's initial sequence number recorded for its connection (arriving SYNs and
    /// SYN-ACKs).
    pub peer_isn: Option<(FlowKey, u32)>,
}

/// What the datapath tells the agent of a reflected packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reflect {
    /// The clamp entry's path MTU, bytes.
    pub mtu: u16,
    /// The first [`wslnet_common::REFLECT_QUOTE`] bytes of the packet from its IP header on.
    pub quote: Vec<u8>,
}

/// Big-endian u16 at `off`, if the frame has it.
fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// The IP packet as far as the model understood it.
struct IpView {
    family: u32,
    l3: usize,
    l4: usize,
    end: usize,
    proto: u8,
    df: bool,
    untouchable_fragment: bool,
    peer: IpAddr,
}

enum L3 {
    NotIp,
    Broken(u32),
    Ip(IpView),
}

fn link_layer(frame: &[u8], l3_offset: u16) -> Option<(u32, usize)> {
    if l3_offset == 0 {
        return match frame.first()? >> 4 {
            4 => Some((FAMILY_V4, 0)),
            6 => Some((FAMILY_V6, 0)),
            _ => None,
        };
    }
    let mut ethertype = be16(frame, ETH_HLEN - 2)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(frame, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => Some((FAMILY_V4, l3)),
        ETH_P_IPV6 => Some((FAMILY_V6, l3)),
        _ => None,
    }
}

fn network_layer(frame: &[u8], l3_offset: u16, dir: Direction) -> L3 {
    let Some((family, l3)) = link_layer(frame, l3_offset) else {
        return L3::NotIp;
    };
    let len = frame.len();
    if family == FAMILY_V4 {
        let Some(h) = frame.get(l3..l3 + IPV4_HDR_LEN) else {
            return L3::Broken(family);
        };
        let ihl = usize::from(h[0] & 0xf) * 4;
        if h[0] >> 4 != 4 || ihl < IPV4_HDR_LEN || l3 + ihl > len {
            return L3::Broken(family);
        }
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let end = if total == 0 { len } else { len.min(l3 + total) };
        let frag = u16::from_be_bytes([h[6], h[7]]);
        let src: [u8; 4] = h[12..16].try_into().unwrap();
        let dst: [u8; 4] = h[16..20].try_into().unwrap();
        let peer = if dir == Direction::Egress { dst } else { src };
        return L3::Ip(IpView {
            family,
            l3,
            l4: l3 + ihl,
            end,
            proto: h[9],
            df: frag & 0x4000 != 0,
            untouchable_fragment: frag & 0x1fff != 0,
            peer: IpAddr::from(peer),
        });
    }
    let Some(h) = frame.get(l3..l3 + IPV6_HDR_LEN) else {
        return L3::Broken(family);
    };
    if h[0] >> 4 != 6 {
        return L3::Broken(family);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = if payload == 0 {
        len
    } else {
        len.min(l3 + IPV6_HDR_LEN + payload)
    };
    let src: [u8; 16] = h[8..24].try_into().unwrap();
    let dst: [u8; 16] = h[24..40].try_into().unwrap();
    let peer = if dir == Direction::Egress { dst } else { src };
    let mut next = h[6];
    let mut l4 = l3 + IPV6_HDR_LEN;
    let mut skipped = 0;
    let mut fragment = false;
    loop {
        if next == IPPROTO_FRAGMENT {
            fragment = true;
            break;
        }
        if !matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
            break;
        }
        if skipped == MAX_IPV6_EXT_HEADERS {
            return L3::Broken(family);
        }
        let (Some(&nh), Some(&hlen)) = (frame.get(l4), frame.get(l4 + 1)) else {
            return L3::Broken(family);
        };
        next = nh;
        l4 += (usize::from(hlen) + 1) * 8;
        skipped += 1;
    }
    if l4 > end {
        return L3::Broken(family);
    }
    L3::Ip(IpView {
        family,
        l3,
        l4,
        end,
        proto: next,
        df: true,
        untouchable_fragment: fragment,
        peer: IpAddr::from(peer),
    })
}

/// Where the options walk ended.
enum Options {
    Mss { value_at: usize, mss: u16 },
    None,
    Malformed,
}

fn walk_options(frame: &[u8], opts: std::ops::Range<usize>) -> Options {
    let mut at = opts.start;
    while at < opts.end {
        match frame[at] {
            TCPOPT_EOL => return Options::None,
            TCPOPT_NOP => at += 1,
            kind => {
                if at + 1 >= opts.end {
                    return Options::Malformed;
                }
                let olen = usize::from(frame[at + 1]);
                if olen < 2 || at + olen > opts.end {
                    return Options::Malformed;
                }
                if kind == TCPOPT_MSS {
                    if olen != usize::from(TCPOLEN_MSS) {
                        return Options::Malformed;
                    }
                    return Options::Mss {
                        value_at: at + 2,
                        mss: u16::from_be_bytes([frame[at + 2], frame[at + 3]]),
                    };
                }
                at += olen;
            }
        }
    }
    Options::None
}

/// One's-complement sum of big-endian 16-bit words, folded to 16 bits (0 only for all-zero input).
fn ones_sum(words: impl IntoIterator<Item = u16>) -> u16 {
    let mut s: u32 = 0;
    for w in words {
        s += u32::from(w);
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Rule 0: writes the interface's DSCP into the DS field of an IP packet with a whole header,
/// keeping ECN.
fn set_dscp(cfg: &IfaceConfig, frame: &mut [u8], delta: &mut Counters) {
    let Some((family, l3)) = link_layer(frame, cfg.l3_offset) else {
        return;
    };
    let v4 = family == FAMILY_V4;
    let whole = match frame.get(l3) {
        Some(b) if v4 => {
            let ihl = usize::from(b & 0xf) * 4;
            b >> 4 == 4 && ihl >= IPV4_HDR_LEN && l3 + ihl <= frame.len()
        }
        Some(b) => b >> 4 == 6 && l3 + IPV6_HDR_LEN <= frame.len(),
        None => false,
    };
    if !whole {
        return;
    }
    let ds = if v4 {
        frame[l3 + 1]
    } else {
        (frame[l3] << 4) | (frame[l3 + 1] >> 4)
    };
    let new = ((cfg.dscp & MAX_DSCP) << 2) | (ds & 0b11);
    if new == ds {
        return;
    }
    if v4 {
        replace_with_checksum(frame, l3, l3 + 1, &[new], l3 + 10);
    } else {
        frame[l3] = (frame[l3] & 0xf0) | (new >> 4);
        frame[l3 + 1] = (new << 4) | (frame[l3 + 1] & 0x0f);
    }
    delta.dscp_rewritten += 1;
}

/// Replaces bytes `at..at+new.len()` (inside the header starting at `start`, whose 16-bit words
/// are counted from there) and updates the checksum at `check_at` incrementally over the words
/// that changed, like the kernel's `csum_replace4`: check' = ~(~check + ~old + new), where a zero
/// sum is 0xffff (the kernel's arithmetic always carries a one's-complement "negative zero"
/// term), so check' is never 0xffff.
fn replace_with_checksum(frame: &mut [u8], start: usize, at: usize, new: &[u8], check_at: usize) {
    let first = start + ((at - start) & !1);
    let last = at + new.len();
    let last = start + (last - start).div_ceil(2) * 2;
    let words = |f: &[u8]| -> Vec<u16> {
        (first..last)
            .step_by(2)
            .map(|i| u16::from_be_bytes([f[i], f[i + 1]]))
            .collect()
    };
    let old = words(frame);
    frame[at..at + new.len()].copy_from_slice(new);
    let updated = words(frame);
    let check = u16::from_be_bytes([frame[check_at], frame[check_at + 1]]);
    let terms = std::iter::once(!check)
        .chain(old.into_iter().map(|w| !w))
        .chain(updated);
    let mut sum = ones_sum(terms);
    if sum == 0 {
        sum = 0xffff;
    }
    frame[check_at..check_at + 2].copy_from_slice(&(!sum).to_be_bytes());
}

/// The MSS that fits a path MTU, if the MTU is believable.
fn mss_limit(mtu: u16, family: u32) -> Option<u16> {
    let overhead = if family == FAMILY_V6 { 60 } else { 40 };
    (mtu >= SANE_MTU_FLOOR && mtu > overhead).then(|| mtu - overhead)
}

/// Runs one packet through the model of the datapath.
pub fn run(tables: &Tables, input: Input<'_>) -> Outcome {
    let cfg = tables.iface(input.ifindex);
    let mut out = Outcome {
        frame: input.frame.to_vec(),
        retval: TC_ACT_UNSPEC,
        counters: None,
        learned: None,
        rewrite: None,
        reflect: None,
        peer_isn: None,
    };
    let mut delta = Counters::default();
    if input.dir == Direction::Egress && cfg.dscp & DSCP_SET != 0 {
        set_dscp(&cfg, &mut out.frame, &mut delta);
    }
    let rewritten = out.frame.clone();
    let input = Input {
        frame: &rewritten,
        ..input
    };
    let family = match network_layer(input.frame, cfg.l3_offset, input.dir) {
        L3::NotIp => return out,
        L3::Broken(family) => {
            delta.unparseable += 1;
            family
        }
        L3::Ip(ip) => {
            transport(tables, &cfg, &input, &ip, &mut out, &mut delta);
            ip.family
        }
    };
    if delta != Counters::default() {
        out.counters = Some(CounterMove {
            slot: cfg.slot,
            dir: input.dir.index(),
            family,
            delta,
        });
    }
    out
}

fn transport(
    tables: &Tables,
    cfg: &IfaceConfig,
    input: &Input<'_>,
    ip: &IpView,
    out: &mut Outcome,
    delta: &mut Counters,
) {
    let frame = input.frame;
    if input.dir == Direction::Egress && ip.df {
        let size = if input.gso_size != 0 {
            let thl = match ip.proto {
                IPPROTO_TCP => frame.get(ip.l4 + 12).map_or(0, |b| usize::from(b >> 4) * 4),
                IPPROTO_UDP => 8,
                _ => 0,
            };
            ip.l4 - ip.l3 + thl + input.gso_size as usize
        } else {
            ip.end - ip.l3
        };
        let floor = if ip.family == FAMILY_V4 {
            tables.globals.min_mtu_v4
        } else {
            tables.globals.min_mtu_v6
        };
        let mtu = usize::from(tables.path_mtu(ip.peer, cfg));
        if size > usize::from(floor) && mtu != 0 && size > mtu {
            delta.oversize_df += 1;
            let least = if ip.family == FAMILY_V4 { 552 } else { 1280 };
            if let Some(entry) = tables.clamp_entry(ip.peer)
                && entry >= least
                && tables.globals.flags & global_flags::REFLECT != 0
            {
                delta.reflected += 1;
                out.retval = TC_ACT_SHOT;
                let quote = frame.get(ip.l3..ip.l3 + REFLECT_QUOTE);
                out.reflect = quote.map(|q| Reflect {
                    mtu: entry,
                    quote: q.to_vec(),
                });
                return;
            }
        }
    }
    if ip.untouchable_fragment || ip.proto != IPPROTO_TCP {
        return;
    }
    if ip.l4 + TCP_HDR_LEN > ip.end {
        delta.unparseable += 1;
        return;
    }
    let flags = frame[ip.l4 + 13];
    if flags & (tcp_flags::SYN | tcp_flags::RST) != tcp_flags::SYN {
        return;
    }
    delta.syn += 1;
    if input.dir == Direction::Egress && flags & tcp_flags::ACK == 0 {
        let mut addr = [0u8; 16];
        match ip.peer {
            IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        out.learned = Some(Learned {
            key: LearnedKey {
                family: ip.family,
                addr,
            },
            port_be: u16::from_be_bytes([frame[ip.l4 + 2], frame[ip.l4 + 3]]).to_be(),
        });
    } else if input.dir == Direction::Ingress {
        let mut addr = [0u8; 16];
        match ip.peer {
            IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        let port = |at: usize| u16::from_ne_bytes([frame[at], frame[at + 1]]);
        out.peer_isn = Some((
            FlowKey {
                family: ip.family,
                peer_port_be: port(ip.l4),
                local_port_be: port(ip.l4 + 2),
                addr,
            },
            u32::from_be_bytes([
                frame[ip.l4 + 4],
                frame[ip.l4 + 5],
                frame[ip.l4 + 6],
                frame[ip.l4 + 7],
            ]),
        ));
    }
    let hdr_len = usize::from(frame[ip.l4 + 12] >> 4) * 4;
    if hdr_len < TCP_HDR_LEN || ip.l4 + hdr_len > ip.end {
        delta.unparseable += 1;
        return;
    }
    match walk_options(frame, ip.l4 + TCP_HDR_LEN..ip.l4 + hdr_len) {
        Options::Malformed => delta.unparseable += 1,
        Options::None => delta.no_mss += 1,
        Options::Mss { value_at, mss } => {
            match mss_limit(tables.path_mtu(ip.peer, cfg), ip.family) {
                None => delta.no_clamp += 1,
                Some(limit) if mss <= limit => delta.mss_ok += 1,
                Some(_)
                    if input.dir == Direction::Ingress && flags & tcp_flags::ACK != 0 && {
                        let dport = u16::from_be_bytes([frame[ip.l4 + 2], frame[ip.l4 + 3]]);
                        tables.probes.contains(&(ip.peer, dport))
                    } =>
                {
                    delta.no_clamp += 1
                }
                Some(limit) => {
                    replace_with_checksum(
                        &mut out.frame,
                        ip.l4,
                        value_at,
                        &limit.to_be_bytes(),
                        ip.l4 + 16,
                    );
                    out.rewrite = Some((mss, limit));
                    delta.mss_clamped += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_checksum_matches_full_recompute() {
        // A 24-byte "segment" with a checksum field; replacing bytes keeps sum(all) == 0xffff.
        let mut seg = vec![0u8; 24];
        for (i, b) in seg.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let fix = |s: &mut Vec<u8>| {
            s[16] = 0;
            s[17] = 0;
            let c = !ones_sum(s.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])));
            s[16..18].copy_from_slice(&c.to_be_bytes());
        };
        fix(&mut seg);
        for at in [20usize, 21] {
            let mut s = seg.clone();
            replace_with_checksum(&mut s, 0, at, &[0x05, 0x34], 16);
            assert_eq!(&s[at..at + 2], &[0x05, 0x34]);
            let total = ones_sum(s.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])));
            assert_eq!(total, 0xffff, "at {at}");
        }
    }

    #[test]
    fn mss_limits() {
        assert_eq!(mss_limit(1372, FAMILY_V4), Some(1332));
        assert_eq!(mss_limit(1372, FAMILY_V6), Some(1312));
        assert_eq!(mss_limit(67, FAMILY_V4), None);
        assert_eq!(mss_limit(0, FAMILY_V6), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let t = Tables {
            clamps: vec![
                Clamp {
                    addr: "10.0.0.0".parse().unwrap(),
                    prefix_len: 8,
                    mtu: 1400,
                },
                Clamp {
                    addr: "10.1.0.0".parse().unwrap(),
                    prefix_len: 16,
                    mtu: 1300,
                },
            ],
            ..Default::default()
        };
        let cfg = t.iface(1);
        assert_eq!(t.path_mtu("10.1.2.3".parse().unwrap(), &cfg), 1300);
        assert_eq!(t.path_mtu("10.2.2.3".parse().unwrap(), &cfg), 1400);
        assert_eq!(t.path_mtu("11.2.2.3".parse().unwrap(), &cfg), 0);
    }
}
