//! What `check` checks: is this kernel, and this user, able to run wslnet? Each missing piece
//! comes with the kernel config option or the command that fixes it. Printed by
//! [`crate::cmd::check`].

use std::{collections::HashMap, io::Read as _, path::Path};

/// Kernel config a custom WSL kernel needs (append to the config, rebuild, point .wslconfig's
/// `kernel=` at the result): `packaging/wsl-kernel/wslnet.config`, with its comments.
pub const WSL_KERNEL_FRAGMENT: &str = include_str!("../../packaging/wsl-kernel/wslnet.config");

/// What a kernel needs for wslnet, by config option: what it gives, and whether wslnet cannot
/// run without it (the rest makes it faster or easier to debug).
const KERNEL_OPTIONS: [(&str, &str, bool); 7] = [
    ("CONFIG_BPF", "BPF", true),
    (
        "CONFIG_BPF_SYSCALL",
        "the bpf() syscall, maps and programs",
        true,
    ),
    (
        "CONFIG_BPF_JIT",
        "compiled programs (interpreted ones are slower)",
        false,
    ),
    (
        "CONFIG_NET_SCH_INGRESS",
        "the clsact qdisc (attach mode below Linux 6.6)",
        true,
    ),
    ("CONFIG_NET_CLS_BPF", "BPF classifiers on clsact", true),
    (
        "CONFIG_NET_CLS_ACT",
        "tc actions (the classifiers' verdicts)",
        true,
    ),
    (
        "CONFIG_DEBUG_INFO_BTF",
        "type information (bpftool, debugging)",
        false,
    ),
];

/// How a kernel config sets an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionState {
    /// `=y`.
    BuiltIn,
    /// `=m`: loads only with the modules that match the kernel.
    Module,
    /// Not set.
    Missing,
}

/// One option wslnet uses, judged in a kernel config.
#[derive(Debug)]
pub struct OptionVerdict {
    /// The option, e.g. `CONFIG_BPF_SYSCALL`.
    pub name: &'static str,
    /// What it gives wslnet.
    pub what: &'static str,
    /// wslnet cannot run without it (the rest makes it faster or easier to debug).
    pub required: bool,
    /// How the config sets it.
    pub state: OptionState,
}

/// Judges a kernel config's text (a `.config`, or Microsoft's config-wsl): every option wslnet
/// uses, one verdict each.
pub fn judge_kernel_config(text: &str) -> Vec<OptionVerdict> {
    judge_config(&parse_config(text))
}

impl OptionVerdict {
    /// Required and not set: the kernel is not ready.
    pub fn blocks(&self) -> bool {
        self.required && self.state == OptionState::Missing
    }
}

fn judge_config(config: &HashMap<String, String>) -> Vec<OptionVerdict> {
    KERNEL_OPTIONS
        .iter()
        .map(|&(name, what, required)| OptionVerdict {
            name,
            what,
            required,
            state: match config.get(name).map(String::as_str) {
                Some("y") => OptionState::BuiltIn,
                Some("m") => OptionState::Module,
                _ => OptionState::Missing,
            },
        })
        .collect()
}

/// A kernel config as NAME -> value (`# CONFIG_X is not set` lines and comments are skipped).
fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// One check of the running system.
#[derive(Debug)]
pub struct Finding {
    /// What was checked, e.g. "bpf() syscall".
    pub what: &'static str,
    /// It is as wslnet needs it.
    pub ok: bool,
    /// wslnet cannot run when it is not ok.
    pub required: bool,
    /// What was seen.
    pub detail: String,
    /// How to fix it (empty when there is nothing to fix).
    pub fix: String,
}

impl Finding {
    /// Required and not ok: wslnet cannot run here.
    pub fn blocks(&self) -> bool {
        !self.ok && self.required
    }

    /// Not ok, and fixed in the kernel config (a custom WSL kernel needs the fragment).
    pub fn needs_kernel_config(&self) -> bool {
        !self.ok && self.fix.contains("kernel config")
    }
}

