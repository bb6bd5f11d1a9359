//! The replayable corpus: one JSON file per case under `tests/corpus/`, each with the input
//! frame, hook, tables and the expected output (frame, verdict, counters, learned destination).
//!
//! `named/` holds hand-written hostile and odd packets ([`named_cases`], each with a hand-written
//! expectation checked before its file is written); `fuzz-*.json` files are divergences saved by
//! the fuzzer (kept after the fix, with the fixed behaviour as the expectation).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use wslnet_common::{Counters, FAMILY_V4, FAMILY_V6, Globals, IfaceConfig};
use wslnet_model::{Clamp, Direction, Outcome, Tables};

use super::{Case, Observed};
use crate::{
    packets::{self, Ext, Ipv4, Tcp, addr, flags, opt},
    testrun::{Harness, TEST_IFINDEX},
};

/// Interface settings in a case file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceJson {
    /// Counter slot.
    pub slot: u32,
    /// 14 (Ethernet) or 0 (L3 device).
    pub l3_offset: u16,
    /// Default IPv4 path MTU (0 = none).
    pub default_mtu_v4: u16,
    /// Default IPv6 path MTU (0 = none).
    pub default_mtu_v6: u16,
    /// `IfaceConfig::dscp`: 0 = marks left alone, else `DSCP_SET` plus the DSCP (files written
    /// before it existed have none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dscp: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// The expected behaviour in a case file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpectedJson {
    /// Output frame, hex.
    pub output: String,
    /// Verdict (-1 = TC_ACT_UNSPEC).
    pub retval: i32,
    /// "v4" / "v6" when a counter moved.
    pub family: Option<String>,
    /// Counter name -> increment, in the interface's row for the family and direction.
    pub counters: BTreeMap<String, u64>,
    /// Destination recorded for the prober, if any.
    pub learned: Option<String>,
}

/// A corpus case file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaseFile {
    /// Case name (the file name without `.json`).
    pub name: String,
    /// What the case exercises.
    pub description: String,
    /// "ingress" or "egress".
    pub direction: String,
    /// `__sk_buff.gso_size`.
    #[serde(default)]
    pub gso_size: u32,
    /// Settings of the test interface (None: unconfigured).
    pub iface: Option<IfaceJson>,
    /// Clamp entries, "PREFIX/LEN=MTU".
    pub clamps: Vec<String>,
    /// Oversize floors.
    #[serde(default)]
    pub min_mtu_v4: u16,
    /// Oversize floors.
    #[serde(default)]
    pub min_mtu_v6: u16,
    /// The agent's TCP probe connections in flight, "PEER:LOCALPORT" (`[PEER]:PORT` for IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    /// Reflection on (`Globals::flags`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reflect: bool,
    /// Input frame, hex.
    pub input: String,
    /// Expected behaviour.
    pub expected: ExpectedJson,
    /// For unreviewed divergences: what the program did instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ExpectedJson>,
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string (whitespace ignored).
pub fn unhex(s: &str) -> Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// Non-zero counters by name.
pub fn counter_names(c: &Counters) -> BTreeMap<String, u64> {
    c.named()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Counter moves by family, for messages.
pub fn describe_moves(m: &BTreeMap<u32, Counters>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(f, c)| format!("{}:{:?}", family_name(*f), counter_names(c)))
        .collect();
    if parts.is_empty() {
        "{}".into()
    } else {
        parts.join(",")
    }
}

fn family_name(f: u32) -> &'static str {
    if f == FAMILY_V6 { "v6" } else { "v4" }
}

/// A learned destination as a case file names it: `address:port` (`[address]:port`).
fn learned_name(k: &wslnet_common::LearnedKey, port_be: u16) -> String {
    let port = u16::from_be(port_be);
    if k.family == FAMILY_V4 {
        format!(
            "{}:{port}",
            Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3])
        )
    } else {
        format!("[{}]:{port}", Ipv6Addr::from(k.addr))
    }
}

fn expected_from(model: &Outcome) -> ExpectedJson {
    ExpectedJson {
        output: hex(&model.frame),
        retval: model.retval,
        family: model.counters.map(|m| family_name(m.family).to_string()),
        counters: model
            .counters
            .map(|m| counter_names(&m.delta))
            .unwrap_or_default(),
        learned: model.learned.map(|l| learned_name(&l.key, l.port_be)),
    }
}

fn observed_json(prog: &Observed) -> ExpectedJson {
    let (family, counters) = match prog.moved.iter().next() {
        Some((f, c)) => (Some(family_name(*f).to_string()), counter_names(c)),
        None => (None, BTreeMap::new()),
    };
    ExpectedJson {
        output: hex(&prog.frame),
        retval: prog.retval,
        family,
        counters,
        learned: None,
    }
}

impl CaseFile {
    /// A case file for `case`, expecting `outcome`.
    pub fn new(name: &str, description: &str, case: &Case, outcome: &Outcome) -> Self {
        let cfg = case
            .tables
            .ifaces
            .iter()
            .find(|(i, _)| *i == TEST_IFINDEX)
            .map(|(_, c)| IfaceJson {
                slot: c.slot,
                l3_offset: c.l3_offset,
                default_mtu_v4: c.default_mtu_v4,
                default_mtu_v6: c.default_mtu_v6,
                dscp: c.dscp,
            });
        Self {
            name: name.into(),
            description: description.into(),
            direction: match case.dir {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            }
            .into(),
            gso_size: case.gso_size,
            iface: cfg,
            clamps: case
                .tables
                .clamps
                .iter()
                .map(|c| format!("{}/{}={}", c.addr, c.prefix_len, c.mtu))
                .collect(),
            min_mtu_v4: case.tables.globals.min_mtu_v4,
            min_mtu_v6: case.tables.globals.min_mtu_v6,
            reflect: case.tables.globals.flags & wslnet_common::global_flags::REFLECT != 0,
            probes: case
                .tables
                .probes
                .iter()
                .map(|&p| std::net::SocketAddr::from(p).to_string())
                .collect(),
            input: hex(&case.frame),
            expected: expected_from(outcome),
            program: None,
        }
    }

