//! The corpus under `tests/corpus/`: named hostile and odd packets with hand-written
//! expectations, and fuzz divergences kept after their fix. Every case is replayed through the
//! real program (`BPF_PROG_TEST_RUN`) and the reference model, and both must produce exactly the
//! expected frame, verdict, counters and learned destination.
//!
//! `WSLNET_REGEN_CORPUS=1 cargo test -p wslnet-tests --test corpus` rewrites the named case files
//! (after their hand-written expectations passed on the program and the model).
use std::collections::{BTreeMap, BTreeSet};

use wslnet_tests::{
    fuzz::{
        Case,
        corpus::{self, CaseFile},
    },
    netns::require_root,
    testrun::Harness,
};

fn moved_by_family(
    r: &wslnet_tests::testrun::RunResult,
    slot: u32,
) -> BTreeMap<u32, wslnet_common::Counters> {
    r.counters
        .iter()
        .map(|((s, _, f), c)| {
            assert_eq!(*s, slot, "a counter of another slot moved");
            (*f, *c)
        })
        .collect()
}

fn model_moves(case: &Case) -> (Vec<u8>, BTreeMap<u32, wslnet_common::Counters>) {
    let m = case.model();
    let moves = m.counters.iter().map(|c| (c.family, c.delta)).collect();
    (m.frame, moves)
}

#[test]
fn named_cases_meet_their_hand_expectations() {
    require_root();
    let regen = std::env::var_os("WSLNET_REGEN_CORPUS").is_some();
    let dir = corpus::corpus_dir().join("named");
    if regen {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut h = Harness::new().unwrap();
    let cases = corpus::named_cases();
    assert!(cases.len() >= 40, "only {} named cases", cases.len());
    let mut failures = Vec::new();
    for n in &cases {
        h.set_tables(&n.case.tables).unwrap();
        let slot = n.case.iface().slot;
        let r = h
            .run_watch(n.case.dir, &n.case.frame, n.case.gso_size, &[slot, 0])
            .unwrap();
        assert_eq!(r.retval, n.expect.verdict, "{}: verdict", n.name);
        if let Err(e) = n
            .expect
            .check(&n.case.frame, &r.frame, &moved_by_family(&r, slot))
        {
            failures.push(format!("{} (program): {e}", n.name));
        }
        let (mframe, mmoves) = model_moves(&n.case);
        if let Err(e) = n.expect.check(&n.case.frame, &mframe, &mmoves) {
            failures.push(format!("{} (model): {e}", n.name));
        }
        let file = CaseFile::new(n.name, n.description, &n.case, &n.case.model());
        let path = dir.join(format!("{}.json", n.name));
        if regen {
            file.write(&path).unwrap();
        } else {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let on_disk: CaseFile = serde_json::from_str(&text).unwrap();
                    if on_disk != file {
                        failures.push(format!(
                            "{}: {} is stale (run with WSLNET_REGEN_CORPUS=1)",
                            n.name,
                            path.display()
                        ));
                    }
                }
                Err(e) => failures.push(format!("{}: {}: {e}", n.name, path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_case_replays_exactly() {
    require_root();
    let files = corpus::load_dir(&corpus::corpus_dir()).unwrap();
    assert!(files.len() >= 40, "only {} corpus files", files.len());
    let mut h = Harness::new().unwrap();
    let mut failures = Vec::new();
    for (path, file) in &files {
        assert!(
            file.program.is_none(),
            "{} is an unreviewed divergence: fix it and rewrite its expectation",
            path.display()
        );
        if let Err(e) = corpus::replay(&mut h, file).unwrap() {
            failures.push(format!("{}:\n  {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The files under `named/` are exactly the named cases, each name once: a case dropped from the
/// table leaves no file behind to be replayed with an expectation nobody checks by hand.
#[test]
fn every_named_file_is_a_named_case() {
    let cases = corpus::named_cases();
    let names: BTreeSet<String> = cases.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(names.len(), cases.len(), "a name used twice");
    let dir = corpus::corpus_dir().join("named");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, names, "{}", dir.display());
}
