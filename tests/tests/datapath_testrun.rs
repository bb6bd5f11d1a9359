//! The real datapath on crafted packets (`BPF_PROG_TEST_RUN`): exact output bytes, a TCP
//! checksum verified independently (RFC 1071 over pseudo-header + segment, `packets`), the verdict
//! and the counters that moved.
use std::net::IpAddr;

use wslnet_common::{Counters, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6};
use wslnet_model::{Direction, Tables};
use wslnet_tests::{
    fuzz::corpus::cases::narrow_path_tables,
    lab::VPN_MTU,
    netns::require_root,
    packets::{self, Ext, Ipv4, Tcp, addr, flags, locate_tcp, opt, tcp_checksum_ok},
    testrun::{Harness, TEST_IFINDEX},
};

const SLOT: u32 = 9;

/// Slot 9, Ethernet, 1372 towards 10.9.0.0/16 and fd00:9::/32.
fn harness() -> Harness {
    require_root();
    let mut h = Harness::new().expect("loading the datapath");
    h.set_tables(&tables(14)).unwrap();
    h
}

/// Slot 9, 1372 towards 10.9.0.0/16 and fd00:9::/32.
fn tables(l3_offset: u16) -> Tables {
    narrow_path_tables(SLOT, l3_offset)
}

/// Runs `frame` and returns (output, counters moved in this slot/direction for `family`),
/// asserting the verdict and that no other row moved.
fn run(h: &Harness, dir: Direction, frame: &[u8], family: u32) -> (Vec<u8>, Counters) {
    run_gso(h, dir, frame, family, 0)
}

fn run_gso(
    h: &Harness,
    dir: Direction,
    frame: &[u8],
    family: u32,
    gso: u32,
) -> (Vec<u8>, Counters) {
    let r = h.run_watch(dir, frame, gso, &[SLOT, 0]).unwrap();
    assert_eq!(r.retval, -1, "verdict must be TC_ACT_UNSPEC");
    let d = if dir == Direction::Egress {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    for row in r.counters.keys() {
        assert_eq!(
            *row,
            (SLOT, d, family),
            "unexpected counter row moved: {:?}",
            r.counters
        );
    }
    let c = r
        .counters
        .get(&(SLOT, d, family))
        .copied()
        .unwrap_or_default();
    (r.frame, c)
}

/// Counters with each of `names` (field names) at 1.
fn counters(names: &[&str]) -> Counters {
    let mut c = Counters::default();
    for n in names {
        let field = Counters::field(n).unwrap_or_else(|| panic!("no counter {n}"));
        *(field.get_mut)(&mut c) += 1;
    }
    c
}

/// An IPv4 ACK from us to the remote host carrying `payload` bytes (of 7).
fn ack4_carrying(payload: usize) -> Vec<u8> {
    let mut big = Tcp::new(flags::ACK, vec![]);
    big.payload = vec![7; payload];
    packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &big)
}

/// Offset of the first MSS option's value, by a plain option walk written for this test.
fn mss_value_offset(frame: &[u8], l3_offset: usize) -> usize {
    let loc = locate_tcp(frame, l3_offset).unwrap();
    let end = loc.l4 + usize::from(frame[loc.l4 + 12] >> 4) * 4;
    let mut i = loc.l4 + 20;
    while i < end {
        match frame[i] {
            1 => i += 1,
            2 => return i + 2,
            _ => i += usize::from(frame[i + 1]),
        }
    }
    panic!("no MSS option");
}

/// The input with the MSS value replaced and the TCP checksum recomputed from scratch.
fn expected_rewrite(input: &[u8], l3_offset: usize, new_mss: u16) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = mss_value_offset(input, l3_offset);
    out[at..at + 2].copy_from_slice(&new_mss.to_be_bytes());
    let loc = locate_tcp(&out, l3_offset).unwrap();
    packets::fix_tcp_checksum(&mut out, &loc);
    out
}

fn assert_clamped(h: &Harness, dir: Direction, input: &[u8], family: u32, old: u16, new: u16) {
    let at = mss_value_offset(input, 14);
    assert_eq!(u16::from_be_bytes([input[at], input[at + 1]]), old);
    let (out, c) = run(h, dir, input, family);
    let want = expected_rewrite(input, 14, new);
    assert_eq!(packets_hex(&out), packets_hex(&want), "output bytes");
    let loc = locate_tcp(&out, 14).unwrap();
    assert!(tcp_checksum_ok(&out, &loc), "TCP checksum of the output");
    assert_eq!(c, counters(&["syn", "mss_clamped"]));
}

