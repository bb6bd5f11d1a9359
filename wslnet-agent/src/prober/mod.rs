//! Path-MTU prober (placeholder: being written).
use clap::Args;

/// Arguments of `wslnet-agent probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Address to measure the path MTU to.
    pub target: String,
}

/// `wslnet-agent probe`.
pub async fn run_cli(_args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("probe is not implemented yet")
}
