//! The named corpus cases: hand-written hostile and odd packets, each with a hand-written
//! expectation ([`Expect`]), grouped by what they exercise. Each group is a table whose rows give
//! a case's name, its description and only what sets it apart from the group's common input.
//!
//! Every case runs on [`narrow_path_tables`] (slot 3, Ethernet, path MTU 1372 towards
//! 10.9.0.0/16 and fd00:9::/32) unless its row changes them.

use std::net::{IpAddr, Ipv4Addr};

use wslnet_common::{FAMILY_V4, FAMILY_V6, Globals, IfaceConfig, global_flags};
use wslnet_model::{Clamp, Direction, Tables};

use super::expect::{
    ALREADY_LOW, Expect, NO_CLAMP, NO_MSS, NOTHING, Named, OVERSIZE, UNPARSEABLE, UNPARSEABLE_SYN,
};
use crate::{
    fuzz::Case,
    lab::VPN_MTU,
    packets::{self, Ext, Ipv4, Tcp, addr, flags, opt},
    testrun::TEST_IFINDEX,
};

/// The counter slot of the test interface in the named cases.
const SLOT: u32 = 3;
const V4: u32 = FAMILY_V4;
const V6: u32 = FAMILY_V6;

/// One named case: name, description, input, expectation.
type Row = (&'static str, &'static str, Case, Expect);

/// The named hostile and odd packets.
pub fn named_cases() -> Vec<Named> {
    [
        leaving_syns(),
        handshakes(),
        ip_headers(),
        malformed_frames(),
        interfaces_and_tables(),
        oversize(),
        probes(),
        reflection(),
        dscp(),
    ]
    .concat()
}

/// Tables with one interface (`slot`, `l3_offset`) and a path MTU of [`VPN_MTU`] (1372)
/// towards 10.9.0.0/16 and fd00:9::/32, where [`addr::REMOTE4`] and [`addr::REMOTE6`] are.
pub fn narrow_path_tables(slot: u32, l3_offset: u16) -> Tables {
    let clamp = |net: &str| {
        let net: ipnet::IpNet = net.parse().expect("a literal prefix");
        Clamp {
            addr: net.addr(),
            prefix_len: net.prefix_len(),
            mtu: VPN_MTU,
        }
    };
    Tables {
        ifaces: vec![(
            TEST_IFINDEX,
            IfaceConfig {
                slot,
                l3_offset,
                ..IfaceConfig::default()
            },
        )],
        clamps: vec![clamp("10.9.0.0/16"), clamp("fd00:9::/32")],
        globals: Globals::default(),
        probes: Vec::new(),
    }
}

/// The rows as named cases.
fn named(rows: impl IntoIterator<Item = Row>) -> Vec<Named> {
    rows.into_iter()
        .map(|(name, description, case, expect)| Named {
            name,
            description,
            case,
            expect,
        })
        .collect()
}

/// `frame` leaving through the test interface.
fn egress(frame: Vec<u8>) -> Case {
    Case {
        tables: narrow_path_tables(SLOT, 14),
        dir: Direction::Egress,
        frame,
        gso_size: 0,
    }
}

/// `frame` arriving at the test interface.
fn ingress(frame: Vec<u8>) -> Case {
    Case {
        dir: Direction::Ingress,
        ..egress(frame)
    }
}

/// `case` with its tables changed by `change`.
fn with_tables(mut case: Case, change: impl FnOnce(&mut Tables)) -> Case {
    change(&mut case.tables);
    case
}

/// `case` on an L3 device (tun, WireGuard): no link-layer header.
fn on_l3_device(case: Case) -> Case {
    with_tables(case, |t| t.ifaces[0].1.l3_offset = 0)
}

/// `case` with reflection on.
fn reflecting(case: Case) -> Case {
    with_tables(case, |t| t.globals.flags = global_flags::REFLECT)
}

/// `case` as a GSO packet of segments of `gso_size` bytes.
fn with_gso(case: Case, gso_size: u32) -> Case {
    Case { gso_size, ..case }
}

