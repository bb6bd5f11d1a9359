//! Per-packet cost of the datapath under `BPF_PROG_TEST_RUN`, against an empty tc program (the
//! floor), measured by the same raw syscall in the same run.
//!
//! Two methods:
//! - **repeat** (the main figures): `repeat` runs of the program on one skb; the kernel reports
//!   the mean ns per run. Rounds interleave the floor and every case (floor, case, floor, next
//!   case, ...) and the figure is the median over rounds, with the difference to the floor of
//!   the same round.
//! - **rewrite, warm** (for SYN / SYN-ACK with an MSS rewrite): the kernel builds the skb once
//!   per call, so with a plain `repeat` only the first run rewrites the MSS and the following
//!   ones see the already clamped value (the "MSS fits" path: SYN counted, options walked, clamp
//!   looked up). A small reset program ([`bpf::load_reset_program`]) runs first in every
//!   repetition, writes back the original MSS and checksum, and tail-calls wslnet, which then
//!   rewrites the MSS every time (checked: the counter rises by the repeat count). The same reset
//!   ahead of the rewritten twin (MSS already at the clamp) is the baseline, interleaved in the
//!   same rounds: the figure is `repeat(MSS fits) + median(reset + rewrite - reset + fits)`.
//! - **single shot, cold** (reported alongside): `repeat = 1` calls with a fresh frame each,
//!   alternating the SYN with its twin; single runs follow a syscall entry with cold caches and
//!   branch predictors, so only their difference is shown.
//!
//! Every case is first run once and its effect checked (rewritten MSS, counters), so each
//! figure measures the path its label names.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wslnet_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6, IfaceConfig, L3_OFFSET_ETHERNET,
    LearnCacheEntry, Peer, map_names, peer_cache_slot, peer_words,
};
use wslnet_tests::{
    lab::VPN_MTU,
    netns::pin_thread,
    packets as p,
    testrun::{Harness, TEST_IFINDEX},
};

use super::{
    bpf,
    results::{
        Direction, DscpCost, LearnWriteCost, PacketCase, PerPacket, RepeatCost, RewriteCost,
        SectionRun,
    },
    stats::{Summary, round},
};

/// Counter slot configured for it.
const SLOT: u32 = 1;
/// Path MTU of the clamped prefixes (10.9.0.0/16 and fd00:9::/32).
const CLAMP_MTU: u16 = VPN_MTU;
/// A destination without a clamp entry.
const OTHER4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 10, 0, 7);
/// The same, IPv6.
const OTHER6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 10, 0, 0, 0, 0, 0, 7);
/// Length of the linear buffer of the "64 KiB GSO" case: `BPF_PROG_TEST_RUN` builds linear skbs
/// of at most a page, so the packet is a 64 KiB IP header (total length 65483, gso_size 1448)
/// over 3000 bytes of data; the datapath reads headers only, so its cost does not depend on the
/// payload length.
const GSO_LINEAR: usize = 3000;

/// How much to measure; the results keep it under these names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Settings {
    /// Runs per `BPF_PROG_TEST_RUN` call in the repeat method.
    pub repeat: u32,
    /// Interleaved rounds of the repeat method.
    pub rounds: usize,
    /// Calls per case in the single-shot (cold) method.
    pub single_shot_samples: usize,
}

impl super::Amount for Settings {
    fn quick() -> Self {
        Self {
            rounds: 5,
            single_shot_samples: 5_000,
            ..Self::full()
        }
    }

    fn full() -> Self {
        Self {
            repeat: 1_000_000,
            // The host's speed drifts by 10-20% within minutes: the median of many short
            // interleaved rounds follows it better than a few long ones.
            rounds: 51,
            single_shot_samples: 20_000,
        }
    }
}

/// One packet the datapath is measured on.
struct Case {
    id: &'static str,
    label: &'static str,
    ingress: bool,
    family: u32,
    frame: Vec<u8>,
    gso_size: u32,
    /// A SYN / SYN-ACK whose MSS (1460) is above the clamp: rewritten on the first run.
    rewrite: bool,
    /// Not a target figure: shows where the nanoseconds go (early exits of the parser).
    diagnostic: bool,
}

