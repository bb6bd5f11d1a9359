//! Reaction and rescue: what answering an oversize packet costs the datapath, and how long the
//! agent takes, in the black-hole lab, from a destination's first SYN to its measured clamp and
//! from a path that shrinks unseen to its new clamp (and to the first symptom it reacted to),
//! with the download running across the shrink.
//!
//! Figures are reported, never asserted; the tests assert the behaviour.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use wslnet_common::{FAMILY_V4, IfaceConfig, global_flags};
use wslnet_model::{Clamp, Direction, Tables};
use wslnet_tests::{
    agent::{AgentOptions, RunFlag, sample},
    clients::{self, Client, Servers},
    lab::{Lab, VPN_MTU},
    netns::wait_until,
    packets as p,
    testrun::{Harness, TEST_IFINDEX},
};

use super::{
    results::{FirstContact, ReflectCost, Rescue, Shrink},
    stats::{Summary, round},
};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Interleaved rounds of the reflection cost (reflection off, then on).
    pub rounds: usize,
    /// Runs per `BPF_PROG_TEST_RUN` call: below the reflection ring's capacity, which is
    /// drained after every call, so that every run pays for a record.
    pub repeat: u32,
    /// Labs built for the shrink figures (one shrink each).
    pub shrinks: usize,
}

impl super::Amount for Settings {
    /// About 30 s.
    fn quick() -> Self {
        Self {
            rounds: 5,
            repeat: 1000,
            shrinks: 1,
        }
    }

    /// About 90 s.
    fn full() -> Self {
        Self {
            rounds: 31,
            repeat: 1000,
            shrinks: 5,
        }
    }
}

/// Measures everything; returns the section `rescue`.
pub fn run(s: Settings) -> Result<Rescue> {
    Ok(Rescue {
        reflect_cost: reflect_cost(s)?,
        first_contact: first_contact()?,
        shrink: shrinks(s)?,
    })
}

/// Mean ns per run of a 1500-byte TCP segment over a 1372 clamp entry, egress: counted only
/// (reflection off), and dropped with a record for the agent (reflection on), round by round.
fn reflect_cost(s: Settings) -> Result<ReflectCost> {
    let mut h = Harness::new().context("loading the datapath")?;
    let mut tables = Tables {
        ifaces: vec![(
            TEST_IFINDEX,
            IfaceConfig {
                slot: 1,
                l3_offset: 14,
                ..IfaceConfig::default()
            },
        )],
        clamps: vec![Clamp {
            addr: p::addr::REMOTE4.into(),
            prefix_len: 16,
            mtu: VPN_MTU,
        }],
        ..Tables::default()
    };
    let mut seg = p::Tcp::new(p::flags::ACK, vec![]);
    seg.payload = vec![0xab; 1500 - 40];
    let frame = p::tcp4_frame(p::addr::LOCAL4, p::addr::REMOTE4, &seg);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        for reflect in [false, true] {
            tables.globals.flags = if reflect { global_flags::REFLECT } else { 0 };
            h.set_tables(&tables)?;
            let (verdict, per_run) = h.time_run(Direction::Egress, &frame, s.repeat)?;
            let records = h.reflected().len();
            ensure!(
                verdict
                    == if reflect {
                        wslnet_model::TC_ACT_SHOT
                    } else {
                        -1
                    },
                "reflect={reflect}: verdict {verdict}"
            );
            ensure!(
                records == if reflect { s.repeat as usize } else { 0 },
                "reflect={reflect}: {records} records for {} runs",
                s.repeat
            );
            let ns = per_run.as_nanos() as f64;
            if reflect { on.push(ns) } else { off.push(ns) }
        }
    }
    let added: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a - b).collect();
    Ok(ReflectCost {
        counted_only_ns: Summary::of(&off).rounded(1),
        dropped_and_recorded_ns: Summary::of(&on).rounded(1),
        added_ns: Summary::of(&added).rounded(1),
        family: FAMILY_V4,
    })
}