/// `frame` with the bytes at `at` replaced by `bytes`.
fn with_bytes(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

/// A TCP segment of `family` on the narrow path: from us to the remote host when `dir` is
/// egress, from the remote host to us when ingress.
fn segment(dir: Direction, family: u32, tcp: &Tcp) -> Case {
    match (dir, family == V6) {
        (Direction::Egress, false) => egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, tcp)),
        (Direction::Ingress, false) => {
            ingress(packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, tcp))
        }
        (Direction::Egress, true) => {
            egress(packets::tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[], tcp))
        }
        (Direction::Ingress, true) => {
            ingress(packets::tcp6_frame(addr::REMOTE6, addr::LOCAL6, &[], tcp))
        }
    }
}

/// A SYN from us to the remote host over IPv4 with TCP `options`.
fn syn4(options: Vec<u8>) -> Vec<u8> {
    packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &Tcp::new(flags::SYN, options))
}

/// A SYN from us to the remote host over IPv6 with TCP `options`.
fn syn6(options: Vec<u8>) -> Vec<u8> {
    packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        &[],
        &Tcp::new(flags::SYN, options),
    )
}

/// A SYN from us to the remote host over IPv6 behind the extension headers `exts`.
fn syn6_behind(exts: &[Ext], options: Vec<u8>) -> Vec<u8> {
    packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        exts,
        &Tcp::new(flags::SYN, options),
    )
}

/// A SYN with MSS 1460 from us to the remote host over the IPv4 header `ip`, 802.1Q-tagged
/// with `vlan`.
fn syn4_over(ip: &Ipv4, vlan: Option<u16>, options: Vec<u8>) -> Vec<u8> {
    packets::tcp4_frame_with(ip, vlan, &Tcp::new(flags::SYN, options))
}

/// The concatenation of option byte strings.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The timestamps option of the named cases.
fn timestamps() -> Vec<u8> {
    opt::timestamps(0x0102_0304, 0)
}

/// Linux's SYN option layout: MSS 1460, SACK_PERM, TS, NOP, WS 7.
fn linux_options() -> Vec<u8> {
    cat(&[
        &opt::mss(1460),
        &opt::sack_perm(),
        &timestamps(),
        &[opt::NOP],
        &opt::wscale(7),
    ])
}

/// An IPv4 header from us to the remote host (DF set).
fn ipv4_header() -> Ipv4 {
    Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::IPPROTO_TCP)
}

/// An ACK carrying `bytes` bytes of IP packet over `family` (IPv4 header 20, IPv6 header 40,
/// TCP 20 bytes), filled with `fill`.
fn bulk(family: u32, bytes: usize, fill: u8) -> Tcp {
    let mut t = Tcp::new(flags::ACK, vec![]);
    let headers = if family == V6 { 60 } else { 40 };
    t.payload = vec![fill; bytes - headers];
    t
}