fn assert_unchanged(h: &Harness, dir: Direction, input: &[u8], family: u32, moved: &[&str]) {
    let (out, c) = run(h, dir, input, family);
    assert_eq!(
        packets_hex(&out),
        packets_hex(input),
        "frame must be unchanged"
    );
    assert_eq!(c, counters(moved));
}

fn packets_hex(b: &[u8]) -> String {
    wslnet_tests::fuzz::corpus::hex(b)
}

fn syn4(options: Vec<u8>) -> Vec<u8> {
    packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &Tcp::new(flags::SYN, options))
}

#[test]
fn ipv4_syn_mss_1460_is_clamped_to_1332() {
    let h = harness();
    assert_clamped(
        &h,
        Direction::Egress,
        &syn4(opt::mss(1460)),
        FAMILY_V4,
        1460,
        1332,
    );
}

#[test]
fn ipv4_syn_ack_is_clamped_on_both_hooks() {
    let h = harness();
    let synack = Tcp::new(flags::SYN | flags::ACK, opt::mss(1460));
    let inbound = packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, &synack);
    assert_clamped(&h, Direction::Ingress, &inbound, FAMILY_V4, 1460, 1332);
    let outbound = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &synack);
    assert_clamped(&h, Direction::Egress, &outbound, FAMILY_V4, 1460, 1332);
    // Ingress is keyed by the source: a SYN-ACK from elsewhere is not clamped.
    let other = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &synack);
    assert_unchanged(
        &h,
        Direction::Ingress,
        &other,
        FAMILY_V4,
        &["syn", "no_clamp"],
    );
}

#[test]
fn ipv6_syn_mss_1460_is_clamped_to_1312() {
    let h = harness();
    let f = packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        &[],
        &Tcp::new(flags::SYN, opt::mss(1460)),
    );
    assert_clamped(&h, Direction::Egress, &f, FAMILY_V6, 1460, 1312);
    let synack = packets::tcp6_frame(
        addr::REMOTE6,
        addr::LOCAL6,
        &[],
        &Tcp::new(flags::SYN | flags::ACK, opt::mss(1460)),
    );
    assert_clamped(&h, Direction::Ingress, &synack, FAMILY_V6, 1460, 1312);
}

#[test]
fn mss_already_lower_is_unchanged() {
    let h = harness();
    for mss in [1332, 1200, 536, 0] {
        assert_unchanged(
            &h,
            Direction::Egress,
            &syn4(opt::mss(mss)),
            FAMILY_V4,
            &["syn", "mss_ok"],
        );
    }
}

#[test]
fn no_mss_option_is_unchanged() {
    let h = harness();
    let layouts = [
        vec![],
        [opt::wscale(7), opt::sack_perm(), vec![opt::NOP]].concat(),
        [vec![opt::EOL, 0, 0, 0], opt::mss(1460)].concat(),
    ];
    for o in layouts {
        assert_unchanged(
            &h,
            Direction::Egress,
            &syn4(o),
            FAMILY_V4,
            &["syn", "no_mss"],
        );
    }
}

#[test]
fn non_syn_segments_are_unchanged_and_not_counted() {
    let h = harness();
    for fl in [
        flags::ACK,
        flags::ACK | flags::PSH,
        flags::FIN | flags::ACK,
        flags::SYN | flags::RST,
        flags::RST,
    ] {
        let f = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &Tcp::new(fl, opt::mss(1460)));
        assert_unchanged(&h, Direction::Egress, &f, FAMILY_V4, &[]);
    }
}

