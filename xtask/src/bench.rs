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
//! Each section returns its struct of [`results`], the document written to results.json;
//! [`report`] renders RESULTS.md from it (`--report-only`: from the results.json on disk).
//!
//! Nothing here asserts on timing: figures are reported, with the targets they are compared
//! to. Everything runs in namespaces and a private bpffs created (and removed) by the bench.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum as _;
use serde::de::DeserializeOwned;

use crate::support::{cargo, require_root, step, target_dir, workspace_root};

use self::results::{LoadAverage, Machine, Results};

mod bpf;
mod convergence;
mod footprint;
mod perpacket;
mod report;
mod rescue;
mod results;
mod stats;
mod throughput;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Fewer rounds and shorter runs (about 3 minutes instead of about 10).
    #[arg(long)]
    pub quick: bool,
    /// Run only these sections (repeatable).
    #[arg(long, value_name = "SECTION")]
    pub only: Vec<Section>,
    /// Directory for results.json and RESULTS.md.
    #[arg(long, value_name = "DIR", default_value_os_t = workspace_root().join("bench"))]
    pub out_dir: PathBuf,
    /// Measure nothing: render RESULTS.md again from the existing results.json.
    #[arg(long)]
    pub report_only: bool,
}

/// A section of the bench; they run in this order.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Datapath ns/packet under BPF_PROG_TEST_RUN.
    PerPacket,
    /// iperf3 and connection rate over veth, against nftables.
    Throughput,
    /// Probe convergence in the black-hole lab.
    Convergence,
    /// Agent RSS and CPU.
    Footprint,
    /// Reflection cost, first contact, a path that shrinks under a download.
    Rescue,
}

impl Section {
    /// What the bench says when it starts the section.
    fn title(self) -> &'static str {
        match self {
            Section::PerPacket => "bench: per-packet cost (BPF_PROG_TEST_RUN)",
            Section::Throughput => {
                "bench: throughput and connection rate over veth (iperf3, TCP connect loop)"
            }
            Section::Convergence => "bench: probe convergence in the black-hole lab",
            Section::Footprint => "bench: agent footprint (RSS, CPU)",
            Section::Rescue => {
                "bench: reaction and rescue (reflection cost, first contact, a shrink under a download)"
            }
        }
    }
}

/// How much a section measures: its settings for `--quick` and for the full run.
trait Amount: Sized {
    /// For `--quick`.
    fn quick() -> Self;
    /// The full run.
    fn full() -> Self;
    /// The one `args` asks for.
    fn of(args: &BenchArgs) -> Self {
        if args.quick {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

/// Writes `text` to `path`.
fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the benchmarks and writes the results.
pub fn run(args: BenchArgs) -> Result<()> {
    require_root("the benchmarks load BPF programs and create network namespaces")?;
    let out_dir = &args.out_dir;
    let json_path = out_dir.join("results.json");
    let md_path = out_dir.join("RESULTS.md");
    if args.report_only {
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let results: Results = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        write(&md_path, &report::markdown(&results))?;
        println!("wrote {}", md_path.display());
        return Ok(());
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let agent = build_release_agent()?;
    // SAFETY: no other thread exists yet; the test support crate reads this variable to find
    // the agent binary (the release build is the one measured).
    unsafe { std::env::set_var("WSLNET_AGENT_BIN", &agent) };
    check_tools()?;

    let started = Instant::now();
    let mut results = Results {
        schema: 1,
        quick: args.quick,
        machine: machine_info(),
        started_utc: sh_out("date -u +%Y-%m-%dT%H:%M:%SZ"),
        agent_binary: agent.display().to_string(),
        load_average: LoadAverage {
            before: sh_out("cat /proc/loadavg"),
            after: String::new(),
        },
        seconds: f64::NAN,
        per_packet: None,
        throughput: None,
        convergence: None,
        footprint: None,
        rescue: None,
    };
    for &section in Section::value_variants() {
        if !args.only.is_empty() && !args.only.contains(&section) {
            continue;
        }
        step(section.title());
        match section {
            Section::PerPacket => results.per_packet = Some(perpacket::run(Amount::of(&args))?),
            Section::Throughput => results.throughput = Some(throughput::run(Amount::of(&args))?),
            Section::Convergence => {
                results.convergence = Some(convergence::run(Amount::of(&args))?)
            }
            Section::Footprint => results.footprint = Some(footprint::run(Amount::of(&args))?),
            Section::Rescue => results.rescue = Some(rescue::run(Amount::of(&args))?),
        }
    }
    results.load_average.after = sh_out("cat /proc/loadavg");
    results.seconds = stats::seconds_since(started);

    // Through a Value, whose map sorts the keys: results.json has always had them sorted.
    let doc = serde_json::to_value(&results).context("serialising the results")?;
    write(&json_path, &(serde_json::to_string_pretty(&doc)? + "\n"))?;
    let md = report::markdown(&results);
    write(&md_path, &md)?;
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

/// The JSON a command printed on its stdout, read as `T`; the error names the command (`what`)
/// with its exit status and stderr.
pub(crate) fn stdout_json<T: DeserializeOwned>(out: &Output, what: &str) -> Result<T> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what} printed no JSON the bench reads ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn machine_info() -> Machine {
    Machine {
        kernel: sh_out("uname -r"),
        kernel_version: sh_out("uname -v"),
        cpu: sh_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
        cpus: sh_out("nproc"),
        memory: sh_out("grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2-"),
        iperf3: sh_out("iperf3 --version | head -1"),
        nft: sh_out("nft --version"),
        rustc: sh_out("rustc --version"),
    }
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
