//! Replaying a case file through the program and the model, against its expectation.

use std::collections::BTreeMap;

use anyhow::Result;
use wslnet_common::{Counters, FAMILY_V4, FAMILY_V6};

use super::{CaseFile, counters_from_names, describe_moves, expected_from, hex, learned_name};
use crate::testrun::Harness;

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
        && let Err(e) = crate::fuzz::check_rewrite(&case, &r.frame)
    {
        errs.push(e);
    }
    Ok(if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n  "))
    })
}