fn linux_syn_options() -> Vec<u8> {
    // Linux's SYN layout: MSS, SACK permitted, timestamps, NOP, window scale (20 bytes).
    let mut o = p::opt::mss(1460);
    o.extend(p::opt::sack_perm());
    o.extend(p::opt::timestamps(0x0102_0304, 0));
    o.push(p::opt::NOP);
    o.extend(p::opt::wscale(7));
    o
}

fn ack(payload: usize) -> p::Tcp {
    let mut o = vec![p::opt::NOP, p::opt::NOP];
    o.extend(p::opt::timestamps(0x0102_0304, 0x0506_0708));
    let mut t = p::Tcp::new(p::flags::ACK, o);
    t.payload = vec![0xab; payload];
    t
}

fn cases() -> Vec<Case> {
    use p::addr::{LOCAL4, LOCAL6, REMOTE4, REMOTE6};
    let udp4 = p::ethernet(
        p::ETH_P_IP,
        None,
        &p::Ipv4::new(LOCAL4, OTHER4, p::IPPROTO_UDP).packet(&p::udp(40000, 443, &[0; 1400 - 28])),
    );
    let udp6 = p::ethernet(
        p::ETH_P_IPV6,
        None,
        &p::ipv6_packet(
            LOCAL6,
            OTHER6,
            &[],
            p::IPPROTO_UDP,
            &p::udp(40000, 443, &[0; 1400 - 48]),
        ),
    );
    let syn = p::Tcp::new(p::flags::SYN, linux_syn_options());
    let synack = {
        let mut t = p::Tcp::new(p::flags::SYN | p::flags::ACK, linux_syn_options());
        (t.sport, t.dport) = (443, 40000);
        t
    };
    let mut gso_ip = p::Ipv4::new(LOCAL4, REMOTE4, p::IPPROTO_TCP);
    gso_ip.tot_len_override = Some(65_483);
    let gso = p::tcp4_frame_with(&gso_ip, None, &ack(GSO_LINEAR - 14 - 20 - 32));
    let c = |id, label, ingress, family, frame, gso_size, rewrite, diagnostic| Case {
        id,
        label,
        ingress,
        family,
        frame,
        gso_size,
        rewrite,
        diagnostic,
    };
    let arp = p::ethernet(p::ETH_P_ARP, None, &[0; 46]);
    let udp4_small = p::ethernet(
        p::ETH_P_IP,
        None,
        &p::Ipv4::new(LOCAL4, REMOTE4, p::IPPROTO_UDP).packet(&p::udp(40000, 443, &[0; 172])),
    );
    vec![
        c(
            "arp_60",
            "ARP 60 B: interface lookup, EtherType, exit (egress)",
            false,
            FAMILY_V4,
            arp,
            0,
            false,
            true,
        ),
        c(
            "udp4_200",
            "UDP 200 B, IPv4, DF: IPv4 parse, below the MTU floor, no LPM lookup (egress)",
            false,
            FAMILY_V4,
            udp4_small,
            0,
            false,
            true,
        ),
        c(
            "udp4_1400",
            "UDP 1400 B, IPv4, DF, no clamp entry (egress)",
            false,
            FAMILY_V4,
            udp4,
            0,
            false,
            false,
        ),
        c(
            "ack4_1500_oversize",
            "TCP ACK 1500 B, IPv4, DF, clamp entry 1372: oversize check + count (egress)",
            false,
            FAMILY_V4,
            p::tcp4_frame(LOCAL4, REMOTE4, &ack(1500 - 20 - 32)),
            0,
            false,
            false,
        ),
        c(
            "ack4_1500_ingress",
            "TCP ACK 1500 B, IPv4 (ingress)",
            true,
            FAMILY_V4,
            p::tcp4_frame(REMOTE4, LOCAL4, &ack(1500 - 20 - 32)),
            0,
            false,
            false,
        ),
        c(
            "gso4_64k",
            "TCP 64 KiB GSO packet, gso_size 1448, IPv4, clamp entry 1372 (egress)",
            false,
            FAMILY_V4,
            gso,
            1448,
            false,
            false,
        ),
        c(
            "syn4",
            "TCP SYN, IPv4, MSS 1460 -> 1332 (egress)",
            false,
            FAMILY_V4,
            p::tcp4_frame(LOCAL4, REMOTE4, &syn),
            0,
            true,
            false,
        ),
        c(
            "synack4",
            "TCP SYN-ACK, IPv4, MSS 1460 -> 1332 (ingress)",
            true,
            FAMILY_V4,
            p::tcp4_frame(REMOTE4, LOCAL4, &synack),
            0,
            true,
            false,
        ),
        c(
            "udp6_1400",
            "UDP 1400 B, IPv6, no clamp entry (egress)",
            false,
            FAMILY_V6,
            udp6,
            0,
            false,
            false,
        ),
        c(
            "ack6_1500_oversize",
            "TCP ACK 1500 B, IPv6, clamp entry 1372: oversize check + count (egress)",
            false,
            FAMILY_V6,
            p::tcp6_frame(LOCAL6, REMOTE6, &[], &ack(1500 - 40 - 32)),
            0,
            false,
            false,
        ),
        c(
            "syn6",
            "TCP SYN, IPv6, MSS 1460 -> 1312 (egress)",
            false,
            FAMILY_V6,
            p::tcp6_frame(LOCAL6, REMOTE6, &[], &syn),
            0,
            true,
            false,
        ),
        c(
            "synack6",
            "TCP SYN-ACK, IPv6, MSS 1460 -> 1312 (ingress)",
            true,
            FAMILY_V6,
            p::tcp6_frame(REMOTE6, LOCAL6, &[], &synack),
            0,
            true,
            false,
        ),
    ]
}

