//! The map ABI shared by the wslnet datapath (`wslnet-ebpf`) and the agent (`wslnet-agent`).
//!
//! Data flows one way: packets -> datapath -> maps -> agent -> metrics. The agent writes the
//! clamp tables ([`PathMtu`] values in the LPM maps, [`IfaceConfig`] per interface, [`Globals`]);
//! the datapath writes the counters ([`Counters`]) and the learned destinations ([`LearnedDest`]).
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and is plain old data: the bytes
//! are the ABI. Changing a layout means changing [`ABI_VERSION`] too.
//!
//! [`proto`] holds the protocol numbers and header layouts every packet parser of the project
//! shares.
#![no_std]

pub mod proto;

/// Bumped whenever a map layout changes; the agent refuses to adopt pins of another version.
pub const ABI_VERSION: u32 = 8;

/// Map names as they appear in the eBPF object and as files under the pin directory.
pub mod map_names {
    /// LPM trie, key `Key<[u8; 4]>` (IPv4 prefix, network byte order), value [`super::PathMtu`].
    pub const CLAMP_V4: &str = "WSLNET_CLAMP_V4";
    /// LPM trie, key `Key<[u8; 16]>` (IPv6 prefix), value [`super::PathMtu`].
    pub const CLAMP_V6: &str = "WSLNET_CLAMP_V6";
    /// Array indexed by ifindex (below [`super::MAX_IFINDEX`]), value [`super::IfaceConfig`];
    /// entries without [`super::iface_flags::PRESENT`] are unconfigured interfaces.
    pub const IFACES: &str = "WSLNET_IFACES";
    /// Per-CPU array indexed by [`super::counter_index`], value [`super::Counters`].
    pub const COUNTERS: &str = "WSLNET_COUNTERS";
    /// LRU hash, key [`super::LearnedKey`], value [`super::LearnedDest`].
    pub const LEARNED: &str = "WSLNET_LEARNED";
    /// Array of one [`super::Globals`].
    pub const GLOBALS: &str = "WSLNET_GLOBALS";
    /// Ring buffer of [`super::LearnedKey`]: each destination newly inserted into [`LEARNED`],
    /// so the agent learns of it at once without scanning the map.
    pub const NEW_DESTS: &str = "WSLNET_NEW_DESTS";
    /// Per-CPU array of [`super::PEER_CACHE_SLOTS`] [`super::LearnCacheEntry`], indexed by
    /// [`super::peer_cache_slot`]: SYNs held back from [`LEARNED`]. Private to the loaded
    /// programs (not pinned, not in [`ALL`]); read by the TestRun harness.
    pub const LEARN_CACHE: &str = "WSLNET_LEARN_CACHE";
    /// Hash, key [`super::ProbeKey`], value [`super::ProbeMark`]: the agent's own TCP probe
    /// connections in flight. The ingress hook leaves their SYN-ACK's MSS as the peer sent it,
    /// so that a probe can test sizes above the clamp in force for that peer.
    pub const PROBES: &str = "WSLNET_PROBES";
    /// Ring buffer of [`super::ReflectEvent`]: each oversize DF packet the egress hook dropped
    /// because its destination has a measured path MTU, for the agent to answer its sender
    /// with an ICMP error.
    pub const REFLECT: &str = "WSLNET_REFLECT";
    /// Per-CPU array of [`super::ISN_SLOTS`] [`super::PeerIsn`], indexed by
    /// [`super::isn_slot`]: the initial sequence number of each peer that sent us a SYN or
    /// SYN-ACK, so that the agent can quote a sequence number the peer's stack accepts when it
    /// tells the peer its segments are too big. Direct-mapped: a later handshake on the same CPU
    /// and slot replaces an older one (an array write costs the handshake a few ns, where a hash
    /// insert cost it 150).
    pub const PEER_ISN: &str = "WSLNET_PEER_ISN";
    /// Every pinned map, in a fixed order (for pinning, adoption and `detach`).
    pub const ALL: [&str; 10] = [
        CLAMP_V4, CLAMP_V6, IFACES, COUNTERS, LEARNED, GLOBALS, NEW_DESTS, PROBES, REFLECT,
        PEER_ISN,
    ];
}

/// Program (function) names in the eBPF object.
pub mod program_names {
    /// tc classifier for the ingress hook: clamps by the packet's source address.
    pub const INGRESS: &str = "wslnet_ingress";
    /// tc classifier for the egress hook: clamps by destination, counts oversize DF packets,
    /// records SYN destinations.
    pub const EGRESS: &str = "wslnet_egress";
}

