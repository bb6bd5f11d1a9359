//! The command line: `run`, `probe`, `status`, `check`, `doctor`, `detach`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{AttachMode, Clamp, Config, ConfigError, DEFAULT_CONFIG_PATH},
    maps::DEFAULT_PIN_DIR,
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
    Probe(crate::prober::ProbeArgs),
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
    Doctor(crate::doctor::DoctorArgs),
    /// Remove every attachment and pin left by `run` (TCX links, clsact filters and the qdiscs
    /// wslnet created, pinned maps). Stop `run` first (`systemctl stop wslnet-agent`): a
    /// running agent holds its TCX links and pins them again.
    Detach(DetachArgs),
}

/// `run` flags.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML config file [default: /etc/wslnet/wslnet.toml, used only if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface glob to manage; repeat for several (replaces the config's list)
    /// [default: eth0 and zt*].
    #[arg(long = "iface", value_name = "GLOB")]
    pub ifaces: Vec<String>,
    /// Destination whose path MTU is measured at start and kept measured; repeatable.
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<std::net::IpAddr>,
    /// Static path MTU for a prefix, e.g. 10.8.0.0/16=1372; repeatable (replaces the config's
    /// [[clamp]] list).
    #[arg(long = "clamp", value_name = "CIDR=MTU")]
    pub clamps: Vec<Clamp>,
    /// Prometheus endpoint address [default: 127.0.0.1:9786].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/wslnet].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// How to attach: auto (TCX on Linux >= 6.6, else clsact), tcx, clsact.
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach_mode: Option<AttachMode>,
    /// Leave programs attached and pins in place on exit (for restarts and upgrades).
    #[arg(long)]
    pub keep_attached: bool,
    /// Do not probe destinations learned from outgoing connections (only --target ones).
    #[arg(long)]
    pub no_learn: bool,
    /// Seconds between re-checks of measured path MTUs [default: 30].
    #[arg(long, value_name = "SECS")]
    pub recheck_interval: Option<u64>,
    /// TCP port to probe every destination with (e.g. 443): for those that drop ICMP echo, and
    /// to check what echo measured. Without it each learned destination is checked at the port
    /// of its first connection.
    #[arg(long, value_name = "PORT")]
    pub probe_tcp_port: Option<u16>,
    /// Trust ICMP echo alone: do not check its result with TCP segments to the destination's
    /// port (paths that carry echo of a size TCP does not get through then stall).
    #[arg(long)]
    pub no_tcp_check: bool,
    /// Safe first contact: path MTU that destinations not yet measured are clamped to from
    /// their first SYN, until measured; the smallest path measured through an interface is used
    /// there when lower. 0 turns it off (a first connection may then stall) [default: 1280].
    #[arg(long, value_name = "BYTES")]
    pub first_contact_mtu: Option<u16>,
    /// React to symptoms: a local TCP connection waiting this long (ms) for an answer after
    /// sending, or retransmitting, re-measures its destination at once. 0 turns it off (paths
    /// that shrink are then found by the periodic re-check) [default: 1000].
    #[arg(long, value_name = "MS")]
    pub stall_after_ms: Option<u64>,
    /// Do not rescue running connections: oversize packets to destinations with a measured
    /// path MTU are left to the path (which drops them) instead of being answered with the ICMP
    /// error that makes their sender send smaller.
    #[arg(long)]
    pub no_reflect: bool,
    /// Every egress packet on the managed interfaces leaves with this DSCP (0-63, ECN kept):
    /// for NATs and VPN clients that drop marked packets, such as OpenSSH's default IPQoS
    /// af21 cs1 behind VMware's NAT [default: marks left alone].
    #[arg(long, value_name = "0-63")]
    pub set_dscp: Option<u8>,
    /// Most ICMP errors a second about one destination [default: 10].
    #[arg(long, value_name = "N")]
    pub reflect_per_sec: Option<u32>,
    /// Datapath log level forwarded to the agent's log (off, error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    pub datapath_log: Option<String>,
}

impl RunArgs {
    /// Applies these flags on top of a config.
    pub fn apply(&self, cfg: &mut Config) {
        if !self.ifaces.is_empty() {
            cfg.interfaces = self.ifaces.clone();
        }
        cfg.targets.extend(self.targets.iter().copied());
        cfg.targets.dedup();
        if !self.clamps.is_empty() {
            cfg.clamp = self.clamps.clone();
        }
        if let Some(a) = self.metrics_addr {
            cfg.metrics_addr = a;
        }
        if let Some(p) = &self.pin_dir {
            cfg.pin_dir = p.clone();
        }
        if let Some(m) = self.attach_mode {
            cfg.attach_mode = m;
        }
        if self.keep_attached {
            cfg.keep_attached_on_exit = true;
        }
        if self.no_learn {
            cfg.probe.learn = false;
        }
        if let Some(s) = self.recheck_interval {
            cfg.probe.recheck_interval_secs = s;
        }
        if let Some(p) = self.probe_tcp_port {
            cfg.probe.tcp_port = Some(p);
        }
        if self.no_tcp_check {
            cfg.probe.tcp_check = false;
        }
        if let Some(b) = self.first_contact_mtu {
            cfg.probe.first_contact_mtu = b;
        }
        if let Some(ms) = self.stall_after_ms {
            cfg.probe.stall_after_ms = ms;
        }
        if self.no_reflect {
            cfg.reflect = false;
        }
        if let Some(d) = self.set_dscp {
            cfg.set_dscp = Some(d);
        }
        if let Some(n) = self.reflect_per_sec {
            cfg.reflect_per_sec = n;
        }
        if let Some(l) = &self.datapath_log {
            cfg.datapath_log = l.clone();
        }
    }
}

/// `status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// `check` flags.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Judge this kernel config file (a `.config`, or Microsoft's config-wsl) instead of the
    /// running system: whether it has everything the datapath needs built in. Exit 0 when it
    /// does, 1 when something is missing (named, with the line to add).
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<PathBuf>,
}

/// `detach` flags.
#[derive(Args, Debug)]
pub struct DetachArgs {
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Parses the command line, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let needs_root = !matches!(cli.command, Command::Check(_) | Command::Doctor(_));
    if needs_root && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "wslnet-agent: must run as root (BPF and network administration); try: sudo wslnet-agent ..."
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let explicit = args.config.is_some();
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let source = crate::service::ConfigSource {
                path,
                explicit,
                overrides: Box::new(move |cfg| args.apply(cfg)),
            };
            crate::service::run(source).await?;
        }
        Command::Probe(args) => crate::prober::run_cli(args).await?,
        Command::Status(args) => crate::status::run(&args.pin_dir, args.json)?,
        Command::Check(args) => {
            return Ok(match args.kernel_config {
                Some(path) => crate::check::run_kernel_config(&path),
                None => crate::check::run(),
            });
        }
        Command::Doctor(args) => return Ok(crate::doctor::run(args).await),
        Command::Detach(args) => crate::status::detach_all(&args.pin_dir).await?,
    }
    Ok(ExitCode::SUCCESS)
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
