//! `wslnet-agent check`: the running system's readiness, or a kernel config's
//! (`--kernel-config`), judged by [`crate::check`] and printed with the fixes.

use std::{path::Path, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::check::{self, OptionState, WSL_KERNEL_FRAGMENT};

/// `check` flags.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Judge this kernel config file (a `.config`, or Microsoft's config-wsl) instead of the
    /// running system: whether it has everything the datapath needs built in. Exit 0 when it
    /// does, 1 when something is missing (named, with the line to add).
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<PathBuf>,
}

impl CheckArgs {
    /// `check`: prints the report; the exit status says whether wslnet can run.
    pub fn run(self) -> Result<ExitCode> {
        Ok(match self.kernel_config {
            Some(path) => kernel_config(&path),
            None => running_system(),
        })
    }
}

/// The mark of a line: `ok  `, `FAIL` (wslnet cannot run), or `warn`.
fn mark(ok: bool, blocks: bool) -> &'static str {
    match (ok, blocks) {
        (true, _) => "ok  ",
        (false, true) => "FAIL",
        (false, false) => "warn",
    }
}

/// `check --kernel-config FILE`: judges that config alone. Exit 0 when it has every required
/// option built in, 1 when one is missing (named, with the line to add), 2 when it cannot be
/// read.
fn kernel_config(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wslnet-agent: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut missing = Vec::new();
    for v in check::judge_kernel_config(&text) {
        let state = match v.state {
            OptionState::BuiltIn => "=y".to_string(),
            OptionState::Module => "=m (loads only with WSL's modules VHD; =y is safer)".into(),
            OptionState::Missing => " is not set".into(),
        };
        let mark = mark(v.state == OptionState::BuiltIn, v.blocks());
        println!("[{mark}] {}{state}: {}", v.name, v.what);
        if v.blocks() {
            missing.push(v.name);
        }
    }
    if missing.is_empty() {
        println!(
            "\n{}: ready for wslnet (attach mode clsact below Linux 6.6, TCX from 6.6 on).",
            path.display()
        );
        ExitCode::SUCCESS
    } else {
        println!("\n{}: not ready for wslnet; add:", path.display());
        for name in &missing {
            println!("{name}=y");
        }
        println!("(packaging/wsl-kernel/wslnet.config has every option wslnet uses)");
        ExitCode::from(1)
    }
}

/// `check`: runs every check of the running system and prints the report; exit 0 when wslnet
/// can run, 2 otherwise.
fn running_system() -> ExitCode {
    let findings = check::checks();
    for f in &findings {
        println!("[{}] {:<28} {}", mark(f.ok, f.blocks()), f.what, f.detail);
        if !f.ok {
            println!("       fix: {}", f.fix);
        }
    }
    if findings.iter().any(check::Finding::needs_kernel_config) {
        println!(
            "\nFor a custom WSL kernel (build from microsoft/WSL2-Linux-Kernel, then set \
             kernel=<path> under [wsl2] in %UserProfile%\\.wslconfig), make sure its config has:\n{WSL_KERNEL_FRAGMENT}"
        );
    }
    if findings.iter().any(check::Finding::blocks) {
        println!("\nwslnet cannot run here yet: fix the FAIL lines above.");
        ExitCode::from(2)
    } else {
        println!("\nwslnet can run here.");
        ExitCode::SUCCESS
    }
}