/// Entries in each clamp LPM map (prefixes with a path MTU).
pub const MAX_CLAMP_ENTRIES: u32 = 16_384;
/// Entries in the learned-destination LRU map; the oldest are evicted beyond this.
pub const MAX_LEARNED: u32 = 16_384;
/// Slots of the per-CPU peer-ISN array (a power of two): about this many recent handshakes per
/// CPU can be rescued.
pub const ISN_SLOTS: u32 = 1024;

/// The slot of a connection in the peer-ISN array: its peer and its two ports (network byte
/// order, as the packet carries them). The ports enter the fold once (a copy in each half
/// would cancel out, and every connection to one peer would share a slot), and the slot is
/// the top bits of the multiplicative hash, the well-mixed ones.
#[inline(always)]
pub const fn isn_slot(peer: &Peer, peer_port_be: u16, local_port_be: u16) -> u32 {
    let ports = (peer_port_be as u64) | ((local_port_be as u64) << 16);
    let x = peer[0] ^ peer[1] ^ (ports << 32);
    let hash = ((x ^ (x >> 32)) as u32).wrapping_mul(0x9e37_79b1);
    hash >> (32 - ISN_SLOTS.trailing_zeros())
}
/// Entries in the probe-connection map: TCP probe connections in flight at once, all searches
/// together (the agent runs at most 4 searches of 16 sizes x 2 copies).
pub const MAX_PROBES: u32 = 1024;
/// Slots of each per-CPU cache of the datapath (the LPM-result cache and the learn cache): a
/// power of two.
pub const PEER_CACHE_SLOTS: u32 = 256;

/// A peer address as the datapath holds it: its 16 bytes in packet order, as two native-endian
/// words (IPv4: the 4 address bytes first, the rest 0). Two words, not four or sixteen bytes:
/// the datapath loads, compares and hashes an IPv6 address with two 64-bit operations each.
pub type Peer = [u64; 2];

/// The slot of a peer in the datapath's per-CPU caches. Two peers with one slot evict each
/// other.
#[inline(always)]
pub const fn peer_cache_slot(peer: &Peer) -> u32 {
    let x = peer[0] ^ peer[1];
    let hash = ((x ^ (x >> 32)) as u32).wrapping_mul(0x9e37_79b1);
    (hash >> 24) & (PEER_CACHE_SLOTS - 1)
}

/// The [`Peer`] of an IPv4 address given as its 4 bytes in packet order, loaded as one word.
#[inline(always)]
pub const fn peer_v4(word: u32) -> Peer {
    let b = word.to_ne_bytes();
    [u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0]), 0]
}

/// The address bytes (packet order) of a [`Peer`].
#[inline(always)]
pub fn peer_bytes(peer: &Peer) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&peer[0].to_ne_bytes());
    b[8..].copy_from_slice(&peer[1].to_ne_bytes());
    b
}

/// The [`Peer`] of an address given as bytes in packet order (IPv4 in the first four, the
/// rest 0): the inverse of [`peer_bytes`].
pub fn peer_words(addr: &[u8; 16]) -> Peer {
    let word = |i: usize| u64::from_ne_bytes(core::array::from_fn(|j| addr[8 * i + j]));
    [word(0), word(1)]
}

/// How long a CPU may hold back SYNs to a destination it recently wrote into the learned map,
/// in jiffies (1.02 s at HZ=250, as in WSL's kernel; 0.26 s at HZ=1000, 2.56 s at HZ=100):
/// a destination's `last_seen_jiffies` and `syns` lag by up to this much. One LRU hash write per
/// destination, CPU and period instead of one per SYN.
pub const LEARN_REFRESH_JIFFIES: u64 = 256;

