//! Maps and entry points. The map ABI (key and value types, names) is in `wslnet-common`.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_socket_uid, bpf_jiffies64, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use wslnet_common::{
    COUNTER_ENTRIES, Counters, DIR_EGRESS, DIR_INGRESS, DSCP_SET, FAMILY_V4, FAMILY_V6, FlowKey,
    Globals, ISN_SLOTS, IfaceConfig, L3_OFFSET_ETHERNET, LEARN_REFRESH_JIFFIES, LearnCacheEntry,
    LearnedDest, LearnedKey, MAX_CLAMP_ENTRIES, MAX_DSCP, MAX_IFINDEX, MAX_LEARNED, MAX_PROBES,
    MIN_PATH_MTU_V4, MIN_PATH_MTU_V6, NEW_DESTS_BYTES, PEER_CACHE_SLOTS, PROBE_MARK, PathMtu,
    PeerIsn, ProbeKey, ProbeMark, REFLECT_BYTES, REFLECT_QUOTE, ReflectEvent, counter_index,
    global_flags, isn_slot, mss_for_mtu, peer_bytes, peer_cache_slot,
    proto::{IPV4_HDR_LEN, IPV6_HDR_LEN, TCP_DPORT_OFFSET, TCP_HDR_LEN, TCP_SEQ_OFFSET, tcp_flags},
};

use crate::{
    mss::{self, MssOption},
    packet::{self, Ip, Parsed, Peer},
};

/// Path MTU (bytes) per IPv4 prefix; the longest matching prefix wins. Written by the agent.
#[map(name = "WSLNET_CLAMP_V4")]
static WSLNET_CLAMP_V4: LpmTrie<[u8; 4], PathMtu> = LpmTrie::pinned(MAX_CLAMP_ENTRIES, 0);

/// Path MTU (bytes) per IPv6 prefix; the longest matching prefix wins. Written by the agent.
#[map(name = "WSLNET_CLAMP_V6")]
static WSLNET_CLAMP_V6: LpmTrie<[u8; 16], PathMtu> = LpmTrie::pinned(MAX_CLAMP_ENTRIES, 0);

/// Per-interface settings (counter slot, L3 offset, default path MTUs), indexed by ifindex.
#[map(name = "WSLNET_IFACES")]
static WSLNET_IFACES: Array<IfaceConfig> = Array::pinned(MAX_IFINDEX, 0);

/// Packet counters per interface slot, direction and family, per CPU.
#[map(name = "WSLNET_COUNTERS")]
static WSLNET_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);

/// Destinations of egress SYNs, for the prober; least recently used evicted first.
#[map(name = "WSLNET_LEARNED")]
static WSLNET_LEARNED: LruHashMap<LearnedKey, LearnedDest> = LruHashMap::pinned(MAX_LEARNED, 0);

/// Destinations newly inserted into WSLNET_LEARNED, so the agent need not scan the map.
#[map(name = "WSLNET_NEW_DESTS")]
static WSLNET_NEW_DESTS: RingBuf = RingBuf::pinned(NEW_DESTS_BYTES, 0);

/// The agent's own TCP probe connections in flight, by peer and local port: their SYN-ACKs
/// keep the peer's MSS (see [`is_probe`]). Written by the agent.
#[map(name = "WSLNET_PROBES")]
static WSLNET_PROBES: HashMap<ProbeKey, ProbeMark> = HashMap::pinned(MAX_PROBES, 0);

/// The initial sequence number of every peer that sent us a SYN or SYN-ACK (see
/// `record_peer_isn`), per CPU, direct-mapped by `isn_slot`.
#[map(name = "WSLNET_PEER_ISN")]
static WSLNET_PEER_ISN: PerCpuArray<PeerIsn> = PerCpuArray::pinned(ISN_SLOTS, 0);

/// Oversize packets dropped for the agent to answer with an ICMP error (see `reflect`).
#[map(name = "WSLNET_REFLECT")]
static WSLNET_REFLECT: RingBuf = RingBuf::pinned(REFLECT_BYTES, 0);

