//! Developer entry points, run as `cargo xtask <command>` (README's `./x.sh <command>` installs
//! the toolchain first, then runs this).

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod package;
mod vm;

/// wslnet's developer tasks.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install what the build needs (Debian packages, pinned toolchain, bpf-linker).
    Setup,
    /// Build the agent (with its datapath), debug and release.
    Build,
    /// The whole test suite: fmt, clippy, unit tests, BPF_PROG_TEST_RUN and namespace
    /// integration tests, a 100000-packet differential fuzz run, the Debian package (built and
    /// checked as `package` does) and the Linux 6.1 VM run. Needs root.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the Linux 6.1 VM run (`cargo xtask vm-test`).
        #[arg(long)]
        no_vm: bool,
        /// Only run tests whose name contains this (passed to cargo test).
        filter: Option<String>,
    },
    /// The black-hole demo: real clients stall, then pass once wslnet runs. In private
    /// network namespaces; needs root.
    Demo(demo::DemoArgs),
    /// Differential fuzzing of the datapath against the reference model.
    Fuzz(fuzz::FuzzArgs),
    /// The datapath and agent tests on Debian's Linux 6.1 (clsact path) in a qemu VM. Needs root.
    VmTest(vm::VmTestArgs),
    /// Benchmarks: datapath ns/packet, throughput vs nftables, probe convergence, footprint.
    Bench(bench::BenchArgs),
    /// The Debian package, target/debian/wslnet-agent_<version>_amd64.deb (cargo-deb), checked:
    /// lintian, its contents, `dpkg -i` in a throwaway root. Needs root.
    Package,
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\x1b[31merror:\x1b[0m {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(command: Task) -> Result<()> {
    match command {
        Task::Setup => run(Command::new("bash").arg("scripts/bootstrap.sh")),
        Task::Build => {
            cargo(&["build", "--workspace"])?;
            cargo(&["build", "--release", "-p", "wslnet-agent"])
        }
        Task::Test {
            no_lint,
            no_vm,
            filter,
        } => test(no_lint, no_vm, filter),
        Task::Demo(args) => {
            require_root()?;
            step("build the agent");
            cargo(&["build", "-p", "wslnet-agent"])?;
            demo::run(args, &target_dir().join("debug/wslnet-agent"))
        }
        Task::Fuzz(args) => fuzz::run(args),
        Task::VmTest(args) => vm::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Package => package::run(),
    }
}

fn test(no_lint: bool, no_vm: bool, filter: Option<String>) -> Result<()> {
    require_root()?;
    if !no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--check"])?;
        step("cargo clippy --all-targets -- -D warnings");
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    step("build the agent (the integration tests run the real binary)");
    cargo(&["build", "-p", "wslnet-agent"])?;
    step("cargo test (unit, BPF_PROG_TEST_RUN, namespaces)");
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if let Some(f) = filter.as_deref() {
        args.push(f);
    }
    cargo(&args)?;
    if filter.is_none() {
        step("differential fuzz: 100000 packets through the real program and the model");
        fuzz::run(fuzz::FuzzArgs {
            packets: 100_000,
            seed: None,
        })?;
    }
    if filter.is_none() {
        step("the Debian package: cargo-deb, lintian, contents, dpkg -i in a throwaway root");
        package::run()?;
    }
    if filter.is_none() && !no_vm {
        step("the datapath and agent tests on Debian's Linux 6.1 in a VM (clsact path)");
        /// `vm-test` with its defaults.
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            args: vm::VmTestArgs,
        }
        vm::run(Defaults::parse_from(["vm-test"]).args)?;
    }
    step("all tests passed");
    Ok(())
}

fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("the test suite loads BPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

/// The cargo target directory (CARGO_TARGET_DIR, else `target/` at the workspace root).
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn step(what: &str) {
    eprintln!("\n\x1b[1m==> {what}\x1b[0m");
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args);
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
