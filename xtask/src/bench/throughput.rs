//! Throughput (iperf3, both directions) and short-connection rate over veth pairs between
//! namespaces, for five configurations of the client side `a`, interleaved round by round in
//! one run (six configurations with `wslnet_1280`):
//!
//! - `none`: no program, no rule;
//! - `wslnet_1500`: the real agent (`run --iface eth0 --clamp 10.99.0.0/24=1500 --no-learn`),
//!   its program on ingress and egress of `a`'s `eth0`, with a clamp entry equal to the link
//!   MTU: every packet takes the full datapath (lookup, oversize check, SYN option walk) but the
//!   MSS stays 1460, so the figure is the datapath's own cost;
//! - `wslnet`: the same with `--clamp 10.99.0.0/24=1372`: MSS clamped to 1332 both ways (fewer
//!   bytes per segment: compare it with `nft_1332`, which clamps the same);
//! - `wslnet_1280`: the same with `--clamp 10.99.0.0/24=1280`: what a destination on a wide path
//!   carries until its search finishes (safe first contact: MSS 1240); compared with
//!   `wslnet_1500`, the cost of first contact;
//! - `nft_rt_mtu`: nftables `tcp flags syn tcp option maxseg size set rt mtu` in the output hook
//!   (the kernel refuses `rt mtu` in the input hook); the veth MTU is 1500, so nothing is
//!   lowered: this is the cost of the rule itself;
//! - `nft_1332`: nftables `tcp flags syn tcp option maxseg size set 1332` in the output and the
//!   input hook (clamps both ways, like wslnet).
//!
//! Each configuration has a namespace pair (a "bed") of its own, set up once and kept for the
//! whole section, so that switching configuration costs nothing and rounds can be short and
//! many: rounds on this shared machine drift by 10-40% within seconds, and only samples taken
//! close together compare well. A round runs iperf3 `a -> b` for every configuration (in an
//! order rotated each round), then iperf3 `b -> a` (`-R`), then the connection rate: client
//! threads inside `a` open TCP connections to a server thread inside `b` as fast as they can
//! and reset them (SO_LINGER 0, so no TIME_WAIT piles up): each connection is a SYN out of and
//! a SYN-ACK into `a`, the path wslnet rewrites. Every process and thread of the traffic
//! (iperf3 client and server, the connection threads, and so the softirq work of the veth
//! pair) is pinned to one CPU: the figures are what one CPU moves, the measure most sensitive
//! to per-packet cost, and placement across CPUs no longer varies from run to run.
//!
//! Ratios are paired within a round (to `none`, and wslnet to the nft rule doing the same),
//! then summarised by their median with a distribution-free 95% confidence interval.
//!
//! Finally, with the kernel's BPF run-time statistics enabled (`BPF_ENABLE_STATS`, only for
//! this last pass: they add two clock reads to every program run, which would tax wslnet alone
//! in the comparison), one more run per direction and wslnet configuration measures what the
//! programs cost on the real traffic: nanoseconds per packet and their share of the CPU.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wslnet_agent::pins::maps_dir;
use wslnet_common::map_names;
use wslnet_tests::{
    agent::{Agent, AgentOptions, Pair, RunFlag, status_counter},
    lab::VPN_MTU,
    netns::{Bpffs, Daemon, Netns, enter_netns, pin_thread, wait_until},
};

use super::{
    results::{
        AgainstNft, ConfigThroughput, DatapathCost, Evidence, FirstContactCost, ProgramCost,
        Ratios, RunRate, SectionRun, Throughput, Traffic, paired_ratio,
    },
    stats::round,
};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 7001;

/// How much to measure; the results keep it under these names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Settings {
    /// Rounds over all configurations.
    pub rounds: usize,
    /// Seconds of each iperf3 run.
    pub iperf_seconds: u32,
    /// Seconds of each connection-rate run.
    pub connection_seconds: f64,
    /// Client threads of the connection-rate run.
    pub connection_threads: usize,
}

impl super::Amount for Settings {
    fn quick() -> Self {
        Self {
            rounds: 2,
            iperf_seconds: 1,
            connection_seconds: 0.5,
            connection_threads: 2,
        }
    }