/// Global settings (one entry).
#[map(name = "WSLNET_GLOBALS")]
static WSLNET_GLOBALS: Array<Globals> = Array::pinned(1, 0);

/// Marks a cached result as "an entry matched" (its MTU, possibly 0, is in the low 16 bits).
const CACHED_FOUND: u32 = 1 << 16;

/// One LPM result cached by a CPU: the clamp tables' answer for one peer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerCacheEntry {
    /// The peer address ([`Peer`]).
    peer: Peer,
    /// `Globals::clamp_generation` when it was looked up; a stale generation is a miss.
    generation: u32,
    /// `FAMILY_V4` or `FAMILY_V6`.
    family: u32,
    /// [`CACHED_FOUND`] | path MTU (bytes) of the longest matching prefix; 0 = no entry.
    result: u32,
    /// Unused, 0.
    reserved: u32,
}

/// Per-CPU direct-mapped cache of LPM results, indexed by a hash of the peer: most packets go
/// to a peer looked up moments ago, and an array lookup is inlined by the verifier where an
/// LPM lookup is a helper call walking the trie. Private to the loaded programs (not pinned).
#[map(name = "WSLNET_PEER_CACHE")]
static WSLNET_PEER_CACHE: PerCpuArray<PeerCacheEntry> =
    PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);

/// Per-CPU direct-mapped record of recent writes to `WSLNET_LEARNED`, indexed like
/// `WSLNET_PEER_CACHE`: a burst of connections to one destination costs one LRU hash lookup
/// per CPU and [`LEARN_REFRESH_JIFFIES`], instead of one per SYN; `bpf_jiffies64` is inlined by
/// the verifier. Private to the loaded programs.
#[map(name = "WSLNET_LEARN_CACHE")]
static WSLNET_LEARN_CACHE: PerCpuArray<LearnCacheEntry> =
    PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);

/// Settings of an interface the agent did not configure (counter slot 0, Ethernet, no default).
const UNCONFIGURED: IfaceConfig = IfaceConfig {
    slot: 0,
    l3_offset: L3_OFFSET_ETHERNET,
    default_mtu_v4: 0,
    default_mtu_v6: 0,
    flags: 0,
    dscp: 0,
    reserved: [0; 3],
};

/// The ECN bits of the DS field (RFC 3168), never touched by the DSCP rewrite.
const ECN_MASK: u8 = 0b11;
/// Offset of the header checksum inside the IPv4 header.
const IPV4_CSUM_OFFSET: usize = 10;

/// Ingress hook: clamps the MSS of arriving SYN / SYN-ACKs to the path MTU of their source,
/// which caps what our stack will send to that peer.
#[classifier]
pub fn wslnet_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_INGRESS)
}

/// Egress hook: sets the DSCP when configured, clamps the MSS of leaving SYN / SYN-ACKs to the
/// path MTU of their destination (caps what the peer sends us), counts (and, reflecting, drops)
/// oversize DF packets, records SYN destinations.
#[classifier]
pub fn wslnet_egress(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_EGRESS)
}

#[inline(always)]
fn skb(ctx: &TcContext) -> *const __sk_buff {
    ctx.as_ptr() as *const __sk_buff
}

/// The verdict for one packet: `TC_ACT_UNSPEC` (TCX_NEXT: other programs on the hook still run),
/// or `TC_ACT_SHOT` for an oversize packet handed to the agent (`reflect`).
#[inline(always)]
fn handle(ctx: &TcContext, dir: u32) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*skb(ctx)).ifindex };
    let cfg = match WSLNET_IFACES.get(ifindex) {
        Some(c) if c.is_present() => *c,
        _ => UNCONFIGURED,
    };
    let egress = dir == DIR_EGRESS;
    // First, before any packet pointer exists (a store invalidates them all), so that both
    // outcomes meet the rest of the program in the same state and the verifier walks it once.
    if egress && cfg.dscp & DSCP_SET != 0 {
        set_dscp(ctx, &cfg);
    }
    let mut buf = packet::HeaderBuf::uninit();
    let ip = match packet::parse(ctx, cfg.l3_offset, egress, &mut buf) {
        Parsed::Ip(ip) => ip,
        Parsed::Other => return TC_ACT_UNSPEC,
        Parsed::Unparseable(family) => {
            bump(cfg.slot, dir, family, |c| c.unparseable += 1);
            return TC_ACT_UNSPEC;
        }
    };
    if ip.family == FAMILY_V4 {
        handle_ip::<FAMILY_V4>(ctx, dir, ifindex, &cfg, ip)
    } else {
        handle_ip::<FAMILY_V6>(ctx, dir, ifindex, &cfg, ip)
    }
}

