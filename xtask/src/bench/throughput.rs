//! Throughput (iperf3, both directions) and short-connection rate over a veth pair between two
//! namespaces, for five configurations of the client side `a`, interleaved round by round in
//! one run:
//!
//! - `none`: no program, no rule;
//! - `wslnet_1500`: the real agent (`run --iface eth0 --clamp 10.99.0.0/24=1500 --no-learn`),
//!   its program on ingress and egress of `a`'s `eth0`, with a clamp entry equal to the link
//!   MTU: every packet takes the full datapath (lookup, oversize check, SYN option walk) but the
//!   MSS stays 1460, so the figure is the datapath's own cost;
//! - `wslnet`: the same with `--clamp 10.99.0.0/24=1372`: MSS clamped to 1332 both ways (fewer
//!   bytes per segment: compare it with `nft_1332`, which clamps the same);
//! - `nft_rt_mtu`: nftables `tcp flags syn tcp option maxseg size set rt mtu` in the output hook
//!   (the kernel refuses `rt mtu` in the input hook); the veth MTU is 1500, so nothing is
//!   lowered: this is the cost of the rule itself;
//! - `nft_1332`: nftables `tcp flags syn tcp option maxseg size set 1332` in the output and the
//!   input hook (clamps both ways, like wslnet).
//!
//! Each round runs every configuration (in a rotated order): iperf3 `a -> b`, iperf3 `b -> a`
//! (`-R`), then the connection rate: client threads inside `a` open TCP connections to a server
//! thread inside `b` as fast as they can and reset them (SO_LINGER 0, so no TIME_WAIT piles up):
//! each connection is a SYN out of and a SYN-ACK into `a`, the path wslnet rewrites. Ratios to
//! `none` are taken within a round, then the median over rounds is reported.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use wslnet_tests::{
    agent::{Agent, Pair, status_counter},
    netns::{Bpffs, Daemon, Netns, wait_until},
};

use super::stats::{Summary, round};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 7001;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rounds over all configurations.
    pub rounds: usize,
    /// Seconds of each iperf3 run.
    pub iperf_secs: u32,
    /// Seconds of each connection-rate run.
    pub conn_secs: f64,
    /// Client threads of the connection-rate run.
    pub conn_threads: usize,
}

impl Settings {
    /// For `--quick`.
    pub fn quick() -> Self {
        Self {
            rounds: 2,
            iperf_secs: 2,
            conn_secs: 1.5,
            conn_threads: 2,
        }
    }

    /// The full run.
    pub fn full() -> Self {
        Self {
            // Rounds vary by 10-20% on a shared 2-CPU machine (pinning iperf3 to CPUs did not
            // help): the median of 11 per-round ratios is what steadies the comparison.
            rounds: 11,
            iperf_secs: 3,
            conn_secs: 2.0,
            conn_threads: 2,
        }
    }
}

