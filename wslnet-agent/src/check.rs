//! `check`: is this kernel, and this user, able to run wslnet? Each missing piece comes with the
//! kernel config option or the command that fixes it.

use std::{collections::HashMap, io::Read as _, path::Path, process::ExitCode};

/// Kernel config a custom WSL kernel needs (append to the config, rebuild, point .wslconfig's
/// `kernel=` at the result).
pub const WSL_KERNEL_FRAGMENT: &str = "\
CONFIG_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_BPF_JIT=y
CONFIG_NET_CLS_ACT=y
CONFIG_NET_SCH_INGRESS=y
CONFIG_NET_CLS_BPF=y
CONFIG_DEBUG_INFO_BTF=y
";

struct Finding {
    what: &'static str,
    ok: bool,
    required: bool,
    detail: String,
    fix: String,
}

/// Runs every check and prints the report; exit 0 when wslnet can run, 2 otherwise.
pub fn run() -> ExitCode {
    let findings = checks();
    let mut blocking = false;
    for f in &findings {
        let mark = match (f.ok, f.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("[{mark}] {:<28} {}", f.what, f.detail);
        if !f.ok {
            println!("       fix: {}", f.fix);
            blocking |= f.required;
        }
    }
    if findings
        .iter()
        .any(|f| !f.ok && f.fix.contains("kernel config"))
    {
        println!(
            "\nFor a custom WSL kernel (build from microsoft/WSL2-Linux-Kernel, then set \
             kernel=<path> under [wsl2] in %UserProfile%\\.wslconfig), make sure its config has:\n{WSL_KERNEL_FRAGMENT}"
        );
    }
    if blocking {
        println!("\nwslnet cannot run here yet: fix the FAIL lines above.");
        ExitCode::from(2)
    } else {
        println!("\nwslnet can run here.");
        ExitCode::SUCCESS
    }
}

fn checks() -> Vec<Finding> {
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

    for (name, what, required) in [
        ("CONFIG_NET_SCH_INGRESS", "sch_ingress/clsact", !tcx),
        ("CONFIG_NET_CLS_BPF", "cls_bpf", !tcx),
        ("CONFIG_NET_CLS_ACT", "tc actions", !tcx),
        ("CONFIG_BPF_JIT", "BPF JIT", false),
    ] {
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

    let bpffs = crate::maps::is_bpffs(Path::new("/sys/fs/bpf"));
    out.push(Finding {
        what: "bpffs",
        ok: bpffs,
        required: false,
        detail: if bpffs {
            "/sys/fs/bpf is mounted".into()
        } else {
            "/sys/fs/bpf is not a bpffs (the agent mounts it at start)".into()
        },
        fix: "mount -t bpf bpf /sys/fs/bpf".into(),
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
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
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