/// What DSCP normalisation (`set_dscp`) costs an egress packet: a 1400-byte UDP datagram marked
/// af21 with ECT(0), through the datapath with the setting off and on (repeat method; on, the
/// first run rewrites it and the rest find DSCP 0 already: the check alone), interleaved with
/// the empty program; and the rewrite itself, single runs of the marked datagram alternating
/// with its rewritten twin (paired, cold: each run pays the syscall's cache misses).
fn dscp_cost(s: Settings, empty: &std::os::fd::OwnedFd, off: &Datapath) -> Result<DscpCost> {
    let on = Datapath::load_with_dscp(wslnet_common::DSCP_SET)?;
    let mut marked = p::Ipv4::new(p::addr::LOCAL4, p::addr::REMOTE4, p::IPPROTO_UDP)
        .packet(&p::udp(40000, 443, &[0; 1372]));
    p::set_ds(&mut marked, (18 << 2) | 0b10);
    let marked = p::ethernet(p::ETH_P_IP, None, &marked);
    let first = bpf::test_run(on.prog(false)?, &marked, 0, 1)?;
    let twin = first.frame;
    ensure!(
        first.retval == -1 && p::ds_of(&twin[14..]) == Some(0b10),
        "dscp: the marked datagram was not rewritten to DSCP 0 with ECT(0)"
    );
    let (mut floors, mut off_over, mut on_over) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..s.rounds {
        let floor = bpf::test_run(empty.as_fd(), &marked, 0, s.repeat)?.ns as f64;
        let (a, b) = if r % 2 == 0 {
            let a = bpf::test_run(off.prog(false)?, &marked, 0, s.repeat)?.ns as f64;
            (
                a,
                bpf::test_run(on.prog(false)?, &marked, 0, s.repeat)?.ns as f64,
            )
        } else {
            let b = bpf::test_run(on.prog(false)?, &marked, 0, s.repeat)?.ns as f64;
            (
                bpf::test_run(off.prog(false)?, &marked, 0, s.repeat)?.ns as f64,
                b,
            )
        };
        floors.push(floor);
        off_over.push(a - floor);
        on_over.push(b - floor);
    }
    let mut extra = Vec::new();
    for _ in 0..s.single_shot_samples {
        let rw = bpf::test_run(on.prog(false)?, &marked, 0, 1)?.ns as f64;
        let fits = bpf::test_run(on.prog(false)?, &twin, 0, 1)?.ns as f64;
        extra.push(rw - fits);
    }
    Ok(DscpCost {
        label: "UDP 1400 B, IPv4, DF, marked af21 + ECT(0) (egress)".into(),
        floor_ns: Summary::of(&floors).rounded(1),
        off_over_floor_ns: Summary::of(&off_over).rounded(1),
        on_no_write_over_floor_ns: Summary::of(&on_over).rounded(1),
        cold_rewrite_extra_ns: Summary::of(&extra).rounded(1),
    })
}