#[test]
fn every_option_order_is_clamped_with_a_valid_checksum() {
    let h = harness();
    let ts = opt::timestamps(0xdead_beef, 0x0102_0304);
    let layouts: Vec<Vec<u8>> = vec![
        // Linux: MSS, SACK_PERM, TS, NOP, WS.
        [
            opt::mss(1460),
            opt::sack_perm(),
            ts.clone(),
            vec![opt::NOP],
            opt::wscale(7),
        ]
        .concat(),
        // NOP NOP TS, then MSS.
        [vec![opt::NOP, opt::NOP], ts.clone(), opt::mss(1460)].concat(),
        // WS, SACK_PERM before; TS after.
        [
            opt::wscale(2),
            vec![opt::NOP],
            opt::sack_perm(),
            opt::mss(1460),
            ts.clone(),
        ]
        .concat(),
        // MSS last after everything else (38 bytes of options).
        [
            opt::wscale(7),
            vec![opt::NOP],
            opt::sack_perm(),
            vec![opt::NOP, opt::NOP],
            ts.clone(),
            opt::sack(&[(1, 2)]),
            opt::mss(1460),
        ]
        .concat(),
        // Odd offsets: a lone NOP, WS (3 bytes), three NOPs before MSS.
        [vec![opt::NOP], opt::mss(1460)].concat(),
        [opt::wscale(7), opt::mss(1460)].concat(),
        [vec![opt::NOP; 3], opt::mss(1460)].concat(),
        [opt::sack_perm(), opt::wscale(1), opt::mss(1460), ts.clone()].concat(),
    ];
    for (i, o) in layouts.into_iter().enumerate() {
        let f = syn4(o);
        let odd = (mss_value_offset(&f, 14) - 34) % 2 == 1;
        assert!(
            odd == (i >= 4),
            "layout {i}: odd offset expected {}",
            i >= 4
        );
        assert_clamped(&h, Direction::Egress, &f, FAMILY_V4, 1460, 1332);
    }
}

#[test]
fn odd_offset_mss_keeps_the_checksum_right_for_many_values() {
    // The 4-byte checksum replace around an MSS value at an odd offset, over many MSS values,
    // ports and payloads (so many checksum values, including carries around 0xffff).
    let h = harness();
    for i in 0..300u32 {
        let mss = 1333 + (i * 211 % 64000) as u16;
        let mut t = Tcp::new(
            flags::SYN,
            [vec![opt::NOP], opt::mss(mss), vec![opt::NOP; 3]].concat(),
        );
        t.sport = (i * 7919) as u16;
        t.payload = (0..(i % 7)).map(|b| (b * 31 + i) as u8).collect();
        let f = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t);
        assert_clamped(&h, Direction::Egress, &f, FAMILY_V4, mss, 1332);
    }
}

#[test]
fn checksum_that_becomes_zero_after_the_rewrite() {
    // Choose two payload bytes so that the correct checksum after the rewrite is 0x0000: the
    // kernel's incremental update must produce 0x0000 (not 0xffff), like a full recompute.
    let h = harness();
    for odd in [false, true] {
        let o = if odd {
            [vec![opt::NOP], opt::mss(1460), vec![opt::NOP; 3]].concat()
        } else {
            opt::mss(1460)
        };
        let mut t = Tcp::new(flags::SYN, o);
        t.payload = vec![0, 0];
        let mut f = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t);
        let mut after = expected_rewrite(&f, 14, 1332);
        let loc = locate_tcp(&f, 14).unwrap();
        after[loc.l4 + 16] = 0;
        after[loc.l4 + 17] = 0;
        // Sum with check 0; the payload word w must bring it to 0xffff.
        let s = packets::tcp_residual(&after, &loc);
        let w = 0xffff - s;
        let n = f.len();
        f[n - 2..].copy_from_slice(&w.to_be_bytes());
        packets::fix_tcp_checksum(&mut f, &loc);
        let (out, c) = run(&h, Direction::Egress, &f, FAMILY_V4);
        assert_eq!(c, counters(&["syn", "mss_clamped"]));
        assert_eq!(&out[loc.l4 + 16..loc.l4 + 18], &[0, 0], "odd={odd}");
        assert_eq!(
            packets_hex(&out),
            packets_hex(&expected_rewrite(&f, 14, 1332))
        );
        assert!(tcp_checksum_ok(&out, &loc));
    }
}

#[test]
fn ipv4_with_ip_options_is_clamped() {
    let h = harness();
    for options in [
        vec![1, 1, 1, 1],
        vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![1; 40],
    ] {
        let mut ip = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::IPPROTO_TCP);
        ip.options = options;
        let f = packets::tcp4_frame_with(&ip, None, &Tcp::new(flags::SYN, opt::mss(1460)));
        assert_clamped(&h, Direction::Egress, &f, FAMILY_V4, 1460, 1332);
    }
}

#[test]
fn one_vlan_tag_is_clamped() {
    let h = harness();
    let ip = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::IPPROTO_TCP);
    let f = packets::tcp4_frame_with(&ip, Some(100), &Tcp::new(flags::SYN, opt::mss(1460)));
    assert_eq!(&f[12..14], &[0x81, 0x00]);
    assert_clamped(&h, Direction::Egress, &f, FAMILY_V4, 1460, 1332);
}

