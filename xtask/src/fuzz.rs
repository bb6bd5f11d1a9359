//! Placeholder (being written): `cargo xtask fuzz`.
/// `fuzz` arguments.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Packets to generate.
    #[arg(long, default_value_t = 100_000)]
    pub packets: u64,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
}
/// Runs the fuzzer.
pub fn run(_args: FuzzArgs) -> anyhow::Result<()> {
    anyhow::bail!("fuzz is not implemented yet")
}