/// Polls `f` every 10 ms for up to 30 s; the time it first held.
fn time_until(from: Instant, what: &str, mut f: impl FnMut() -> bool) -> Result<Duration> {
    wait_until(Duration::from_secs(30), what, || {
        std::thread::sleep(Duration::from_millis(10));
        f().then(|| from.elapsed())
    })
}

/// From a new destination's first SYN (a connection started by a client) to its measured clamp,
/// for the six addresses of the lab behind a 1372 tunnel, the agent as run at boot.
fn first_contact() -> Result<FirstContact> {
    let lab = Lab::new(VPN_MTU)?;
    let servers = Servers::start(&lab)?;
    let agent = AgentOptions::as_at_boot().start_in_lab(&lab)?;
    let mut ms = Vec::new();
    for host in lab.srv_addrs(false).into_iter().chain(lab.srv_addrs(true)) {
        let t = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let client = s.spawn(|| {
                clients::run_from(
                    &lab.wsl,
                    &servers,
                    Client::Http,
                    host,
                    Duration::from_secs(20),
                )
            });
            let took = time_until(t, "a measured clamp", || {
                agent.clamp(host).and_then(|c| c["mtu"].as_u64()) == Some(u64::from(VPN_MTU))
            })?;
            ms.push(took.as_secs_f64() * 1000.0);
            let o = client.join().expect("client thread");
            ensure!(o.ok, "first contact with {host} failed: {}", o.detail);
            Ok(())
        })?;
    }
    Ok(FirstContact {
        ms: Summary::of(&ms).rounded(0),
    })
}

/// A path that shrinks from 1500 to 1372 under a running download, nothing visible in the VM:
/// time to the first symptom the agent acted on, from it to the new clamp, and whether (and
/// when) the download completed.
fn shrinks(s: Settings) -> Result<Shrink> {
    let (mut to_symptom, mut symptom_to_clamp, mut to_clamp, mut download) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut completed = 0;
    for _ in 0..s.shrinks {
        let lab = Lab::new(1500)?;
        let http = lab.start_http(8080)?;
        let host = lab.srv_addr(false);
        let agent = AgentOptions::eth0()
            .with(RunFlag::Target(host))
            .start_in_lab(&lab)?;
        time_until(Instant::now(), "the first measurement", || {
            agent.clamp(host).and_then(|c| c["mtu"].as_u64()) == Some(1500)
        })?;
        let symptoms = || {
            let m = agent.metrics().unwrap_or_default();
            ["waiting", "stopped", "retransmitting"]
                .iter()
                .filter_map(|k| sample(&m, "wslnet_symptom_rechecks_total", &[("kind", k)]))
                .sum::<f64>()
        };
        let ((done, took), shrink) = std::thread::scope(|sc| -> Result<_> {
            let run = sc
                .spawn(|| clients::paced_download(&lab.wsl, &http, host, Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(800));
            lab.set_bottleneck(VPN_MTU)?;
            let shrunk = Instant::now();
            let symptom = time_until(shrunk, "a symptom", || symptoms() >= 1.0)?;
            let clamped = time_until(shrunk, "the new clamp", || {
                agent.clamp(host).and_then(|c| c["mtu"].as_u64()) == Some(u64::from(VPN_MTU))
            })?;
            Ok((run.join().expect("download thread"), (symptom, clamped)))
        })?;
        to_symptom.push(shrink.0.as_secs_f64() * 1000.0);
        to_clamp.push(shrink.1.as_secs_f64() * 1000.0);
        symptom_to_clamp.push((shrink.1.as_secs_f64() - shrink.0.as_secs_f64()) * 1000.0);
        if done {
            completed += 1;
            download.push(took.as_secs_f64());
        }
    }
    Ok(Shrink {
        shrink_to_symptom_ms: Summary::of(&to_symptom).rounded(0),
        symptom_to_clamp_ms: Summary::of(&symptom_to_clamp).rounded(0),
        shrink_to_clamp_ms: Summary::of(&to_clamp).rounded(0),
        downloads_completed: completed,
        downloads: s.shrinks,
        download_s: Summary::of(&download).rounded(2),
        nominal_download_s: round(400.0 * 1024.0 / f64::from(clients::PACED_RATE), 2),
    })
}
