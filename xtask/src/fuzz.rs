//! `cargo xtask fuzz`: differential fuzzing of the real datapath (`BPF_PROG_TEST_RUN`) against the
//! reference model (`wslnet-model`). The engine is `wslnet_tests::fuzz`.

use anyhow::{Result, bail};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Packets to generate and run through both the program and the model.
    #[arg(long, default_value_t = 100_000)]
    pub packets: u64,
    /// Seed of the generator (random when absent; printed so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs the fuzzer and fails when the program and the model disagree or a rewritten packet has a
/// bad TCP checksum. Divergent cases are saved under `tests/corpus/`.
pub fn run(args: FuzzArgs) -> Result<()> {
    let corpus = wslnet_tests::fuzz::corpus::corpus_dir();
    let report = wslnet_tests::fuzz::run(args.packets, args.seed, &corpus)?;
    println!("{report}");
    println!(
        "seed={} rewritten={} syn={} reflected={} unparseable={} time={:.2}s rate={:.0} packets/s",
        report.seed,
        report.rewritten,
        report.syns,
        report.reflected,
        report.unparseable,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    for p in &report.saved {
        println!("saved divergence: {}", p.display());
    }
    if report.divergences != 0 || report.bad_checksums != 0 {
        bail!(
            "fuzz: {} divergences, {} bad checksums (reproduce with --seed {})",
            report.divergences,
            report.bad_checksums,
            report.seed
        );
    }
    Ok(())
}