/// Writes the interface's DSCP ([`IfaceConfig::dscp`]) into the DS field of an egress IPv4 or
/// IPv6 packet (a whole IPv4 header or the fixed IPv6 header in the frame), keeping the ECN bits,
/// for NATs and VPN clients that drop packets with some marks (OpenSSH's default
/// `IPQoS af21 cs1`). IPv4's header checksum is updated incrementally; IPv6 has none, and no
/// transport checksum covers the field. A packet that already carries the value costs no
/// write.
///
/// A BPF-to-BPF call, not inlined: inlined, its body made the IPv6 TCP egress path 8 ns slower
/// with the setting off (the bench's `ack6_1500_oversize` went from +13 to +21 ns over the
/// empty program); called, the setting costs only its test when off.
#[inline(never)]
fn set_dscp(ctx: &TcContext, cfg: &IfaceConfig) {
    let Some((family, l3)) = packet::ip_start(ctx, cfg.l3_offset) else {
        return;
    };
    let Some(old) = packet::read::<[u8; 2]>(ctx, l3) else {
        return;
    };
    let len = ctx.len() as usize;
    let v4 = family == FAMILY_V4;
    let whole_header = if v4 {
        let ihl = ((old[0] & 0x0f) as usize) * 4;
        old[0] >> 4 == 4 && ihl >= IPV4_HDR_LEN && l3 + ihl <= len
    } else {
        old[0] >> 4 == 6 && l3 + IPV6_HDR_LEN <= len
    };
    if !whole_header {
        return;
    }
    // The IPv4 TOS byte; the IPv6 traffic class straddles bytes 0 and 1 after the version.
    let ds = if v4 {
        old[1]
    } else {
        (old[0] << 4) | (old[1] >> 4)
    };
    let new = ((cfg.dscp & MAX_DSCP) << 2) | (ds & ECN_MASK);
    if new == ds {
        return;
    }
    let written = if v4 {
        // Bytes 0-1 (version and IHL, DS) are one 16-bit word of the header checksum.
        let word = [old[0], new];
        ctx.store(l3 + 1, &new, 0).is_ok()
            && ctx
                .l3_csum_replace(
                    l3 + IPV4_CSUM_OFFSET,
                    u16::from_ne_bytes(old) as u64,
                    u16::from_ne_bytes(word) as u64,
                    2,
                )
                .is_ok()
    } else {
        let bytes = [(old[0] & 0xf0) | (new >> 4), (new << 4) | (old[1] & 0x0f)];
        ctx.store(l3, &bytes, 0).is_ok()
    };
    if written {
        bump(cfg.slot, DIR_EGRESS, family, |c| c.dscp_rewritten += 1);
    }
}

