//! What every task shares: where the workspace and its target directory are, how a step is
//! announced, how cargo and other commands are run, the root check. One home for each, as aya's
//! xtask keeps them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` when set (relative to the workspace, as cargo
/// takes it), else `target/` at the workspace root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Announces a step of a task, in bold on stderr so it stands out of the commands' output.
pub fn step(what: &str) {
    eprintln!("\n\x1b[1m==> {what}\x1b[0m");
}

/// The cargo that runs this task (`CARGO`, set by `cargo xtask`), else `cargo` on PATH.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A cargo command run in the workspace root.
pub fn cargo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Runs `cargo ARGS` in the workspace root; fails when it does.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(
        &mut cargo_command(args),
        &format!("cargo {}", args.join(" ")),
    )
}

/// Runs a command to its end; `what` names it in the error when it cannot start or fails.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Fails unless this runs as root; `why` says what needs it, the error says what to do.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}: run it as root (sudo)");
    }
    Ok(())
}

/// The first `tool` on PATH (or in /usr/sbin, /sbin, where root's tools live).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
