//! `cargo xtask bench [--quick]`: wslnet's benchmarks, every figure measured side by side with
//! its baseline in one run on this machine, written to `bench/results.json` and
//! `bench/RESULTS.md`.
//!
//! - [`perpacket`]: datapath ns/packet under `BPF_PROG_TEST_RUN` against an empty tc program.
//! - [`throughput`]: iperf3 (both directions) and short-connection rate over a veth pair between
//!   two namespaces: no program, wslnet, nftables `maxseg size set rt mtu`, nftables
//!   `maxseg size set 1332`, interleaved round by round.
//! - [`convergence`]: the prober's time and probes to the exact MTU in the black-hole lab, and
//!   Linux's `tcp_mtu_probing=1` on a 256 KB download through the same black hole.
//! - [`footprint`]: agent RSS and CPU idle and with 10000 learned destinations.
//! - [`rescue`]: what a reflected oversize packet costs the datapath; first SYN to measured
//!   clamp; a path that shrinks unseen to its first symptom and new clamp, a download across it.
//!
//! Nothing here asserts on timing: figures are reported, with the targets they are compared
//! to. Everything runs in namespaces and a private bpffs created (and removed) by the bench.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::support::{cargo, require_root, step, target_dir, workspace_root};

mod bpf;
mod convergence;
mod footprint;
mod perpacket;
mod report;
mod rescue;
mod stats;
mod throughput;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Fewer rounds and shorter runs (about 3 minutes instead of about 10).
    #[arg(long)]
    pub quick: bool,
    /// Run only these sections (repeatable): per-packet, throughput, convergence, footprint,
    /// rescue.
    #[arg(long = "only", value_name = "SECTION")]
    pub only: Vec<String>,
    /// Directory for results.json and RESULTS.md [default: bench/ in the workspace].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Measure nothing: render RESULTS.md again from the existing results.json.
    #[arg(long)]
    pub report_only: bool,
}

/// The sections, in the order they run.
const SECTIONS: [&str; 5] = [
    "per-packet",
    "throughput",
    "convergence",
    "footprint",
    "rescue",
];

fn wants(args: &BenchArgs, section: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|s| s == section)
}

/// Runs the benchmarks and writes the results.
pub fn run(args: BenchArgs) -> Result<()> {
    require_root("the benchmarks load BPF programs and create network namespaces")?;
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown section {s:?} ({})", SECTIONS.join(", "));
        }
    }
    let root = workspace_root();
    let out_dir = args.out_dir.clone().unwrap_or_else(|| root.join("bench"));
    if args.report_only {
        let json_path = out_dir.join("results.json");
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let results: Value = serde_json::from_str(&text).context("parsing results.json")?;
        let md_path = out_dir.join("RESULTS.md");
        std::fs::write(&md_path, report::markdown(&results))
            .with_context(|| format!("writing {}", md_path.display()))?;
        println!("wrote {}", md_path.display());
        return Ok(());
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let agent = build_release_agent()?;
    // SAFETY: no other thread exists yet; the test support crate reads this variable to find
    // the agent binary (the release build is the one measured).
    unsafe { std::env::set_var("WSLNET_AGENT_BIN", &agent) };
    check_tools()?;

    let started = Instant::now();
    let mut results = json!({
        "schema": 1,
        "quick": args.quick,
        "machine": machine_info(),
        "started_utc": sh_out("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "agent_binary": agent.display().to_string(),
    });
    let load_before = sh_out("cat /proc/loadavg");
    if wants(&args, "per-packet") {
        step("bench: per-packet cost (BPF_PROG_TEST_RUN)");
        results["per_packet"] = perpacket::run(if args.quick {
            perpacket::Settings {
                repeat: 1_000_000,
                rounds: 5,
                single_samples: 5_000,
            }
        } else {
            perpacket::Settings {
                repeat: 1_000_000,
                // The host's speed drifts by 10-20% within minutes: the median of many short
                // interleaved rounds follows it better than a few long ones.
                rounds: 51,
                single_samples: 20_000,
            }
        })?;
    }
    if wants(&args, "throughput") {
        step("bench: throughput and connection rate over veth (iperf3, TCP connect loop)");
        results["throughput"] = throughput::run(if args.quick {
            throughput::Settings::quick()
        } else {
            throughput::Settings::full()
        })?;
    }
    if wants(&args, "convergence") {
        step("bench: probe convergence in the black-hole lab");
        results["convergence"] = convergence::run(if args.quick {
            convergence::Settings::quick()
        } else {
            convergence::Settings::full()
        })?;
    }
    if wants(&args, "footprint") {
        step("bench: agent footprint (RSS, CPU)");
        results["footprint"] = footprint::run(if args.quick {
            footprint::Settings::quick()
        } else {
            footprint::Settings::full()
        })?;
    }
    if wants(&args, "rescue") {
        step(
            "bench: reaction and rescue (reflection cost, first contact, a shrink under a download)",
        );
        results["rescue"] = rescue::run(if args.quick {
            rescue::Settings::quick()
        } else {
            rescue::Settings::full()
        })?;
    }
    results["load_average"] = json!({"before": load_before, "after": sh_out("cat /proc/loadavg")});
    results["seconds"] = stats::round(started.elapsed().as_secs_f64(), 1).into();

    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md = report::markdown(&results);
    let md_path = out_dir.join("RESULTS.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// Builds the release agent (the binary measured) and returns its path.
fn build_release_agent() -> Result<PathBuf> {
    step("bench: cargo build --release -p wslnet-agent");
    cargo(&["build", "--release", "-p", "wslnet-agent"])?;
    Ok(target_dir().join("release").join("wslnet-agent"))
}

fn check_tools() -> Result<()> {
    for tool in ["iperf3", "nft", "ip", "curl", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is missing: apt-get install iperf3 nftables iproute2 curl python3");
        }
    }
    Ok(())
}

/// Output of a shell command, trimmed ("" on failure).
pub(crate) fn sh_out(script: &str) -> String {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_info() -> Value {
    json!({
        "kernel": sh_out("uname -r"),
        "kernel_version": sh_out("uname -v"),
        "cpu": sh_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
        "cpus": sh_out("nproc"),
        "memory": sh_out("grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2-"),
        "iperf3": sh_out("iperf3 --version | head -1"),
        "nft": sh_out("nft --version"),
        "rustc": sh_out("rustc --version"),
    })
}

/// The CPU the measurements are pinned to (the per-packet runs, all throughput traffic): the
/// highest one this process may run on (CPU 0 tends to take more of the machine's own
/// interrupts).
pub(crate) fn measuring_cpu() -> Result<usize> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity (pid 0: this thread)
    // fills the set we own, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
            .context("this process may run on no CPU")
    }
}