#[test]
fn ipv6_hop_by_hop_header_is_skipped() {
    let h = harness();
    for exts in [
        vec![Ext::HopByHop(0)],
        vec![Ext::HopByHop(2), Ext::DstOpts(0)],
        vec![
            Ext::HopByHop(0),
            Ext::Routing(1),
            Ext::DstOpts(0),
            Ext::DstOpts(1),
        ],
    ] {
        let f = packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &exts,
            &Tcp::new(flags::SYN, opt::mss(1460)),
        );
        assert_clamped(&h, Direction::Egress, &f, FAMILY_V6, 1460, 1312);
    }
    // A fragment header: left alone, not counted.
    let f = packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        &[Ext::HopByHop(0), Ext::Fragment(0, true)],
        &Tcp::new(flags::SYN, opt::mss(1460)),
    );
    assert_unchanged(&h, Direction::Egress, &f, FAMILY_V6, &[]);
}

#[test]
fn malformed_options_are_unchanged_and_unparseable() {
    let h = harness();
    let cases: Vec<Vec<u8>> = vec![
        [vec![30, 0, 0, 0], opt::mss(1460)].concat(), // length 0
        [vec![3, 1, 7, 1], opt::mss(1460)].concat(),  // length 1
        [vec![8, 40, 0, 0, 0, 0, 0, 0], opt::mss(1460)].concat(), // past the header
        vec![2, 3, 5, 1],                             // MSS length 3
        vec![2, 6, 5, 0xb4, 0, 0, 1, 1],              // MSS length 6
        vec![1, 1, 1, 2],                             // kind in the last byte
    ];
    for o in cases {
        assert_unchanged(
            &h,
            Direction::Egress,
            &syn4(o),
            FAMILY_V4,
            &["syn", "unparseable"],
        );
    }
}

#[test]
fn data_offset_below_5_is_unparseable() {
    let h = harness();
    for doff in [0, 1, 4] {
        let mut t = Tcp::new(flags::SYN, opt::mss(1460));
        t.doff_override = Some(doff);
        let f = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t);
        assert_unchanged(
            &h,
            Direction::Egress,
            &f,
            FAMILY_V4,
            &["syn", "unparseable"],
        );
    }
}

#[test]
fn truncated_packets_are_unchanged_and_unparseable() {
    let h = harness();
    let full = syn4([opt::mss(1460), opt::sack_perm(), opt::timestamps(1, 2)].concat());
    // Cut in the TCP header (no SYN to see) and in the options (SYN seen, options cut).
    assert_unchanged(
        &h,
        Direction::Egress,
        &full[..44],
        FAMILY_V4,
        &["unparseable"],
    );
    assert_unchanged(
        &h,
        Direction::Egress,
        &full[..60],
        FAMILY_V4,
        &["syn", "unparseable"],
    );
    // Cut in the IPv4 header: behind a VLAN tag (the kernel refuses short untagged IPv4 frames).
    let ip = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::IPPROTO_TCP);
    let tagged = packets::tcp4_frame_with(&ip, Some(3), &Tcp::new(flags::SYN, opt::mss(1460)));
    assert_unchanged(
        &h,
        Direction::Egress,
        &tagged[..30],
        FAMILY_V4,
        &["unparseable"],
    );
    // IPv6 header cut, tagged.
    let f6 = packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        &[],
        &Tcp::new(flags::SYN, opt::mss(1460)),
    );
    let mut t6 = f6[..12].to_vec();
    t6.extend_from_slice(&[0x81, 0, 0, 3]);
    t6.extend_from_slice(&f6[12..40]);
    assert_unchanged(&h, Direction::Egress, &t6, FAMILY_V6, &["unparseable"]);
    // IPv4 total length shorter than the headers: the segment is past the packet.
    let mut short = syn4(opt::mss(1460));
    short[16..18].copy_from_slice(&40u16.to_be_bytes());
    assert_unchanged(
        &h,
        Direction::Egress,
        &short,
        FAMILY_V4,
        &["syn", "unparseable"],
    );
}

#[test]
fn l3_device_without_link_header_is_clamped() {
    let mut h = harness();
    h.set_tables(&tables(0)).unwrap();
    let f = syn4(opt::mss(1460));
    let raw = &f[14..];
    let (out, c) = run(&h, Direction::Egress, raw, FAMILY_V4);
    assert_eq!(c, counters(&["syn", "mss_clamped"]));
    assert_eq!(
        packets_hex(&out),
        packets_hex(&expected_rewrite(raw, 0, 1332))
    );
    assert!(tcp_checksum_ok(&out, &locate_tcp(&out, 0).unwrap()));
}

