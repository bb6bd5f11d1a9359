//! Differential fuzzing of the datapath against the reference model (`wslnet-model`), and the
//! replayable corpus.
//!
//! [`run`] generates packets (structure-aware mutations of valid SYN / SYN-ACK / ACK / UDP /
//! ICMP frames for IPv4 and IPv6, with VLAN tags, IP options, extension headers, fragments, many
//! TCP option layouts, truncations, field smashes and bit flips) under random clamp tables, runs
//! each through the real program with `BPF_PROG_TEST_RUN` and through the model, and compares
//! output bytes, verdict and counters (per packet for the interface's counter rows, per batch for
//! every row and for the learned-destination map). Every rewritten packet's TCP checksum is
//! checked with [`crate::packets`]' own RFC 1071 code. A divergence is saved as a corpus case.
//!
//! [`corpus`] holds the case format, the named hostile cases and the replay.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use wslnet_common::{Counters, FAMILY_V4, FAMILY_V6, Globals, IfaceConfig, counter_index};
use wslnet_model::{Clamp, Direction, Input, Outcome, Tables};

use crate::{
    packets::{self, Ext, Ipv4, Tcp, flags, opt},
    testrun::{Harness, TEST_IFINDEX},
};

/// What a fuzz run found.
#[derive(Clone, Debug, Default)]
pub struct FuzzReport {
    /// Packets run through both the program and the model.
    pub packets: u64,
    /// Packets (or batch checks) where the program and the model disagreed.
    pub divergences: u64,
    /// Rewritten packets whose TCP checksum is wrong (independent check).
    pub bad_checksums: u64,
    /// Packets whose MSS the program rewrote.
    pub rewritten: u64,
    /// Packets the model counted as unparseable.
    pub unparseable: u64,
    /// Packets the model counted as SYN.
    pub syns: u64,
    /// Packets the model dropped and handed to the agent (reflection).
    pub reflected: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The seed (pass it back with `--seed` to reproduce the run).
    pub seed: u64,
    /// Corpus files written for divergences.
    pub saved: Vec<PathBuf>,
}

impl FuzzReport {
    /// Packets per second.
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packets={} divergences={} bad_checksums={}",
            self.packets, self.divergences, self.bad_checksums
        )
    }
}

/// One generated test input: tables, hook, frame, GSO size.
#[derive(Clone, Debug)]
pub struct Case {
    /// Clamp tables (interface settings are for [`TEST_IFINDEX`]).
    pub tables: Tables,
    /// Hook.
    pub dir: Direction,
    /// Frame bytes (at least 14).
    pub frame: Vec<u8>,
    /// `__sk_buff.gso_size`.
    pub gso_size: u32,
}

impl Case {
    /// The model's verdict on this case.
    pub fn model(&self) -> Outcome {
        wslnet_model::run(
            &self.tables,
            Input {
                frame: &self.frame,
                dir: self.dir,
                ifindex: TEST_IFINDEX,
                gso_size: self.gso_size,
            },
        )
    }

    /// The interface settings in force.
    pub fn iface(&self) -> IfaceConfig {
        self.tables.iface(TEST_IFINDEX)
    }
}

/// Packets between full checks (all counter rows, learned map).
const BATCH: u64 = 8192;
/// Packets between changes of the clamp tables.
const TABLE_EPOCH: u64 = 64;
/// Most divergence files written per run.
const MAX_SAVED: usize = 20;

/// Runs `packets` packets through the program and the model (seeded by `seed`, random when
/// `None`), saving divergent cases under `corpus_dir`.
pub fn run(packets: u64, seed: Option<u64>, corpus_dir: &Path) -> Result<FuzzReport> {
    let seed = seed.unwrap_or_else(|| rand::thread_rng().r#gen());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8) as u64;
    let start = Instant::now();
    let saved = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..threads {
        let share = packets / threads + u64::from(t < packets % threads);
        let dir = corpus_dir.to_path_buf();
        let saved = saved.clone();
        let done = done.clone();
        handles.push(std::thread::spawn(move || -> Result<FuzzReport> {
            worker(seed, t, share, &dir, &saved, &done)
        }));
    }
    let mut report = FuzzReport {
        seed,
        ..FuzzReport::default()
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("fuzz worker panicked"))??;
        report.packets += r.packets;
        report.divergences += r.divergences;
        report.bad_checksums += r.bad_checksums;
        report.rewritten += r.rewritten;
        report.unparseable += r.unparseable;
        report.syns += r.syns;
        report.reflected += r.reflected;
    }
    report.elapsed = start.elapsed();
    report.saved = saved.lock().unwrap().clone();
    Ok(report)
}

