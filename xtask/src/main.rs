//! Developer entry points, run as `cargo xtask <command>` (README's `./x.sh <command>` installs
//! the toolchain first, then runs this).

use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::support::{cargo, require_root, step, target_dir};

mod bench;
mod demo;
mod fuzz;
mod package;
mod support;
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
    /// checked as `package` does) and the VM runs on Linux 5.10, 6.1 and 6.12. Needs root.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the VM runs (`cargo xtask vm-test`).
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
    /// The datapath and agent tests on Debian's Linux 5.10, 6.1 (clsact) and 6.12 (TCX), each in
    /// a qemu VM. Needs root.
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
        Task::Setup => support::run(
            Command::new("bash")
                .arg("scripts/bootstrap.sh")
                .current_dir(support::workspace_root()),
            "scripts/bootstrap.sh",
        ),
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
            require_root("the demo creates network namespaces and loads BPF programs")?;
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
    require_root("the test suite loads BPF programs and creates network namespaces")?;
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
    let vm_args = vm::VmTestArgs::defaults();
    let vm = filter.is_none() && !no_vm;
    // The VM step's downloads (kernels, busybox: network and disk) overlap the host tests.
    let prefetch = vm.then(|| {
        let args = vm_args.clone();
        std::thread::spawn(move || vm::prefetch(&args))
    });
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
    if let Some(prefetch) = prefetch {
        match prefetch.join() {
            Ok(Ok(())) => {}
            // The VM step fetches again and says what fails.
            Ok(Err(e)) => eprintln!("fetching for the VMs ahead of time failed: {e:#}"),
            Err(_) => eprintln!("fetching for the VMs ahead of time panicked"),
        }
    }
    if vm {
        step("the datapath and agent tests on Debian's Linux 5.10, 6.1 and 6.12, in VMs");
        vm::run(vm_args)?;
    }
    step("all tests passed");
    Ok(())
}