/// Bytes of the reflection ring buffer (a power of two, a multiple of the page size): room for
/// about 1900 dropped packets between two reads by the agent; beyond that a drop is still a
/// drop, only unanswered.
pub const REFLECT_BYTES: u32 = 256 * 1024;
/// Bytes of a dropped packet quoted in a [`ReflectEvent`], from its IP header on: an IPv4
/// header with options and more than the 8 transport bytes an ICMP error must quote, an IPv6
/// header with extension headers and the transport header.
pub const REFLECT_QUOTE: usize = 128;
/// IPv6 extension headers (hop-by-hop, routing, destination options) the datapath skips to find
/// the transport header; a packet with more is unparseable. A fixed bound for the verifier.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Bytes of the new-destination ring buffer (a power of two, a multiple of the page size):
/// room for about 2700 notifications between two reads by the agent.
pub const NEW_DESTS_BYTES: u32 = 64 * 1024;
/// Managed interfaces the counters have room for (slot 0 is for unconfigured interfaces).
pub const MAX_IFACE_SLOTS: u32 = 256;
/// Entries of the interface config array: interfaces with a larger ifindex cannot be managed
/// (ifindexes are per network namespace and small in practice). An array, not a hash, because
/// its lookup is inlined by the verifier: the datapath does one per packet.
pub const MAX_IFINDEX: u32 = 4096;

/// Direction index: ingress (packets arriving at the interface).
pub const DIR_INGRESS: u32 = 0;
/// Direction index: egress (packets leaving through the interface).
pub const DIR_EGRESS: u32 = 1;
/// Family index: IPv4.
pub const FAMILY_V4: u32 = 0;
/// Family index: IPv6.
pub const FAMILY_V6: u32 = 1;
/// Counter rows per interface slot (2 directions x 2 families).
pub const ROWS_PER_SLOT: u32 = 4;
/// Entries of the counter array.
pub const COUNTER_ENTRIES: u32 = MAX_IFACE_SLOTS * ROWS_PER_SLOT;

/// Bytes of IPv4 + TCP headers without options: MSS = path MTU - 40.
pub const IPV4_TCP_OVERHEAD: u16 = (proto::IPV4_HDR_LEN + proto::TCP_HDR_LEN) as u16;
/// Bytes of IPv6 + TCP headers without options: MSS = path MTU - 60.
pub const IPV6_TCP_OVERHEAD: u16 = (proto::IPV6_HDR_LEN + proto::TCP_HDR_LEN) as u16;
/// Smallest path MTU the datapath accepts from a map; smaller values are ignored (no clamp).
/// 68 is the IPv4 minimum link MTU (RFC 791).
pub const MIN_SANE_MTU: u16 = 68;

/// L3 offset of Ethernet-like devices (Ethernet, veth, TAP such as ZeroTier's `zt*`).
pub const L3_OFFSET_ETHERNET: u16 = proto::ETH_HLEN as u16;
/// L3 offset of L3 devices (tun, WireGuard): the packet starts with the IP header.
pub const L3_OFFSET_NONE: u16 = 0;

/// The index into the counter array for an interface slot, a direction and a family.
#[inline(always)]
pub const fn counter_index(slot: u32, dir: u32, family: u32) -> u32 {
    slot * ROWS_PER_SLOT + dir * 2 + family
}

/// The MSS that fits a path MTU for a family (`family` is [`FAMILY_V4`] or [`FAMILY_V6`]),
/// or `None` when the MTU is not sane (below [`MIN_SANE_MTU`] or not above the header overhead).
#[inline(always)]
pub const fn mss_for_mtu(mtu: u16, family: u32) -> Option<u16> {
    let overhead = if family == FAMILY_V6 {
        IPV6_TCP_OVERHEAD
    } else {
        IPV4_TCP_OVERHEAD
    };
    if mtu < MIN_SANE_MTU || mtu <= overhead {
        None
    } else {
        Some(mtu - overhead)
    }
}

/// A Prometheus metric family that datapath counters are exported as (by the agent's
/// `metrics.rs`, which adds the labels `interface`, `direction` and `family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricFamily {
    /// The family's name, e.g. `wslnet_mss_unchanged_total`.
    pub name: &'static str,
    /// Its HELP text.
    pub help: &'static str,
    /// True for a family of egress-only counters: exported without the `direction` label.
    pub egress_only: bool,
    /// The label that tells apart the counters sharing the family (`reason`), if several do.
    pub label: Option<&'static str>,
}

/// The metric families of the datapath counters ([`Counters::FIELDS`] names each counter's).
pub mod metric_families {
    use super::MetricFamily;