/// Checks whether the running kernel and this process's privileges allow wslnet to run.
pub fn checks() -> Vec<Finding> {
    let mut out = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = kernel_config(&release);
    let opt = |name: &str| -> Option<bool> {
        config
            .as_ref()
            .map(|c| matches!(c.get(name).map(String::as_str), Some("y" | "m")))
    };
    let fix_opt = |name: &str| format!("enable {name}=y in the kernel config and rebuild");

    let caps = effective_caps();
    let root = nix::unistd::geteuid().is_root();
    let has = |bit: u32| caps.map(|c| c & (1u64 << bit) != 0).unwrap_or(false);
    // CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21, CAP_BPF = 39.
    let privileged = has(12) && (has(39) || has(21));
    out.push(Finding {
        what: "privileges",
        ok: privileged,
        required: true,
        detail: format!(
            "euid {}{}",
            if root { "0 (root)" } else { "not root" },
            if privileged {
                ", CAP_BPF/CAP_SYS_ADMIN and CAP_NET_ADMIN"
            } else {
                ""
            }
        ),
        fix: "run as root (sudo wslnet-agent ...) or grant CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"
            .into(),
    });

    let bpf = bpf_syscall_works();
    out.push(Finding {
        what: "bpf() syscall",
        ok: bpf.is_ok(),
        required: true,
        detail: match &bpf {
            Ok(()) => "creating a BPF map works".into(),
            Err(e) => e.clone(),
        },
        fix: if matches!(&bpf, Err(e) if e.contains("ENOSYS")) {
            fix_opt("CONFIG_BPF_SYSCALL")
        } else {
            "run as root; in a container, allow the bpf syscall (CAP_BPF / --privileged)".into()
        },
    });

    let version = aya::util::KernelVersion::current().ok();
    let tcx = crate::attach::kernel_has_tcx();
    out.push(Finding {
        what: "kernel",
        ok: true,
        required: false,
        detail: format!(
            "{release}: attach mode {}",
            if tcx {
                "tcx (>= 6.6)"
            } else {
                "clsact (TCX needs >= 6.6)"
            }
        ),
        fix: String::new(),
    });
    let _ = version;

    // The bpf() syscall and BTF are checked by trying them (above and below); with TCX the tc
    // options are not needed.
    for (name, what, required) in KERNEL_OPTIONS.into_iter().filter(|(n, _, _)| {
        !matches!(
            *n,
            "CONFIG_BPF" | "CONFIG_BPF_SYSCALL" | "CONFIG_DEBUG_INFO_BTF"
        )
    }) {
        let required = required && !tcx;
        match opt(name) {
            Some(ok) => out.push(Finding {
                what,
                ok,
                required,
                detail: format!("{name}={}", if ok { "y" } else { "not set" }),
                fix: fix_opt(name),
            }),
            None => out.push(Finding {
                what,
                ok: true,
                required: false,
                detail: format!("{name}: kernel config not readable (/proc/config.gz, /boot/config-*); not checked"),
                fix: String::new(),
            }),
        }
    }

    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push(Finding {
        what: "BTF",
        ok: btf,
        required: false,
        detail: if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "no /sys/kernel/btf/vmlinux (wslnet works without it; debugging is harder)".into()
        },
        fix: fix_opt("CONFIG_DEBUG_INFO_BTF"),
    });

    let bpffs = crate::pins::is_bpffs(Path::new(crate::pins::BPFFS_ROOT));
    out.push(Finding {
        what: "bpffs",
        ok: bpffs,
        required: false,
        detail: if bpffs {
            "/sys/fs/bpf is mounted".into()
        } else {
            "/sys/fs/bpf is not a bpffs (the agent mounts it at start)".into()
        },
        fix: "mount -t bpf -o mode=0700 bpf /sys/fs/bpf".into(),
    });

    let tc = which_tc();
    out.push(Finding {
        what: "iproute2 (optional)",
        ok: tc,
        required: false,
        detail: if tc {
            "tc found (for inspecting attachments)".into()
        } else {
            "tc not found".into()
        },
        fix: "apt-get install iproute2".into(),
    });
    out
}

/// The running kernel's config as NAME -> value, from /proc/config.gz or /boot/config-<release>.
fn kernel_config(release: &str) -> Option<HashMap<String, String>> {
    let text = std::fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|f| {
            let mut s = String::new();
            flate2::read::GzDecoder::new(f)
                .read_to_string(&mut s)
                .ok()?;
            Some(s)
        })
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{release}")).ok())?;
    Some(parse_config(&text))
}

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Tries to create (and drop) a one-entry BPF array map.
fn bpf_syscall_works() -> Result<(), String> {
    match aya::maps::Array::<aya::maps::MapData, u32>::create(1, 0) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = format!("{e}");
            let errno = std::io::Error::last_os_error();
            Err(format!("creating a BPF map failed: {msg} ({errno})"))
        }
    }
}

fn which_tc() -> bool {
    ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"]
        .iter()
        .any(|p| Path::new(p).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_has_every_option_built_in() {
        let verdicts = judge_config(&parse_config(WSL_KERNEL_FRAGMENT));
        for v in verdicts {
            assert_eq!(v.state, OptionState::BuiltIn, "{}", v.name);
        }
    }
}