/// Everything after parsing, compiled once per family `F` (`ip.family`): with the family a
/// constant, each copy drops the other family's branches.
#[inline(always)]
fn handle_ip<const F: u32>(
    ctx: &TcContext,
    dir: u32,
    ifindex: u32,
    cfg: &IfaceConfig,
    ip: Ip,
) -> i32 {
    let ip = Ip { family: F, ..ip };
    let egress = dir == DIR_EGRESS;
    // Bytes 12 (data offset) and 13 (flags) of a TCP header, read once for both uses below.
    let tcp = packet::TcpWord::read(ctx, &ip);
    if egress && ip.df && oversize(ctx, &ip, ifindex, cfg, tcp) {
        return TC_ACT_SHOT;
    }
    if ip.fragment || !packet::is_tcp(&ip) {
        return TC_ACT_UNSPEC;
    }
    // The fixed TCP header must lie inside the IP packet: bytes past `end` (Ethernet padding,
    // or beyond a short IP length) are not TCP and must not be read as flags.
    if ip.l4 + TCP_HDR_LEN > ip.end {
        bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1);
        return TC_ACT_UNSPEC;
    }
    if !tcp.present {
        bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1);
        return TC_ACT_UNSPEC;
    }
    let (doff, flags) = (tcp.doff, tcp.flags);
    if flags & (tcp_flags::SYN | tcp_flags::RST) != tcp_flags::SYN {
        return TC_ACT_UNSPEC;
    }
    bump(cfg.slot, dir, ip.family, |c| c.syn += 1);
    let peer = packet::peer(&ip);
    if egress && flags & tcp_flags::ACK == 0 {
        // SAFETY: `skb` is the program's own context, valid for the run.
        let mark = unsafe { (*skb(ctx)).mark };
        // The agent's own TCP probes are not traffic to learn from: they would stand for the
        // agent's route and keep a destination looking used.
        if mark != PROBE_MARK {
            learn(ctx, &ip, &peer, ifindex, mark);
        }
    } else if !egress {
        record_peer_isn(ctx, &ip, &peer);
    }
    match mss::find(ctx, ip.l4, ip.end, doff) {
        MssOption::Malformed => bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1),
        MssOption::Absent => bump(cfg.slot, dir, ip.family, |c| c.no_mss += 1),
        MssOption::Found { value_offset, mss } => {
            let generation = globals().clamp_generation;
            let clamp = mss_for_mtu(path_mtu(&ip, &peer, cfg, generation), ip.family);
            match clamp {
                None => bump(cfg.slot, dir, ip.family, |c| c.no_clamp += 1),
                Some(clamp) if mss <= clamp => bump(cfg.slot, dir, ip.family, |c| c.mss_ok += 1),
                Some(_) if !egress && flags & tcp_flags::ACK != 0 && is_probe(ctx, &ip, &peer) => {
                    bump(cfg.slot, dir, ip.family, |c| c.no_clamp += 1)
                }
                Some(clamp) => {
                    if mss::rewrite(ctx, ip.l4, value_offset, mss, clamp).is_ok() {
                        bump(cfg.slot, dir, ip.family, |c| c.mss_clamped += 1);
                        debug!(ctx, "mss {} -> {} on ifindex {}", mss, clamp, ifindex);
                    } else {
                        bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1);
                    }
                }
            }
        }
    }
    TC_ACT_UNSPEC
}

/// Records the initial sequence number of an arriving SYN or SYN-ACK by connection: when the
/// path shrinks under a running download, the agent tells the peer with an ICMP error that must
/// quote a sequence number inside the peer's window, and the peer's ISN plus what we received
/// (`tcpi_bytes_received`) is exactly our acknowledgement. Only handshakes pay for it.
#[inline(always)]
fn record_peer_isn(ctx: &TcContext, ip: &Ip, peer: &Peer) {
    let (Some(ports), Some(seq)) = (
        packet::read::<[u16; 2]>(ctx, ip.l4),
        packet::read::<u32>(ctx, ip.l4 + TCP_SEQ_OFFSET),
    ) else {
        return;
    };
    let Some(slot) = WSLNET_PEER_ISN.get_ptr_mut(isn_slot(peer, ports[0], ports[1])) else {
        return;
    };
    // SAFETY: this CPU's slot, valid for the program's run; see `lpm_lookup`.
    unsafe {
        *slot = PeerIsn {
            key: FlowKey {
                family: ip.family,
                peer_port_be: ports[0],
                local_port_be: ports[1],
                addr: peer_bytes(peer),
            },
            isn: u32::from_be(seq),
            reserved: 0,
        }
    };
}

