//! The agent's footprint: resident memory and CPU of the real `wslnet-agent run` (release build)
//! in a namespace, over an idle window, then over the same window with 10000 learned
//! destinations in its map.
//!
//! The agent runs with default settings (`run --iface eth0`, learning on, metrics served) on one
//! side of a veth pair. The 10000 destinations are written into the pinned learned map as the
//! datapath would (addresses in 10.98.0.0/16, which has no route in that namespace: the
//! searches the agent starts for them fail at once and send nothing). CPU is `utime + stime`
//! from `/proc/PID/stat` over the window (and, finer grained, the live threads' `schedstat` run
//! time); RSS is sampled every second from `/proc/PID/status`.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use wslnet_agent::maps::{Maps, learned_key};
use wslnet_common::LearnedDest;
use wslnet_tests::{
    agent::{AgentOptions, Pair},
    netns::Bpffs,
};

use super::{
    results::{Footprint, SectionRun, Window},
    stats::{Summary, round},
};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds of each window.
    pub window_secs: u64,
    /// Learned destinations written for the second window.
    pub learned: u32,
}

impl super::Amount for Settings {
    fn quick() -> Self {
        Self {
            window_secs: 15,
            learned: 10_000,
        }
    }

    fn full() -> Self {
        Self {
            window_secs: 60,
            learned: 10_000,
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// CPU time of the live threads of `pid` in ns (`/proc/PID/task/*/schedstat`, first field).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
                    s.split_whitespace().next()?.parse::<u64>().ok()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM, Threads...).
fn status_field(pid: u32, name: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("{name} missing from /proc/{pid}/status"))
}

/// Measures one window: CPU % of one core, RSS summary (MB), peak RSS (MB).
fn window(pid: u32, secs: u64) -> Result<Window> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    let n0 = cpu_ns(pid);
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        rss.push(status_field(pid, "VmRSS")? as f64 / 1024.0);
        thread::sleep(Duration::from_secs(1));
    }
    let c1 = cpu_ticks(pid)?;
    let n1 = cpu_ns(pid);
    let wall = t0.elapsed().as_secs_f64();
    let cpu_pct = (c1 - c0) as f64 / hz / wall * 100.0;
    Ok(Window {
        seconds: round(wall, 1),
        cpu_percent_of_one_core: round(cpu_pct, 3),
        cpu_ticks: c1 - c0,
        cpu_percent_schedstat: round(n1.saturating_sub(n0) as f64 / 1e9 / wall * 100.0, 3),
        clock_ticks_per_s: hz,
        rss_mb: Summary::of(&rss).rounded(2),
        peak_rss_mb: round(status_field(pid, "VmHWM")? as f64 / 1024.0, 2),
        threads: status_field(pid, "Threads")?,
    })
}

/// Measures everything; returns the section `footprint`.
pub fn run(s: Settings) -> Result<Footprint> {
    let started = Instant::now();
    let pair = Pair::new()?;
    let fs = Bpffs::new()?;
    let agent = AgentOptions::eth0().start(&pair.a, &fs)?;
    let pid = agent.daemon.pid();
    thread::sleep(Duration::from_secs(2));
    eprintln!("  idle window ({} s)", s.window_secs);
    let idle = window(pid, s.window_secs)?;

    let ifindex: u32 = pair
        .a
        .sh("cat /sys/class/net/eth0/ifindex")?
        .trim()
        .parse()
        .context("eth0's ifindex")?;
    let mut maps = Maps::open(std::path::Path::new(&agent.pin_dir))?;
    // Stamps only order destinations (kernel jiffies, which user space cannot read): any value.
    let now = 1;
    for i in 0..s.learned {
        let addr = Ipv4Addr::new(10, 98, (i >> 8) as u8, (i & 0xff) as u8);
        let v = LearnedDest {
            first_seen_jiffies: now,
            last_seen_jiffies: now,
            syns: 1,
            ifindex,
            port_be: 443u16.to_be(),
            uid: 0,
            ..LearnedDest::default()
        };
        maps.learned
            .insert(&learned_key(addr.into()), &v, 0)
            .context("writing a learned destination")?;
    }
    let in_map = maps.learned().len();
    thread::sleep(Duration::from_secs(2));
    eprintln!(
        "  window with {in_map} learned destinations ({} s)",
        s.window_secs
    );
    let loaded = window(pid, s.window_secs)?;
    let log_lines = agent.daemon.log().lines().count();
    drop(maps);
    drop(agent);
    drop(fs);
    Ok(Footprint {
        run: SectionRun::since(
            started,
            "wslnet-agent run --iface eth0 (release build, default settings) in a namespace; CPU = utime+stime over the window; RSS sampled every second",
        ),
        idle,
        learned_destinations: in_map,
        with_learned: loaded,
        agent_log_lines: log_lines,
    })
}