    fn full() -> Self {
        Self {
            // Many short rounds: on this shared machine throughput drifts by 10-40% within
            // seconds, so samples of the five configurations must be taken close together, and
            // the confidence interval of a median narrows with the number of rounds.
            rounds: 21,
            iperf_seconds: 1,
            connection_seconds: 1.0,
            connection_threads: 2,
        }
    }
}

/// A configuration of the client side (see the module docs); in the results as its
/// [`id`](Config::id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// No program, no rule.
    None,
    /// wslnet with a clamp entry of 1500 (the link MTU: MSS unchanged).
    Wslnet1500,
    /// wslnet with a clamp entry of 1372 (MSS 1332).
    Wslnet,
    /// wslnet with a clamp entry of 1280: the first-contact default (MSS 1240).
    Wslnet1280,
    /// nftables `maxseg size set rt mtu`, output hook.
    NftRtMtu,
    /// nftables `maxseg size set 1332`, output and input hooks.
    Nft1332,
}

impl Config {
    /// Every configuration, in the order of the results.
    pub const ALL: [Config; 6] = [
        Config::None,
        Config::Wslnet1500,
        Config::Wslnet,
        Config::Wslnet1280,
        Config::NftRtMtu,
        Config::Nft1332,
    ];

    /// Its name in the results (`wslnet_1500`).
    pub fn id(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Wslnet1500 => "wslnet_1500",
            Config::Wslnet => "wslnet",
            Config::Wslnet1280 => "wslnet_1280",
            Config::NftRtMtu => "nft_rt_mtu",
            Config::Nft1332 => "nft_1332",
        }
    }

    /// It in words.
    pub fn label(self) -> &'static str {
        match self {
            Config::None => "no program",
            Config::Wslnet1500 => "wslnet (ingress + egress, clamp entry 1500: MSS unchanged)",
            Config::Wslnet => "wslnet (ingress + egress, clamp 1372)",
            Config::Wslnet1280 => "wslnet (clamp 1280: first contact, MSS 1240)",
            Config::NftRtMtu => "nft maxseg size set rt mtu (output)",
            Config::Nft1332 => "nft maxseg size set 1332 (output + input)",
        }
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl serde::Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> serde::Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        Config::ALL
            .into_iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown configuration {id:?}")))
    }
}

/// What is installed for a configuration; removed on drop.
enum Installed {
    Nothing,
    /// The agent, then its bpffs (dropped in this order).
    Agent {
        agent: Box<Agent>,
        _fs: Bpffs,
    },
    Nft(String),
}

impl Installed {
    fn new(cfg: Config, pair: &Pair) -> Result<Self> {
        let nft = |body: &str| -> Result<Self> {
            let script = format!("nft -f - <<'EOF'\ntable inet wslnet_bench {{\n{body}\n}}\nEOF\n");
            pair.a
                .sh(&script)
                .context("installing the nftables rules")?;
            Ok(Installed::Nft(pair.a.name().to_string()))
        };
        match cfg {
            Config::None => Ok(Installed::Nothing),
            Config::Wslnet1500 | Config::Wslnet | Config::Wslnet1280 => {
                let fs = Bpffs::new()?;
                let mtu = match cfg {
                    Config::Wslnet => VPN_MTU,
                    Config::Wslnet1280 => 1280,
                    _ => 1500,
                };
                // The pair's IPv4 network (a /24).
                let net = IpNet::new(Pair::b4(), 24)?.trunc();
                let agent = AgentOptions::eth0()
                    .with(RunFlag::Clamp(net, mtu))
                    .with(RunFlag::NoLearn)
                    .start(&pair.a, &fs)?;
                Ok(Installed::Agent {
                    agent: Box::new(agent),
                    _fs: fs,
                })
            }
            Config::NftRtMtu => nft("chain out {
                   type filter hook output priority mangle; policy accept;
                   tcp flags syn tcp option maxseg size set rt mtu
                 }"),
            Config::Nft1332 => nft("chain out {
                   type filter hook output priority mangle; policy accept;
                   tcp flags syn tcp option maxseg size set 1332
                 }
                 chain in {
                   type filter hook input priority mangle; policy accept;
                   tcp flags syn tcp option maxseg size set 1332
                 }"),
        }
    }