/// True when an arriving SYN-ACK answers one of the agent's TCP probes (its source and
/// destination port are in `WSLNET_PROBES`). A probe tests whether a segment of some size
/// crosses the path; the clamp in force would cap the size it may send below what it tests.
/// Looked up only when a rewrite is due, so the map costs nothing on other packets.
#[inline(always)]
fn is_probe(ctx: &TcContext, ip: &Ip, peer: &Peer) -> bool {
    let Some(port_be) = packet::read::<u16>(ctx, ip.l4 + TCP_DPORT_OFFSET) else {
        return false;
    };
    let key = ProbeKey {
        family: ip.family,
        port_be,
        reserved: 0,
        addr: peer_bytes(peer),
    };
    // SAFETY: the value is only tested for presence, never read.
    unsafe { WSLNET_PROBES.get(&key) }.is_some()
}

/// The global settings; all zero (no floor, no cache) before the agent writes them.
#[inline(always)]
fn globals() -> Globals {
    match WSLNET_GLOBALS.get(0) {
        Some(g) => *g,
        None => Globals::default(),
    }
}

/// The path MTU in force for the packet's peer: the longest matching LPM entry, else the
/// interface default for the family; 0 when neither exists.
#[inline(always)]
fn path_mtu(ip: &Ip, peer: &Peer, cfg: &IfaceConfig, generation: u32) -> u16 {
    let found = lpm_lookup(ip.family, peer, generation);
    if found & CACHED_FOUND != 0 {
        found as u16
    } else {
        default_mtu(ip.family, cfg)
    }
}

/// The interface default path MTU for a family (the first-contact clamp); 0 = none.
#[inline(always)]
fn default_mtu(family: u32, cfg: &IfaceConfig) -> u16 {
    if family == FAMILY_V4 {
        cfg.default_mtu_v4
    } else {
        cfg.default_mtu_v6
    }
}

/// The longest prefix matching `peer` in the family's clamp table, through this CPU's cache
/// when `generation` (the current `Globals::clamp_generation`) is not 0: [`CACHED_FOUND`] | its
/// path MTU (an entry may hold 0: no clamp for that prefix, whatever the interface default), or
/// 0 when no entry matches.
///
/// A plain `u32` rather than an `Option<u16>`: LLVM spills the undefined payload of a `None`,
/// and verifiers before Linux 5.12 reject that read of an uninitialised register.
#[inline(always)]
fn lpm_lookup(family: u32, peer: &Peer, generation: u32) -> u32 {
    let slot = peer_cache_slot(peer);
    let cached = if generation != 0 {
        WSLNET_PEER_CACHE.get_ptr_mut(slot)
    } else {
        None
    };
    if let Some(e) = cached {
        // SAFETY: this CPU's slot, valid for the program's run; tc programs do not preempt
        // each other on one CPU (softirq, or BH disabled on egress; PREEMPT_RT kernels, which
        // WSL does not use, would break this), so no other writer can tear the entry under us.
        let e = unsafe { &*e };
        if e.generation == generation && e.family == family && e.peer == *peer {
            return e.result;
        }
    }
    let found = if family == FAMILY_V4 {
        let [a, b, c, d, ..] = peer[0].to_ne_bytes();
        let key = Key::new(32, [a, b, c, d]);
        WSLNET_CLAMP_V4
            .get(&key)
            .map_or(0, |e| CACHED_FOUND | e.mtu as u32)
    } else {
        let key = Key::new(128, peer_bytes(peer));
        WSLNET_CLAMP_V6
            .get(&key)
            .map_or(0, |e| CACHED_FOUND | e.mtu as u32)
    };
    if let Some(e) = cached {
        // SAFETY: as above.
        unsafe {
            *e = PeerCacheEntry {
                peer: *peer,
                generation,
                family,
                result: found,
                reserved: 0,
            }
        };
    }
    found
}

