//! Maps and entry points. The map ABI (key and value types, names) is in `wslnet-common`.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use wslnet_common::{
    COUNTER_ENTRIES, Counters, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, Globals, IfaceConfig,
    L3_OFFSET_ETHERNET, LearnedDest, LearnedKey, MAX_CLAMP_ENTRIES, MAX_IFINDEX, MAX_LEARNED,
    NEW_DESTS_BYTES, PathMtu, counter_index, iface_flags, mss_for_mtu,
};

use crate::{
    mss::{self, MssOption, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
    packet::{self, Ip, Parsed},
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

/// Global settings (one entry).
#[map(name = "WSLNET_GLOBALS")]
static WSLNET_GLOBALS: Array<Globals> = Array::pinned(1, 0);

/// Settings of an interface the agent did not configure (counter slot 0, Ethernet, no default).
const UNCONFIGURED: IfaceConfig = IfaceConfig {
    slot: 0,
    l3_offset: L3_OFFSET_ETHERNET,
    default_mtu_v4: 0,
    default_mtu_v6: 0,
    flags: 0,
};

/// Ingress hook: clamps the MSS of arriving SYN / SYN-ACKs to the path MTU of their source,
/// which caps what our stack will send to that peer.
#[classifier]
pub fn wslnet_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

/// Egress hook: clamps the MSS of leaving SYN / SYN-ACKs to the path MTU of their destination
/// (caps what the peer sends us), counts oversize DF packets, records SYN destinations.
#[classifier]
pub fn wslnet_egress(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn skb(ctx: &TcContext) -> *const __sk_buff {
    ctx.as_ptr() as *const __sk_buff
}

#[inline(always)]
fn handle(ctx: &TcContext, dir: u32) {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*skb(ctx)).ifindex };
    let cfg = match WSLNET_IFACES.get(ifindex) {
        Some(c) if c.flags & iface_flags::PRESENT != 0 => *c,
        _ => UNCONFIGURED,
    };
    let egress = dir == DIR_EGRESS;
    let ip = match packet::parse(ctx, cfg.l3_offset, egress) {
        Parsed::Ip(ip) => ip,
        Parsed::Other => return,
        Parsed::Unparseable(family) => {
            bump(cfg.slot, dir, family, |c| c.unparseable += 1);
            return;
        }
    };
    if egress && ip.df {
        count_oversize(ctx, &ip, &cfg);
    }
    if ip.fragment || !packet::is_tcp(&ip) {
        return;
    }
    // The fixed TCP header must lie inside the IP packet: bytes past `end` (Ethernet padding,
    // or beyond a short IP length) are not TCP and must not be read as flags.
    if ip.l4 + mss::TCP_HDR_LEN > ip.end {
        bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1);
        return;
    }
    // Bytes 12 (data offset) and 13 (flags) of the TCP header.
    let Some([doff, flags]) = packet::read::<[u8; 2]>(ctx, ip.l4 + 12) else {
        bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1);
        return;
    };
    if flags & (TCP_FLAG_SYN | TCP_FLAG_RST) != TCP_FLAG_SYN {
        return;
    }
    bump(cfg.slot, dir, ip.family, |c| c.syn += 1);
    if egress && flags & TCP_FLAG_ACK == 0 {
        learn(&ip, ifindex);
    }
    match mss::find(ctx, ip.l4, ip.end, doff) {
        MssOption::Malformed => bump(cfg.slot, dir, ip.family, |c| c.unparseable += 1),
        MssOption::Absent => bump(cfg.slot, dir, ip.family, |c| c.no_mss += 1),
        MssOption::Found { value_offset, mss } => {
            let clamp = mss_for_mtu(path_mtu(&ip, &cfg), ip.family);
            match clamp {
                None => bump(cfg.slot, dir, ip.family, |c| c.no_clamp += 1),
                Some(clamp) if mss <= clamp => bump(cfg.slot, dir, ip.family, |c| c.mss_ok += 1),
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
}

/// The path MTU in force for the packet's peer: the longest matching LPM entry, else the
/// interface default for the family; 0 when neither exists.
#[inline(always)]
fn path_mtu(ip: &Ip, cfg: &IfaceConfig) -> u16 {
    if ip.family == FAMILY_V4 {
        let key = Key::new(32, [ip.peer[0], ip.peer[1], ip.peer[2], ip.peer[3]]);
        match WSLNET_CLAMP_V4.get(&key) {
            Some(entry) => entry.mtu,
            None => cfg.default_mtu_v4,
        }
    } else {
        let key = Key::new(128, ip.peer);
        match WSLNET_CLAMP_V6.get(&key) {
            Some(entry) => entry.mtu,
            None => cfg.default_mtu_v6,
        }
    }
}

/// Counts an egress DF packet larger than the path MTU in force for its destination. For GSO
/// packets the size is that of one segment: headers + `gso_size`.
#[inline(always)]
fn count_oversize(ctx: &TcContext, ip: &Ip, cfg: &IfaceConfig) {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let gso_size = unsafe { (*skb(ctx)).gso_size } as usize;
    let size = if gso_size != 0 {
        ip.l4 - ip.l3 + packet::transport_header_len(ctx, ip) + gso_size
    } else {
        ip.end - ip.l3
    };
    // Cheap pre-check: no packet at or below the smallest MTU in force can be oversize.
    let floor = match WSLNET_GLOBALS.get(0) {
        Some(g) if ip.family == FAMILY_V4 => g.min_mtu_v4,
        Some(g) => g.min_mtu_v6,
        None => 0,
    } as usize;
    if size <= floor {
        return;
    }
    let mtu = path_mtu(ip, cfg) as usize;
    if mtu != 0 && size > mtu {
        bump(cfg.slot, DIR_EGRESS, ip.family, |c| c.oversize_df += 1);
    }
}

/// Records the destination of an egress SYN for the prober.
#[inline(always)]
fn learn(ip: &Ip, ifindex: u32) {
    let key = LearnedKey {
        family: ip.family,
        addr: ip.peer,
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match WSLNET_LEARNED.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: a pointer from a successful lookup is valid for the program's run; racing
            // updates from other CPUs can only make the count approximate.
            unsafe {
                (*entry).last_seen_ns = now;
                (*entry).syns += 1;
                (*entry).ifindex = ifindex;
            }
        }
        None => {
            let entry = LearnedDest {
                first_seen_ns: now,
                last_seen_ns: now,
                syns: 1,
                ifindex,
                reserved: 0,
            };
            if WSLNET_LEARNED.insert(&key, &entry, 0).is_ok() {
                // A full ring only delays the agent until its next scan of the map.
                let _ = WSLNET_NEW_DESTS.output(&key, 0);
            }
        }
    }
}

/// Applies `f` to this CPU's counters of (slot, direction, family).
#[inline(always)]
fn bump(slot: u32, dir: u32, family: u32, f: impl FnOnce(&mut Counters)) {
    if let Some(c) = WSLNET_COUNTERS.get_ptr_mut(counter_index(slot, dir, family)) {
        // SAFETY: per-CPU array slot of this CPU, valid for the program's run; tc programs
        // do not preempt each other on one CPU.
        f(unsafe { &mut *c })
    }
}