    /// [`super::Counters::syn`].
    pub const TCP_SYN_PACKETS: MetricFamily = MetricFamily {
        name: "wslnet_tcp_syn_packets_total",
        help: "TCP SYN and SYN-ACK segments seen by the datapath.",
        egress_only: false,
        label: None,
    };
    /// [`super::Counters::mss_clamped`].
    pub const MSS_CLAMPED: MetricFamily = MetricFamily {
        name: "wslnet_mss_clamped_total",
        help: "SYN and SYN-ACK segments whose MSS option was lowered to the path MTU.",
        egress_only: false,
        label: None,
    };
    /// [`super::Counters::mss_ok`], [`super::Counters::no_clamp`], [`super::Counters::no_mss`]:
    /// SYNs left as they were, told apart by `reason`.
    pub const MSS_UNCHANGED: MetricFamily = MetricFamily {
        name: "wslnet_mss_unchanged_total",
        help: "SYN and SYN-ACK segments left unchanged, by reason (already_low, no_clamp, \
               no_option).",
        egress_only: false,
        label: Some("reason"),
    };
    /// [`super::Counters::unparseable`].
    pub const UNPARSEABLE_PACKETS: MetricFamily = MetricFamily {
        name: "wslnet_unparseable_packets_total",
        help: "Packets passed untouched because a header or the TCP options were malformed or \
               truncated.",
        egress_only: false,
        label: None,
    };
    /// [`super::Counters::oversize_df`].
    pub const OVERSIZE_DF_PACKETS: MetricFamily = MetricFamily {
        name: "wslnet_oversize_df_packets_total",
        help: "Egress packets with DF (all IPv6) larger than the path MTU in force for their \
               destination.",
        egress_only: true,
        label: None,
    };
    /// [`super::Counters::reflected`].
    pub const OVERSIZE_DROPPED_PACKETS: MetricFamily = MetricFamily {
        name: "wslnet_oversize_dropped_packets_total",
        help: "Egress oversize DF packets the datapath dropped to answer their sender with an \
               ICMP error (their destination has a clamp entry, reflection is on).",
        egress_only: true,
        label: None,
    };
    /// [`super::Counters::dscp_rewritten`].
    pub const DSCP_REWRITTEN: MetricFamily = MetricFamily {
        name: "wslnet_dscp_rewritten_total",
        help: "Egress packets whose DSCP the datapath set to the configured set_dscp (packets \
               already carrying it are not counted).",
        egress_only: true,
        label: None,
    };
}

/// One counter of [`Counters`]: its field, its name and how it is exported.
#[derive(Clone, Copy, Debug)]
pub struct CounterDef {
    /// The field's name: the counter's name in corpus files, `status --json` and tests.
    pub name: &'static str,
    /// The field's doc comment: what the counter counts (every counter counts packets).
    pub doc: &'static str,
    /// Reads the counter.
    pub get: fn(&Counters) -> u64,
    /// The counter, to write.
    pub get_mut: fn(&mut Counters) -> &mut u64,
    /// The Prometheus family it is exported in.
    pub metric: &'static MetricFamily,
    /// Its value of the family's [`MetricFamily::label`] (`already_low` for `mss_ok`).
    pub label_value: Option<&'static str>,
}