    /// The case this file describes.
    pub fn case(&self) -> Result<Case> {
        let mut tables = Tables::default();
        if let Some(i) = &self.iface {
            tables.ifaces.push((
                TEST_IFINDEX,
                IfaceConfig {
                    slot: i.slot,
                    l3_offset: i.l3_offset,
                    default_mtu_v4: i.default_mtu_v4,
                    default_mtu_v6: i.default_mtu_v6,
                    dscp: i.dscp,
                    ..IfaceConfig::default()
                },
            ));
        }
        for c in &self.clamps {
            let (net, mtu) = c.split_once('=').context("clamp without '='")?;
            let (a, len) = net.split_once('/').context("clamp without '/'")?;
            tables.clamps.push(Clamp {
                addr: a.parse().with_context(|| format!("clamp address {a}"))?,
                prefix_len: len.parse()?,
                mtu: mtu.parse()?,
            });
        }
        for p in &self.probes {
            let a: std::net::SocketAddr = p.parse().with_context(|| format!("probe {p}"))?;
            tables.probes.push((a.ip(), a.port()));
        }
        tables.globals = Globals {
            min_mtu_v4: self.min_mtu_v4,
            min_mtu_v6: self.min_mtu_v6,
            flags: if self.reflect {
                wslnet_common::global_flags::REFLECT
            } else {
                0
            },
            abi_version: wslnet_common::ABI_VERSION,
            // Set by TestRun::set_tables.
            ..Globals::default()
        };
        Ok(Case {
            tables,
            dir: match self.direction.as_str() {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                d => bail!("direction {d}"),
            },
            frame: unhex(&self.input)?,
            gso_size: self.gso_size,
        })
    }

    /// Writes the file as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Saves a divergence found by the fuzzer: expectation = the model, `program` = what the program
/// did. Review it, fix the datapath or the model, then rewrite the expectation.
pub fn save_divergence(
    dir: &Path,
    name: &str,
    case: &Case,
    model: &Outcome,
    prog: &Observed,
    why: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = CaseFile::new(
        name,
        &format!("fuzz divergence (unreviewed): {why}"),
        case,
        model,
    );
    f.program = Some(observed_json(prog));
    let path = dir.join(format!("{name}.json"));
    f.write(&path)?;
    Ok(path)
}

/// Every `*.json` case under `dir` (recursively), sorted by path.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, CaseFile)>> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        let f: CaseFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        out.push((p, f));
    }
    Ok(out)
}

/// Replays one case through the program (and the model), checking both against the file's
/// expectation and the TCP checksum of a changed frame. `Err` says what differs.
pub fn replay(h: &mut Harness, file: &CaseFile) -> Result<std::result::Result<(), String>> {
    let case = file.case()?;
    h.set_tables(&case.tables)?;
    let cfg = case.iface();
    let mut slots = vec![cfg.slot];
    if cfg.slot != 0 {
        slots.push(0);
    }
    let before_learned = h.learned()?;
    let r = h.run_watch(case.dir, &case.frame, case.gso_size, &slots)?;
    let after_learned = h.learned()?;
    let mut errs = Vec::new();
    let exp = &file.expected;
    if hex(&r.frame) != exp.output {
        errs.push(format!(
            "program output {} expected {}",
            hex(&r.frame),
            exp.output
        ));
    }
    if r.retval != exp.retval {
        errs.push(format!(
            "program retval {} expected {}",
            r.retval, exp.retval
        ));
    }
    let moved: BTreeMap<u32, Counters> = r
        .counters
        .iter()
        .map(|((slot, _, family), c)| {
            if *slot != cfg.slot {
                errs.push(format!(
                    "counter slot {slot} moved, interface slot {}",
                    cfg.slot
                ));
            }
            (*family, *c)
        })
        .collect();
    let exp_moves: BTreeMap<u32, Counters> = match &exp.family {
        None => BTreeMap::new(),
        Some(f) => {
            let fam = if f == "v6" { FAMILY_V6 } else { FAMILY_V4 };
            [(fam, counters_from_names(&exp.counters)?)].into()
        }
    };
    if moved != exp_moves {
        errs.push(format!(
            "program counters {} expected {}",
            describe_moves(&moved),
            describe_moves(&exp_moves)
        ));
    }
    // Learned: the key's SYN count grows by one exactly when expected.
    let grew: Vec<String> = after_learned
        .iter()
        .filter(|(k, v)| before_learned.get(*k) != Some(*v))
        .map(|((family, addr), (_, port_be))| {
            learned_name(
                &wslnet_common::LearnedKey {
                    family: *family,
                    addr: *addr,
                },
                *port_be,
            )
        })
        .collect();
    let exp_learned: Vec<String> = exp.learned.iter().cloned().collect();
    if grew != exp_learned {
        errs.push(format!("program learned {grew:?} expected {exp_learned:?}"));
    }
    let model = case.model();
    let m = expected_from(&model);
    if m != *exp {
        errs.push(format!("model {m:?} expected {exp:?}"));
    }
    if r.frame != case.frame
        && let Err(e) = super::check_rewrite(&case, &r.frame)
    {
        errs.push(e);
    }
    Ok(if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n  "))
    })
}

