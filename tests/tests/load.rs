//! The datapath object loads and both programs pass the verifier; maps are pinned.
use aya::programs::SchedClassifier;
use wslnet_tests::netns::{Bpffs, require_root};

#[test]
fn datapath_verifies_and_pins_its_maps() {
    require_root();
    let fs = Bpffs::new().unwrap();
    let mut ebpf = wslnet_agent::maps::load(fs.path(), 0).unwrap();
    for name in [
        wslnet_common::program_names::INGRESS,
        wslnet_common::program_names::EGRESS,
    ] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        // How much of the verifier's budget (1,000,000 instructions) the program takes: the
        // headroom left for the next feature (Linux >= 5.16 reports it).
        if let Some(n) = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
        {
            eprintln!("{name}: the verifier processed {n} instructions");
        }
    }
    let pins = fs.list();
    for map in wslnet_common::map_names::ALL {
        assert!(
            pins.contains(&format!("maps/{map}")),
            "{map} not pinned: {pins:?}"
        );
    }
    let maps = wslnet_agent::maps::Maps::open(fs.path()).unwrap();
    assert!(maps.clamps().is_empty());
}