/// Defines [`Counters`] and [`Counters::FIELDS`] from one list: each field with its doc, its
/// metric family and, for a family shared by several counters, its label value.
macro_rules! counters {
    (
        $(#[$attr:meta])*
        pub struct Counters {
            $(
                $(#[doc = $doc:literal])*
                $field:ident => $family:ident $(($label_value:literal))?,
            )*
        }
    ) => {
        $(#[$attr])*
        pub struct Counters {
            $(
                $(#[doc = $doc])*
                pub $field: u64,
            )*
        }

        impl Counters {
            /// How many counters there are.
            pub const COUNT: usize = [$(stringify!($field)),*].len();
            /// Every counter, in declaration order (the order of the map's bytes).
            pub const FIELDS: [CounterDef; Counters::COUNT] = [
                $(
                    CounterDef {
                        name: stringify!($field),
                        doc: concat!($($doc, "\n"),*),
                        get: |c| c.$field,
                        get_mut: |c| &mut c.$field,
                        metric: &metric_families::$family,
                        label_value: counters!(@label $($label_value)?),
                    },
                )*
            ];
        }
    };
    (@label) => { None };
    (@label $value:literal) => { Some($value) };
}

counters! {
    /// Packet counters of one interface, direction and family, per CPU (the agent sums CPUs).
    /// Every field is a count of packets.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    #[cfg_attr(feature = "user", derive(serde::Serialize))]
    pub struct Counters {
        /// TCP SYN and SYN-ACK segments seen (RST not set).
        syn => TCP_SYN_PACKETS,
        /// SYNs whose MSS option was lowered to the clamp.
        mss_clamped => MSS_CLAMPED,
        /// SYNs whose MSS option was already at or below the clamp (left unchanged).
        mss_ok => MSS_UNCHANGED("already_low"),
        /// SYNs with an MSS option but no path MTU in force for the peer (left unchanged).
        no_clamp => MSS_UNCHANGED("no_clamp"),
        /// SYNs without an MSS option (left unchanged; options are never inserted).
        no_mss => MSS_UNCHANGED("no_option"),
        /// Packets the datapath could not parse: truncated IP/TCP headers, IPv4 IHL < 5, TCP data
        /// offset < 5, malformed TCP options (length 0/1, past the header, MSS length != 4), too
        /// many IPv6 extension headers. Passed on unchanged.
        unparseable => UNPARSEABLE_PACKETS,
        /// Egress only: packets with DF set (every IPv6 packet) whose size (per segment for GSO
        /// packets) exceeds the path MTU in force for their destination; the path would drop them.
        oversize_df => OVERSIZE_DF_PACKETS,
        /// Egress only: of those, the ones dropped here because the path MTU is a clamp entry (a
        /// measurement or the user's) and reflection is on ([`Globals::flags`]); each was handed
        /// to the agent ([`map_names::REFLECT`]) to answer its sender with an ICMP error.
        reflected => OVERSIZE_DROPPED_PACKETS,
        /// Egress only: packets whose DSCP was rewritten to the interface's
        /// [`IfaceConfig::dscp`] (packets already carrying it cost no write and are not counted).
        dscp_rewritten => DSCP_REWRITTEN,
    }
}

impl Counters {
    /// The counter named `name` (a field name), if there is one.
    pub fn field(name: &str) -> Option<&'static CounterDef> {
        Self::FIELDS.iter().find(|f| f.name == name)
    }

    /// Every counter with its field name, in declaration order.
    pub fn named(&self) -> [(&'static str, u64); Counters::COUNT] {
        Self::FIELDS.map(|f| (f.name, (f.get)(self)))
    }

    /// `self - earlier`, field by field (wrapping): what moved between two readings.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut moved = Self::default();
        for f in &Self::FIELDS {
            *(f.get_mut)(&mut moved) = (f.get)(self).wrapping_sub((f.get)(earlier));
        }
        moved
    }
}

impl core::ops::AddAssign for Counters {
    /// Adds every field (summing CPUs, or accumulating deltas).
    fn add_assign(&mut self, o: Self) {
        for f in &Self::FIELDS {
            *(f.get_mut)(self) += (f.get)(&o);
        }
    }
}

/// Per-interface configuration written by the agent, indexed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Counter slot of this interface (1..[`MAX_IFACE_SLOTS`]; 0 is shared by unconfigured ones).
    pub slot: u32,
    /// Bytes before the IP header: [`L3_OFFSET_ETHERNET`] or [`L3_OFFSET_NONE`].
    pub l3_offset: u16,
    /// Default path MTU (bytes) for IPv4 peers without an LPM entry; 0 = no clamp.
    pub default_mtu_v4: u16,
    /// Default path MTU (bytes) for IPv6 peers without an LPM entry; 0 = no clamp.
    pub default_mtu_v6: u16,
    /// [`iface_flags`]: [`iface_flags::PRESENT`] for the datapath, the rest is the agent's
    /// bookkeeping (how the interface is attached).
    pub flags: u16,
    /// DSCP to write into every egress IPv4 and IPv6 packet: [`DSCP_SET`] plus the value
    /// (0-63, low six bits); 0 = leave marks alone. The two ECN bits are never touched.
    pub dscp: u8,
    /// Reserved, 0.
    pub reserved: [u8; 3],
}

/// Bit of [`IfaceConfig::dscp`]: rewrite the DSCP of egress packets to the low six bits.
pub const DSCP_SET: u8 = 0x80;
/// Largest DSCP value (six bits).
pub const MAX_DSCP: u8 = 63;

/// Bits of [`IfaceConfig::flags`]: how the agent attached an interface, kept in the pinned
/// map so that a restarted agent or `detach` knows what to undo.
pub mod iface_flags {
    /// Attached with TCX links (pinned under `<pin dir>/links/`).
    pub const TCX: u16 = 1 << 0;
    /// Attached with clsact + cls_bpf filters (netlink).
    pub const CLSACT: u16 = 1 << 1;
    /// The clsact qdisc was created by the agent (so `detach` removes it).
    pub const QDISC_CREATED: u16 = 1 << 2;
    /// The entry is in use; an all-zero entry is an unconfigured interface.
    pub const PRESENT: u16 = 1 << 15;
}

impl IfaceConfig {
    /// True for an entry in use ([`iface_flags::PRESENT`]); all-zero entries are unconfigured.
    #[inline(always)]
    pub const fn is_present(&self) -> bool {
        self.flags & iface_flags::PRESENT != 0
    }
}

/// Where a path MTU entry came from (the [`PathMtu::origin`] field).
pub mod origin {
    /// Set by the user (`--clamp CIDR=MTU` or the config file's `[[clamp]]`).
    pub const STATIC: u8 = 1;
    /// Measured by the prober.
    pub const PROBED: u8 = 2;
}

/// Value of the clamp LPM maps: the path MTU for a prefix.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PathMtu {
    /// Path MTU in bytes (IP header included).
    pub mtu: u16,
    /// One of [`origin`].
    pub origin: u8,
    /// Reserved, 0.
    pub reserved: u8,
}

/// Key of the learned-destination map.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The address, network byte order; IPv4 uses the first 4 bytes, the rest are 0.
    pub addr: [u8; 16],
}