/// A configuration of the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    None,
    Wslnet1500,
    Wslnet,
    NftRtMtu,
    Nft1332,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::None,
        Config::Wslnet1500,
        Config::Wslnet,
        Config::NftRtMtu,
        Config::Nft1332,
    ];

    fn id(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Wslnet1500 => "wslnet_1500",
            Config::Wslnet => "wslnet",
            Config::NftRtMtu => "nft_rt_mtu",
            Config::Nft1332 => "nft_1332",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::None => "no program",
            Config::Wslnet1500 => "wslnet (ingress + egress, clamp entry 1500: MSS unchanged)",
            Config::Wslnet => "wslnet (ingress + egress, clamp 1372)",
            Config::NftRtMtu => "nft maxseg size set rt mtu (output)",
            Config::Nft1332 => "nft maxseg size set 1332 (output + input)",
        }
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
            Config::Wslnet1500 | Config::Wslnet => {
                let fs = Bpffs::new()?;
                let clamp = if cfg == Config::Wslnet {
                    "10.99.0.0/24=1372"
                } else {
                    "10.99.0.0/24=1500"
                };
                let agent = Agent::start(
                    &pair.a,
                    &fs,
                    &["--iface", "eth0", "--clamp", clamp, "--no-learn"],
                )?;
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
    fn evidence(&self) -> Value {
        match self {
            Installed::Agent { agent, .. } => match agent.status() {
                Ok(st) => json!({
                    "egress_syn": status_counter(&st, "eth0", "egress/ipv4", "syn"),
                    "egress_mss_clamped": status_counter(&st, "eth0", "egress/ipv4", "mss_clamped"),
                    "ingress_mss_clamped": status_counter(&st, "eth0", "ingress/ipv4", "mss_clamped"),
                }),
                Err(e) => json!({ "status_error": format!("{e:#}") }),
            },
            _ => Value::Null,
        }
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

/// Moves the calling thread into network namespace `ns` (sockets it creates live there).
fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace descriptor we hold; it only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The accept-and-drop server of the connection-rate test, a thread inside `b`.
struct ConnServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    addr: SocketAddr,
    ns: String,
}

impl ConnServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (name, s) = (ns.name().to_string(), stop.clone());
        let thread = thread::spawn(move || {
            let listener = enter_netns(&name)
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

/// Opens and resets connections from inside `ns` to `addr` for `secs` with `threads` threads.
fn conn_rate(ns: &str, addr: SocketAddr, secs: f64, threads: usize) -> Result<ConnRate> {
    let start_gate = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (ns, gate) = (ns.to_string(), start_gate.clone());
        handles.push(thread::spawn(move || -> Result<(u64, u64, Option<u32>)> {
            let entered = enter_netns(&ns);
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

/// One iperf3 run from `a`; returns Gbit/s received and the reported MSS.
fn iperf(pair: &Pair, secs: u32, reverse: bool) -> Result<(f64, Option<u64>)> {
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
        "-J",
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().context("running iperf3")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output is not JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok((bps / 1e9, v["start"]["tcp_mss_default"].as_u64()))
}

/// Per configuration, per round.
#[derive(Default, Clone)]
struct Samples {
    fwd: Vec<f64>,
    rev: Vec<f64>,
    conn: Vec<f64>,
    conn_failures: u64,
    client_mss: Option<u32>,
    iperf_mss: Option<u64>,
    evidence: Vec<Value>,
}

/// Measures everything; returns the JSON section `throughput`.
pub fn run(s: Settings) -> Result<Value> {
    let started = Instant::now();
    let pair = Pair::new()?;
    for ns in [&pair.a, &pair.b] {
        ns.sh("sysctl -qw net.ipv4.ip_local_port_range='10000 65000'")?;
    }
    let mut server: Daemon = pair.b.spawn(
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
    .with_context(|| format!("iperf3 server log: {}", server.log()))?;
    let conn_addr: SocketAddr = format!("{}:{CONN_PORT}", Pair::B4).parse()?;
    let conn_server = ConnServer::start(&pair.b, conn_addr)?;
    // Warm-up (not recorded): ARP, caches, iperf3's first start.
    iperf(&pair, 1, false)?;
    conn_rate(pair.a.name(), conn_addr, 0.3, s.conn_threads)?;

    let mut samples = vec![Samples::default(); Config::ALL.len()];
    for r in 0..s.rounds {
        for k in 0..Config::ALL.len() {
            let i = (k + r) % Config::ALL.len();
            let cfg = Config::ALL[i];
            eprint!(" {}", cfg.id());
            let installed = Installed::new(cfg, &pair)?;
            let (fwd, mss) = iperf(&pair, s.iperf_secs, false)?;
            let (rev, _) = iperf(&pair, s.iperf_secs, true)?;
            let cr = conn_rate(pair.a.name(), conn_addr, s.conn_secs, s.conn_threads)?;
            let sm = &mut samples[i];
            sm.fwd.push(fwd);
            sm.rev.push(rev);
            sm.conn.push(cr.per_sec);
            sm.conn_failures += cr.failures;
            sm.client_mss = sm.client_mss.or(cr.client_mss);
            sm.iperf_mss = sm.iperf_mss.or(mss);
            sm.evidence.push(installed.evidence());
            drop(installed);
        }
        eprintln!(" (round {} of {})", r + 1, s.rounds);
    }
    drop(conn_server);
    let _ = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));

    let base = samples[0].clone();
    let ratio = |xs: &[f64], base: &[f64]| -> Summary {
        Summary::of(&xs.iter().zip(base).map(|(x, b)| x / b).collect::<Vec<_>>())
    };
    let mut configs = Vec::new();
    for (i, cfg) in Config::ALL.iter().enumerate() {
        let sm = &samples[i];
        configs.push(json!({
            "id": cfg.id(),
            "label": cfg.label(),
            "client_mss": sm.client_mss,
            "iperf3_tcp_mss_default": sm.iperf_mss,
            "gbit_s_a_to_b": Summary::of(&sm.fwd).json(2),
            "gbit_s_b_to_a": Summary::of(&sm.rev).json(2),
            "connections_per_s": Summary::of(&sm.conn).json(0),
            "connection_failures": sm.conn_failures,
            "ratio_a_to_b": ratio(&sm.fwd, &base.fwd).json(3),
            "ratio_b_to_a": ratio(&sm.rev, &base.rev).json(3),
            "ratio_connections": ratio(&sm.conn, &base.conn).json(3),
            "per_round": {
                "gbit_s_a_to_b": sm.fwd.iter().map(|x| round(*x, 2)).collect::<Vec<_>>(),
                "gbit_s_b_to_a": sm.rev.iter().map(|x| round(*x, 2)).collect::<Vec<_>>(),
                "connections_per_s": sm.conn.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
            },
            "evidence": sm.evidence.last().cloned().unwrap_or(Value::Null),
        }));
    }
    Ok(json!({
        "method": "veth pair between two namespaces; iperf3 -t N -J from a (a->b) and with -R (b->a); connection rate: client threads in a, connect + SO_LINGER 0 reset, accept-and-drop server thread in b; configurations interleaved, order rotated per round; ratios paired per round",
        "rounds": s.rounds,
        "iperf_seconds": s.iperf_secs,
        "connection_seconds": s.conn_secs,
        "connection_threads": s.conn_threads,
        "configs": configs,
        "seconds": round(started.elapsed().as_secs_f64(), 1),
    }))
}