#[test]
fn egress_pure_syns_are_learned_syn_acks_are_not() {
    let h = harness();
    run(&h, Direction::Egress, &syn4(opt::mss(1460)), FAMILY_V4);
    run(&h, Direction::Egress, &syn4(opt::mss(1200)), FAMILY_V4);
    let synack = packets::tcp4_frame(
        addr::LOCAL4,
        "10.9.5.5".parse().unwrap(),
        &Tcp::new(flags::SYN | flags::ACK, opt::mss(1460)),
    );
    run(&h, Direction::Egress, &synack, FAMILY_V4);
    let inbound = packets::tcp4_frame(
        addr::REMOTE4,
        addr::LOCAL4,
        &Tcp::new(flags::SYN, opt::mss(1460)),
    );
    run(&h, Direction::Ingress, &inbound, FAMILY_V4);
    let learned = h.maps().learned();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0].addr, IpAddr::V4(addr::REMOTE4));
    assert_eq!(learned[0].ifindex, TEST_IFINDEX);
    // The port of the SYN that created the entry: where the agent checks with TCP.
    assert_eq!(learned[0].port, Some(443));
    // Both SYNs count; the second may still be held back by its CPU (see the next test).
    let mut remote = [0u8; 16];
    remote[..4].copy_from_slice(&addr::REMOTE4.octets());
    assert_eq!(
        h.learned().unwrap(),
        [((FAMILY_V4, remote), (2, 443u16.to_be()))]
            .into_iter()
            .collect()
    );
}

/// The agent's own TCP probes (`PROBE_MARK`) are not traffic: not learned, so that they never
/// stand for a destination's route or keep it looking used. Any other SYN's mark is recorded
/// (policy routing may select by it), with the owner of its socket (`BPF_PROG_TEST_RUN` gives
/// the skb a socket of its own, owned by root).
#[test]
fn the_agents_own_probes_are_not_learned_and_other_marks_are_recorded() {
    let h = harness();
    let syn = syn4(opt::mss(1460));
    let (_, verdict) = h
        .run_raw_marked(Direction::Egress, &syn, 0, wslnet_common::PROBE_MARK)
        .unwrap();
    assert_eq!(verdict, -1);
    assert_eq!(h.maps().learned(), [], "a probe's SYN was learned");
    h.run_raw_marked(Direction::Egress, &syn, 0, 0x51).unwrap();
    let learned = h.maps().learned();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0].mark, 0x51);
    assert_eq!(learned[0].uid, Some(0));
}

/// Pins the calling thread to the CPU it runs on, so that every test run below uses one CPU's
/// slots of the per-CPU learn cache.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu failed");
    wslnet_tests::netns::pin_thread(cpu as usize).unwrap();
}

/// The SYN count and last-seen time of an IPv4 destination in the learned map as the agent
/// reads it (held-back SYNs not included).
fn learned_v4(h: &Harness, a: std::net::Ipv4Addr) -> Option<(u64, u64)> {
    h.maps()
        .learned()
        .into_iter()
        .find(|l| l.addr == IpAddr::V4(a))
        .map(|l| (l.syns, l.last_seen_jiffies))
}

#[test]
fn repeated_syns_are_held_back_per_cpu_and_written_within_the_refresh_period() {
    let h = harness();
    pin_to_current_cpu();
    let a = addr::REMOTE4;
    let syn_to = |d: std::net::Ipv4Addr| {
        packets::tcp4_frame(addr::LOCAL4, d, &Tcp::new(flags::SYN, opt::mss(1460)))
    };
    // A destination that shares `a`'s slot in the per-CPU caches.
    let slot_of = |d: std::net::Ipv4Addr| {
        let addr = wslnet_agent::maps::learned_key(d.into()).addr;
        wslnet_common::peer_cache_slot(&wslnet_common::peer_words(&addr))
    };
    let b = (1..=255u8)
        .map(|i| std::net::Ipv4Addr::new(10, 9, 6, i))
        .find(|&d| slot_of(d) == slot_of(a))
        .expect("a colliding address in 10.9.6.0/24");

    // A destination new to this CPU is written at once.
    run(&h, Direction::Egress, &syn_to(a), FAMILY_V4);
    let (syns, written_at) = learned_v4(&h, a).expect("learned at the first SYN");
    assert_eq!(syns, 1);
    // Repeats within the period are held back (the agent still sees 1).
    run(&h, Direction::Egress, &syn_to(a), FAMILY_V4);
    run(&h, Direction::Egress, &syn_to(a), FAMILY_V4);
    assert_eq!(learned_v4(&h, a).unwrap().0, 1);
    // Another destination taking the slot writes what was held back first.
    run(&h, Direction::Egress, &syn_to(b), FAMILY_V4);
    assert_eq!(learned_v4(&h, a).unwrap().0, 3);
    assert_eq!(learned_v4(&h, b).unwrap().0, 1);

    // Steady SYNs to one destination: written again within LEARN_REFRESH_JIFFIES (1.02 s at
    // HZ=250, 2.56 s at HZ=100), with every SYN counted.
    let mut sent = 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (syns, last_seen) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "held-back SYNs to {b} not written in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        run(&h, Direction::Egress, &syn_to(b), FAMILY_V4);
        sent += 1;
        let (syns, last_seen) = learned_v4(&h, b).unwrap();
        if syns > 1 {
            break (syns, last_seen);
        }
    };
    assert_eq!(syns, sent, "every SYN to {b} counted when written");
    assert!(
        last_seen > written_at,
        "last_seen_jiffies moves on when written"
    );
}