/// A destination seen in an egress SYN, for the prober.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LearnedDest {
    /// `bpf_jiffies64` (kernel timer ticks, CONFIG_HZ per second, from an arbitrary start)
    /// at the first SYN. Only compared with other stamps: jiffies cost the datapath no helper
    /// call, where a clock read costs 15-20 ns on kernels with return-stack mitigations.
    pub first_seen_jiffies: u64,
    /// `bpf_jiffies64` at the latest SYN, up to [`LEARN_REFRESH_JIFFIES`] late.
    pub last_seen_jiffies: u64,
    /// SYNs sent to this destination; the latest may be held back per CPU for up to
    /// [`LEARN_REFRESH_JIFFIES`] (approximate under concurrency).
    pub syns: u64,
    /// Interface of the latest SYN, up to [`LEARN_REFRESH_JIFFIES`] late.
    pub ifindex: u32,
    /// Destination port of the SYN that created the entry, network byte order: a service the
    /// destination runs, where the agent checks with TCP what ICMP echo measured.
    pub port_be: u16,
    /// Reserved, 0.
    pub reserved: u16,
    /// User id owning the local socket of the latest SYN (`bpf_get_socket_uid`), up to
    /// [`LEARN_REFRESH_JIFFIES`] late: policy routing by user (`ip rule ... uidrange`) may send
    /// that user's traffic another way than the agent's, and the agent probes that way. The
    /// kernel's overflow uid ([`NO_SOCKET_UID`]) when the SYN had no local socket (forwarded,
    /// e.g. from a container).
    pub uid: u32,
    /// Firewall mark (`skb->mark`) of the latest SYN, up to [`LEARN_REFRESH_JIFFIES`] late:
    /// policy routing by mark (`ip rule ... fwmark`) may send marked traffic another way.
    pub mark: u32,
}

/// What `bpf_get_socket_uid` returns for a packet without a full local socket: the kernel's
/// overflow uid (`kernel.overflowuid`, 65534 unless changed, the user `nobody`).
pub const NO_SOCKET_UID: u32 = 65534;

/// One slot of the datapath's per-CPU learn cache ([`map_names::LEARN_CACHE`]): what this CPU
/// last wrote into the learned map for one destination, and the SYNs to it held back since.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LearnCacheEntry {
    /// The destination ([`Peer`]).
    pub peer: Peer,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// SYNs to this destination not yet added to its [`LearnedDest::syns`].
    pub pending: u32,
    /// `bpf_jiffies64` when this CPU last wrote the destination's learned entry; 0 = empty slot
    /// (jiffies start 300 s short of 2^32, never at 0).
    pub written: u64,
}

/// Key of the probe-connection map ([`map_names::PROBES`]): one TCP probe connection of the
/// agent, as its SYN-ACK arrives (source = the peer, destination port = the probe's local port).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The probe's local TCP port, network byte order (the packet's bytes read as a native
    /// `u16`, as the datapath loads them).
    pub port_be: u16,
    /// Reserved, 0.
    pub reserved: u16,
    /// The peer's address, network byte order; IPv4 uses the first 4 bytes, the rest are 0.
    pub addr: [u8; 16],
}