fn counters_from_names(m: &BTreeMap<String, u64>) -> Result<Counters> {
    let mut c = Counters::default();
    for (k, v) in m {
        let slot = match k.as_str() {
            "syn" => &mut c.syn,
            "mss_clamped" => &mut c.mss_clamped,
            "mss_ok" => &mut c.mss_ok,
            "no_clamp" => &mut c.no_clamp,
            "no_mss" => &mut c.no_mss,
            "unparseable" => &mut c.unparseable,
            "oversize_df" => &mut c.oversize_df,
            "reflected" => &mut c.reflected,
            "dscp_rewritten" => &mut c.dscp_rewritten,
            other => bail!("unknown counter {other}"),
        };
        *slot = *v;
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Named cases.

/// A hand-written expectation, checked independently of the model.
#[derive(Clone, Debug)]
pub struct Expect {
    /// Counters that move by exactly one (all others stay).
    pub counters: &'static [&'static str],
    /// Family of the counters.
    pub family: u32,
    /// The MSS rewrite, (old, new), or None for an unchanged frame.
    pub rewrite: Option<(u16, u16)>,
    /// The verdict: `TC_ACT_UNSPEC`, or `TC_ACT_SHOT` for a packet dropped to be answered.
    pub verdict: i32,
    /// The DS field rewritten, (before, after), in an Ethernet frame's IP header; IPv4's header
    /// checksum must then be valid (checked by a full recomputation); None: left alone.
    pub ds: Option<(u8, u8)>,
}

/// A named corpus case with its hand-written expectation.
#[derive(Clone, Debug)]
pub struct Named {
    /// File name (without `.json`).
    pub name: &'static str,
    /// What it exercises.
    pub description: &'static str,
    /// The input.
    pub case: Case,
    /// What must happen.
    pub expect: Expect,
}

impl Expect {
    /// Checks `out` (the program's or the model's output) against this expectation.
    pub fn check(
        &self,
        input: &[u8],
        out: &[u8],
        moved: &BTreeMap<u32, Counters>,
    ) -> std::result::Result<(), String> {
        let undone;
        let out = match self.ds {
            None => out,
            Some(ds) => {
                undone = check_ds(input, out, ds)?;
                &undone[..]
            }
        };
        let want: BTreeMap<String, u64> =
            self.counters.iter().map(|c| (c.to_string(), 1)).collect();
        let got: BTreeMap<String, u64> = moved
            .iter()
            .filter(|(f, _)| **f == self.family)
            .flat_map(|(_, c)| counter_names(c))
            .collect();
        if want != got || moved.keys().any(|f| *f != self.family) {
            return Err(format!(
                "counters {} expected {:?} ({})",
                describe_moves(moved),
                want,
                family_name(self.family)
            ));
        }
        match self.rewrite {
            None if out != input => Err("frame changed".into()),
            None => Ok(()),
            Some((old, new)) => {
                if out.len() != input.len() {
                    return Err("length changed".into());
                }
                let (o, n) = (old.to_be_bytes(), new.to_be_bytes());
                let at = (0..input.len() - 1).find(|&i| {
                    input[i..i + 2] == o
                        && out[i..i + 2] == n
                        && i >= 2
                        && input[i - 2] == 2
                        && input[i - 1] == 4
                });
                let Some(at) = at else {
                    return Err(format!("no MSS option {old} -> {new} in the output"));
                };
                let others: Vec<usize> = (0..out.len())
                    .filter(|&i| out[i] != input[i] && i != at && i != at + 1)
                    .collect();
                if others.len() > 2 {
                    return Err(format!("other bytes changed: {others:?}"));
                }
                Ok(())
            }
        }
    }
}

const MTU: u16 = 1372;

fn tables() -> Tables {
    Tables {
        ifaces: vec![(
            TEST_IFINDEX,
            IfaceConfig {
                slot: 3,
                l3_offset: 14,
                ..IfaceConfig::default()
            },
        )],
        clamps: vec![
            Clamp {
                addr: "10.9.0.0".parse().unwrap(),
                prefix_len: 16,
                mtu: MTU,
            },
            Clamp {
                addr: "fd00:9::".parse().unwrap(),
                prefix_len: 32,
                mtu: MTU,
            },
        ],
        globals: Globals::default(),
        probes: Vec::new(),
    }
}

fn egress(frame: Vec<u8>) -> Case {
    Case {
        tables: tables(),
        dir: Direction::Egress,
        frame,
        gso_size: 0,
    }
}

fn ingress(frame: Vec<u8>) -> Case {
    Case {
        dir: Direction::Ingress,
        ..egress(frame)
    }
}

fn syn4(options: Vec<u8>) -> Vec<u8> {
    packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &Tcp::new(flags::SYN, options))
}

fn syn6(options: Vec<u8>) -> Vec<u8> {
    packets::tcp6_frame(
        addr::LOCAL6,
        addr::REMOTE6,
        &[],
        &Tcp::new(flags::SYN, options),
    )
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const V4: u32 = FAMILY_V4;
const V6: u32 = FAMILY_V6;
const CLAMPED: &[&str] = &["syn", "mss_clamped"];
const UNPARSEABLE_SYN: &[&str] = &["syn", "unparseable"];
const UNPARSEABLE: &[&str] = &["unparseable"];
const NOTHING: &[&str] = &[];

fn e(counters: &'static [&'static str], family: u32, rewrite: Option<(u16, u16)>) -> Expect {
    Expect {
        counters,
        family,
        rewrite,
        verdict: wslnet_model::TC_ACT_UNSPEC,
        ds: None,
    }
}

/// Checks a DS rewrite `(before, after)` of an Ethernet frame (see [`Expect::ds`]) and returns
/// `out` with the IP header's first two bytes and IPv4 checksum as they came in.
fn check_ds(
    input: &[u8],
    out: &[u8],
    (before, after): (u8, u8),
) -> std::result::Result<Vec<u8>, String> {
    const L3: usize = 14;
    let (ip_in, ip_out) = (&input[L3..], &out[L3..]);
    if packets::ds_of(ip_in) != Some(before) || packets::ds_of(ip_out) != Some(after) {
        return Err(format!(
            "DS field {:?} -> {:?}, expected {before:#04x} -> {after:#04x}",
            packets::ds_of(ip_in),
            packets::ds_of(ip_out)
        ));
    }
    if ip_in[0] >> 4 == 4 {
        let ihl = usize::from(ip_in[0] & 0x0f) * 4;
        if packets::internet_checksum(&ip_out[..ihl]) != 0 {
            return Err("IPv4 header checksum wrong after the DSCP rewrite".into());
        }
    }
    let mut undone = out.to_vec();
    packets::restore_ds(&mut undone, input, L3);
    Ok(undone)
}

