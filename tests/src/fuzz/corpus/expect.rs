//! Hand-written expectations of the named cases: what must happen to a packet, checked against
//! the program's and the model's output independently of the model.

use std::collections::BTreeMap;

use wslnet_common::Counters;

use super::{counter_names, describe_moves, family_name};
use crate::{fuzz::Case, packets};

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

/// The counters of a SYN whose MSS was lowered.
pub const CLAMPED: &[&str] = &["syn", "mss_clamped"];
/// The counters of a SYN whose MSS was already at or below the clamp.
pub const ALREADY_LOW: &[&str] = &["syn", "mss_ok"];
/// The counters of a SYN with an MSS option and no path MTU for its peer.
pub const NO_CLAMP: &[&str] = &["syn", "no_clamp"];
/// The counters of a SYN without an MSS option.
pub const NO_MSS: &[&str] = &["syn", "no_mss"];
/// The counters of a SYN whose TCP options could not be parsed.
pub const UNPARSEABLE_SYN: &[&str] = &["syn", "unparseable"];
/// The counter of a packet whose IP or TCP header could not be parsed.
pub const UNPARSEABLE: &[&str] = &["unparseable"];
/// The counter of an oversize DF packet left to the path.
pub const OVERSIZE: &[&str] = &["oversize_df"];
/// No counter at all.
pub const NOTHING: &[&str] = &[];

impl Expect {
    /// The frame passes unchanged and `counters` of `family` move by one.
    pub fn counted(counters: &'static [&'static str], family: u32) -> Self {
        Self {
            counters,
            family,
            rewrite: None,
            verdict: wslnet_model::TC_ACT_UNSPEC,
            ds: None,
        }
    }

    /// A SYN of `family` whose MSS option is lowered from `old` to `new`.
    pub fn clamped(family: u32, old: u16, new: u16) -> Self {
        Self {
            rewrite: Some((old, new)),
            ..Self::counted(CLAMPED, family)
        }
    }

    /// A packet dropped and handed to the agent (counted oversize and reflected), unchanged.
    pub fn dropped(family: u32) -> Self {
        Self {
            verdict: wslnet_model::TC_ACT_SHOT,
            ..Self::counted(&["oversize_df", "reflected"], family)
        }
    }

    /// This expectation with the DS field rewritten from `before` to `after`.
    pub fn with_ds(self, before: u8, after: u8) -> Self {
        Self {
            ds: Some((before, after)),
            ..self
        }
    }

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
            Some((old, new)) => check_mss_rewrite(input, out, old, new),
        }
    }
}

/// Checks that `out` is `input` with one MSS option's value changed from `old` to `new` and at
/// most two other bytes (the TCP checksum) changed.
fn check_mss_rewrite(
    input: &[u8],
    out: &[u8],
    old: u16,
    new: u16,
) -> std::result::Result<(), String> {
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