/// One TCP connection as an arriving packet names it (the peer-ISN array's
/// [`PeerIsn::key`]).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The peer's TCP port, network byte order (the packet's bytes read as a native `u16`).
    pub peer_port_be: u16,
    /// Our TCP port, network byte order.
    pub local_port_be: u16,
    /// The peer's address, network byte order; IPv4 uses the first 4 bytes, the rest are 0.
    pub addr: [u8; 16],
}

/// One slot of the peer-ISN array.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PeerIsn {
    /// The connection; all zero for an empty slot.
    pub key: FlowKey,
    /// The sequence number of the peer's SYN (host byte order): its first data byte is this + 1.
    pub isn: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// Value of the probe-connection map: presence is what counts.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ProbeMark {
    /// Reserved, 0.
    pub reserved: u32,
}

/// Global settings written by the agent (array of one).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Globals {
    /// Smallest IPv4 path MTU in force anywhere (LPM entries and interface defaults), bytes.
    /// Egress IPv4 packets no larger skip the oversize lookup; 0 = always look up.
    pub min_mtu_v4: u16,
    /// The same for IPv6.
    pub min_mtu_v6: u16,
    /// [`ABI_VERSION`] of the agent that wrote the maps.
    pub abi_version: u32,
    /// Bumped (never to 0) after every change to the clamp tables or interface defaults. The
    /// datapath keeps a per-CPU cache of LPM results tagged with it, so a new generation
    /// invalidates every cached result at once; 0 disables the cache.
    pub clamp_generation: u32,
    /// [`global_flags`].
    pub flags: u32,
}

/// Bits of [`Globals::flags`].
pub mod global_flags {
    /// Drop an egress DF packet larger than the clamp entry of its destination and hand it to
    /// the agent ([`super::map_names::REFLECT`]), which answers its sender with an ICMP
    /// "fragmentation needed" / "packet too big" naming that MTU.
    pub const REFLECT: u32 = 1 << 0;
}

/// Smallest IPv4 path MTU wslnet believes, bytes: RFC 879's 576 less the 24 bytes some tunnels
/// take, Linux's `min_pmtu`. The smallest a clamp may be set to, a search may find, and an ICMP
/// error may name.
pub const MIN_PATH_MTU_V4: u16 = 552;
/// Smallest IPv6 path MTU, bytes: the IPv6 minimum link MTU (RFC 8200). Stacks ignore a
/// packet-too-big naming less.
pub const MIN_PATH_MTU_V6: u16 = 1280;

/// The socket mark (`SO_MARK`, `skb->mark`) of the agent's own probe packets: never dropped for
/// reflection, since a probe larger than the path MTU in force is how the agent finds out that
/// the path grew. A constant no routing policy is likely to use ("WSLN").
pub const PROBE_MARK: u32 = 0x5753_4c4e;

/// One dropped oversize packet, for the agent to answer (ring buffer [`map_names::REFLECT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReflectEvent {
    /// Interface it was leaving through.
    pub ifindex: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The path MTU of its destination's clamp entry, bytes: what the error names.
    pub mtu: u32,
    /// Bytes of `quote` that are the packet's (the rest are 0): the packet's length from its IP
    /// header on, at most [`REFLECT_QUOTE`].
    pub quote_len: u32,
    /// The packet from its IP header on.
    pub quote: [u8; REFLECT_QUOTE],
}