/// Counts an egress DF packet larger than the path MTU in force for its destination (for GSO
/// packets the size is that of one segment: headers + `gso_size`; `tcp`: bytes 12-13 of the TCP
/// header when the packet is TCP and they could be read). Returns true when the packet is to be
/// dropped and answered: its path MTU is a clamp entry (a measurement or the user's, never the
/// first-contact default, which is a guess), no smaller than what an ICMP error may name,
/// reflection is on, and it is not one of the agent's probes ([`PROBE_MARK`]). A router on the path would drop it anyway; this one tells the sender.
#[inline(always)]
fn oversize(
    ctx: &TcContext,
    ip: &Ip,
    ifindex: u32,
    cfg: &IfaceConfig,
    tcp: packet::TcpWord,
) -> bool {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let gso_size = unsafe { (*skb(ctx)).gso_size } as usize;
    let size = if gso_size != 0 {
        ip.l4 - ip.l3 + packet::transport_header_len(ctx, ip, tcp) + gso_size
    } else {
        ip.end - ip.l3
    };
    // Cheap pre-check: no packet at or below the smallest MTU in force can be oversize.
    let g = globals();
    let floor = if ip.family == FAMILY_V4 {
        g.min_mtu_v4
    } else {
        g.min_mtu_v6
    } as usize;
    if size <= floor {
        return false;
    }
    // The counters are looked up first, so that the CPU can fetch them while the path MTU is
    // looked up.
    let counters = counters(cfg.slot, DIR_EGRESS, ip.family);
    let peer = packet::peer(ip);
    let mtu = path_mtu(ip, &peer, cfg, g.clamp_generation) as usize;
    if mtu == 0 || size <= mtu {
        return false;
    }
    let Some(c) = counters else {
        return false;
    };
    c.oversize_df += 1;
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    if g.flags & global_flags::REFLECT == 0 || unsafe { (*skb(ctx)).mark } == PROBE_MARK {
        return false;
    }
    // Only a clamp entry is evidence; the interface default is a guess. Looked up again (a
    // per-CPU cache hit) on this rare path rather than threaded through the common one, whose
    // shape the verifier has accepted.
    let least = if ip.family == FAMILY_V4 {
        MIN_PATH_MTU_V4
    } else {
        MIN_PATH_MTU_V6
    };
    let found = lpm_lookup(ip.family, &peer, g.clamp_generation);
    let entry = found as u16;
    if found & CACHED_FOUND != 0 && entry >= least {
        c.reflected += 1;
        reflect(ctx, ip, ifindex, entry);
        true
    } else {
        false
    }
}

