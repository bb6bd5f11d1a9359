//! The command line: `run`, `probe`, `status`, `check`, `doctor`, `detach`. Parses it, checks
//! for root, starts the async runtime and hands the command to its module ([`crate::cmd`]);
//! maps errors to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    cmd::{
        check::CheckArgs, detach::DetachArgs, doctor::DoctorArgs, probe::ProbeArgs, run::RunArgs,
        status::StatusArgs,
    },
    config::ConfigError,
};

/// Ends path-MTU black holes (WSL2 behind a VPN, ZeroTier) by clamping the TCP MSS of SYNs to
/// the probed path MTU of each peer, without changing any interface MTU.
#[derive(Parser, Debug)]
#[command(
    name = "wslnet-agent",
    version,
    propagate_version = true,
    after_help = "Typical use:\n  \
        wslnet-agent check                          # is this kernel ready?\n  \
        wslnet-agent probe 10.8.0.1                 # what does the path carry?\n  \
        wslnet-agent run --target 10.8.0.1          # clamp eth0 and zt* to what paths carry\n  \
        wslnet-agent status                         # what is attached, clamped and counted\n  \
        wslnet-agent doctor                         # why does the network not work?\n\n\
        Logs: RUST_LOG=debug (tracing). Exit codes: 0 ok, 1 runtime error, 2 usage, \
        configuration or permission problem."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the datapath to matching interfaces, probe path MTUs, serve metrics.
    ///
    /// Runs until SIGINT/SIGTERM (then detaches, unless --keep-attached); SIGHUP reloads the
    /// config file. Flags override the config file.
    Run(RunArgs),
    /// Measure the path MTU to TARGET, to the byte, even when ICMP errors never come back.
    Probe(ProbeArgs),
    /// Show interfaces, clamp table, learned destinations and counters (from the pinned maps;
    /// works while `run` runs and after it stopped with --keep-attached).
    Status(StatusArgs),
    /// Check that the kernel and permissions allow wslnet to run, and say how to fix what is
    /// missing (including the config for a custom WSL kernel). With --kernel-config FILE, judge
    /// that kernel config alone (a custom WSL kernel's .config, before you build it).
    Check(CheckArgs),
    /// Walk the WSL network troubleshooting flow: environment, route, gateway, reach, DNS,
    /// proxy, the largest packet that passes, wslnet's clamp; say what to do about each.
    ///
    /// Runs without root where it can (the agent check and raw ICMP sockets need it).
    Doctor(DoctorArgs),
    /// Remove every attachment and pin left by `run` (TCX links, clsact filters and the qdiscs
    /// wslnet created, pinned maps). Stop `run` first (`systemctl stop wslnet-agent`): a
    /// running agent holds its TCX links and pins them again.
    Detach(DetachArgs),
}

/// Parses the command line, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    if cli.command.needs_root() && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "wslnet-agent: must run as root (BPF and network administration); try: sudo wslnet-agent ..."
        );
        return ExitCode::from(2);
    }
    // One thread: `run` drops capabilities once loaded (`privileges.rs`), and capabilities are
    // per thread; threads started after that (tokio's blocking pool) inherit the reduced sets.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wslnet-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(dispatch(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wslnet-agent: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

impl Command {
    /// Whether the command needs root: all but `check` and `doctor` (which run without it where
    /// they can).
    fn needs_root(&self) -> bool {
        !matches!(self, Command::Check(_) | Command::Doctor(_))
    }
}

/// Runs the command; its exit status, or the error that stopped it.
async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => args.run().await,
        Command::Probe(args) => args.run().await,
        Command::Status(args) => args.run(),
        Command::Check(args) => args.run(),
        Command::Doctor(args) => args.run().await,
        Command::Detach(args) => args.run().await,
    }
}

fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
