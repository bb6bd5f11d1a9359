//! `cargo xtask demo`: the black hole, then wslnet fixing it, in private network namespaces.
//!
//! Builds the lab of DESIGN.md (wsl -- win -- bottleneck -- vpn -- srv, ICMP errors dropped),
//! shows an HTTP download, a TLS handshake and an SSH key exchange from `wsl` stalling, starts
//! `wslnet-agent` in `wsl` as it runs at boot (no target, no configuration), shows the three
//! clients passing on their first contact with the server, then the path MTUs the agent
//! measured from their SYNs, then a download that survives the tunnel narrowing under it (no
//! event inside `wsl`), prints an excerpt of `/metrics`, and removes everything. Ctrl-C at any
//! point removes everything too.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use wslnet_tests::{
    agent::AgentOptions,
    clients::{self, Outcome, Servers},
    lab::{Lab, LabConfig, SRV_V4, VPN_MTU},
    netns::wait_until,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Steps the demo shows.
const STEPS: u32 = 7;

/// `demo` arguments.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// MTU of the bottleneck link (the VPN), bytes; 1280 or more keeps IPv6 in the demo.
    #[arg(long, default_value_t = VPN_MTU)]
    pub mtu: u16,
    /// Round-trip time added on the bottleneck, ms.
    #[arg(long, default_value_t = 20)]
    pub rtt_ms: u32,
    /// How long a client may take before it counts as stalled, seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the lab was removed");
    }
    Ok(())
}

/// Announces step `n` of the demo's `STEPS`.
fn demo_step(n: u32, what: &str) {
    crate::support::step(&format!("[{n}/{STEPS}] {what}"));
}

fn show(outcomes: &[Outcome]) {
    for o in outcomes {
        let fam = if o.host.is_ipv6() { "IPv6" } else { "IPv4" };
        if o.ok {
            println!(
                "      {:<46} {fam}  \x1b[32mok\x1b[0m in {:.2} s",
                o.client.label(),
                o.elapsed.as_secs_f64()
            );
        } else if o.timed_out {
            println!(
                "      {:<46} {fam}  \x1b[31mstalled\x1b[0m (no progress after {:.1} s)",
                o.client.label(),
                o.elapsed.as_secs_f64()
            );
        } else {
            println!(
                "      {:<46} {fam}  \x1b[31mfailed\x1b[0m: {}",
                o.client.label(),
                o.detail
            );
        }
    }
}

