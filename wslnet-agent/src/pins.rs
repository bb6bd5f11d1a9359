//! The pin directory: where everything wslnet leaves in the kernel is pinned, and every decision
//! about its paths.
//!
//! ```text
//! <pin dir>/                              default /sys/fs/bpf/wslnet (--pin-dir, pin_dir)
//!   maps/<MAP NAME>                       every datapath map (the loader pins them by name)
//!   links/if<ifindex>-<ingress|egress>    the TCX link of one interface at one hook
//! ```
//!
//! Each directory is created mode 0700 and refused when another user could have prepared it
//! ([`secure_pin_dirs`]); the pin directory must be on a bpffs, and a missing one at
//! `/sys/fs/bpf` is mounted ([`ensure_bpffs`]). The maps are opened through these paths by the
//! agent, `status`, a restarted agent and the tests alike ([`crate::maps`]); the links are made
//! and adopted by [`crate::attach`]; `detach` and a stopping agent remove it all
//! ([`remove_pins`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::programs::TcAttachType;

/// Where pins live unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/wslnet";

/// Where the kernel's bpffs is mounted by convention (systemd mounts it there at boot).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The maps directory under a pin directory.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// The links directory under a pin directory.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Pin path of the map named `name` ([`wslnet_common::map_names`]).
pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    maps_dir(pin_dir).join(name)
}

/// Pin path of the TCX link of `ifindex` at `hook`.
pub fn link_pin(pin_dir: &Path, ifindex: u32, hook: TcAttachType) -> PathBuf {
    links_dir(pin_dir).join(format!("if{ifindex}-{}", crate::attach::hook_name(hook)))
}

/// True when anything of wslnet's is pinned under `pin_dir` (its maps or links directory).
pub fn any_pinned(pin_dir: &Path) -> bool {
    maps_dir(pin_dir).exists() || links_dir(pin_dir).exists()
}

/// Makes sure `path` is on a bpffs, mounting one at /sys/fs/bpf (mode 0700: only root may
/// create pins in it) when the default is missing. Never mounts over a bpffs already there:
/// that would hide every other tool's pins.
pub fn ensure_bpffs(path: &Path) -> Result<()> {
    let probe = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(probe) {
        return Ok(());
    }
    if path.starts_with(BPFFS_ROOT) && !is_bpffs(Path::new(BPFFS_ROOT)) {
        std::fs::create_dir_all(BPFFS_ROOT).ok();
        nix::mount::mount(
            Some("bpf"),
            BPFFS_ROOT,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .context(
            "mounting bpffs at /sys/fs/bpf (run: mount -t bpf -o mode=0700 bpf /sys/fs/bpf)",
        )?;
        return Ok(());
    }
    bail!(
        "{} is not on a bpffs; mount one (mount -t bpf -o mode=0700 bpf DIR) or pick another \
         --pin-dir",
        path.display()
    )
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Creates the pin directory and its `maps/` and `links/` (mode 0700) where missing, and refuses
/// any of them that another user could have prepared: a symbolic link anywhere on the path, a
/// directory not owned by the agent's user, or one that group or others may write. A bpffs
/// mounted without `mode=` is writable by everyone (1777), and whoever owns the pin directory
/// can remove the link pins and switch clamping off under a running agent.
pub fn secure_pin_dirs(pin_dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let euid = nix::unistd::geteuid().as_raw();
    for dir in [pin_dir.to_path_buf(), maps_dir(pin_dir), links_dir(pin_dir)] {
        if std::fs::symlink_metadata(&dir).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .with_context(|| format!("creating pin directory {}", dir.display()))?;
        }
        let meta = std::fs::symlink_metadata(&dir)
            .with_context(|| format!("reading pin directory {}", dir.display()))?;
        let canonical = dir.canonicalize().ok();
        let absolute = std::path::absolute(&dir).ok();
        let problem = if meta.file_type().is_symlink() {
            Some("is a symbolic link".to_string())
        } else if !meta.is_dir() {
            Some("is not a directory".to_string())
        } else if canonical.is_none() || canonical != absolute {
            Some("has a symbolic link (or `..`) on its path".to_string())
        } else if meta.uid() != euid {
            Some(format!("is owned by uid {}, not {euid}", meta.uid()))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "is writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(crate::config::ConfigError(format!(
                "refusing pin directory {}: it {problem}; another user may have made it to \
                 switch clamping off. Remove it (`rm -r {}`) and start again",
                dir.display(),
                dir.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Removes the pinned maps and links directories under `pin_dir`, and `pin_dir` itself when
/// it is then empty.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    for dir in [maps_dir(pin_dir), links_dir(pin_dir)] {
        if dir.exists() {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing pin {}", path.display()))?;
            }
            std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}