#[test]
fn gso_size_from_the_skb_context_sizes_oversize_packets() {
    // __sk_buff context input is supported by aya's TestRun: gso_size set there is what the
    // datapath sees, so a small frame counts as oversize when headers + gso_size > path MTU.
    let h = harness();
    let ack = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &Tcp::new(flags::ACK, vec![]));
    let (_, c) = run_gso(&h, Direction::Egress, &ack, FAMILY_V4, 1448);
    assert_eq!(c, counters(&["oversize_df"]), "40 + 1448 > 1372");
    let (_, c) = run_gso(&h, Direction::Egress, &ack, FAMILY_V4, 1332);
    assert_eq!(c, counters(&[]), "40 + 1332 = 1372 fits");
    let (_, c) = run_gso(&h, Direction::Egress, &ack, FAMILY_V4, 0);
    assert_eq!(c, counters(&[]), "a 54-byte frame fits");
    let f = ack4_carrying(1400);
    let (out, c) = run(&h, Direction::Egress, &f, FAMILY_V4);
    assert_eq!(c, counters(&["oversize_df"]));
    assert_eq!(out, f);
    let (_, c) = run(&h, Direction::Ingress, &f, FAMILY_V4);
    assert_eq!(c, counters(&[]), "oversize is egress-only");
}

/// The datapath caches clamp lookups per CPU; every change the agent makes to the clamp tables
/// (through `Maps`, which starts a new clamp generation) must apply to the very next SYN.
#[test]
fn clamp_table_changes_apply_to_the_next_packet() {
    let mut h = harness();
    let cases: [(IpAddr, Vec<u8>, u32, u16); 2] = [
        (
            IpAddr::V4(addr::REMOTE4),
            syn4(opt::mss(1460)),
            FAMILY_V4,
            40,
        ),
        (
            IpAddr::V6(addr::REMOTE6),
            packets::tcp6_frame(
                addr::LOCAL6,
                addr::REMOTE6,
                &[],
                &Tcp::new(flags::SYN, opt::mss(1460)),
            ),
            FAMILY_V6,
            60,
        ),
    ];
    let prefix = |a: IpAddr| -> ipnet::IpNet {
        match a {
            IpAddr::V4(_) => "10.9.0.0/16".parse().unwrap(),
            IpAddr::V6(_) => "fd00:9::/32".parse().unwrap(),
        }
    };
    let static_ = wslnet_agent::maps::Origin::Static;
    for (peer, syn, family, overhead) in cases {
        // Twice at 1372: the second run is answered from the cache.
        for _ in 0..2 {
            assert_clamped(
                &h,
                Direction::Egress,
                &syn,
                family,
                1460,
                VPN_MTU - overhead,
            );
        }
        h.maps_mut().set_clamp(prefix(peer), 1400, static_).unwrap();
        assert_clamped(&h, Direction::Egress, &syn, family, 1460, 1400 - overhead);
        h.maps_mut()
            .set_clamp(ipnet::IpNet::from(peer), 1300, static_)
            .unwrap();
        assert_clamped(&h, Direction::Egress, &syn, family, 1460, 1300 - overhead);
        h.maps_mut().remove_clamp(ipnet::IpNet::from(peer)).unwrap();
        assert_clamped(&h, Direction::Egress, &syn, family, 1460, 1400 - overhead);
        h.maps_mut().remove_clamp(prefix(peer)).unwrap();
        assert_unchanged(&h, Direction::Egress, &syn, family, &["syn", "no_clamp"]);
    }
}