/// SYNs leaving towards the narrow path over each family, by their TCP options: where the MSS
/// option is, what else is there, malformed options.
fn leaving_syns() -> Vec<Named> {
    let ts = timestamps();
    let rows = [
        (
            "v4-syn-clamped",
            "IPv4 SYN, MSS 1460, path MTU 1372 -> MSS 1332",
            opt::mss(1460),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-syn-linux-layout-clamped",
            "Linux's SYN layout: MSS, SACK_PERM, TS, NOP, WS",
            linux_options(),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v6-syn-clamped",
            "IPv6 SYN, MSS 1460, path MTU 1372 -> MSS 1312",
            linux_options(),
            Expect::clamped(V6, 1460, 1312),
        ),
        (
            "v4-mss-lower-unchanged",
            "MSS 1200 is already below the clamp",
            opt::mss(1200),
            Expect::counted(ALREADY_LOW, V4),
        ),
        (
            "v4-mss-equal-unchanged",
            "MSS equal to the clamp (1332) is left alone",
            opt::mss(1332),
            Expect::counted(ALREADY_LOW, V4),
        ),
        (
            "v4-mss-zero-unchanged",
            "MSS 0 is never raised",
            opt::mss(0),
            Expect::counted(ALREADY_LOW, V4),
        ),
        (
            "v4-mss-65535-clamped",
            "MSS 65535 lowered",
            opt::mss(65535),
            Expect::clamped(V4, 65535, 1332),
        ),
        (
            "v4-no-mss-option",
            "SYN with WS and SACK_PERM but no MSS: no option is inserted",
            cat(&[&opt::wscale(7), &opt::sack_perm(), &[opt::NOP]]),
            Expect::counted(NO_MSS, V4),
        ),
        (
            "v4-no-options",
            "SYN without any option",
            vec![],
            Expect::counted(NO_MSS, V4),
        ),
        (
            "v4-eol-before-mss",
            "EOL ends the list: the MSS after it is not an option",
            cat(&[&[opt::EOL, 0, 0, 0], &opt::mss(1460)]),
            Expect::counted(NO_MSS, V4),
        ),
        (
            "v4-mss-after-timestamps",
            "NOP NOP TS then MSS",
            cat(&[&[opt::NOP, opt::NOP], &ts, &opt::mss(1460)]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-mss-last",
            "WS, NOP, SACK_PERM, NOP NOP TS, then MSS last",
            cat(&[
                &opt::wscale(7),
                &[opt::NOP],
                &opt::sack_perm(),
                &[opt::NOP, opt::NOP],
                &ts,
                &opt::mss(1460),
            ]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-mss-odd-offset",
            "A lone NOP before MSS: the value straddles two checksum words (4-byte replace)",
            cat(&[
                &[opt::NOP],
                &opt::mss(1460),
                &[opt::NOP, opt::NOP, opt::NOP],
            ]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-mss-odd-offset-after-ws",
            "WS (3 bytes) then MSS at an odd offset",
            cat(&[&opt::wscale(2), &opt::mss(1460), &[opt::NOP]]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v6-mss-odd-offset",
            "IPv6 with the MSS value at an odd offset",
            cat(&[&[opt::NOP, opt::NOP, opt::NOP], &opt::mss(1460)]),
            Expect::clamped(V6, 1460, 1312),
        ),
        (
            "v4-two-mss-first-wins-low",
            "Two MSS options: the first (1200) decides, the second is not examined",
            cat(&[&opt::mss(1200), &opt::mss(1460)]),
            Expect::counted(ALREADY_LOW, V4),
        ),
        (
            "v4-two-mss-first-wins-high",
            "Two MSS options: only the first (1460) is lowered",
            cat(&[&opt::mss(1460), &opt::mss(1400)]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "opt-len-zero",
            "An unknown option with length 0 before MSS",
            cat(&[&[30, 0, 0, 0], &opt::mss(1460)]),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "opt-len-one",
            "A window-scale option with length 1",
            cat(&[&[3, 1, 7, 1], &opt::mss(1460)]),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "opt-len-past-header",
            "Timestamps claiming 40 bytes in a 12-byte option area",
            cat(&[&[8, 40, 0, 0, 0, 0, 0, 0], &opt::mss(1460)]),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "mss-len-3",
            "MSS option with length 3",
            vec![2, 3, 5, 1],
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "mss-len-6",
            "MSS option with length 6",
            vec![2, 6, 5, 0xb4, 0, 0, 1, 1],
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "kind-at-last-byte",
            "An option kind in the last option byte, its length past the header",
            vec![1, 1, 1, 2],
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
    ];
    named(
        rows.into_iter()
            .map(|(name, description, options, expect)| {
                let frame = if expect.family == V6 {
                    syn6(options)
                } else {
                    syn4(options)
                };
                (name, description, egress(frame), expect)
            }),
    )
}

/// Handshake segments other than a leaving SYN, and segments that are no SYN.
fn handshakes() -> Vec<Named> {
    use Direction::{Egress, Ingress};
    let syn_ack = |options| Tcp::new(flags::SYN | flags::ACK, options);
    named([
        (
            "v4-synack-ingress-clamped",
            "IPv4 SYN-ACK arriving from the narrow path: keyed by its source",
            segment(Ingress, V4, &syn_ack(linux_options())),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-synack-egress-clamped",
            "IPv4 SYN-ACK leaving towards the narrow path",
            segment(Egress, V4, &syn_ack(opt::mss(1460))),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v6-synack-ingress-clamped",
            "IPv6 SYN-ACK arriving from the narrow path",
            segment(Ingress, V6, &syn_ack(opt::mss(1440))),
            Expect::clamped(V6, 1440, 1312),
        ),
        (
            "v4-ack-untouched",
            "A plain ACK carrying an MSS-looking option is not a SYN",
            segment(Egress, V4, &Tcp::new(flags::ACK, opt::mss(1460))),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-syn-rst-untouched",
            "SYN+RST is not counted as a SYN",
            segment(
                Egress,
                V4,
                &Tcp::new(flags::SYN | flags::RST, opt::mss(1460)),
            ),
            Expect::counted(NOTHING, V4),
        ),
    ])
}

/// IP headers around a SYN: IPv4 options, VLAN tags, IPv6 extension headers, fragments.
fn ip_headers() -> Vec<Named> {
    let mss = || opt::mss(1460);
    let with_options = |options: Vec<u8>| Ipv4 {
        options,
        ..ipv4_header()
    };
    let qinq = {
        let inner = syn4_over(&ipv4_header(), Some(42), mss());
        // Insert a second tag: 0x8100 TCI 0x8100 TCI 0x0800.
        cat(&[&inner[..12], &[0x81, 0x00, 0x00, 0x07], &inner[12..]])
    };
    let five_exts = [
        Ext::HopByHop(0),
        Ext::DstOpts(0),
        Ext::Routing(0),
        Ext::DstOpts(0),
        Ext::DstOpts(0),
    ];
    let later_fragment = Ipv4 {
        frag_offset: 10,
        ..ipv4_header()
    };
    let first_fragment = Ipv4 {
        mf: true,
        df: false,
        ..ipv4_header()
    };
    named([
        (
            "v4-ip-options",
            "IPv4 with a record-route option (IHL 8)",
            egress(syn4_over(
                &with_options(vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
                None,
                linux_options(),
            )),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-ip-options-ihl15",
            "IPv4 with 40 bytes of IP options (IHL 15)",
            egress(syn4_over(&with_options(vec![1; 40]), None, mss())),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-vlan",
            "One 802.1Q tag before IPv4",
            egress(syn4_over(&ipv4_header(), Some(42), mss())),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "qinq-two-tags-passed",
            "Two 802.1Q tags: not parsed, passed and not counted",
            egress(qinq),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v6-hop-by-hop",
            "IPv6 with a hop-by-hop header",
            egress(syn6_behind(&[Ext::HopByHop(0)], linux_options())),
            Expect::clamped(V6, 1460, 1312),
        ),
        (
            "v6-four-ext-headers",
            "IPv6 with hop-by-hop, destination options, routing, destination options",
            egress(syn6_behind(
                &[
                    Ext::HopByHop(1),
                    Ext::DstOpts(0),
                    Ext::Routing(2),
                    Ext::DstOpts(0),
                ],
                mss(),
            )),
            Expect::clamped(V6, 1460, 1312),
        ),
        (
            "v6-five-ext-headers",
            "Five extension headers: more than the datapath walks -> unparseable",
            egress(syn6_behind(&five_exts, mss())),
            Expect::counted(UNPARSEABLE, V6),
        ),
        (
            "v6-fragment-header",
            "IPv6 fragment header: the transport is left alone",
            egress(syn6_behind(&[Ext::Fragment(0, true)], mss())),
            Expect::counted(NOTHING, V6),
        ),
        (
            "v4-fragment-offset",
            "IPv4 non-first fragment that looks like a SYN: untouched",
            egress(syn4_over(&later_fragment, None, mss())),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-first-fragment",
            "IPv4 first fragment (MF, offset 0) carries the TCP header: clamped",
            egress(syn4_over(&first_fragment, None, mss())),
            Expect::clamped(V4, 1460, 1332),
        ),
    ])
}

/// Frames that end early, headers that lie about their lengths, frames that are no IP, and
/// segments with odd bytes around them.
fn malformed_frames() -> Vec<Named> {
    let full = syn4(linux_options());
    let tagged = syn4_over(&ipv4_header(), Some(5), opt::mss(1460));
    let full6 = syn6(opt::mss(1460));
    let tagged6 = cat(&[&full6[..12], &[0x81, 0x00, 0x00, 0x05], &full6[12..38]]);
    let runt_vlan = packets::ethernet(packets::ETH_P_IP, Some(9), &[]);
    let mut tfo = Tcp::new(flags::SYN, cat(&[&opt::mss(1460), &[34, 2, 1, 1]]));
    tfo.payload = b"GET / HTTP/1.1\r\n".to_vec();
    let mut bad_checksum = syn4(opt::mss(1460));
    bad_checksum[14 + 20 + 16] ^= 0x5a;
    let data_offset = |doff| {
        let mut t = Tcp::new(flags::SYN, opt::mss(1460));
        t.doff_override = Some(doff);
        packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t)
    };
    let rows = [
        (
            "doff-4",
            "TCP data offset 4 (below the minimum of 5)",
            data_offset(4),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "doff-15-past-packet",
            "TCP data offset 15 in a 24-byte segment",
            data_offset(15),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "truncated-ipv4-header",
            "Frame (802.1Q-tagged: the kernel refuses short untagged ones) ends 10 bytes into IPv4",
            tagged[..28].to_vec(),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "truncated-tcp-header",
            "Frame ends 10 bytes into the TCP header",
            full[..44].to_vec(),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "truncated-tcp-options",
            "Frame ends in the middle of the TCP options",
            full[..60].to_vec(),
            Expect::counted(UNPARSEABLE_SYN, V4),
        ),
        (
            "ipv4-total-length-short",
            "IPv4 total length 30: the TCP header is past the IP packet (bytes after are padding)",
            with_bytes(&full, 16, &30u16.to_be_bytes()),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "ipv4-ihl-4",
            "IPv4 IHL 4",
            with_bytes(&full, 14, &[0x44]),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "ipv4-ihl-past-frame",
            "IPv4 IHL 15 in a frame that ends after 24 bytes of IP",
            with_bytes(&full[..34 + 4], 14, &[0x4f]),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "ipv4-ethertype-version-6",
            "EtherType IPv4 but version nibble 6",
            with_bytes(&full, 14, &[0x65]),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "truncated-ipv6-header",
            "Frame (802.1Q-tagged) ends 20 bytes into the IPv6 header",
            tagged6,
            Expect::counted(UNPARSEABLE, V6),
        ),
        (
            "arp-frame",
            "ARP: not IP, not counted",
            packets::ethernet(packets::ETH_P_ARP, None, &[0u8; 28]),
            Expect::counted(NOTHING, V4),
        ),
        (
            "runt-vlan-ipv4-no-header",
            "An 802.1Q tag announcing IPv4 and no IP header at all",
            runt_vlan.clone(),
            Expect::counted(UNPARSEABLE, V4),
        ),
        (
            "runt-vlan-tag-cut",
            "A frame that ends inside the 802.1Q tag: not IP, not counted",
            runt_vlan[..16].to_vec(),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-ethernet-padding",
            "Trailing bytes after the IP packet are not part of the segment",
            cat(&[&syn4(opt::mss(1460)), &[0xee; 8]]),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-bad-checksum-stays-bad",
            "A wrong TCP checksum stays exactly as wrong (incremental update)",
            bad_checksum,
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-syn-with-data",
            "A TFO SYN with payload",
            packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &tfo),
            Expect::clamped(V4, 1460, 1332),
        ),
    ];
    named(
        rows.into_iter()
            .map(|(name, description, frame, expect)| (name, description, egress(frame), expect)),
    )
}

/// What the tables decide: a peer without an entry, the interface default, the longest prefix,
/// an insane MTU, L3 devices, an unconfigured interface.
fn interfaces_and_tables() -> Vec<Named> {
    let elsewhere = || {
        egress(packets::tcp4_frame(
            addr::LOCAL4,
            Ipv4Addr::new(10, 10, 0, 1),
            &Tcp::new(flags::SYN, opt::mss(1460)),
        ))
    };
    let syn = || egress(syn4(opt::mss(1460)));
    named([
        (
            "v4-no-clamp-for-peer",
            "Destination without an entry and no interface default",
            elsewhere(),
            Expect::counted(NO_CLAMP, V4),
        ),
        (
            "v4-interface-default",
            "No entry for the peer: the interface default (1400) applies",
            with_tables(elsewhere(), |t| t.ifaces[0].1.default_mtu_v4 = 1400),
            Expect::clamped(V4, 1460, 1360),
        ),
        (
            "v4-longest-prefix",
            "A /32 entry (1280) beats the /16 (1372)",
            with_tables(syn(), |t| {
                t.clamps.push(Clamp {
                    addr: IpAddr::V4(addr::REMOTE4),
                    prefix_len: 32,
                    mtu: 1280,
                })
            }),
            Expect::clamped(V4, 1460, 1240),
        ),
        (
            "v4-insane-mtu",
            "Path MTU 60 is below 68: not believed, no clamp",
            with_tables(syn(), |t| t.clamps[0].mtu = 60),
            Expect::counted(NO_CLAMP, V4),
        ),
        (
            "l3-device-raw-ipv4",
            "An L3 device (tun, WireGuard): the frame starts with the IPv4 header",
            on_l3_device(egress(syn4(linux_options())[14..].to_vec())),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "l3-device-raw-ipv6",
            "An L3 device with an IPv6 packet",
            on_l3_device(egress(syn6(opt::mss(1460))[14..].to_vec())),
            Expect::clamped(V6, 1460, 1312),
        ),
        (
            "l3-device-truncated-ipv6",
            "An L3 device with a 30-byte IPv6 packet",
            on_l3_device(egress(syn6(opt::mss(1460))[14..14 + 30].to_vec())),
            Expect::counted(UNPARSEABLE, V6),
        ),
        (
            "unconfigured-interface",
            "No interface settings: counter slot 0, Ethernet, LPM entries still apply",
            with_tables(syn(), |t| t.ifaces.clear()),
            Expect::clamped(V4, 1460, 1332),
        ),
    ])
}

/// Egress packets larger than the path MTU, with and without DF, as GSO packets, under a floor.
fn oversize() -> Vec<Named> {
    let big4 = |ip: &Ipv4| packets::tcp4_frame_with(ip, None, &bulk(V4, 1500, 0x11));
    let no_df = Ipv4 {
        df: false,
        ..ipv4_header()
    };
    let ack = egress(packets::tcp4_frame(
        addr::LOCAL4,
        addr::REMOTE4,
        &Tcp::new(flags::ACK, vec![]),
    ));
    named([
        (
            "v4-oversize-df",
            "Egress IPv4 DF packet of 1500 bytes over a 1372 path",
            egress(big4(&ipv4_header())),
            Expect::counted(OVERSIZE, V4),
        ),
        (
            "v4-oversize-no-df",
            "The same without DF: routers may fragment it, not counted",
            egress(big4(&no_df)),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-oversize-ingress-not-counted",
            "Oversize is an egress-only counter",
            segment(Direction::Ingress, V4, &bulk(V4, 1500, 0x11)),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v6-oversize",
            "Every IPv6 packet is DF: 1400 bytes over a 1372 path",
            segment(Direction::Egress, V6, &bulk(V6, 1400, 0x22)),
            Expect::counted(OVERSIZE, V6),
        ),
        (
            "v4-gso-oversize",
            "A GSO packet: headers + gso_size 1448 = 1488 > 1372 (skb built with __sk_buff ctx)",
            with_gso(ack.clone(), 1448),
            Expect::counted(OVERSIZE, V4),
        ),
        (
            "v4-gso-fits",
            "A GSO packet whose segments (1040) fit",
            with_gso(ack, 1000),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-oversize-below-floor",
            "A floor of 1500 (smallest MTU in force) skips the lookup for a 1500-byte packet",
            with_tables(egress(big4(&ipv4_header())), |t| {
                t.globals.min_mtu_v4 = 1500
            }),
            Expect::counted(NOTHING, V4),
        ),
    ])
}

/// SYN-ACKs answering the agent's TCP probes keep their MSS; nothing else does.
fn probes() -> Vec<Named> {
    let local_port = Tcp::new(0, vec![]).dport;
    let probing =
        |case: Case, peer: IpAddr, port: u16| with_tables(case, |t| t.probes.push((peer, port)));
    let handshake =
        |dir, family, tcp_flags, mss| segment(dir, family, &Tcp::new(tcp_flags, opt::mss(mss)));
    let syn_ack4 = || handshake(Direction::Ingress, V4, flags::SYN | flags::ACK, 1460);
    let remote4 = IpAddr::V4(addr::REMOTE4);
    named([
        (
            "v4-probe-synack-keeps-its-mss",
            "A SYN-ACK answering the agent's TCP probe (peer and local port in the probe map) \
             keeps the peer's MSS",
            probing(syn_ack4(), remote4, local_port),
            Expect::counted(NO_CLAMP, V4),
        ),
        (
            "v4-probe-other-port-clamped",
            "A probe from another local port exempts nothing else",
            probing(syn_ack4(), remote4, local_port + 1),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-probe-plain-syn-clamped",
            "Only a SYN-ACK answers a probe: an arriving SYN to the same port is clamped",
            probing(
                handshake(Direction::Ingress, V4, flags::SYN, 1460),
                remote4,
                local_port,
            ),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v4-probe-egress-clamped",
            "The exemption is for arriving SYN-ACKs only: a leaving one is clamped",
            probing(
                handshake(Direction::Egress, V4, flags::SYN | flags::ACK, 1460),
                remote4,
                local_port,
            ),
            Expect::clamped(V4, 1460, 1332),
        ),
        (
            "v6-probe-synack-keeps-its-mss",
            "The IPv6 SYN-ACK answering a probe keeps the peer's MSS",
            probing(
                handshake(Direction::Ingress, V6, flags::SYN | flags::ACK, 1440),
                IpAddr::V6(addr::REMOTE6),
                local_port,
            ),
            Expect::counted(NO_CLAMP, V6),
        ),
    ])
}

/// Reflection on: which oversize packets are dropped and handed to the agent.
fn reflection() -> Vec<Named> {
    let big4 = || bulk(V4, 1500, 0x11);
    let no_df = Ipv4 {
        df: false,
        ..ipv4_header()
    };
    let leaving4 = || segment(Direction::Egress, V4, &big4());
    named([
        (
            "v4-oversize-reflected",
            "Reflection on: a 1500-byte DF packet over a 1372 clamp entry is dropped and handed \
             to the agent",
            reflecting(leaving4()),
            Expect::dropped(V4),
        ),
        (
            "v6-oversize-reflected",
            "Reflection on: every IPv6 packet is DF; 1400 bytes over a 1372 entry are dropped",
            reflecting(segment(Direction::Egress, V6, &bulk(V6, 1400, 0x22))),
            Expect::dropped(V6),
        ),
        (
            "v4-gso-oversize-reflected",
            "A GSO packet is judged by its segments (40 + 1448 > 1372): the whole packet is \
             dropped",
            with_gso(reflecting(leaving4()), 1448),
            Expect::dropped(V4),
        ),
        (
            "v4-oversize-no-df-not-reflected",
            "Without DF a router may fragment it: counted nowhere, never dropped",
            reflecting(egress(packets::tcp4_frame_with(&no_df, None, &big4()))),
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-oversize-first-contact-not-reflected",
            "Over the interface default (the first-contact guess, not a measurement): counted, \
             never dropped",
            with_tables(
                reflecting(egress(packets::tcp4_frame(
                    addr::LOCAL4,
                    // Outside the 10.9.0.0/16 entry.
                    Ipv4Addr::new(10, 8, 0, 7),
                    &big4(),
                ))),
                |t| t.ifaces[0].1.default_mtu_v4 = 1280,
            ),
            Expect::counted(OVERSIZE, V4),
        ),
        (
            "v4-oversize-below-552-not-reflected",
            "A clamp entry below 552 is not a path MTU an ICMP error may name: counted, never \
             dropped",
            with_tables(reflecting(leaving4()), |t| t.clamps[0].mtu = 500),
            Expect::counted(OVERSIZE, V4),
        ),
        (
            "v4-oversize-ingress-not-reflected",
            "Reflection is for what leaves: an arriving oversize packet is untouched",
            reflecting(segment(Direction::Ingress, V4, &big4())),
            Expect::counted(NOTHING, V4),
        ),
    ])
}

/// DSCP normalisation (`set_dscp`): OpenSSH's af21 and cs1 marks, with every ECN codepoint, over
/// IPv4 with and without options and IPv6 with extension headers.
fn dscp() -> Vec<Named> {
    const AF21: u8 = 18 << 2;
    const CS1: u8 = 8 << 2;
    const ECT0: u8 = 0b10;
    const ECT1: u8 = 0b01;
    const CE: u8 = 0b11;
    const REWRITTEN: &[&str] = &["dscp_rewritten"];
    // (name, description, hook, frame, its DS field, the interface's DSCP, expectation)
    let ack4 = Tcp::new(flags::ACK, Vec::new());
    let leaving4 = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &ack4);
    let with_options = Ipv4 {
        options: vec![0x94, 0x04, 0x00, 0x00], // Router Alert
        ..ipv4_header()
    };
    let rows = [
        (
            "v4-dscp-af21-rewritten-ecn-kept",
            "set_dscp 0: an af21 packet with ECT(0) leaves with DSCP 0 and ECT(0), its header \
             checksum updated",
            Direction::Egress,
            leaving4.clone(),
            AF21 | ECT0,
            0,
            Expect::counted(REWRITTEN, V4).with_ds(AF21 | ECT0, ECT0),
        ),
        (
            "v4-options-dscp-cs1-rewritten-ce-kept",
            "IPv4 with options (IHL 6): cs1 with CE becomes DSCP 0 with CE; the checksum covers \
             the options",
            Direction::Egress,
            packets::tcp4_frame_with(&with_options, None, &ack4),
            CS1 | CE,
            0,
            Expect::counted(REWRITTEN, V4).with_ds(CS1 | CE, CE),
        ),
        (
            "v6-ext-dscp-af21-rewritten",
            "IPv6 behind a hop-by-hop header: the traffic class across bytes 0-1 becomes DSCP 0, \
             ECT(1) and the flow label bits kept",
            Direction::Egress,
            packets::tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[Ext::HopByHop(0)], &ack4),
            AF21 | ECT1,
            0,
            Expect::counted(REWRITTEN, V6).with_ds(AF21 | ECT1, ECT1),
        ),
        (
            "v4-dscp-to-a-nonzero-value",
            "set_dscp 46 (EF) on a cs1 packet: DSCP 46, ECN 0",
            Direction::Egress,
            leaving4.clone(),
            CS1,
            46,
            Expect::counted(REWRITTEN, V4).with_ds(CS1, 46 << 2),
        ),
        (
            "v4-dscp-already-set-costs-no-write",
            "A packet that already carries the DSCP (0, with ECT(1)) is neither written nor \
             counted",
            Direction::Egress,
            leaving4,
            ECT1,
            0,
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-dscp-ingress-untouched",
            "Marks are normalised on what leaves: an arriving af21 packet keeps them",
            Direction::Ingress,
            packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, &ack4),
            AF21,
            0,
            Expect::counted(NOTHING, V4),
        ),
        (
            "v4-syn-clamped-and-dscp-rewritten",
            "A marked SYN gets both: its MSS clamped and its DSCP set",
            Direction::Egress,
            syn4(opt::mss(1460)),
            AF21,
            0,
            Expect {
                counters: &["syn", "mss_clamped", "dscp_rewritten"],
                ..Expect::clamped(V4, 1460, 1332)
            }
            .with_ds(AF21, 0),
        ),
    ];
    named(
        rows.into_iter()
            .map(|(name, description, dir, mut frame, ds, dscp, expect)| {
                packets::set_ds(&mut frame[14..], ds);
                let case = with_tables(egress(frame), |t| {
                    t.ifaces[0].1.dscp = wslnet_common::DSCP_SET | dscp
                });
                (name, description, Case { dir, ..case }, expect)
            }),
    )
}
