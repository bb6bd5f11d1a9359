//! `wslnet-agent detach`: removes every attachment and pin a `run` left ([`crate::attach`],
//! [`crate::pins`]).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::Args;

use crate::{
    attach, maps,
    pins::{self, DEFAULT_PIN_DIR},
};

/// `detach` flags.
#[derive(Args, Debug)]
pub struct DetachArgs {
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl DetachArgs {
    /// `detach`: removes every attachment recorded in the pins and then the pins themselves.
    pub async fn run(self) -> Result<ExitCode> {
        detach_all(&self.pin_dir).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Detaches every interface the pinned interface map records ([`maps::recorded_ifaces`]: it
/// opens even when the other maps have another layout), then removes every pin.
async fn detach_all(pin_dir: &Path) -> Result<()> {
    if !pins::any_pinned(pin_dir) {
        println!("nothing to detach: no pins under {}", pin_dir.display());
        return Ok(());
    }
    let recorded = maps::recorded_ifaces(pin_dir).unwrap_or_default();
    for (ifindex, cfg) in &recorded {
        attach::detach(pin_dir, *ifindex, cfg.flags).await?;
        println!(
            "detached {} ({})",
            attach::interface_name(*ifindex).unwrap_or_else(|| format!("ifindex {ifindex}")),
            attach::Mode::of(cfg.flags).name()
        );
    }
    // TCX link pins of interfaces missing from the map (an interrupted start) go too.
    pins::remove_pins(pin_dir)?;
    println!("removed pins under {}", pin_dir.display());
    Ok(())
}
