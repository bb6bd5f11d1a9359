//! Temporary driver for the differential fuzzer until `cargo xtask fuzz` is wired:
//! `cargo run --release -p wslnet-tests --example fuzz -- PACKETS [SEED]`.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let packets = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let seed = args.next().map(|a| a.parse()).transpose()?;
    let dir = wslnet_tests::fuzz::corpus::corpus_dir();
    let r = wslnet_tests::fuzz::run(packets, seed, &dir)?;
    println!("{r}");
    println!(
        "seed={} rewritten={} syns={} unparseable={} time={:.2?} rate={:.0}/s saved={:?}",
        r.seed, r.rewritten, r.syns, r.unparseable, r.elapsed, r.rate(), r.saved
    );
    if r.divergences != 0 || r.bad_checksums != 0 {
        std::process::exit(1);
    }
    Ok(())
}
