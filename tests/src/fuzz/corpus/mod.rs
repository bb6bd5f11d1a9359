//! The replayable corpus: one JSON file per case under `tests/corpus/`, each with the input
//! frame, hook, tables and the expected output (frame, verdict, counters, learned destination).
//!
//! `named/` holds hand-written hostile and odd packets ([`named_cases`], each with a hand-written
//! expectation checked before its file is written); `fuzz-*.json` files are divergences saved by
//! the fuzzer (kept after the fix, with the fixed behaviour as the expectation).
//!
//! This module is the file format (the JSON types, reading and writing, counters by name);
//! [`replay`] replays a file, [`expect`] holds the hand-written expectations and [`cases`] the
//! named cases.

pub mod cases;
pub mod expect;
pub mod replay;

pub use cases::named_cases;
pub use expect::{Expect, Named};
pub use replay::replay;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use wslnet_common::{Counters, FAMILY_V4, FAMILY_V6, Globals, IfaceConfig};
use wslnet_model::{Clamp, Direction, Outcome, Tables};

use super::{Case, Observed};
use crate::testrun::TEST_IFINDEX;

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

/// The counters a case file names (name -> increment); an unknown name is an error.
fn counters_from_names(m: &BTreeMap<String, u64>) -> Result<Counters> {
    let mut c = Counters::default();
    for (name, value) in m {
        let field = Counters::field(name).with_context(|| format!("unknown counter {name}"))?;
        *(field.get_mut)(&mut c) = *value;
    }
    Ok(c)
}

/// The directory of the corpus in the source tree.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}
