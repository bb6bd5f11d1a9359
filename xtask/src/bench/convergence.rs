//! Probe convergence in the black-hole lab (`wslnet_tests::lab`: wsl -- win -- bottleneck --
//! vpn -- srv, ICMP frag-needed dropped by both routers), and Linux's own answer to a black
//! hole as the anchor.
//!
//! - The prober: `wslnet-agent probe 10.77.3.2 --json` in `wsl` for each bottleneck MTU and
//!   round-trip time; the report's `elapsed_ms`, `rounds` and `probes_sent`, whether `mtu` is
//!   exactly the bottleneck, and the wall time of the whole command.
//! - The anchor: a 256 KB HTTP download (curl, `srv` -> `wsl`) through the 1372 black hole
//!   without wslnet, with `net.ipv4.tcp_mtu_probing=1` (a) in `wsl` only (what a WSL user can
//!   set; the sender is the server, so this cannot help) and (b) in both `wsl` and `srv` (the
//!   sender probes); then (c) the same download with the wslnet agent running in `wsl`
//!   (`run --target 10.77.3.2`), once it has measured the path.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use wslnet_tests::{
    agent::AgentOptions,
    lab::{Lab, SRV_V4, VPN_MTU},
    netns::{Bpffs, agent_bin, wait_until},
};

use super::{
    results::{AgentSearch, Convergence, Download, Search, SectionRun},
    stats::{Summary, round},
};

/// Bottleneck MTUs the prober searches, bytes.
const BOTTLENECKS: [u16; 3] = [VPN_MTU, 1000, 1500];
/// Round-trip times added on the bottleneck link for each of them, ms.
const RTTS_MS: [u32; 3] = [0, 20, 100];

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Searches per (bottleneck, RTT).
    pub repeats: usize,
    /// RTTs of the Linux anchor with probing on both ends, ms.
    pub anchor_rtts: Vec<u32>,
    /// Longest wait for one download, seconds.
    pub download_timeout: u32,
}

impl super::Amount for Settings {
    fn quick() -> Self {
        Self {
            repeats: 1,
            anchor_rtts: vec![20],
            download_timeout: 15,
        }
    }

    fn full() -> Self {
        Self {
            repeats: 3,
            anchor_rtts: RTTS_MS.to_vec(),
            download_timeout: 40,
        }
    }
}

const HTTP_PORT: u16 = 8080;
const FILE: &str = "d256k.bin";
const FILE_SIZE: usize = 256 * 1024;

/// What the bench reads of `wslnet-agent probe --json`'s report (absent: no figure).
#[derive(Deserialize)]
struct ProbeReport {
    /// Path MTU found, bytes (null: unreachable).
    mtu: Option<u64>,
    /// Duration of the search, ms.
    elapsed_ms: Option<f64>,
    /// Rounds of probes sent.
    rounds: Option<f64>,
    /// Probe packets sent.
    probes_sent: Option<f64>,
}

/// One `wslnet-agent probe` in `wsl`, and its wall time in ms.
fn probe(lab: &Lab) -> Result<(ProbeReport, f64)> {
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", lab.wsl.name()])
        .arg(agent_bin())
        .args(["probe", &SRV_V4.to_string(), "--json"])
        .output()
        .context("running wslnet-agent probe")?;
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    Ok((super::stdout_json(&out, "wslnet-agent probe")?, wall))
}

/// One download of the 256 KB file from `srv`; (completed, seconds, bytes). `srv`'s cached
/// path MTUs are flushed first.
fn download(lab: &Lab, timeout: u32) -> Result<(bool, f64, u64)> {
    lab.srv
        .sh("ip route flush cache; ip -6 route flush cache")?;
    let url = format!("http://{SRV_V4}:{HTTP_PORT}/{FILE}");
    let out = lab.wsl.sh_output(&format!(
        "curl -sS -o /dev/null --max-time {timeout} -w '%{{http_code}} %{{size_download}} %{{time_total}}' {url}"
    ))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<&str> = text.split_whitespace().collect();
    let bytes = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = f.get(2).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let ok = out.status.success() && f.first() == Some(&"200") && bytes == FILE_SIZE as u64;
    Ok((ok, secs, bytes))
}

fn set_probing(lab: &Lab, wsl: bool, srv: bool) -> Result<()> {
    lab.wsl.sh(&format!(
        "sysctl -qw net.ipv4.tcp_mtu_probing={}",
        u8::from(wsl)
    ))?;
    lab.srv.sh(&format!(
        "sysctl -qw net.ipv4.tcp_mtu_probing={}",
        u8::from(srv)
    ))?;
    Ok(())
}

fn download_result(what: &str, rtt: u32, r: (bool, f64, u64), timeout: u32) -> Download {
    Download {
        case: what.into(),
        rtt_ms: rtt,
        completed: r.0,
        seconds: r.0.then(|| round(r.1, 3)),
        bytes: r.2,
        timeout_s: timeout,
        agent: None,
    }
}