fn worker(
    seed: u64,
    thread: u64,
    packets: u64,
    corpus_dir: &Path,
    saved: &Mutex<Vec<PathBuf>>,
    done: &AtomicU64,
) -> Result<FuzzReport> {
    let mut harness = Harness::new().context("loading the datapath for fuzzing")?;
    let mut rng = StdRng::seed_from_u64(seed ^ thread.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = FuzzReport::default();
    let mut tables = random_tables(&mut rng);
    harness.set_tables(&tables)?;
    // Model totals per counter index, and the program's counters at the start.
    let base = harness.all_counters()?;
    let mut totals: BTreeMap<u32, Counters> = BTreeMap::new();
    // key -> (SYNs, the port of the first SYN since the map was emptied)
    let mut learned = crate::testrun::LearnedMap::new();
    let mut shadow: BTreeMap<u32, Counters> = BTreeMap::new();
    let save = |case: &Case, model: &Outcome, prog: &Observed, why: &str| {
        let mut s = saved.lock().unwrap();
        if s.len() < MAX_SAVED {
            let name = format!("fuzz-{seed:016x}-{thread}-{}", report_id(&case.frame));
            match corpus::save_divergence(corpus_dir, &name, case, model, prog, why) {
                Ok(p) => s.push(p),
                Err(e) => eprintln!("could not save divergence {name}: {e:#}"),
            }
        }
    };
    for n in 0..packets {
        if n % TABLE_EPOCH == 0 && n != 0 {
            tables = random_tables(&mut rng);
            harness.set_tables(&tables)?;
        }
        let case = random_case(&mut rng, &tables);
        let model = case.model();
        let cfg = case.iface();
        let dir = case.dir.index();
        // The rows of this interface and direction, before the run (shadowed between runs).
        let rows = [
            counter_index(cfg.slot, dir, FAMILY_V4),
            counter_index(cfg.slot, dir, FAMILY_V6),
        ];
        for (i, &row) in rows.iter().enumerate() {
            if let std::collections::btree_map::Entry::Vacant(e) = shadow.entry(row) {
                let family = if i == 0 { FAMILY_V4 } else { FAMILY_V6 };
                e.insert(harness.counters(cfg.slot, dir, family)?);
            }
        }
        let (frame, retval) = harness.run_raw(case.dir, &case.frame, case.gso_size)?;
        let reflected = harness.reflected();
        let peer_isns = model
            .peer_isn
            .map(|(k, _)| harness.peer_isns(&k))
            .unwrap_or_default();
        let mut moved = BTreeMap::new();
        for (i, &row) in rows.iter().enumerate() {
            let family = if i == 0 { FAMILY_V4 } else { FAMILY_V6 };
            let now = harness.counters(cfg.slot, dir, family)?;
            let before = shadow.insert(row, now).unwrap_or_default();
            if now != before {
                moved.insert(family, now.since(&before));
            }
        }
        let observed = Observed {
            frame,
            retval,
            moved,
            reflected,
            peer_isns,
        };
        report.packets += 1;
        if let Some(m) = &model.counters {
            *totals
                .entry(counter_index(m.slot, m.dir, m.family))
                .or_default() += m.delta;
            report.unparseable += m.delta.unparseable;
            report.syns += m.delta.syn;
            report.reflected += m.delta.reflected;
        }
        if let Some(l) = model.learned {
            learned
                .entry((l.key.family, l.key.addr))
                .or_insert((0, l.port_be))
                .0 += 1;
        }
        let diverged = compare(&model, &observed);
        if observed.frame != case.frame {
            report.rewritten += 1;
            if let Err(why) = check_rewrite(&case, &observed.frame) {
                report.bad_checksums += 1;
                if diverged.is_none() {
                    save(&case, &model, &observed, &why);
                }
            }
        }
        if let Some(why) = diverged {
            report.divergences += 1;
            save(&case, &model, &observed, &why);
        }
        if (n + 1) % BATCH == 0 || n + 1 == packets {
            // Every counter row (catches bumps outside the watched rows) and the learned map.
            let now = harness.all_counters()?;
            let mut prog_totals = BTreeMap::new();
            for (k, v) in &now {
                let d = v.since(base.get(k).unwrap_or(&Counters::default()));
                if d != Counters::default() {
                    prog_totals.insert(*k, d);
                }
            }
            if prog_totals != totals {
                report.divergences += 1;
                let rows: Vec<String> = prog_totals
                    .keys()
                    .chain(totals.keys())
                    .filter(|k| prog_totals.get(k) != totals.get(k))
                    .take(4)
                    .map(|k| {
                        format!(
                            "row {k}: program {:?} model {:?}",
                            prog_totals.get(k).map(corpus::counter_names),
                            totals.get(k).map(corpus::counter_names)
                        )
                    })
                    .collect();
                eprintln!(
                    "counter totals diverge after {} packets: {}",
                    n + 1,
                    rows.join("; ")
                );
            }
            let prog_learned = harness.learned()?;
            if prog_learned != learned {
                report.divergences += 1;
                eprintln!(
                    "learned destinations diverge after {} packets: program {} entries, model {}",
                    n + 1,
                    prog_learned.len(),
                    learned.len()
                );
            }
            harness.clear_learned()?;
            learned.clear();
            done.fetch_add(BATCH.min(n + 1), Ordering::Relaxed);
        }
    }
    Ok(report)
}

fn report_id(frame: &[u8]) -> String {
    // FNV-1a of the frame: stable names for the same case.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in frame {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What the program did to one packet.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Output frame.
    pub frame: Vec<u8>,
    /// Verdict.
    pub retval: i32,
    /// Counter deltas of the interface's rows in this direction, by family.
    pub moved: BTreeMap<u32, Counters>,
    /// What it handed to the agent's reflection ring.
    pub reflected: Vec<wslnet_common::ReflectEvent>,
    /// The peer ISNs its CPUs hold for the connection the model says it recorded (empty when
    /// the model recorded nothing).
    pub peer_isns: Vec<u32>,
}

/// `None` when the program did what the model says; else what differs.
pub fn compare(model: &Outcome, prog: &Observed) -> Option<String> {
    let mut why = Vec::new();
    if model.frame != prog.frame {
        let at = model
            .frame
            .iter()
            .zip(&prog.frame)
            .position(|(a, b)| a != b)
            .unwrap_or(model.frame.len().min(prog.frame.len()));
        why.push(format!(
            "frame differs at byte {at} (model len {}, program len {})",
            model.frame.len(),
            prog.frame.len()
        ));
    }
    if model.retval != prog.retval {
        why.push(format!(
            "retval model {} program {}",
            model.retval, prog.retval
        ));
    }
    let handed: Vec<(u16, &[u8])> = prog
        .reflected
        .iter()
        .map(|e| (e.mtu as u16, &e.quote[..]))
        .collect();
    let expected_handed: Vec<(u16, &[u8])> = model
        .reflect
        .iter()
        .map(|r| (r.mtu, &r.quote[..]))
        .collect();
    if handed != expected_handed {
        why.push(format!(
            "reflected model {:?} program {:?}",
            expected_handed
                .iter()
                .map(|(m, q)| (m, q.len()))
                .collect::<Vec<_>>(),
            handed.iter().map(|(m, q)| (m, q.len())).collect::<Vec<_>>()
        ));
    }
    if let Some((_, isn)) = model.peer_isn
        && !prog.peer_isns.contains(&isn)
    {
        why.push(format!("peer ISN model {isn} program {:?}", prog.peer_isns));
    }
    let expected: BTreeMap<u32, Counters> =
        model.counters.iter().map(|m| (m.family, m.delta)).collect();
    if expected != prog.moved {
        why.push(format!(
            "counters model {} program {}",
            corpus::describe_moves(&expected),
            corpus::describe_moves(&prog.moved)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Checks a rewritten frame independently of the model and the program: only the DS field
/// (egress, to the interface's DSCP, ECN kept) with the IPv4 header checksum, and the MSS value
/// with the TCP checksum, may have changed, and each checksum must still be right (the same
/// residual as the input's: valid stays valid, an already broken checksum stays exactly as
/// broken).
pub fn check_rewrite(case: &Case, out: &[u8]) -> std::result::Result<(), String> {
    let l3_offset = usize::from(case.iface().l3_offset != 0) * 14;
    if out.len() != case.frame.len() {
        return Err("rewritten frame changed length".into());
    }
    let out = &check_ds_rewrite(case, out, l3_offset)?;
    if out == &case.frame {
        return Ok(());
    }
    let loc = packets::locate_tcp(&case.frame, l3_offset)
        .ok_or("a frame without a locatable TCP segment was changed")?;
    let changed: Vec<usize> = (0..out.len())
        .filter(|&i| out[i] != case.frame[i])
        .collect();
    if changed
        .iter()
        .any(|&i| i != loc.l4 + 16 && i != loc.l4 + 17 && i < loc.l4 + 20)
    {
        return Err(format!(
            "bytes of the fixed TCP header changed: {changed:?}"
        ));
    }
    let r_in = packets::tcp_residual(&case.frame, &loc);
    let r_out = packets::tcp_residual(out, &loc);
    let norm = |r: u16| if r == 0 { 0xffff } else { r };
    if norm(r_in) != norm(r_out) {
        return Err(format!(
            "TCP checksum broken by the rewrite (residual {r_in:#06x} -> {r_out:#06x})"
        ));
    }
    Ok(())
}

/// Checks the DS part of a rewrite (see [`check_rewrite`]) and returns `out` with the DS field
/// and the IPv4 header checksum put back as they came in, for the TCP checks.
fn check_ds_rewrite(
    case: &Case,
    out: &[u8],
    l3_offset: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut undone = out.to_vec();
    let Some((_, l3)) = packets::ip_start(&case.frame, l3_offset) else {
        return Ok(undone);
    };
    let (ip_in, ip_out) = (&case.frame[l3..], &out[l3..]);
    let (Some(ds_in), Some(ds_out)) = (packets::ds_of(ip_in), packets::ds_of(ip_out)) else {
        return Ok(undone);
    };
    if ds_in == ds_out {
        return Ok(undone);
    }
    let cfg = case.iface();
    if case.dir != Direction::Egress || cfg.dscp & wslnet_common::DSCP_SET == 0 {
        return Err(format!(
            "DS field changed ({ds_in:#04x} -> {ds_out:#04x}) without a DSCP setting on egress"
        ));
    }
    if ds_out >> 2 != cfg.dscp & wslnet_common::MAX_DSCP || ds_out & 0b11 != ds_in & 0b11 {
        return Err(format!(
            "DS field {ds_in:#04x} -> {ds_out:#04x}, the interface's DSCP {} with ECN kept wanted",
            cfg.dscp & wslnet_common::MAX_DSCP
        ));
    }
    if ip_in[0] >> 4 == 4 {
        let ihl = (usize::from(ip_in[0] & 0x0f) * 4).min(ip_in.len());
        let residual = |h: &[u8]| packets::internet_checksum(&h[..ihl]);
        let norm = |r: u16| if r == 0 { 0xffff } else { r };
        if norm(residual(ip_in)) != norm(residual(ip_out)) {
            return Err("IPv4 header checksum broken by the DSCP rewrite".into());
        }
    }
    packets::restore_ds(&mut undone, &case.frame, l3);
    Ok(undone)
}

// ---------------------------------------------------------------------------------------------
// Generator.

const V4_POOL: [Ipv4Addr; 6] = [
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 9, 0, 7),
    Ipv4Addr::new(10, 9, 1, 8),
    Ipv4Addr::new(192, 168, 50, 1),
    Ipv4Addr::new(172, 16, 0, 9),
    Ipv4Addr::new(100, 64, 3, 4),
];
const V6_POOL: [Ipv6Addr; 5] = [
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 7),
    Ipv6Addr::new(0xfd00, 9, 0, 1, 0, 0, 0, 8),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
];
const MTUS: [u16; 14] = [
    1372, 1500, 1280, 1400, 1350, 1230, 1000, 576, 68, 67, 40, 0, 2800, 9000,
];
const MSS_VALUES: [u16; 12] = [
    1460, 1440, 1400, 1380, 1332, 1312, 1220, 536, 0, 1, 65535, 8960,
];

fn pick_mtu(rng: &mut StdRng) -> u16 {
    if rng.gen_bool(0.8) {
        *MTUS.choose(rng).unwrap()
    } else {
        rng.gen_range(0..=9100)
    }
}

/// Random clamp tables for [`TEST_IFINDEX`].
pub fn random_tables(rng: &mut StdRng) -> Tables {
    let mut t = Tables::default();
    if rng.gen_bool(0.85) {
        t.ifaces.push((
            TEST_IFINDEX,
            IfaceConfig {
                slot: *[1u32, 2, 7, 255, 0].choose(rng).unwrap(),
                l3_offset: if rng.gen_bool(0.8) { 14 } else { 0 },
                default_mtu_v4: if rng.gen_bool(0.5) { pick_mtu(rng) } else { 0 },
                default_mtu_v6: if rng.gen_bool(0.5) { pick_mtu(rng) } else { 0 },
                // Any value, bit 6 too (the datapath must ignore it); 0 and 8 (cs1) often.
                dscp: match rng.gen_range(0..10) {
                    0..=4 => 0,
                    5 => wslnet_common::DSCP_SET,
                    6 => wslnet_common::DSCP_SET | 8,
                    _ => wslnet_common::DSCP_SET | rng.gen_range(0..0x80),
                },
                ..IfaceConfig::default()
            },
        ));
    }
    for _ in 0..rng.gen_range(0..5) {
        let (addr, max) = if rng.gen_bool(0.55) {
            (IpAddr::V4(*V4_POOL.choose(rng).unwrap()), 32)
        } else {
            (IpAddr::V6(*V6_POOL.choose(rng).unwrap()), 128)
        };
        let prefix_len = match rng.gen_range(0..4) {
            0 => max,
            1 => rng.gen_range(0..=max),
            2 => max / 2,
            _ => 8,
        };
        t.clamps.push(Clamp {
            addr,
            prefix_len,
            mtu: pick_mtu(rng),
        });
    }
    // A prefix appears once in an LPM map: keep the last entry of each.
    let mut seen = Vec::new();
    t.clamps.reverse();
    t.clamps.retain(|c| {
        let key = (masked(c.addr, c.prefix_len), c.prefix_len);
        let fresh = !seen.contains(&key);
        seen.push(key);
        fresh
    });
    // Probe connections: the frames' TCP destination port is 443 (packets::Tcp::new) unless a
    // random header says otherwise.
    for _ in 0..if rng.gen_bool(0.3) {
        rng.gen_range(1..3)
    } else {
        0
    } {
        let peer = if rng.gen_bool(0.55) {
            IpAddr::V4(*V4_POOL.choose(rng).unwrap())
        } else {
            IpAddr::V6(*V6_POOL.choose(rng).unwrap())
        };
        let port = if rng.gen_bool(0.8) { 443 } else { rng.r#gen() };
        if !t.probes.contains(&(peer, port)) {
            t.probes.push((peer, port));
        }
    }
    let floor = |rng: &mut StdRng| match rng.gen_range(0..4) {
        0 => 0,
        1 => 1280,
        2 => rng.gen_range(0..2000),
        _ => 68,
    };
    t.globals = Globals {
        min_mtu_v4: floor(rng),
        min_mtu_v6: floor(rng),
        flags: if rng.gen_bool(0.5) {
            wslnet_common::global_flags::REFLECT
        } else {
            0
        },
        abi_version: wslnet_common::ABI_VERSION,
        // Set by TestRun::set_tables.
        ..Globals::default()
    };
    t
}

fn masked(addr: IpAddr, len: u8) -> Vec<u8> {
    let mut b = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    for (i, byte) in b.iter_mut().enumerate() {
        let keep = (len as usize).saturating_sub(i * 8).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    b
}

fn random_options(rng: &mut StdRng) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let with_mss = rng.gen_bool(0.85);
    if with_mss {
        let v = if rng.gen_bool(0.8) {
            *MSS_VALUES.choose(rng).unwrap()
        } else {
            rng.r#gen()
        };
        parts.push(opt::mss(v));
    }
    for _ in 0..rng.gen_range(0..6) {
        parts.push(match rng.gen_range(0..10) {
            0 => opt::wscale(rng.gen_range(0..15)),
            1 => opt::sack_perm(),
            2 => opt::timestamps(rng.r#gen(), rng.r#gen()),
            3 => vec![opt::NOP],
            4 => vec![opt::NOP, opt::NOP],
            5 => opt::sack(&[(1, 2)][..rng.gen_range(0..=1)]),
            6 => vec![34, 2],                           // TFO cookie request
            7 => vec![30, 4, rng.r#gen(), rng.r#gen()], // MPTCP-ish
            8 => opt::mss(rng.r#gen()),                 // a second MSS option
            _ => vec![rng.gen_range(9..=253), 3, rng.r#gen()],
        });
    }
    parts.shuffle(rng);
    // Linux's own layout often: MSS first, then NOP NOP TS / NOP WS / SACK_PERM.
    let mut out: Vec<u8> = parts.concat();
    if rng.gen_bool(0.1) {
        out.push(opt::EOL);
    }
    out.truncate(40);
    // Pad to a multiple of 4 with NOPs or EOLs.
    let pad = if rng.gen_bool(0.5) {
        opt::NOP
    } else {
        opt::EOL
    };
    while !out.len().is_multiple_of(4) {
        out.push(pad);
    }
    out
}

fn random_tcp(rng: &mut StdRng) -> Tcp {
    let fl = match rng.gen_range(0..10) {
        0..=2 => flags::SYN,
        3..=5 => flags::SYN | flags::ACK,
        6 => flags::ACK,
        7 => flags::SYN | flags::RST,
        8 => flags::FIN | flags::ACK | flags::PSH,
        _ => rng.r#gen(),
    };
    let options = if rng.gen_bool(0.9) || fl & flags::SYN != 0 {
        random_options(rng)
    } else {
        Vec::new()
    };
    let mut t = Tcp::new(fl, options);
    t.sport = rng.r#gen();
    t.seq = rng.r#gen();
    if rng.gen_bool(0.3) {
        let n = if rng.gen_bool(0.1) {
            rng.gen_range(0..1500)
        } else {
            rng.gen_range(0..64)
        };
        t.payload = (0..n).map(|_| rng.r#gen()).collect();
    }
    t
}

fn random_payload(rng: &mut StdRng, proto: u8, v6: bool) -> Vec<u8> {
    let n = rng.gen_range(0..48);
    let data: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
    match proto {
        packets::IPPROTO_TCP => random_tcp(rng).bytes(),
        packets::IPPROTO_UDP => packets::udp(rng.r#gen(), 53, &data),
        packets::IPPROTO_ICMP | packets::IPPROTO_ICMPV6 => packets::icmp_echo(v6, &data),
        _ => data,
    }
}

fn random_ip_options(rng: &mut StdRng) -> Vec<u8> {
    let mut o = Vec::new();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..4) {
            0 => o.push(1),                            // NOP
            1 => o.extend_from_slice(&[148, 4, 0, 0]), // router alert
            2 => {
                // record route with 2 slots
                o.extend_from_slice(&[7, 11, 4]);
                o.extend_from_slice(&[0; 8]);
            }
            _ => {
                // timestamp
                o.extend_from_slice(&[68, 12, 5, 0]);
                o.extend_from_slice(&[0; 8]);
            }
        }
    }
    o.truncate(40);
    o
}

fn random_exts(rng: &mut StdRng) -> Vec<Ext> {
    let n = match rng.gen_range(0..10) {
        0..=5 => 0,
        6 | 7 => 1,
        8 => rng.gen_range(2..5),
        _ => rng.gen_range(4..7),
    };
    (0..n)
        .map(|_| match rng.gen_range(0..8) {
            0..=2 => Ext::HopByHop(rng.gen_range(0..3)),
            3 | 4 => Ext::DstOpts(rng.gen_range(0..2)),
            5 | 6 => Ext::Routing(rng.gen_range(0..3)),
            _ => Ext::Fragment(rng.gen_range(0..3), rng.r#gen()),
        })
        .collect()
}

/// A valid frame (before mutation), its L3 offset and TCP-ness.
fn random_frame(rng: &mut StdRng, l3_offset: u16) -> Vec<u8> {
    let eth = l3_offset != 0;
    if eth && rng.gen_bool(0.03) {
        let et = *[packets::ETH_P_ARP, 0x88cc, 0x8100, 0x88a8, rng.r#gen()]
            .choose(rng)
            .unwrap();
        let body: Vec<u8> = (0..rng.gen_range(0..60)).map(|_| rng.r#gen()).collect();
        return packets::ethernet(et, None, &body);
    }
    let v6 = rng.gen_bool(0.4);
    let proto = match rng.gen_range(0..20) {
        0..=14 => packets::IPPROTO_TCP,
        15 | 16 => packets::IPPROTO_UDP,
        17 | 18 => {
            if v6 {
                packets::IPPROTO_ICMPV6
            } else {
                packets::IPPROTO_ICMP
            }
        }
        _ => rng.r#gen(),
    };
    let payload = random_payload(rng, proto, v6);
    let l3 = if v6 {
        let src = *V6_POOL.choose(rng).unwrap();
        let dst = *V6_POOL.choose(rng).unwrap();
        packets::ipv6_packet(src, dst, &random_exts(rng), proto, &payload)
    } else {
        let mut ip = Ipv4::new(
            *V4_POOL.choose(rng).unwrap(),
            *V4_POOL.choose(rng).unwrap(),
            proto,
        );
        ip.df = rng.gen_bool(0.7);
        if rng.gen_bool(0.15) {
            ip.options = random_ip_options(rng);
        }
        if rng.gen_bool(0.08) {
            ip.mf = rng.r#gen();
            ip.frag_offset = if rng.r#gen() {
                0
            } else {
                rng.gen_range(1..200)
            };
        }
        ip.packet(&payload)
    };
    let mut l3 = l3;
    if rng.gen_bool(0.5) {
        // A DS field to normalise: any DSCP, any ECN.
        packets::set_ds(&mut l3, rng.r#gen());
    }
    let mut frame = if eth {
        let vlan = rng.gen_bool(0.15).then(|| rng.gen_range(1..4095));
        packets::ethernet(
            if v6 {
                packets::ETH_P_IPV6
            } else {
                packets::ETH_P_IP
            },
            vlan,
            &l3,
        )
    } else {
        l3
    };
    packets::fix_checksum_if_tcp(&mut frame, usize::from(l3_offset));
    frame
}

/// Offsets of interesting fields as a plain parser sees them: (offset, name) pairs.
fn interesting_offsets(frame: &[u8], l3_offset: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let l3 = if l3_offset == 0 {
        0
    } else if frame.get(12..14) == Some(&[0x81, 0x00]) {
        v.extend_from_slice(&[12, 13, 16, 17]);
        18
    } else {
        v.extend_from_slice(&[12, 13]);
        14
    };
    let Some(&vb) = frame.get(l3) else {
        v.retain(|&o| o < frame.len());
        return v;
    };
    v.push(l3);
    if vb >> 4 == 4 {
        v.extend_from_slice(&[l3 + 2, l3 + 3, l3 + 6, l3 + 7, l3 + 9]);
    } else {
        v.extend_from_slice(&[l3 + 4, l3 + 5, l3 + 6, l3 + 40, l3 + 41, l3 + 48, l3 + 49]);
    }
    if let Some(loc) = packets::locate_tcp(frame, l3_offset) {
        v.extend_from_slice(&[loc.l4 + 12, loc.l4 + 13]);
        let hl = usize::from(frame[loc.l4 + 12] >> 4) * 4;
        for i in loc.l4 + 20..(loc.l4 + hl).min(frame.len()) {
            v.push(i);
        }
    }
    v.retain(|&o| o < frame.len());
    v
}

fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>, l3_offset: usize) {
    let rounds = match rng.gen_range(0..10) {
        0..=4 => 0,
        5..=7 => 1,
        8 => 2,
        _ => rng.gen_range(3..6),
    };
    let mut fix = rng.gen_bool(0.7);
    for _ in 0..rounds {
        match rng.gen_range(0..10) {
            0 | 1 => {
                // Truncate (TestRun needs 14 bytes).
                if frame.len() > 14 {
                    let n = rng.gen_range(14..frame.len());
                    frame.truncate(n);
                }
                fix = false;
            }
            2..=4 => {
                // Smash an interesting field with an interesting value.
                let offs = interesting_offsets(frame, l3_offset);
                if let Some(&o) = offs.choose(rng) {
                    frame[o] = *[
                        0u8, 1, 2, 3, 4, 5, 0x0f, 0x10, 0x40, 0x45, 0x4f, 0x50, 0x60, 0xff,
                    ]
                    .choose(rng)
                    .unwrap()
                        ^ if rng.gen_bool(0.2) { rng.r#gen() } else { 0 };
                }
            }
            5 | 6 => {
                // Flip bits, mostly in the headers.
                let limit = frame.len().min(120);
                for _ in 0..rng.gen_range(1..4) {
                    let o = rng.gen_range(0..limit);
                    frame[o] ^= 1 << rng.gen_range(0..8);
                }
            }
            7 => {
                // Ethernet padding or trailing junk past the IP length.
                let n = if frame.len() < 60 {
                    60 - frame.len()
                } else {
                    rng.gen_range(1..16)
                };
                let junk = rng.gen_bool(0.5);
                for _ in 0..n {
                    frame.push(if junk { rng.r#gen() } else { 0 });
                }
            }
            8 => {
                // Flip bits anywhere.
                let o = rng.gen_range(0..frame.len());
                frame[o] ^= 1 << rng.gen_range(0..8);
            }
            _ => {
                // Insert or delete a byte inside the headers.
                let o = rng.gen_range(0..frame.len().min(100));
                if rng.r#gen() && frame.len() > 14 {
                    frame.remove(o);
                } else {
                    frame.insert(o, rng.r#gen());
                }
            }
        }
    }
    if fix {
        packets::fix_checksum_if_tcp(frame, l3_offset);
    }
    if frame.len() < 14 {
        frame.resize(14, 0);
    }
    // The kernel refuses IPv4/IPv6 EtherType frames too short for the IP header: pad those.
    while !crate::testrun::kernel_accepts(frame) {
        frame.push(0);
    }
}

/// A random case under `tables`.
pub fn random_case(rng: &mut StdRng, tables: &Tables) -> Case {
    let l3_offset = tables.iface(TEST_IFINDEX).l3_offset;
    let mut frame = random_frame(rng, l3_offset);
    mutate(rng, &mut frame, usize::from(l3_offset != 0) * 14);
    let gso_size = if rng.gen_bool(0.1) {
        *[1448u32, 1460, 1000, 536, 1, 0, 65535, 9000]
            .choose(rng)
            .unwrap()
    } else {
        0
    };
    Case {
        tables: tables.clone(),
        dir: if rng.r#gen() {
            Direction::Egress
        } else {
            Direction::Ingress
        },
        frame,
        gso_size,
    }
}

pub mod corpus;