/// `Maps::delete_clamp` removes exactly the prefix it is given and says whether it was there;
/// a missing prefix is no error (issue 21: the removal's errors used to be discarded).
#[test]
fn delete_clamp_says_whether_the_prefix_was_there() {
    let mut h = harness();
    let static_ = wslnet_agent::maps::Origin::Static;
    for (present, inside, elsewhere) in [
        ("10.9.0.0/16", "10.9.1.0/24", "10.10.0.0/16"),
        ("fd00:9::/32", "fd00:9:1::/48", "fd00:10::/32"),
    ] {
        let [present, inside, elsewhere] =
            [present, inside, elsewhere].map(|n| n.parse::<ipnet::IpNet>().unwrap());
        let maps = h.maps_mut();
        assert!(
            !maps.delete_clamp(inside).unwrap(),
            "{inside}: only its /16 or /32 is there"
        );
        assert!(
            !maps.delete_clamp(elsewhere).unwrap(),
            "{elsewhere}: never written"
        );
        assert!(
            maps.delete_clamp(present).unwrap(),
            "{present}: written by set_tables"
        );
        assert!(
            !maps.clamps().iter().any(|c| c.net == present),
            "{present}: {:?}",
            maps.clamps()
        );
        assert!(
            !maps.delete_clamp(present).unwrap(),
            "{present}: already deleted"
        );
        maps.insert_clamp(elsewhere, 1400, static_).unwrap();
        assert!(
            maps.delete_clamp(elsewhere).unwrap(),
            "{elsewhere}: just inserted"
        );
    }
    // The harness's next set_tables finds its prefixes gone and writes them again.
    h.set_tables(&tables(14)).unwrap();
    assert_eq!(h.maps().clamps().len(), 2, "{:?}", h.maps().clamps());
}

/// `tables(14)` with reflection on.
fn reflecting_harness() -> Harness {
    require_root();
    let mut h = Harness::new().expect("loading the datapath");
    let mut t = tables(14);
    t.globals.flags = wslnet_common::global_flags::REFLECT;
    h.set_tables(&t).unwrap();
    h
}

/// A checksum over `data` (its checksum field included) that verifies: folds to 0xffff.
fn verifies(data: &[u8]) -> bool {
    packets::fold(packets::sum_words(0, data)) == 0xffff
}