/// For each map type: asserts its size, the sum of its fields' (no implicit padding, whose bytes
/// would have no defined value), and marks it plain old data for aya (agent side).
macro_rules! plain_old_data {
    ($($ty:ident = $size:expr,)*) => {
        $(
            const _: () = assert!(core::mem::size_of::<$ty>() == $size);
            // SAFETY: the type is #[repr(C)], made only of integers and byte arrays, with no
            // padding (the size assertion above), so every bit pattern is a valid value.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

plain_old_data! {
    Counters = 72,
    IfaceConfig = 16,
    PathMtu = 4,
    LearnedKey = 20,
    LearnedDest = 40,
    Globals = 16,
    ReflectEvent = 16 + REFLECT_QUOTE,
    LearnCacheEntry = 32,
    ProbeKey = 24,
    ProbeMark = 4,
    FlowKey = 24,
    PeerIsn = 32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each entry of the counter table reads and writes its own field, the fields fill the
    /// struct, names are unique, and a family shared by several counters tells them apart by a
    /// label value (and only such a family has one).
    #[test]
    fn the_counter_table_is_consistent() {
        assert_eq!(Counters::COUNT * 8, core::mem::size_of::<Counters>());
        let mut c = Counters::default();
        for (i, f) in Counters::FIELDS.iter().enumerate() {
            *(f.get_mut)(&mut c) = i as u64 + 1;
        }
        for (i, (f, (name, value))) in Counters::FIELDS.iter().zip(c.named()).enumerate() {
            assert_eq!((f.get)(&c), i as u64 + 1, "{}", f.name);
            assert_eq!((name, value), (f.name, i as u64 + 1));
            let found = Counters::field(f.name).unwrap();
            assert_eq!((found.get)(&c), i as u64 + 1, "{}", f.name);
            assert!(!f.doc.is_empty(), "{} has no doc", f.name);
            assert_eq!(
                f.metric.label.is_some(),
                f.label_value.is_some(),
                "{}",
                f.name
            );
        }
        assert_eq!(c.mss_ok, 3);
        assert_eq!(
            Counters::field("mss_ok").unwrap().label_value,
            Some("already_low")
        );
        assert!(Counters::field("already_low").is_none());
        // Both sides of each pair of counters sharing a family have a label value.
        for a in &Counters::FIELDS {
            for b in &Counters::FIELDS {
                if a.name != b.name && a.metric.name == b.metric.name {
                    assert_ne!(a.label_value, b.label_value, "{} {}", a.name, b.name);
                    assert_eq!(a.metric, b.metric);
                }
            }
        }
    }

    /// `since` and `+=` work field by field: what moved, added back, is the later reading.
    #[test]
    fn since_and_add_assign_are_inverse() {
        let mut earlier = Counters::default();
        let mut later = Counters::default();
        for (i, f) in Counters::FIELDS.iter().enumerate() {
            *(f.get_mut)(&mut earlier) = 10 * i as u64;
            *(f.get_mut)(&mut later) = 100 + 7 * i as u64;
        }
        let moved = later.since(&earlier);
        assert_eq!(moved.syn, 100);
        assert_eq!(moved.dscp_rewritten, 100 + 56 - 80);
        let mut sum = earlier;
        sum += moved;
        assert_eq!(sum, later);
        // Wrapping: a counter that went backwards (a slot zeroed for reuse) does not panic.
        assert_eq!(earlier.since(&later).syn, 0u64.wrapping_sub(100));
    }

    /// The datapath builds an IPv4 peer with `peer_v4` from the loaded address word; the agent
    /// and the tests build peers from address bytes with `peer_words`: both must agree, and
    /// `peer_bytes` must give the bytes back.
    #[test]
    fn peer_conversions_agree() {
        let v4 = [10, 9, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let peer = peer_v4(u32::from_ne_bytes([10, 9, 0, 7]));
        assert_eq!(peer, peer_words(&v4));
        assert_eq!(peer_bytes(&peer), v4);
        let v6: [u8; 16] = core::array::from_fn(|i| 0xf0 ^ i as u8);
        assert_eq!(peer_bytes(&peer_words(&v6)), v6);
        assert_ne!(peer_words(&v6)[0], peer_words(&v6)[1]);
        assert!(peer_cache_slot(&peer) < PEER_CACHE_SLOTS);
    }

    /// Connections to one peer spread over the peer-ISN array: a download's handshake is not
    /// overwritten by the next connection to the same server (the agent's TCP probes, a
    /// browser's second connection).
    #[test]
    fn connections_to_one_peer_spread_over_the_isn_slots() {
        let peer = peer_v4(u32::from_ne_bytes([10, 77, 3, 2]));
        let mut used = [false; ISN_SLOTS as usize];
        for local in 40_000u16..41_024 {
            let slot = isn_slot(&peer, 8080u16.to_be(), local.to_be());
            assert!(slot < ISN_SLOTS);
            used[slot as usize] = true;
        }
        let distinct = used.iter().filter(|&&u| u).count();
        // 1024 random draws into 1024 slots hit about 647 distinct ones.
        assert!(
            distinct > 550,
            "{distinct} distinct slots for 1024 local ports"
        );
    }
}