/// Runs the demo. `agent_bin` is the built `wslnet-agent`.
pub fn run(args: DemoArgs, agent_bin: &std::path::Path) -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: cleaning up ...");
    })
    .context("installing the Ctrl-C handler")?;
    // SAFETY: set before any thread of ours reads the environment.
    unsafe { std::env::set_var("WSLNET_AGENT_BIN", agent_bin) };
    let v6 = args.mtu >= 1280;
    let families: &[bool] = if v6 { &[false, true] } else { &[false] };
    let timeout = Duration::from_secs(args.timeout);

    println!("\x1b[1mwslnet demo\x1b[0m: a path-MTU black hole, in private network namespaces");
    println!(
        "  wsl (eth0, MTU 1500) -- win (router) --[VPN: MTU {}, {} ms RTT]-- vpn (router) -- srv",
        args.mtu, args.rtt_ms
    );
    println!(
        "  Both routers drop the ICMP 'fragmentation needed' / 'packet too big' they would send."
    );

    demo_step(1, "building the lab and starting servers in srv");
    let t = Instant::now();
    let lab = Lab::with(LabConfig {
        bottleneck: args.mtu,
        rtt_ms: args.rtt_ms,
        ..LabConfig::default()
    })?;
    let servers = Servers::start(&lab)?;
    println!(
        "      HTTP :8080 (400 KB file), TLS :8443 (RSA-4096 certificate), OpenSSH :2222  ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    check_interrupt()?;

    demo_step(2, "without wslnet: what a WSL user sees");
    let ping = lab
        .wsl
        .sh_output(&format!("ping -c 1 -W 2 {SRV_V4}"))?
        .status
        .success();
    println!(
        "      ping {SRV_V4}                                    {}",
        if ping {
            "\x1b[32mok\x1b[0m (small packets pass)"
        } else {
            "failed"
        }
    );
    println!("      (each client gets {} s) ...", args.timeout);
    let without = clients::run_all(&lab, &servers, families, timeout);
    show(&without);
    check_interrupt()?;

    demo_step(
        3,
        "starting wslnet-agent in wsl as at boot: no target, no configuration",
    );
    let agent = AgentOptions::as_at_boot().start_in_lab(&lab)?;
    let status = agent.status()?;
    let eth0 = &status["interfaces"][0];
    println!(
        "      attached to {} (mode {}); destinations not yet measured are clamped to {} bytes",
        eth0["name"].as_str().unwrap_or("?"),
        eth0["mode"].as_str().unwrap_or("?"),
        eth0["default_mtu_v4"]
    );
    check_interrupt()?;

    demo_step(
        4,
        "with wslnet: the same clients, first contact with the server",
    );
    let with = clients::run_all(&lab, &servers, families, Duration::from_secs(30));
    show(&with);
    check_interrupt()?;

    demo_step(
        5,
        "what the agent learned from their SYNs and measured meanwhile",
    );
    for v6 in families.iter().copied() {
        let host = lab.srv_addr(v6);
        let net = format!("{host}/{}", if v6 { 128 } else { 32 });
        let mtu = wait_until(Duration::from_secs(30), "the path MTU measurement", || {
            let st = agent.status().ok()?;
            st["clamps"]
                .as_array()?
                .iter()
                .find(|c| c["net"] == net.as_str())
                .map(|c| c["mtu"].clone())
        })?;
        println!(
            "      path MTU to {host:<12} = \x1b[1m{mtu} bytes\x1b[0m (measured; interface MTU still 1500)"
        );
        check_interrupt()?;
    }

    demo_step(
        6,
        "the VPN narrows again (1372 -> 1300) while a download runs, nothing visible in wsl",
    );
    let host = lab.srv_addr(false);
    let ((done, took), narrowed) = std::thread::scope(|s| {
        let download = s.spawn(|| {
            clients::paced_download(&lab.wsl, &servers.http, host, Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(800));
        let narrowed = lab.set_bottleneck(1300);
        (download.join().expect("download thread"), narrowed)
    });
    narrowed?;
    if done {
        println!(
            "      {:<46} IPv4  \x1b[32mcompleted\x1b[0m in {:.2} s: the stall re-measured the path and \
             the server was told 1300",
            "download running at the change (400 KB, paced)",
            took.as_secs_f64()
        );
    } else {
        println!(
            "      {:<46} IPv4  \x1b[31mstalled\x1b[0m ({:.1} s)",
            "download running at the change (400 KB, paced)",
            took.as_secs_f64()
        );
    }
    check_interrupt()?;

    demo_step(7, "an excerpt of wslnet-agent's /metrics");
    let metrics = agent.metrics()?;
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("wslnet_probe_searches_total")
                || l.starts_with("wslnet_symptom_rechecks_total")
                || l.starts_with("wslnet_icmp_errors_sent_total")
                || l.starts_with("wslnet_interface_attached")
                || ((l.starts_with("wslnet_mss_clamped_total")
                    || l.starts_with("wslnet_tcp_syn_packets_total"))
                    && !l.ends_with(" 0")))
    }) {
        println!("      {line}");
    }

    drop(agent);
    drop(lab);
    println!("\nlab removed; nothing outside its namespaces was touched.");
    let stalled = without.iter().all(|o| !o.ok && o.timed_out);
    let fixed = with.iter().all(|o| o.ok) && done;
    match (stalled, fixed) {
        (true, true) => {
            println!(
                "\x1b[32mwslnet turned a black hole into a working path without changing an MTU.\x1b[0m"
            );
            Ok(())
        }
        (false, _) => bail!("the lab did not reproduce the black hole (see above)"),
        (true, false) => bail!("some clients still failed with wslnet running (see above)"),
    }
}