/// Reflection on: an oversize DF packet to a clamp entry is dropped (`TC_ACT_SHOT`), counted
/// `oversize_df` and `reflected`, and handed to the agent with its interface, the entry's MTU and
/// its first 128 bytes from the IP header on; the agent's answer, checked here independently, is
/// a "fragmentation needed" from the destination to the source naming 1372, quoting the IP
/// header and 8 bytes, with valid IP and ICMP checksums.
#[test]
fn an_oversize_ipv4_packet_is_dropped_and_answered() {
    let mut h = reflecting_harness();
    let f = ack4_carrying(1460);
    let r = h.run_watch(Direction::Egress, &f, 0, &[SLOT]).unwrap();
    assert_eq!(r.retval, wslnet_model::TC_ACT_SHOT);
    assert_eq!(
        r.counters.get(&(SLOT, DIR_EGRESS, FAMILY_V4)).copied(),
        Some(counters(&["oversize_df", "reflected"]))
    );
    let events = h.reflected();
    assert_eq!(events.len(), 1);
    let ev = events[0];
    assert_eq!(
        (ev.ifindex, ev.family, ev.mtu),
        (TEST_IFINDEX, FAMILY_V4, u32::from(VPN_MTU))
    );
    assert_eq!(ev.quote_len as usize, wslnet_common::REFLECT_QUOTE);
    assert_eq!(&ev.quote[..], &f[14..14 + wslnet_common::REFLECT_QUOTE]);

    let err = wslnet_agent::reflect::icmp_error(ev.family, &ev.quote, ev.mtu as u16).unwrap();
    assert_eq!(err.to, IpAddr::V4(addr::LOCAL4));
    assert_eq!(err.about, IpAddr::V4(addr::REMOTE4));
    let p = &err.packet;
    assert_eq!(p.len(), 20 + 8 + 20 + 8);
    assert_eq!(p[0], 0x45);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
    assert_eq!(p[9], 1, "ICMP");
    assert_eq!(&p[12..16], &addr::REMOTE4.octets());
    assert_eq!(&p[16..20], &addr::LOCAL4.octets());
    assert!(verifies(&p[..20]), "IP header checksum");
    assert_eq!(
        (p[20], p[21]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(u16::from_be_bytes([p[26], p[27]]), VPN_MTU, "next-hop MTU");
    assert_eq!(
        &p[28..],
        &f[14..14 + 28],
        "the IP header and 8 bytes quoted"
    );
    assert!(verifies(&p[20..]), "ICMP checksum");

    // With reflection off, the same packet is counted and passes.
    h.set_tables(&tables(14)).unwrap();
    let r = h.run_watch(Direction::Egress, &f, 0, &[SLOT]).unwrap();
    assert_eq!(r.retval, -1);
    assert!(h.reflected().is_empty());
}

/// The IPv6 side: dropped, handed over, and answered with a "packet too big" naming 1372 whose
/// ICMPv6 checksum (over the pseudo-header) verifies, quoting the first 128 bytes.
#[test]
fn an_oversize_ipv6_packet_is_dropped_and_answered() {
    let mut h = reflecting_harness();
    let mut big = Tcp::new(flags::ACK, vec![]);
    big.payload = vec![9; 1400];
    let f = packets::tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[], &big);
    let r = h.run_watch(Direction::Egress, &f, 0, &[SLOT]).unwrap();
    assert_eq!(r.retval, wslnet_model::TC_ACT_SHOT);
    let events = h.reflected();
    assert_eq!(events.len(), 1);
    let ev = events[0];
    assert_eq!((ev.family, ev.mtu), (FAMILY_V6, u32::from(VPN_MTU)));
    let err = wslnet_agent::reflect::icmp_error(ev.family, &ev.quote, ev.mtu as u16).unwrap();
    assert_eq!(err.to, IpAddr::V6(addr::LOCAL6));
    let p = &err.packet;
    assert_eq!(p[0] >> 4, 6);
    assert_eq!(p[6], 58, "ICMPv6");
    assert_eq!(&p[8..24], &addr::REMOTE6.octets());
    assert_eq!(&p[24..40], &addr::LOCAL6.octets());
    let icmp = &p[40..];
    assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), icmp.len());
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        u32::from(VPN_MTU)
    );
    assert_eq!(&icmp[8..], &f[14..14 + wslnet_common::REFLECT_QUOTE]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[8..40]);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    assert!(verifies(&pseudo), "ICMPv6 checksum");
}

/// The agent's own probes ([`wslnet_common::PROBE_MARK`]) are never dropped for reflection: a
/// probe above the path MTU in force is how a path that grew is found. Counted oversize, passed.
#[test]
fn the_agents_probes_are_never_dropped() {
    let mut h = reflecting_harness();
    let f = ack4_carrying(1460);
    let before = h.counters(SLOT, DIR_EGRESS, FAMILY_V4).unwrap();
    let (out, retval) = h
        .run_raw_marked(Direction::Egress, &f, 0, wslnet_common::PROBE_MARK)
        .unwrap();
    assert_eq!((retval, out), (-1, f.clone()));
    let moved = h
        .counters(SLOT, DIR_EGRESS, FAMILY_V4)
        .unwrap()
        .since(&before);
    assert_eq!(moved, counters(&["oversize_df"]));
    assert!(h.reflected().is_empty());
    // Any other mark is dropped as usual.
    let (_, retval) = h.run_raw_marked(Direction::Egress, &f, 0, 7).unwrap();
    assert_eq!(retval, wslnet_model::TC_ACT_SHOT);
}

/// An arriving SYN-ACK (or SYN) records the peer's initial sequence number by connection, for
/// the agent to quote when it tells the peer its segments are too big; what leaves records
/// nothing.
#[test]
fn an_arriving_handshake_records_the_peers_isn() {
    let h = harness();
    let synack = Tcp::new(flags::SYN | flags::ACK, opt::mss(1460));
    let key = wslnet_agent::maps::flow_key(
        std::net::SocketAddr::new(IpAddr::V4(addr::REMOTE4), synack.sport),
        synack.dport,
    );
    let out = packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &synack);
    run(&h, Direction::Egress, &out, FAMILY_V4);
    assert_eq!(h.peer_isn(&key), None, "a leaving SYN-ACK records nothing");
    let inbound = packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, &synack);
    run(&h, Direction::Ingress, &inbound, FAMILY_V4);
    assert_eq!(h.peer_isn(&key), Some(synack.seq));
}