/// The MSS option value of a frame built by [`cases`] (first option of a SYN).
fn mss_of(frame: &[u8]) -> Option<u16> {
    let loc = p::locate_tcp(frame, 14)?;
    let o = frame.get(loc.l4 + 20..loc.l4 + 24)?;
    (o[0] == 2 && o[1] == 4).then(|| u16::from_be_bytes([o[2], o[3]]))
}

/// The counters that moved, by name.
fn moved(c: &Counters) -> BTreeMap<String, u64> {
    c.named()
        .into_iter()
        .filter(|&(_, v)| v != 0)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The loaded datapath (the tests' TestRun harness) with the bench's interface and clamps.
struct Datapath(Harness);

impl Datapath {
    fn load() -> Result<Self> {
        Self::load_with_dscp(0)
    }

    /// Loads with the interface's `IfaceConfig::dscp` set to `dscp`.
    fn load_with_dscp(dscp: u8) -> Result<Self> {
        let mut h = Harness::new().context("loading the datapath")?;
        let maps = h.maps_mut();
        maps.set_iface(
            TEST_IFINDEX,
            IfaceConfig {
                slot: SLOT,
                l3_offset: L3_OFFSET_ETHERNET,
                default_mtu_v4: 0,
                default_mtu_v6: 0,
                flags: 0,
                dscp,
                ..IfaceConfig::default()
            },
        )?;
        for net in ["10.9.0.0/16", "fd00:9::/32"] {
            let net: IpNet = net.parse()?;
            maps.set_clamp(net, CLAMP_MTU, wslnet_agent::maps::Origin::Static)?;
        }
        Ok(Self(h))
    }

    fn prog(&self, ingress: bool) -> Result<BorrowedFd<'_>> {
        self.0.program_fd(if ingress {
            wslnet_model::Direction::Ingress
        } else {
            wslnet_model::Direction::Egress
        })
    }

    fn counters(&self, case: &Case) -> Result<Counters> {
        let dir = if case.ingress {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        };
        self.0.counters(SLOT, dir, case.family)
    }
}

/// The reset programs of one rewrite case (see [`bpf::load_reset_program`]).
struct Resets {
    /// Restores the original SYN: wslnet rewrites the MSS on every repetition.
    rewrite: std::os::fd::OwnedFd,
    /// Restores the rewritten twin: wslnet finds the MSS already at the clamp.
    fits: std::os::fd::OwnedFd,
    /// Egress SYNs: (restores the twin and empties the destination's slot of the learn cache,
    /// so wslnet writes the learned map on every repetition, as for a destination's first SYN
    /// on a CPU in a refresh period; the same with the slot looked up only, the baseline).
    learn: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
}

/// The destination of an egress SYN case as the datapath's cache key ([`Peer`]).
fn destination_peer(case: &Case) -> Peer {
    let addr: std::net::IpAddr = if case.family == FAMILY_V6 {
        p::addr::REMOTE6.into()
    } else {
        p::addr::REMOTE4.into()
    };
    peer_words(&wslnet_agent::maps::learned_key(addr).addr)
}

/// SYNs recorded in the learned map, all destinations (held-back ones not included).
fn learned_syns(dp: &Datapath) -> u64 {
    dp.0.maps().learned().iter().map(|l| l.syns).sum()
}

/// Builds and checks the reset programs of a rewrite case: a 1000-repeat run ahead of wslnet
/// must rewrite 1000 times (and leave a valid checksum), the twin's must rewrite none.
fn resets(
    dp: &Datapath,
    case: &Case,
    twin: &[u8],
    prog_array: &std::os::fd::OwnedFd,
) -> Result<Resets> {
    let loc = p::locate_tcp(&case.frame, 14).context("no TCP")?;
    // Bytes 16-23 of the TCP header: checksum, urgent pointer, MSS option (kind, length, value).
    let restore = |frame: &[u8]| -> Vec<(i16, [u8; 4])> {
        [16, 20]
            .iter()
            .map(|&o| {
                let at = loc.l4 + o;
                (at as i16, frame[at..at + 4].try_into().expect("4 bytes"))
            })
            .collect()
    };
    let learn = if case.ingress {
        None
    } else {
        let map =
            dp.0.ebpf()
                .map(map_names::LEARN_CACHE)
                .context("the learn cache map")?;
        let aya::maps::Map::PerCpuArray(data) = map else {
            bail!("{} is not a per-CPU array", map_names::LEARN_CACHE);
        };
        let slot_reset = |zero_u64_at| bpf::SlotReset {
            map: data.fd().as_fd(),
            slot: peer_cache_slot(&destination_peer(case)),
            zero_u64_at,
        };
        let written = std::mem::offset_of!(LearnCacheEntry, written) as i16;
        Some((
            bpf::load_reset_program(
                prog_array.as_fd(),
                &restore(twin),
                Some(slot_reset(Some(written))),
            )?,
            bpf::load_reset_program(prog_array.as_fd(), &restore(twin), Some(slot_reset(None)))?,
        ))
    };
    let r = Resets {
        rewrite: bpf::load_reset_program(prog_array.as_fd(), &restore(&case.frame), None)?,
        fits: bpf::load_reset_program(prog_array.as_fd(), &restore(twin), None)?,
        learn,
    };
    if let Some((relearn, _)) = &r.learn {
        let before = learned_syns(dp);
        bpf::test_run(relearn.as_fd(), &case.frame, case.gso_size, 1000)?;
        let written = learned_syns(dp) - before;
        ensure!(
            written == 1000,
            "{}: emptied learn slot + wslnet x1000: want 1000 learned-map writes, got {written}",
            case.id
        );
    }
    for (prog, want_clamped) in [(&r.rewrite, 1000), (&r.fits, 0)] {
        let before = dp.counters(case)?;
        let run = bpf::test_run(prog.as_fd(), &case.frame, case.gso_size, 1000)?;
        let d = dp.counters(case)?.since(&before);
        ensure!(
            d.syn == 1000 && d.mss_clamped == want_clamped && run.retval == -1,
            "{}: reset + wslnet x1000: want {want_clamped} rewrites, got {d:?} (verdict {})",
            case.id,
            run.retval
        );
        let out = p::locate_tcp(&run.frame, 14).context("no TCP")?;
        ensure!(
            p::tcp_checksum_ok(&run.frame, &out) && mss_of(&run.frame) == mss_of(twin),
            "{}: reset + wslnet left a bad frame",
            case.id
        );
    }
    Ok(r)
}

/// What [`check_case`] found.
struct Checked {
    /// Counter deltas of one run.
    once: BTreeMap<String, u64>,
    /// Counter deltas of a 1000-repeat run.
    many: BTreeMap<String, u64>,
    /// The frame after one run (for rewrite cases: the twin with the MSS already clamped).
    out: Vec<u8>,
}

/// Checks that one run of `case` takes the path its label names.
fn check_case(dp: &Datapath, case: &Case) -> Result<Checked> {
    let prog = dp.prog(case.ingress)?;
    let before = dp.counters(case)?;
    let run = bpf::test_run(prog, &case.frame, case.gso_size, 1)?;
    let once = dp.counters(case)?.since(&before);
    ensure!(
        run.retval == -1,
        "{}: verdict {} (want -1)",
        case.id,
        run.retval
    );
    if case.rewrite {
        let want = CLAMP_MTU - if case.family == FAMILY_V6 { 60 } else { 40 };
        ensure!(
            mss_of(&run.frame) == Some(want) && once.mss_clamped == 1,
            "{}: MSS not rewritten to {want} (got {:?}, counters {once:?})",
            case.id,
            mss_of(&run.frame)
        );
        let loc = p::locate_tcp(&run.frame, 14).context("no TCP")?;
        ensure!(
            p::tcp_checksum_ok(&run.frame, &loc),
            "{}: bad checksum after rewrite",
            case.id
        );
    } else if case.id.contains("oversize") || case.id.starts_with("gso") {
        ensure!(
            once.oversize_df == 1,
            "{}: not counted oversize ({once:?})",
            case.id
        );
    } else {
        ensure!(
            once == Counters::default(),
            "{}: unexpected counters {once:?}",
            case.id
        );
    }
    let before = dp.counters(case)?;
    bpf::test_run(prog, &case.frame, case.gso_size, 1000)?;
    let many = dp.counters(case)?.since(&before);
    Ok(Checked {
        once: moved(&once),
        many: moved(&many),
        out: run.frame,
    })
}

/// Measures everything; returns the section `per_packet`.
///
/// On one thread pinned to [`super::measuring_cpu`]: a thread free to move could run a round's
/// floor and its case on two vCPUs that the host serves differently.
pub fn run(s: Settings) -> Result<PerPacket> {
    let cpu = super::measuring_cpu()?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| pin_thread(cpu).and_then(|()| measure(s, cpu)))
            .join()
            .map_err(|_| anyhow::anyhow!("the per-packet measuring thread panicked"))?
    })
}