/// Measures everything; returns the section `convergence`.
pub fn run(s: Settings) -> Result<Convergence> {
    let started = Instant::now();
    let lab = Lab::new(VPN_MTU)?;
    let mut searches = Vec::new();
    for mtu in BOTTLENECKS {
        lab.set_bottleneck(mtu)?;
        for rtt in RTTS_MS {
            lab.set_delay(rtt)?;
            let mut elapsed = Vec::new();
            let mut walls = Vec::new();
            let mut rounds = Vec::new();
            let mut probes = Vec::new();
            let mut found = Vec::new();
            for _ in 0..s.repeats {
                let (r, wall) = probe(&lab)?;
                elapsed.push(r.elapsed_ms.unwrap_or(f64::NAN));
                walls.push(wall);
                rounds.push(r.rounds.unwrap_or(f64::NAN));
                probes.push(r.probes_sent.unwrap_or(f64::NAN));
                found.push(r.mtu);
            }
            let exact = found.iter().all(|m| *m == Some(u64::from(mtu)));
            eprintln!(
                "  bottleneck {mtu}, RTT {rtt} ms: found {found:?}, {:.0} ms",
                Summary::of(&elapsed).median
            );
            searches.push(Search {
                bottleneck: mtu,
                rtt_ms: rtt,
                found,
                exact,
                elapsed_ms: Summary::of(&elapsed).rounded(1),
                wall_ms: Summary::of(&walls).rounded(1),
                rounds: Summary::of(&rounds).rounded(1),
                probes: Summary::of(&probes).rounded(1),
            });
        }
    }

    // The anchor: 256 KB through the 1372 black hole.
    lab.set_bottleneck(VPN_MTU)?;
    lab.start_http(HTTP_PORT)?;
    let data: Vec<u8> = (0..FILE_SIZE as u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    std::fs::write(lab.tmp_dir().join("www").join(FILE), data)
        .context("writing the 256 KB file")?;
    let t = s.download_timeout;
    let mut anchor = Vec::new();
    // Black hole first; the control with ICMP allowed comes last, and srv's cached path MTUs
    // are flushed before every download (a frag-needed that got through would teach srv).
    set_probing(&lab, true, false)?;
    lab.set_delay(20)?;
    let r = download(&lab, t)?;
    eprintln!("  tcp_mtu_probing=1 in wsl only: {r:?}");
    anchor.push(download_result(
        "Linux tcp_mtu_probing=1 in wsl only (client; the server sends)",
        20,
        r,
        t,
    ));
    for &rtt in &s.anchor_rtts {
        lab.set_delay(rtt)?;
        set_probing(&lab, true, true)?;
        let r = download(&lab, t)?;
        eprintln!("  tcp_mtu_probing=1 in wsl and srv, RTT {rtt} ms: {r:?}");
        anchor.push(download_result(
            "Linux tcp_mtu_probing=1 in wsl and srv (the sender probes)",
            rtt,
            r,
            t,
        ));
    }
    // wslnet: the agent measures the path, then the same download.
    lab.set_delay(20)?;
    set_probing(&lab, false, false)?;
    let fs = Bpffs::new()?;
    let t0 = Instant::now();
    let agent = AgentOptions::measuring(SRV_V4).start(&lab.wsl, &fs)?;
    let clamped = wait_until(Duration::from_secs(30), "the agent's clamp for srv", || {
        agent.clamp(SRV_V4.into())?["mtu"].as_u64()
    });
    let to_clamp_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let r = download(&lab, t)?;
    eprintln!("  wslnet (clamp {clamped:?} after {to_clamp_ms:.0} ms): {r:?}");
    anchor.push(Download {
        agent: Some(AgentSearch {
            clamp_mtu: clamped.ok(),
            agent_start_to_clamp_ms: round(to_clamp_ms, 1),
        }),
        ..download_result(
            "wslnet agent in wsl (run --target srv), after its search",
            20,
            r,
            t,
        )
    });
    drop(agent);
    drop(fs);
    // Control: ICMP errors allowed, no probing, no wslnet: PMTUD works in this lab.
    lab.drop_icmp_errors(false)?;
    let r = download(&lab, t)?;
    eprintln!("  control with ICMP allowed: {r:?}");
    anchor.push(download_result(
        "control: ICMP errors allowed (PMTUD works), no probing, no wslnet",
        20,
        r,
        t,
    ));
    lab.drop_icmp_errors(true)?;

    Ok(Convergence {
        run: SectionRun::since(
            started,
            "wslnet-agent probe SRV --json in the black-hole lab (TAP wire with added delay; ICMP frag-needed dropped); default prober settings (ICMP echo, 1000 ms round timeout)",
        ),
        repeats: s.repeats,
        searches,
        download_256k: Some(anchor),
    })
}