    /// Evidence that the configuration was active (wslnet's counters).
    fn evidence(&self) -> Option<Evidence> {
        let Installed::Agent { agent, .. } = self else {
            return None;
        };
        Some(match agent.status() {
            Ok(st) => Evidence::Counters {
                egress_syn: status_counter(&st, "eth0", "egress/ipv4", "syn"),
                egress_mss_clamped: status_counter(&st, "eth0", "egress/ipv4", "mss_clamped"),
                ingress_mss_clamped: status_counter(&st, "eth0", "ingress/ipv4", "mss_clamped"),
            },
            Err(e) => Evidence::StatusError {
                status_error: format!("{e:#}"),
            },
        })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Installed::Nft(ns) = self {
            let _ = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "wslnet_bench",
                ])
                .status();
        }
    }
}

/// The accept-and-drop server of the connection-rate test, a thread inside `b`.
struct ConnServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    addr: SocketAddr,
    ns: String,
}

impl ConnServer {
    /// Starts the server thread inside `ns`, pinned to `cpu`.
    fn start(ns: &Netns, addr: SocketAddr, cpu: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (name, s) = (ns.name().to_string(), stop.clone());
        let thread = thread::spawn(move || {
            let listener = enter_netns(&name)
                .and_then(|()| pin_thread(cpu))
                .and_then(|()| TcpListener::bind(addr).with_context(|| format!("binding {addr}")));
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // A larger backlog than std's default, so bursts are not dropped.
            // SAFETY: listen(2) on a socket we own.
            unsafe { libc::listen(listener.as_raw_fd(), 4096) };
            while !s.load(Ordering::Relaxed) {
                let _ = listener.accept();
            }
        });
        rx.recv().context("connection server thread")??;
        Ok(Self {
            stop,
            thread: Some(thread),
            addr,
            ns: ns.name().to_string(),
        })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept() with one last connection from inside the namespace.
        let (ns, addr) = (self.ns.clone(), self.addr);
        let _ = thread::spawn(move || {
            if enter_netns(&ns).is_ok() {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            }
        })
        .join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Result of a connection-rate run.
struct ConnRate {
    per_sec: f64,
    failures: u64,
    /// TCP_MAXSEG of the first connection of the first thread (what the client may send).
    client_mss: Option<u32>,
}

/// Opens and resets connections from inside `ns` to `addr` for `secs` with `threads` threads,
/// pinned to `cpu`.
fn conn_rate(
    ns: &str,
    addr: SocketAddr,
    secs: f64,
    threads: usize,
    cpu: usize,
) -> Result<ConnRate> {
    let start_gate = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (ns, gate) = (ns.to_string(), start_gate.clone());
        handles.push(thread::spawn(move || -> Result<(u64, u64, Option<u32>)> {
            let entered = enter_netns(&ns).and_then(|()| pin_thread(cpu));
            gate.wait();
            entered?;
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let (mut ok, mut failed, mut mss) = (0u64, 0u64, None);
            while Instant::now() < deadline {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => {
                        let fd = s.as_raw_fd();
                        if t == 0 && mss.is_none() {
                            let mut v: libc::c_int = 0;
                            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                            // SAFETY: getsockopt into a c_int of the given length.
                            let r = unsafe {
                                libc::getsockopt(
                                    fd,
                                    libc::IPPROTO_TCP,
                                    libc::TCP_MAXSEG,
                                    (&mut v as *mut libc::c_int).cast(),
                                    &mut len,
                                )
                            };
                            if r == 0 {
                                mss = Some(v as u32);
                            }
                        }
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: setsockopt with a struct linger of its own size.
                        unsafe {
                            libc::setsockopt(
                                fd,
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&linger as *const libc::linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            )
                        };
                        ok += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            Ok((ok, failed, mss))
        }));
    }
    start_gate.wait();
    let started = Instant::now();
    let (mut ok, mut failed, mut mss) = (0, 0, None);
    for h in handles {
        let (o, f, m) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        ok += o;
        failed += f;
        mss = mss.or(m);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ConnRate {
        per_sec: ok as f64 / elapsed,
        failures: failed,
        client_mss: mss,
    })
}

/// One iperf3 run.
struct Iperf {
    /// Gbit/s received.
    gbit_s: f64,
    /// Seconds over which the bytes were received.
    seconds: f64,
    /// The MSS iperf3 reports for its connection.
    mss: Option<u64>,
}

/// One iperf3 run from `a` to `b` (from `b` to `a` with `reverse`), client and server pinned
/// to `cpu`.
fn iperf(pair: &Pair, secs: u32, reverse: bool, cpu: usize) -> Result<Iperf> {
    let mut cmd = pair.a.command("timeout");
    cmd.args([
        &(secs + 30).to_string(),
        "iperf3",
        "-c",
        Pair::B4,
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-A",
        &format!("{cpu},{cpu}"),
        "-J",
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().context("running iperf3")?;
    let report: IperfReport = super::stdout_json(&out, "iperf3")?;
    if let Some(e) = report.error {
        bail!("iperf3: {e}");
    }
    let received = report.end.sum_received;
    let bps = received
        .bits_per_second
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(Iperf {
        gbit_s: bps / 1e9,
        seconds: received.seconds.unwrap_or(secs as f64),
        mss: report.start.tcp_mss_default,
    })
}

/// What the bench reads of iperf3's `-J` report (absent: not reported).
#[derive(Deserialize)]
struct IperfReport {
    /// Why the run failed.
    error: Option<String>,
    #[serde(default)]
    start: IperfStart,
    #[serde(default)]
    end: IperfEnd,
}

/// iperf3's `start` object.
#[derive(Deserialize, Default)]
struct IperfStart {
    /// The MSS of the test connection, bytes.
    tcp_mss_default: Option<u64>,
}

/// iperf3's `end` object.
#[derive(Deserialize, Default)]
struct IperfEnd {
    #[serde(default)]
    sum_received: IperfSum,
}

/// iperf3's `end.sum_received`: what the receiver got.
#[derive(Deserialize, Default)]
struct IperfSum {
    /// Bits per second received.
    bits_per_second: Option<f64>,
    /// Seconds over which they were received.
    seconds: Option<f64>,
}

/// A configuration's namespace pair with everything it runs, for the whole section; torn down
/// on drop (servers, then the configuration, then the namespaces).
struct Bed {
    cfg: Config,
    conn_server: ConnServer,
    iperf_server: Daemon,
    installed: Installed,
    pair: Pair,
}

impl Bed {
    fn new(cfg: Config, cpu: usize) -> Result<Self> {
        let pair = Pair::new()?;
        for ns in [&pair.a, &pair.b] {
            ns.sh("sysctl -qw net.ipv4.ip_local_port_range='10000 65000'")?;
        }
        let installed =
            Installed::new(cfg, &pair).with_context(|| format!("setting up {}", cfg.id()))?;
        let iperf_server = pair.b.spawn(
            "iperf3",
            ["-s", "-B", Pair::B4, "-p", &IPERF_PORT.to_string()],
        )?;
        wait_until(Duration::from_secs(10), "iperf3 server", || {
            let out = pair
                .b
                .sh_output(&format!("ss -Hltn 'sport = :{IPERF_PORT}'"))
                .ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| format!("iperf3 server log: {}", iperf_server.log()))?;
        let conn_server = ConnServer::start(&pair.b, conn_addr(), cpu)?;
        Ok(Self {
            cfg,
            conn_server,
            iperf_server,
            installed,
            pair,
        })
    }

    fn conn_rate(&self, s: &Settings, secs: f64, cpu: usize) -> Result<ConnRate> {
        conn_rate(
            self.pair.a.name(),
            self.conn_server.addr,
            secs,
            s.connection_threads,
            cpu,
        )
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self
            .iperf_server
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    }
}

/// The connection-rate server's address inside every bed's `b`.
fn conn_addr() -> SocketAddr {
    SocketAddr::new(
        Pair::B4.parse().expect("Pair::B4 is an IPv4 address"),
        CONN_PORT,
    )
}

/// Run time (ns) and run count, summed, of the programs that use the map pinned at `map_pin`:
/// the two programs of one agent (any other wslnet agent on the machine has maps of its own).
fn prog_stats(map_pin: &Path) -> Result<(u64, u64)> {
    let map_id = aya::maps::MapInfo::from_pin(map_pin)
        .with_context(|| format!("reading the pinned map {}", map_pin.display()))?
        .id();
    let (mut ns, mut runs) = (0u64, 0u64);
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let uses_map = info
            .map_ids()
            .context("listing a program's maps")?
            .is_some_and(|ids| ids.contains(&map_id));
        if uses_map {
            ns += info.run_time().as_nanos() as u64;
            runs += info.run_count();
        }
    }
    Ok((ns, runs))
}

/// Per configuration, per round.
#[derive(Default, Clone)]
struct Samples {
    traffic: Traffic<Vec<f64>>,
    conn_failures: u64,
    client_mss: Option<u32>,
    iperf_mss: Option<u64>,
}

/// What a round measures, in this order, each for every configuration in turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    AToB,
    BToA,
    Connections,
}

/// wslnet against the nftables rule doing the same, like against like: no MSS lowered
/// (wslnet 1500 vs `rt mtu` on a 1500-byte link), and the same MSS lowered (1372 vs 1332).
const AGAINST_NFT: [(Config, Config); 2] = [
    (Config::Wslnet1500, Config::NftRtMtu),
    (Config::Wslnet, Config::Nft1332),
];

/// What safe first contact costs a destination on a wide path until its search finishes: the
/// first-contact clamp (1280) against the measured one (1500), paired per round.
const FIRST_CONTACT: (Config, Config) = (Config::Wslnet1280, Config::Wslnet1500);

/// Measures everything; returns the section `throughput`.
pub fn run(s: Settings) -> Result<Throughput> {
    let started = Instant::now();
    let cpu = super::measuring_cpu()?;
    let beds = Config::ALL
        .iter()
        .map(|&cfg| Bed::new(cfg, cpu))
        .collect::<Result<Vec<_>>>()?;
    // Warm-up (not recorded): ARP, caches, iperf3's first start, in every bed.
    for bed in &beds {
        iperf(&bed.pair, 1, false, cpu)?;
        bed.conn_rate(&s, 0.2, cpu)?;
    }

    let mut samples = vec![Samples::default(); beds.len()];
    for r in 0..s.rounds {
        for measure in [Measure::AToB, Measure::BToA, Measure::Connections] {
            for k in 0..beds.len() {
                let i = (k + r) % beds.len();
                let (bed, sm) = (&beds[i], &mut samples[i]);
                match measure {
                    Measure::AToB => {
                        let run = iperf(&bed.pair, s.iperf_seconds, false, cpu)?;
                        sm.traffic.gbit_s_a_to_b.push(run.gbit_s);
                        sm.iperf_mss = sm.iperf_mss.or(run.mss);
                    }
                    Measure::BToA => {
                        let run = iperf(&bed.pair, s.iperf_seconds, true, cpu)?;
                        sm.traffic.gbit_s_b_to_a.push(run.gbit_s);
                    }
                    Measure::Connections => {
                        let cr = bed.conn_rate(&s, s.connection_seconds, cpu)?;
                        sm.traffic.connections_per_s.push(cr.per_sec);
                        sm.conn_failures += cr.failures;
                        sm.client_mss = sm.client_mss.or(cr.client_mss);
                    }
                }
            }
        }
        eprintln!("  round {} of {}", r + 1, s.rounds);
    }
    let datapath_cost = datapath_cost(&beds, &s, cpu)?;

    let of = |cfg: Config| &samples[Config::ALL.iter().position(|&c| c == cfg).unwrap()].traffic;
    let base = of(Config::None);
    let configs = beds
        .iter()
        .zip(&samples)
        .map(|(bed, sm)| ConfigThroughput {
            config: bed.cfg.into(),
            client_mss: sm.client_mss,
            iperf3_tcp_mss_default: sm.iperf_mss,
            traffic: sm.traffic.summary(),
            connection_failures: sm.conn_failures,
            vs_none: Ratios::between(&sm.traffic, base),
            per_round: sm.traffic.rounded(),
            evidence: bed.installed.evidence(),
        })
        .collect();
    let against_nft = AGAINST_NFT
        .iter()
        .map(|&(ours, theirs)| AgainstNft {
            ours,
            theirs,
            ratio: Ratios::between(of(ours), of(theirs)),
        })
        .collect();
    let first_contact = {
        let (fc, measured) = (of(FIRST_CONTACT.0), of(FIRST_CONTACT.1));
        FirstContactCost {
            first_contact: FIRST_CONTACT.0,
            measured: FIRST_CONTACT.1,
            ratio_a_to_b: paired_ratio(&fc.gbit_s_a_to_b, &measured.gbit_s_a_to_b),
            ratio_b_to_a: paired_ratio(&fc.gbit_s_b_to_a, &measured.gbit_s_b_to_a),
        }
    };
    drop(beds);
    Ok(Throughput {
        run: SectionRun::since(
            started,
            "one veth pair between two namespaces per configuration, all set up once; per round iperf3 -t N -J a->b for every configuration, then with -R (b->a), then the connection rate (client threads in a, connect + SO_LINGER 0 reset, accept-and-drop server thread in b); order rotated per round; all traffic pinned to one CPU; ratios paired per round, median with a distribution-free 95% CI",
        ),
        settings: s,
        cpu,
        configs,
        against_nft: Some(against_nft),
        first_contact_cost: Some(first_contact),
        datapath_cost: Some(datapath_cost),
    })
}

/// What wslnet's programs cost on real traffic: one more iperf3 run per direction and one
/// connection-rate run of each wslnet bed, with the kernel's BPF run-time statistics enabled
/// for this pass only (they add two clock reads to every program run).
fn datapath_cost(beds: &[Bed], s: &Settings, cpu: usize) -> Result<Vec<DatapathCost>> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS, Linux >= 5.8)")?;
    let cost = |before: (u64, u64), after: (u64, u64), seconds: f64, rate| {
        let (ns, runs) = (after.0 - before.0, after.1 - before.1);
        ProgramCost {
            program_runs: runs,
            program_ns: ns,
            ns_per_run: round(ns as f64 / runs.max(1) as f64, 1),
            runs_per_s: round(runs as f64 / seconds, 0),
            cpu_share: round(ns as f64 / (seconds * 1e9), 5),
            rate,
        }
    };
    let mut rows = Vec::new();
    for bed in beds {
        let Installed::Agent { agent, .. } = &bed.installed else {
            continue;
        };
        let counters = maps_dir(Path::new(&agent.pin_dir)).join(map_names::COUNTERS);
        let stats = || prog_stats(&counters);
        let iperf_cost = |reverse| -> Result<ProgramCost> {
            let before = stats()?;
            let run = iperf(&bed.pair, s.iperf_seconds.max(2), reverse, cpu)?;
            let gbit_s = round(run.gbit_s, 2);
            Ok(cost(
                before,
                stats()?,
                run.seconds,
                RunRate::Iperf { gbit_s },
            ))
        };
        let (a_to_b, b_to_a) = (iperf_cost(false)?, iperf_cost(true)?);
        let before = stats()?;
        let t = Instant::now();
        let cr = bed.conn_rate(s, s.connection_seconds, cpu)?;
        let connections_per_s = round(cr.per_sec, 0);
        rows.push(DatapathCost {
            config: bed.cfg.into(),
            a_to_b,
            b_to_a,
            connections: cost(
                before,
                stats()?,
                t.elapsed().as_secs_f64(),
                RunRate::Connections { connections_per_s },
            ),
        });
    }
    Ok(rows)
}