/// Hands a dropped oversize packet to the agent (`WSLNET_REFLECT`): its interface, the MTU to
/// name and its first [`REFLECT_QUOTE`] bytes from the IP header on. A full ring loses the
/// answer, not the drop: the path would have dropped the packet anyway.
#[inline(always)]
fn reflect(ctx: &TcContext, ip: &Ip, ifindex: u32, mtu: u16) {
    let Some(mut entry) = WSLNET_REFLECT.reserve::<ReflectEvent>(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved record is this program's alone until it is submitted or discarded,
    // and `e` points into it; every field is written before the submit.
    let loaded = unsafe {
        (*e).ifindex = ifindex;
        (*e).family = ip.family;
        (*e).mtu = mtu as u32;
        (*e).quote_len = (ip.end - ip.l3).min(REFLECT_QUOTE) as u32;
        // A constant length, as the verifier wants it: a packet too short for it (only a GSO
        // packet crafted in a test can be) fails the load and is not answered.
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            ip.l3 as u32,
            (*e).quote.as_mut_ptr() as *mut _,
            REFLECT_QUOTE as u32,
        )
    };
    if loaded == 0 {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}

/// Records the destination of an egress SYN for the prober: in `WSLNET_LEARNED` at once when the
/// destination is new to this CPU, else at most once per [`LEARN_REFRESH_JIFFIES`].
#[inline(always)]
fn learn(ctx: &TcContext, ip: &Ip, peer: &Peer, ifindex: u32, mark: u32) {
    // SAFETY: bpf_jiffies64 has no preconditions.
    let now = unsafe { bpf_jiffies64() };
    let Some(slot) = WSLNET_LEARN_CACHE.get_ptr_mut(peer_cache_slot(peer)) else {
        write_learned(ctx, ip, peer, ifindex, mark, 1, now);
        return;
    };
    // SAFETY: this CPU's slot, valid for the program's run; see `lpm_lookup`.
    let slot = unsafe { &mut *slot };
    if slot.written != 0 && slot.family == ip.family && slot.peer == *peer {
        if now.wrapping_sub(slot.written) < LEARN_REFRESH_JIFFIES {
            slot.pending += 1;
            return;
        }
        write_learned(ctx, ip, peer, ifindex, mark, slot.pending + 1, now);
    } else {
        if slot.written != 0 && slot.pending != 0 {
            flush_learned(slot);
        }
        write_learned(ctx, ip, peer, ifindex, mark, 1, now);
        slot.peer = *peer;
        slot.family = ip.family;
    }
    slot.pending = 0;
    slot.written = now;
}

/// Adds `syns` SYNs, the latest at `now` (jiffies), to a destination's entry in
/// `WSLNET_LEARNED`, creating it (and announcing it to the agent) when it is new. A new entry
/// keeps the SYN's destination port: the agent checks its measurement with TCP there. Every
/// write records the latest SYN's socket owner and `mark` (what policy routing selects by).
#[inline(always)]
fn write_learned(
    ctx: &TcContext,
    ip: &Ip,
    peer: &Peer,
    ifindex: u32,
    mark: u32,
    syns: u32,
    now: u64,
) {
    let key = learned_key(ip.family, peer);
    // SAFETY: the helper reads the socket of the program's own skb context, which is valid for
    // the run; it returns the overflow uid when there is none.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr() as *mut _) };
    match WSLNET_LEARNED.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: a pointer from a successful lookup is valid for the program's run; racing
            // updates from other CPUs can only make the count approximate.
            unsafe {
                (*entry).last_seen_jiffies = now;
                (*entry).syns += syns as u64;
                (*entry).ifindex = ifindex;
                (*entry).uid = uid;
                (*entry).mark = mark;
            }
        }
        None => {
            let entry = LearnedDest {
                first_seen_jiffies: now,
                last_seen_jiffies: now,
                syns: syns as u64,
                ifindex,
                port_be: packet::read::<u16>(ctx, ip.l4 + TCP_DPORT_OFFSET).unwrap_or(0),
                reserved: 0,
                uid,
                mark,
            };
            if WSLNET_LEARNED.insert(&key, &entry, 0).is_ok() {
                // A full ring only delays the agent until its next scan of the map.
                let _ = WSLNET_NEW_DESTS.output(&key, 0);
            }
        }
    }
}

/// Adds the SYNs a cache slot held back to their destination's `syns` before the slot is
/// reused (its `last_seen_jiffies` keeps the slot's last write). Nothing is written when the
/// agent or the LRU dropped the destination meanwhile.
#[inline(always)]
fn flush_learned(slot: &LearnCacheEntry) {
    if let Some(entry) = WSLNET_LEARNED.get_ptr_mut(&learned_key(slot.family, &slot.peer)) {
        // SAFETY: as in `write_learned`.
        unsafe { (*entry).syns += slot.pending as u64 };
    }
}

/// The `WSLNET_LEARNED` key of a peer.
#[inline(always)]
fn learned_key(family: u32, peer: &Peer) -> LearnedKey {
    LearnedKey {
        family,
        addr: peer_bytes(peer),
    }
}

/// Applies `f` to this CPU's counters of (slot, direction, family).
#[inline(always)]
fn bump(slot: u32, dir: u32, family: u32, f: impl FnOnce(&mut Counters)) {
    if let Some(c) = counters(slot, dir, family) {
        f(c)
    }
}

/// This CPU's counters of (slot, direction, family).
#[inline(always)]
fn counters(slot: u32, dir: u32, family: u32) -> Option<&'static mut Counters> {
    let c = WSLNET_COUNTERS.get_ptr_mut(counter_index(slot, dir, family))?;
    // SAFETY: per-CPU array slot of this CPU, valid for the program's run (the only lifetime
    // the reference is used for); tc programs do not preempt each other on one CPU.
    Some(unsafe { &mut *c })
}