fn measure(s: Settings, cpu: usize) -> Result<PerPacket> {
    let started = Instant::now();
    let empty = bpf::load_empty_program()?;
    let dp = Datapath::load()?;
    let cases = cases();
    let mut checks = Vec::new();
    for c in &cases {
        checks.push(check_case(&dp, c)?);
    }
    // Warm up caches and CPU frequency.
    for c in &cases {
        bpf::test_run(dp.prog(c.ingress)?, &c.frame, c.gso_size, s.repeat / 10)?;
    }
    let floor_frame = &cases[0].frame;
    let floor_run =
        || -> Result<f64> { Ok(bpf::test_run(empty.as_fd(), floor_frame, 0, s.repeat)?.ns as f64) };
    // Repeat method, interleaved: floor before every case, case order rotated per round.
    let mut floors = Vec::new();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut over: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for r in 0..s.rounds {
        for k in 0..cases.len() {
            let i = (k + r) % cases.len();
            let c = &cases[i];
            let f = floor_run()?;
            let v = bpf::test_run(dp.prog(c.ingress)?, &c.frame, c.gso_size, s.repeat)?.ns as f64;
            floors.push(f);
            ns[i].push(v);
            over[i].push(v - f);
        }
        eprint!(".");
    }
    let floor = Summary::of(&floors);
    // Rewrites, warm: reset + wslnet, on the SYN (rewritten every time) and on its twin.
    let rewrites: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].rewrite).collect();
    let arrays = [
        bpf::prog_array_of(dp.prog(false)?)?,
        bpf::prog_array_of(dp.prog(true)?)?,
    ];
    let mut reset = Vec::new();
    for &i in &rewrites {
        let c = &cases[i];
        reset.push(resets(&dp, c, &checks[i].out, &arrays[c.ingress as usize])?);
    }
    let mut warm_extra: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut warm_reset_fits: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut learn_extra: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for r in 0..s.rounds {
        for (k, &i) in rewrites.iter().enumerate() {
            let c = &cases[i];
            let run = |prog: &std::os::fd::OwnedFd| -> Result<f64> {
                Ok(bpf::test_run(prog.as_fd(), &c.frame, c.gso_size, s.repeat)?.ns as f64)
            };
            // Both programs of a pair, first one then the other in alternate rounds.
            let pair = |a, b| -> Result<(f64, f64)> {
                Ok(if r % 2 == 0 {
                    let x = run(a)?;
                    (x, run(b)?)
                } else {
                    let y = run(b)?;
                    (run(a)?, y)
                })
            };
            let (rw, fits) = pair(&reset[k].rewrite, &reset[k].fits)?;
            warm_extra[i].push(rw - fits);
            warm_reset_fits[i].push(fits);
            if let Some((relearn, lookup)) = &reset[k].learn {
                let (w, l) = pair(relearn, lookup)?;
                learn_extra[i].push(w - l);
            }
        }
        eprint!(".");
    }
    // Single shot, cold: the SYN (rewritten) alternating with its clamped twin.
    let mut orig1: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut twin1: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..s.single_shot_samples {
        for &i in &rewrites {
            let c = &cases[i];
            let prog = dp.prog(c.ingress)?;
            orig1[i].push(bpf::test_run(prog, &c.frame, c.gso_size, 1)?.ns as f64);
            twin1[i].push(bpf::test_run(prog, &checks[i].out, c.gso_size, 1)?.ns as f64);
        }
    }
    eprintln!();
    let mut out_cases = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let steady = Summary::of(&ns[i]);
        let (mut rewrite, mut learn_write) = (None, None);
        if c.rewrite {
            let (o, t) = (Summary::of(&orig1[i]), Summary::of(&twin1[i]));
            let extra = Summary::of(&warm_extra[i]);
            let estimate = steady.median + extra.median;
            rewrite = Some(RewriteCost {
                rewrite_extra_ns: extra.rounded(1),
                reset_plus_fits_ns: Summary::of(&warm_reset_fits[i]).rounded(1),
                ns: round(estimate, 1),
                over_floor_ns: round(estimate - floor.median, 1),
                cold_single_run_rewritten_ns: o.rounded(1),
                cold_single_run_fits_ns: t.rounded(1),
                cold_rewrite_extra_ns: round(o.median - t.median, 1),
            });
            if !learn_extra[i].is_empty() {
                let write = Summary::of(&learn_extra[i]);
                learn_write = Some(LearnWriteCost {
                    extra_ns: write.rounded(1),
                    fits_ns: round(steady.median + write.median, 1),
                    rewritten_ns: round(estimate + write.median, 1),
                });
            }
        }
        out_cases.push(PacketCase {
            id: c.id.into(),
            label: c.label.into(),
            direction: if c.ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            diagnostic: c.diagnostic,
            frame_bytes: c.frame.len(),
            gso_size: c.gso_size,
            repeat: RepeatCost {
                ns: steady.rounded(1),
                over_floor_ns: Summary::of(&over[i]).rounded(1),
                path: if c.rewrite {
                    "MSS already at the clamp after the first run (SYN counted, option walk, LPM lookup, no rewrite)"
                } else {
                    "as labelled"
                }
                .into(),
            },
            counters_one_run: checks[i].once.clone(),
            counters_1000_runs: checks[i].many.clone(),
            rewrite,
            learn_write,
        });
    }
    if floor.median <= 0.0 {
        bail!("the empty program measured {} ns: no timing", floor.median);
    }
    let dscp = dscp_cost(s, &empty, &dp)?;
    Ok(PerPacket {
        run: SectionRun::since(
            started,
            "BPF_PROG_TEST_RUN via raw bpf(2) for both programs; sched_cls, __sk_buff ctx, skb on the loopback of the bench's namespace",
        ),
        cpu: Some(cpu),
        settings: s,
        clamp_mtu: CLAMP_MTU,
        floor_ns: floor.rounded(1),
        cases: out_cases,
        dscp: Some(dscp),
    })
}