/// A packet dropped and handed to the agent (counted oversize and reflected), unchanged.
fn dropped(family: u32) -> Expect {
    Expect {
        verdict: wslnet_model::TC_ACT_SHOT,
        ..e(&["oversize_df", "reflected"], family, None)
    }
}

/// The named hostile and odd packets.
pub fn named_cases() -> Vec<Named> {
    let ts = opt::timestamps(0x0102_0304, 0);
    let linux = cat(&[
        &opt::mss(1460),
        &opt::sack_perm(),
        &ts,
        &[opt::NOP],
        &opt::wscale(7),
    ]);
    let mut v = Vec::new();
    let mut add = |name, description, case, expect| {
        v.push(Named {
            name,
            description,
            case,
            expect,
        })
    };
    add(
        "v4-syn-clamped",
        "IPv4 SYN, MSS 1460, path MTU 1372 -> MSS 1332",
        egress(syn4(opt::mss(1460))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-syn-linux-layout-clamped",
        "Linux's SYN layout: MSS, SACK_PERM, TS, NOP, WS",
        egress(syn4(linux.clone())),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-synack-ingress-clamped",
        "IPv4 SYN-ACK arriving from the narrow path: keyed by its source",
        ingress(packets::tcp4_frame(
            addr::REMOTE4,
            addr::LOCAL4,
            &Tcp::new(flags::SYN | flags::ACK, linux.clone()),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-synack-egress-clamped",
        "IPv4 SYN-ACK leaving towards the narrow path",
        egress(packets::tcp4_frame(
            addr::LOCAL4,
            addr::REMOTE4,
            &Tcp::new(flags::SYN | flags::ACK, opt::mss(1460)),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v6-syn-clamped",
        "IPv6 SYN, MSS 1460, path MTU 1372 -> MSS 1312",
        egress(syn6(linux.clone())),
        e(CLAMPED, V6, Some((1460, 1312))),
    );
    add(
        "v6-synack-ingress-clamped",
        "IPv6 SYN-ACK arriving from the narrow path",
        ingress(packets::tcp6_frame(
            addr::REMOTE6,
            addr::LOCAL6,
            &[],
            &Tcp::new(flags::SYN | flags::ACK, opt::mss(1440)),
        )),
        e(CLAMPED, V6, Some((1440, 1312))),
    );
    add(
        "v4-mss-lower-unchanged",
        "MSS 1200 is already below the clamp",
        egress(syn4(opt::mss(1200))),
        e(&["syn", "mss_ok"], V4, None),
    );
    add(
        "v4-mss-equal-unchanged",
        "MSS equal to the clamp (1332) is left alone",
        egress(syn4(opt::mss(1332))),
        e(&["syn", "mss_ok"], V4, None),
    );
    add(
        "v4-mss-zero-unchanged",
        "MSS 0 is never raised",
        egress(syn4(opt::mss(0))),
        e(&["syn", "mss_ok"], V4, None),
    );
    add(
        "v4-mss-65535-clamped",
        "MSS 65535 lowered",
        egress(syn4(opt::mss(65535))),
        e(CLAMPED, V4, Some((65535, 1332))),
    );
    add(
        "v4-no-mss-option",
        "SYN with WS and SACK_PERM but no MSS: no option is inserted",
        egress(syn4(cat(&[
            &opt::wscale(7),
            &opt::sack_perm(),
            &[opt::NOP],
        ]))),
        e(&["syn", "no_mss"], V4, None),
    );
    add(
        "v4-no-options",
        "SYN without any option",
        egress(syn4(vec![])),
        e(&["syn", "no_mss"], V4, None),
    );
    add(
        "v4-eol-before-mss",
        "EOL ends the list: the MSS after it is not an option",
        egress(syn4(cat(&[&[opt::EOL, 0, 0, 0], &opt::mss(1460)]))),
        e(&["syn", "no_mss"], V4, None),
    );
    add(
        "v4-ack-untouched",
        "A plain ACK carrying an MSS-looking option is not a SYN",
        egress(packets::tcp4_frame(
            addr::LOCAL4,
            addr::REMOTE4,
            &Tcp::new(flags::ACK, opt::mss(1460)),
        )),
        e(NOTHING, V4, None),
    );
    add(
        "v4-syn-rst-untouched",
        "SYN+RST is not counted as a SYN",
        egress(packets::tcp4_frame(
            addr::LOCAL4,
            addr::REMOTE4,
            &Tcp::new(flags::SYN | flags::RST, opt::mss(1460)),
        )),
        e(NOTHING, V4, None),
    );
    add(
        "v4-mss-after-timestamps",
        "NOP NOP TS then MSS",
        egress(syn4(cat(&[&[opt::NOP, opt::NOP], &ts, &opt::mss(1460)]))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-mss-last",
        "WS, NOP, SACK_PERM, NOP NOP TS, then MSS last",
        egress(syn4(cat(&[
            &opt::wscale(7),
            &[opt::NOP],
            &opt::sack_perm(),
            &[opt::NOP, opt::NOP],
            &ts,
            &opt::mss(1460),
        ]))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-mss-odd-offset",
        "A lone NOP before MSS: the value straddles two checksum words (4-byte replace)",
        egress(syn4(cat(&[
            &[opt::NOP],
            &opt::mss(1460),
            &[opt::NOP, opt::NOP, opt::NOP],
        ]))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v4-mss-odd-offset-after-ws",
        "WS (3 bytes) then MSS at an odd offset",
        egress(syn4(cat(&[&opt::wscale(2), &opt::mss(1460), &[opt::NOP]]))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "v6-mss-odd-offset",
        "IPv6 with the MSS value at an odd offset",
        egress(syn6(cat(&[
            &[opt::NOP, opt::NOP, opt::NOP],
            &opt::mss(1460),
        ]))),
        e(CLAMPED, V6, Some((1460, 1312))),
    );
    let two_mss_low = cat(&[&opt::mss(1200), &opt::mss(1460)]);
    add(
        "v4-two-mss-first-wins-low",
        "Two MSS options: the first (1200) decides, the second is not examined",
        egress(syn4(two_mss_low)),
        e(&["syn", "mss_ok"], V4, None),
    );
    add(
        "v4-two-mss-first-wins-high",
        "Two MSS options: only the first (1460) is lowered",
        egress(syn4(cat(&[&opt::mss(1460), &opt::mss(1400)]))),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut ip = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::PROTO_TCP);
    ip.options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    add(
        "v4-ip-options",
        "IPv4 with a record-route option (IHL 8)",
        egress(packets::tcp4_frame_with(
            &ip,
            None,
            &Tcp::new(flags::SYN, linux.clone()),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    ip.options = vec![1; 40];
    add(
        "v4-ip-options-ihl15",
        "IPv4 with 40 bytes of IP options (IHL 15)",
        egress(packets::tcp4_frame_with(
            &ip,
            None,
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let plain = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::PROTO_TCP);
    add(
        "v4-vlan",
        "One 802.1Q tag before IPv4",
        egress(packets::tcp4_frame_with(
            &plain,
            Some(42),
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let qinq = {
        let inner =
            packets::tcp4_frame_with(&plain, Some(42), &Tcp::new(flags::SYN, opt::mss(1460)));
        // Insert a second tag: 0x8100 TCI 0x8100 TCI 0x0800.
        let mut f = inner[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        f.extend_from_slice(&inner[12..]);
        f
    };
    add(
        "qinq-two-tags-passed",
        "Two 802.1Q tags: not parsed, passed and not counted",
        egress(qinq),
        e(NOTHING, V4, None),
    );
    add(
        "v6-hop-by-hop",
        "IPv6 with a hop-by-hop header",
        egress(packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &[Ext::HopByHop(0)],
            &Tcp::new(flags::SYN, linux.clone()),
        )),
        e(CLAMPED, V6, Some((1460, 1312))),
    );
    add(
        "v6-four-ext-headers",
        "IPv6 with hop-by-hop, destination options, routing, destination options",
        egress(packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &[
                Ext::HopByHop(1),
                Ext::DstOpts(0),
                Ext::Routing(2),
                Ext::DstOpts(0),
            ],
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(CLAMPED, V6, Some((1460, 1312))),
    );
    add(
        "v6-five-ext-headers",
        "Five extension headers: more than the datapath walks -> unparseable",
        egress(packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &[
                Ext::HopByHop(0),
                Ext::DstOpts(0),
                Ext::Routing(0),
                Ext::DstOpts(0),
                Ext::DstOpts(0),
            ],
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(UNPARSEABLE, V6, None),
    );
    add(
        "v6-fragment-header",
        "IPv6 fragment header: the transport is left alone",
        egress(packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &[Ext::Fragment(0, true)],
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(NOTHING, V6, None),
    );
    let mut frag = plain.clone();
    frag.frag_offset = 10;
    add(
        "v4-fragment-offset",
        "IPv4 non-first fragment that looks like a SYN: untouched",
        egress(packets::tcp4_frame_with(
            &frag,
            None,
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(NOTHING, V4, None),
    );
    let mut first = plain.clone();
    first.mf = true;
    first.df = false;
    add(
        "v4-first-fragment",
        "IPv4 first fragment (MF, offset 0) carries the TCP header: clamped",
        egress(packets::tcp4_frame_with(
            &first,
            None,
            &Tcp::new(flags::SYN, opt::mss(1460)),
        )),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    add(
        "opt-len-zero",
        "An unknown option with length 0 before MSS",
        egress(syn4(cat(&[&[30, 0, 0, 0], &opt::mss(1460)]))),
        e(UNPARSEABLE_SYN, V4, None),
    );
    add(
        "opt-len-one",
        "A window-scale option with length 1",
        egress(syn4(cat(&[&[3, 1, 7, 1], &opt::mss(1460)]))),
        e(UNPARSEABLE_SYN, V4, None),
    );
    add(
        "opt-len-past-header",
        "Timestamps claiming 40 bytes in a 12-byte option area",
        egress(syn4(cat(&[&[8, 40, 0, 0, 0, 0, 0, 0], &opt::mss(1460)]))),
        e(UNPARSEABLE_SYN, V4, None),
    );
    add(
        "mss-len-3",
        "MSS option with length 3",
        egress(syn4(vec![2, 3, 5, 1])),
        e(UNPARSEABLE_SYN, V4, None),
    );
    add(
        "mss-len-6",
        "MSS option with length 6",
        egress(syn4(vec![2, 6, 5, 0xb4, 0, 0, 1, 1])),
        e(UNPARSEABLE_SYN, V4, None),
    );
    add(
        "kind-at-last-byte",
        "An option kind in the last option byte, its length past the header",
        egress(syn4(vec![1, 1, 1, 2])),
        e(UNPARSEABLE_SYN, V4, None),
    );
    let mut t = Tcp::new(flags::SYN, opt::mss(1460));
    t.doff_override = Some(4);
    add(
        "doff-4",
        "TCP data offset 4 (below the minimum of 5)",
        egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t)),
        e(UNPARSEABLE_SYN, V4, None),
    );
    t.doff_override = Some(15);
    add(
        "doff-15-past-packet",
        "TCP data offset 15 in a 24-byte segment",
        egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &t)),
        e(UNPARSEABLE_SYN, V4, None),
    );
    let full = syn4(linux.clone());
    let tagged = packets::tcp4_frame_with(&plain, Some(5), &Tcp::new(flags::SYN, opt::mss(1460)));
    add(
        "truncated-ipv4-header",
        "Frame (802.1Q-tagged: the kernel refuses short untagged ones) ends 10 bytes into IPv4",
        egress(tagged[..28].to_vec()),
        e(UNPARSEABLE, V4, None),
    );
    add(
        "truncated-tcp-header",
        "Frame ends 10 bytes into the TCP header",
        egress(full[..44].to_vec()),
        e(UNPARSEABLE, V4, None),
    );
    add(
        "truncated-tcp-options",
        "Frame ends in the middle of the TCP options",
        egress(full[..60].to_vec()),
        e(UNPARSEABLE_SYN, V4, None),
    );
    let mut short = full.clone();
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    add(
        "ipv4-total-length-short",
        "IPv4 total length 30: the TCP header is past the IP packet (bytes after are padding)",
        egress(short),
        e(UNPARSEABLE, V4, None),
    );
    let mut ihl4 = full.clone();
    ihl4[14] = 0x44;
    add(
        "ipv4-ihl-4",
        "IPv4 IHL 4",
        egress(ihl4),
        e(UNPARSEABLE, V4, None),
    );
    let mut ihl_past = full[..34 + 4].to_vec();
    ihl_past[14] = 0x4f;
    add(
        "ipv4-ihl-past-frame",
        "IPv4 IHL 15 in a frame that ends after 24 bytes of IP",
        egress(ihl_past),
        e(UNPARSEABLE, V4, None),
    );
    let mut ver = full.clone();
    ver[14] = 0x65;
    add(
        "ipv4-ethertype-version-6",
        "EtherType IPv4 but version nibble 6",
        egress(ver),
        e(UNPARSEABLE, V4, None),
    );
    let full6 = syn6(opt::mss(1460));
    let mut tagged6 = full6[..12].to_vec();
    tagged6.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged6.extend_from_slice(&full6[12..38]);
    add(
        "truncated-ipv6-header",
        "Frame (802.1Q-tagged) ends 20 bytes into the IPv6 header",
        egress(tagged6),
        e(UNPARSEABLE, V6, None),
    );
    let mut l3trunc = egress(full6[14..14 + 30].to_vec());
    l3trunc.tables.ifaces[0].1.l3_offset = 0;
    add(
        "l3-device-truncated-ipv6",
        "An L3 device with a 30-byte IPv6 packet",
        l3trunc,
        e(UNPARSEABLE, V6, None),
    );
    add(
        "arp-frame",
        "ARP: not IP, not counted",
        egress(packets::ethernet(packets::ETH_P_ARP, None, &[0u8; 28])),
        e(NOTHING, V4, None),
    );
    add(
        "runt-vlan-ipv4-no-header",
        "An 802.1Q tag announcing IPv4 and no IP header at all",
        egress(packets::ethernet(packets::ETH_P_IP, Some(9), &[])),
        e(UNPARSEABLE, V4, None),
    );
    add(
        "runt-vlan-tag-cut",
        "A frame that ends inside the 802.1Q tag: not IP, not counted",
        egress(packets::ethernet(packets::ETH_P_IP, Some(9), &[])[..16].to_vec()),
        e(NOTHING, V4, None),
    );
    let mut other = egress(syn4(opt::mss(1460)));
    other.frame = packets::tcp4_frame(
        addr::LOCAL4,
        Ipv4Addr::new(10, 10, 0, 1),
        &Tcp::new(flags::SYN, opt::mss(1460)),
    );
    add(
        "v4-no-clamp-for-peer",
        "Destination without an entry and no interface default",
        other,
        e(&["syn", "no_clamp"], V4, None),
    );
    let mut dflt = egress(packets::tcp4_frame(
        addr::LOCAL4,
        Ipv4Addr::new(10, 10, 0, 1),
        &Tcp::new(flags::SYN, opt::mss(1460)),
    ));
    dflt.tables.ifaces[0].1.default_mtu_v4 = 1400;
    add(
        "v4-interface-default",
        "No entry for the peer: the interface default (1400) applies",
        dflt,
        e(CLAMPED, V4, Some((1460, 1360))),
    );
    let mut lpm = egress(syn4(opt::mss(1460)));
    lpm.tables.clamps.push(Clamp {
        addr: IpAddr::V4(addr::REMOTE4),
        prefix_len: 32,
        mtu: 1280,
    });
    add(
        "v4-longest-prefix",
        "A /32 entry (1280) beats the /16 (1372)",
        lpm,
        e(CLAMPED, V4, Some((1460, 1240))),
    );
    let mut insane = egress(syn4(opt::mss(1460)));
    insane.tables.clamps[0].mtu = 60;
    add(
        "v4-insane-mtu",
        "Path MTU 60 is below 68: not believed, no clamp",
        insane,
        e(&["syn", "no_clamp"], V4, None),
    );
    let mut l3dev = egress(syn4(linux.clone())[14..].to_vec());
    l3dev.tables.ifaces[0].1.l3_offset = 0;
    add(
        "l3-device-raw-ipv4",
        "An L3 device (tun, WireGuard): the frame starts with the IPv4 header",
        l3dev,
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut l3dev6 = egress(syn6(opt::mss(1460))[14..].to_vec());
    l3dev6.tables.ifaces[0].1.l3_offset = 0;
    add(
        "l3-device-raw-ipv6",
        "An L3 device with an IPv6 packet",
        l3dev6,
        e(CLAMPED, V6, Some((1460, 1312))),
    );
    let mut padded = syn4(opt::mss(1460));
    padded.extend_from_slice(&[0xee; 8]);
    add(
        "v4-ethernet-padding",
        "Trailing bytes after the IP packet are not part of the segment",
        egress(padded),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut badsum = syn4(opt::mss(1460));
    badsum[14 + 20 + 16] ^= 0x5a;
    add(
        "v4-bad-checksum-stays-bad",
        "A wrong TCP checksum stays exactly as wrong (incremental update)",
        egress(badsum),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut tfo = Tcp::new(flags::SYN, cat(&[&opt::mss(1460), &[34, 2, 1, 1]]));
    tfo.payload = b"GET / HTTP/1.1\r\n".to_vec();
    add(
        "v4-syn-with-data",
        "A TFO SYN with payload",
        egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &tfo)),
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut big = Tcp::new(flags::ACK, vec![]);
    big.payload = vec![0x11; 1500 - 40];
    add(
        "v4-oversize-df",
        "Egress IPv4 DF packet of 1500 bytes over a 1372 path",
        egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &big)),
        e(&["oversize_df"], V4, None),
    );
    let mut nodf = plain.clone();
    nodf.df = false;
    add(
        "v4-oversize-no-df",
        "The same without DF: routers may fragment it, not counted",
        egress(packets::tcp4_frame_with(&nodf, None, &big)),
        e(NOTHING, V4, None),
    );
    add(
        "v4-oversize-ingress-not-counted",
        "Oversize is an egress-only counter",
        ingress(packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, &big)),
        e(NOTHING, V4, None),
    );
    let mut big6 = Tcp::new(flags::ACK, vec![]);
    big6.payload = vec![0x22; 1400 - 60];
    add(
        "v6-oversize",
        "Every IPv6 packet is DF: 1400 bytes over a 1372 path",
        egress(packets::tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[], &big6)),
        e(&["oversize_df"], V6, None),
    );
    let mut gso = egress(packets::tcp4_frame(
        addr::LOCAL4,
        addr::REMOTE4,
        &Tcp::new(flags::ACK, vec![]),
    ));
    gso.gso_size = 1448;
    add(
        "v4-gso-oversize",
        "A GSO packet: headers + gso_size 1448 = 1488 > 1372 (skb built with __sk_buff ctx)",
        gso.clone(),
        e(&["oversize_df"], V4, None),
    );
    gso.gso_size = 1000;
    add(
        "v4-gso-fits",
        "A GSO packet whose segments (1040) fit",
        gso,
        e(NOTHING, V4, None),
    );
    let mut floor = egress(packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &big));
    floor.tables.globals.min_mtu_v4 = 1500;
    add(
        "v4-oversize-below-floor",
        "A floor of 1500 (smallest MTU in force) skips the lookup for a 1500-byte packet",
        floor,
        e(NOTHING, V4, None),
    );
    let synack4 = || {
        ingress(packets::tcp4_frame(
            addr::REMOTE4,
            addr::LOCAL4,
            &Tcp::new(flags::SYN | flags::ACK, opt::mss(1460)),
        ))
    };
    let probe4 = (IpAddr::V4(addr::REMOTE4), Tcp::new(0, vec![]).dport);
    let mut probe = synack4();
    probe.tables.probes.push(probe4);
    add(
        "v4-probe-synack-keeps-its-mss",
        "A SYN-ACK answering the agent's TCP probe (peer and local port in the probe map) keeps \
         the peer's MSS",
        probe,
        e(&["syn", "no_clamp"], V4, None),
    );
    let mut other_port = synack4();
    other_port.tables.probes.push((probe4.0, probe4.1 + 1));
    add(
        "v4-probe-other-port-clamped",
        "A probe from another local port exempts nothing else",
        other_port,
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut probe_syn = ingress(packets::tcp4_frame(
        addr::REMOTE4,
        addr::LOCAL4,
        &Tcp::new(flags::SYN, opt::mss(1460)),
    ));
    probe_syn.tables.probes.push(probe4);
    add(
        "v4-probe-plain-syn-clamped",
        "Only a SYN-ACK answers a probe: an arriving SYN to the same port is clamped",
        probe_syn,
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut probe_egress = egress(packets::tcp4_frame(
        addr::LOCAL4,
        addr::REMOTE4,
        &Tcp::new(flags::SYN | flags::ACK, opt::mss(1460)),
    ));
    probe_egress.tables.probes.push(probe4);
    add(
        "v4-probe-egress-clamped",
        "The exemption is for arriving SYN-ACKs only: a leaving one is clamped",
        probe_egress,
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    let mut probe6 = ingress(packets::tcp6_frame(
        addr::REMOTE6,
        addr::LOCAL6,
        &[],
        &Tcp::new(flags::SYN | flags::ACK, opt::mss(1440)),
    ));
    probe6
        .tables
        .probes
        .push((IpAddr::V6(addr::REMOTE6), probe4.1));
    add(
        "v6-probe-synack-keeps-its-mss",
        "The IPv6 SYN-ACK answering a probe keeps the peer's MSS",
        probe6,
        e(&["syn", "no_clamp"], V6, None),
    );
    let reflecting = |mut c: Case| {
        c.tables.globals.flags = wslnet_common::global_flags::REFLECT;
        c
    };
    add(
        "v4-oversize-reflected",
        "Reflection on: a 1500-byte DF packet over a 1372 clamp entry is dropped and handed to \
         the agent",
        reflecting(egress(packets::tcp4_frame(
            addr::LOCAL4,
            addr::REMOTE4,
            &big,
        ))),
        dropped(V4),
    );
    add(
        "v6-oversize-reflected",
        "Reflection on: every IPv6 packet is DF; 1400 bytes over a 1372 entry are dropped",
        reflecting(egress(packets::tcp6_frame(
            addr::LOCAL6,
            addr::REMOTE6,
            &[],
            &big6,
        ))),
        dropped(V6),
    );
    let mut gso_reflected = reflecting(egress(packets::tcp4_frame(
        addr::LOCAL4,
        addr::REMOTE4,
        &big,
    )));
    gso_reflected.gso_size = 1448;
    add(
        "v4-gso-oversize-reflected",
        "A GSO packet is judged by its segments (40 + 1448 > 1372): the whole packet is dropped",
        gso_reflected,
        dropped(V4),
    );
    add(
        "v4-oversize-no-df-not-reflected",
        "Without DF a router may fragment it: counted nowhere, never dropped",
        reflecting(egress(packets::tcp4_frame_with(&nodf, None, &big))),
        e(NOTHING, V4, None),
    );
    let mut by_default = reflecting(egress(packets::tcp4_frame(
        addr::LOCAL4,
        // Outside the 10.9.0.0/16 entry.
        Ipv4Addr::new(10, 8, 0, 7),
        &big,
    )));
    by_default.tables.ifaces[0].1.default_mtu_v4 = 1280;
    add(
        "v4-oversize-first-contact-not-reflected",
        "Over the interface default (the first-contact guess, not a measurement): counted, \
         never dropped",
        by_default,
        e(&["oversize_df"], V4, None),
    );
    let mut tiny = reflecting(egress(packets::tcp4_frame(
        addr::LOCAL4,
        addr::REMOTE4,
        &big,
    )));
    tiny.tables.clamps[0].mtu = 500;
    add(
        "v4-oversize-below-552-not-reflected",
        "A clamp entry below 552 is not a path MTU an ICMP error may name: counted, never dropped",
        tiny,
        e(&["oversize_df"], V4, None),
    );
    add(
        "v4-oversize-ingress-not-reflected",
        "Reflection is for what leaves: an arriving oversize packet is untouched",
        reflecting(ingress(packets::tcp4_frame(
            addr::REMOTE4,
            addr::LOCAL4,
            &big,
        ))),
        e(NOTHING, V4, None),
    );
    dscp_cases(&mut add);
    let mut unconf = egress(syn4(opt::mss(1460)));
    unconf.tables.ifaces.clear();
    add(
        "unconfigured-interface",
        "No interface settings: counter slot 0, Ethernet, LPM entries still apply",
        unconf,
        e(CLAMPED, V4, Some((1460, 1332))),
    );
    v
}

/// DSCP normalisation (`set_dscp`): OpenSSH's af21 and cs1 marks, with every ECN codepoint, over
/// IPv4 with and without options and IPv6 with extension headers.
fn dscp_cases(add: &mut impl FnMut(&'static str, &'static str, Case, Expect)) {
    const AF21: u8 = 18 << 2;
    const CS1: u8 = 8 << 2;
    const ECT0: u8 = 0b10;
    const ECT1: u8 = 0b01;
    const CE: u8 = 0b11;
    let setting = |mut c: Case, dscp: u8| {
        c.tables.ifaces[0].1.dscp = wslnet_common::DSCP_SET | dscp;
        c
    };
    let marked = |mut frame: Vec<u8>, ds: u8| {
        packets::set_ds(&mut frame[14..], ds);
        frame
    };
    let ack4 = Tcp::new(flags::ACK, Vec::new());
    let rewritten = |family, before, after| Expect {
        ds: Some((before, after)),
        ..e(&["dscp_rewritten"], family, None)
    };
    add(
        "v4-dscp-af21-rewritten-ecn-kept",
        "set_dscp 0: an af21 packet with ECT(0) leaves with DSCP 0 and ECT(0), its header \
         checksum updated",
        setting(
            egress(marked(
                packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &ack4),
                AF21 | ECT0,
            )),
            0,
        ),
        rewritten(V4, AF21 | ECT0, ECT0),
    );
    let mut with_options = Ipv4::new(addr::LOCAL4, addr::REMOTE4, packets::PROTO_TCP);
    with_options.options = vec![0x94, 0x04, 0x00, 0x00]; // Router Alert
    add(
        "v4-options-dscp-cs1-rewritten-ce-kept",
        "IPv4 with options (IHL 6): cs1 with CE becomes DSCP 0 with CE; the checksum covers the \
         options",
        setting(
            egress(marked(
                packets::tcp4_frame_with(&with_options, None, &ack4),
                CS1 | CE,
            )),
            0,
        ),
        rewritten(V4, CS1 | CE, CE),
    );
    add(
        "v6-ext-dscp-af21-rewritten",
        "IPv6 behind a hop-by-hop header: the traffic class across bytes 0-1 becomes DSCP 0, \
         ECT(1) and the flow label bits kept",
        setting(
            egress(marked(
                packets::tcp6_frame(addr::LOCAL6, addr::REMOTE6, &[Ext::HopByHop(0)], &ack4),
                AF21 | ECT1,
            )),
            0,
        ),
        rewritten(V6, AF21 | ECT1, ECT1),
    );
    add(
        "v4-dscp-to-a-nonzero-value",
        "set_dscp 46 (EF) on a cs1 packet: DSCP 46, ECN 0",
        setting(
            egress(marked(
                packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &ack4),
                CS1,
            )),
            46,
        ),
        rewritten(V4, CS1, 46 << 2),
    );
    add(
        "v4-dscp-already-set-costs-no-write",
        "A packet that already carries the DSCP (0, with ECT(1)) is neither written nor counted",
        setting(
            egress(marked(
                packets::tcp4_frame(addr::LOCAL4, addr::REMOTE4, &ack4),
                ECT1,
            )),
            0,
        ),
        e(NOTHING, V4, None),
    );
    add(
        "v4-dscp-ingress-untouched",
        "Marks are normalised on what leaves: an arriving af21 packet keeps them",
        setting(
            ingress(marked(
                packets::tcp4_frame(addr::REMOTE4, addr::LOCAL4, &ack4),
                AF21,
            )),
            0,
        ),
        e(NOTHING, V4, None),
    );
    add(
        "v4-syn-clamped-and-dscp-rewritten",
        "A marked SYN gets both: its MSS clamped and its DSCP set",
        setting(egress(marked(syn4(opt::mss(1460)), AF21)), 0),
        Expect {
            ds: Some((AF21, 0)),
            ..e(
                &["syn", "mss_clamped", "dscp_rewritten"],
                V4,
                Some((1460, 1332)),
            )
        },
    );
}

/// The directory of the corpus in the source tree.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}
