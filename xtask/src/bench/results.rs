//! `bench/results.json` as types: the whole document ([`Results`]) and one struct a section,
//! written by the sections and read by the report ([`super::report`]).
//!
//! Field names are the document's keys, but for a few `#[serde(rename)]`s; the keys of a
//! `#[serde(flatten)]` field stand in the enclosing object (the parts several structs share:
//! [`SectionRun`], [`ConfigName`], [`Traffic`], [`Ratios`], a section's settings). The
//! document is written through a [`serde_json::Value`], whose map sorts keys, so results.json
//! keeps its sorted keys. A statistic with no value (NaN: the median of an empty sample, a rate
//! over no time) is written as null and read back as NaN ([`nan_if_null`]); a section a run left
//! out (`--only`) is absent.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};

use super::{
    perpacket,
    stats::{Summary, nan_if_null, round, seconds_since},
    throughput::{self, Config},
};

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Version of the document's layout (1).
    pub schema: u32,
    /// The run was `--quick` (fewer rounds, shorter runs).
    pub quick: bool,
    /// The machine measured on.
    pub machine: Machine,
    /// When the run started, UTC (`date -u +%Y-%m-%dT%H:%M:%SZ`).
    pub started_utc: String,
    /// Path of the release agent binary measured.
    pub agent_binary: String,
    /// The load average before and after the run.
    pub load_average: LoadAverage,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Section `per-packet`, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_packet: Option<PerPacket>,
    /// Section `throughput`, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    /// Section `convergence`, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
    /// Section `footprint`, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
    /// Section `rescue`, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescue: Option<Rescue>,
}

/// The machine, as its tools describe it ("" where a tool failed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Kernel build (`uname -v`).
    pub kernel_version: String,
    /// CPU model (`model name` of /proc/cpuinfo).
    pub cpu: String,
    /// CPUs this process may use (`nproc`), a decimal number.
    pub cpus: String,
    /// Memory (`MemTotal` of /proc/meminfo, "N kB").
    pub memory: String,
    /// `iperf3 --version`, first line.
    pub iperf3: String,
    /// `nft --version`.
    pub nft: String,
    /// `rustc --version`.
    pub rustc: String,
}

/// `/proc/loadavg` (1, 5 and 15 min averages, runnable/total tasks, last pid) at both ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadAverage {
    /// Before the first section.
    pub before: String,
    /// After the last section.
    pub after: String,
}

/// What every measured section says of its own run (flattened into the section: its keys
/// `method` and `seconds`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionRun {
    /// How it was measured, in words.
    pub method: String,
    /// Wall time of the section, seconds.
    pub seconds: f64,
}

impl SectionRun {
    /// A section measured as `method` says, from `started` until now.
    pub fn since(started: Instant, method: &str) -> Self {
        Self {
            method: method.into(),
            seconds: seconds_since(started),
        }
    }
}

/// Section `per_packet`: datapath ns/packet under `BPF_PROG_TEST_RUN` ([`super::perpacket`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerPacket {
    /// How it was measured and how long it took.
    #[serde(flatten)]
    pub run: SectionRun,
    /// The CPU the measuring thread was pinned to (absent in older results).
    pub cpu: Option<usize>,
    /// How much was measured: runs per call, rounds, single-shot calls.
    #[serde(flatten)]
    pub settings: perpacket::Settings,
    /// Path MTU (bytes) of the clamp entries the cases meet.
    pub clamp_mtu: u16,
    /// The empty program (the floor), ns per run, over all rounds.
    pub floor_ns: Summary,
    /// Every packet measured, in the order measured.
    pub cases: Vec<PacketCase>,
    /// What DSCP normalisation costs (absent in older results).
    pub dscp: Option<DscpCost>,
}

/// One packet of the per-packet section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketCase {
    /// Short name (`syn4`, `gso4_64k`, ...).
    pub id: String,
    /// What the packet is and the path it takes, in words.
    pub label: String,
    /// The hook it runs on.
    pub direction: Direction,
    /// Not a target figure: shows where the nanoseconds go (early exits of the parser).
    pub diagnostic: bool,
    /// Length of the frame handed to the program, bytes.
    pub frame_bytes: usize,
    /// `gso_size` of the skb, bytes (0: not GSO).
    pub gso_size: u32,
    /// The repeat method's figures.
    pub repeat: RepeatCost,
    /// Datapath counters that moved in one run (name: count; the unmoved left out).
    pub counters_one_run: BTreeMap<String, u64>,
    /// The same over 1000 runs.
    pub counters_1000_runs: BTreeMap<String, u64>,
    /// A SYN / SYN-ACK whose MSS is above the clamp: the rewrite's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteCost>,
    /// An egress SYN: what the learned-map write adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learn_write: Option<LearnWriteCost>,
}

/// The hook a packet is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// tc ingress.
    Ingress,
    /// tc egress.
    Egress,
}

/// A packet under the repeat method, per round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepeatCost {
    /// wslnet, ns per run.
    pub ns: Summary,
    /// wslnet minus the floor of the same round, ns per run.
    pub over_floor_ns: Summary,
    /// The datapath path the repeated runs take, in words.
    pub path: String,
}

/// A SYN's MSS rewrite, timed warm (reset program + wslnet) and cold (single runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewriteCost {
    /// Reset + rewrite minus reset + "MSS fits", per round, ns per run.
    pub rewrite_extra_ns: Summary,
    /// Reset + "MSS fits" (the baseline), ns per run.
    pub reset_plus_fits_ns: Summary,
    /// A rewritten SYN: the repeat median plus the rewrite's median, ns per packet.
    pub ns: f64,
    /// The same minus the floor's median, ns.
    pub over_floor_ns: f64,
    /// Single runs of the SYN (rewritten), ns each.
    pub cold_single_run_rewritten_ns: Summary,
    /// Single runs of its rewritten twin (MSS fits), ns each.
    pub cold_single_run_fits_ns: Summary,
    /// Difference of the two single-run medians, ns.
    pub cold_rewrite_extra_ns: f64,
}

/// An egress SYN's learned-map write (a destination's first SYN on a CPU in a refresh period).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnWriteCost {
    /// Emptied learn-cache slot + wslnet minus the slot looked up only, per round, ns per run.
    pub extra_ns: Summary,
    /// The "MSS fits" repeat median plus the write, ns per packet.
    pub fits_ns: f64,
    /// The rewritten SYN's figure ([`RewriteCost::ns`]) plus the write, ns per packet.
    pub rewritten_ns: f64,
}

/// What DSCP normalisation (`set_dscp`) costs a marked egress datagram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DscpCost {
    /// The datagram, in words.
    pub label: String,
    /// The empty program in these rounds, ns per run.
    pub floor_ns: Summary,
    /// The setting off, minus the floor of the round, ns per run.
    pub off_over_floor_ns: Summary,
    /// The setting on, the DSCP already 0 after the first run (the check alone), minus the
    /// floor, ns per run.
    pub on_no_write_over_floor_ns: Summary,
    /// Single runs: the marked datagram (rewritten) minus its rewritten twin, paired, ns.
    pub cold_rewrite_extra_ns: Summary,
}

/// Section `throughput`: iperf3 and the connection rate over veth beds
/// ([`super::throughput`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// How it was measured and how long it took.
    #[serde(flatten)]
    pub run: SectionRun,
    /// How much was measured: rounds, run lengths, connection threads.
    #[serde(flatten)]
    pub settings: throughput::Settings,
    /// The CPU all traffic was pinned to.
    pub cpu: usize,
    /// Every configuration, in [`Config::ALL`]'s order.
    pub configs: Vec<ConfigThroughput>,
    /// wslnet against the nftables rule doing the same (absent in older results).
    pub against_nft: Option<Vec<AgainstNft>>,
    /// What safe first contact costs (absent in older results).
    pub first_contact_cost: Option<FirstContactCost>,
    /// The wslnet programs' run time on the traffic (absent in older results).
    pub datapath_cost: Option<Vec<DatapathCost>>,
}

/// One configuration's traffic over the rounds; ratios to `none` paired per round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigThroughput {
    /// Which configuration.
    #[serde(flatten)]
    pub config: ConfigName,
    /// TCP_MAXSEG of the first connection-rate connection: what the client may send, bytes.
    pub client_mss: Option<u32>,
    /// The MSS iperf3 reports for its connection (`tcp_mss_default`), bytes.
    pub iperf3_tcp_mss_default: Option<u64>,
    /// The traffic's summaries over the rounds.
    #[serde(flatten)]
    pub traffic: Traffic<Summary>,
    /// Connections that failed, all rounds together.
    pub connection_failures: u64,
    /// The traffic over `none`'s in the same round.
    #[serde(flatten)]
    pub vs_none: Ratios,
    /// The samples, one a round.
    pub per_round: Traffic<Vec<f64>>,
    /// wslnet's counters after the rounds (evidence the configuration was active); null
    /// without wslnet.
    pub evidence: Option<Evidence>,
}

/// A configuration, by id and in words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigName {
    /// Which configuration.
    pub id: Config,
    /// It in words ([`Config::label`]).
    pub label: String,
}

impl From<Config> for ConfigName {
    fn from(id: Config) -> Self {
        Self {
            id,
            label: id.label().into(),
        }
    }
}

/// A configuration's traffic, a figure of each measure of a round: `T` is the samples (one a
/// round) or their [`Summary`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic<T> {
    /// iperf3 `a -> b`, Gbit/s received.
    pub gbit_s_a_to_b: T,
    /// iperf3 `b -> a` (`-R`), Gbit/s received.
    pub gbit_s_b_to_a: T,
    /// Connections opened and reset per second.
    pub connections_per_s: T,
}

impl<T> Traffic<T> {
    /// `f` applied to every measure, with the decimals the results keep of it (Gbit/s 2,
    /// connections per second 0).
    pub fn map<U>(&self, f: impl Fn(&T, i32) -> U) -> Traffic<U> {
        Traffic {
            gbit_s_a_to_b: f(&self.gbit_s_a_to_b, 2),
            gbit_s_b_to_a: f(&self.gbit_s_b_to_a, 2),
            connections_per_s: f(&self.connections_per_s, 0),
        }
    }
}

impl Traffic<Vec<f64>> {
    /// Every measure's samples summarised, to the decimals the results keep.
    pub fn summary(&self) -> Traffic<Summary> {
        self.map(|xs, digits| Summary::of(xs).rounded(digits))
    }

    /// Every sample rounded to the decimals the results keep.
    pub fn rounded(&self) -> Self {
        self.map(|xs, digits| xs.iter().map(|&x| round(x, digits)).collect())
    }
}

/// One configuration's traffic over another's, paired per round (1.0: the same).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratios {
    /// `a -> b` Gbit/s ratio.
    #[serde(rename = "ratio_a_to_b")]
    pub a_to_b: Summary,
    /// `b -> a` Gbit/s ratio.
    #[serde(rename = "ratio_b_to_a")]
    pub b_to_a: Summary,
    /// Connections per second ratio.
    #[serde(rename = "ratio_connections")]
    pub connections: Summary,
}

impl Ratios {
    /// `ours` over `base`, round by round.
    pub fn between(ours: &Traffic<Vec<f64>>, base: &Traffic<Vec<f64>>) -> Self {
        Self {
            a_to_b: paired_ratio(&ours.gbit_s_a_to_b, &base.gbit_s_a_to_b),
            b_to_a: paired_ratio(&ours.gbit_s_b_to_a, &base.gbit_s_b_to_a),
            connections: paired_ratio(&ours.connections_per_s, &base.connections_per_s),
        }
    }
}

/// The summary of `xs` over `base`, sample by sample (round by round), to 3 decimals.
pub fn paired_ratio(xs: &[f64], base: &[f64]) -> Summary {
    Summary::of(&xs.iter().zip(base).map(|(x, b)| x / b).collect::<Vec<_>>()).rounded(3)
}

/// wslnet's counters of `a`'s eth0 (IPv4) after the rounds, or why they could not be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Evidence {
    /// `wslnet-agent status` failed.
    StatusError {
        /// The error, with its context.
        status_error: String,
    },
    /// The counters.
    Counters {
        /// SYNs seen on egress.
        egress_syn: u64,
        /// SYNs whose MSS was lowered on egress.
        egress_mss_clamped: u64,
        /// SYN-ACKs whose MSS was lowered on ingress.
        ingress_mss_clamped: u64,
    },
}

/// wslnet against the nftables rule doing the same, paired per round (wslnet over nft).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgainstNft {
    /// The wslnet configuration.
    pub ours: Config,
    /// The nftables configuration.
    pub theirs: Config,
    /// wslnet's traffic over nft's.
    #[serde(flatten)]
    pub ratio: Ratios,
}

/// The first-contact clamp against the measured one, paired per round (first contact over
/// measured).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstContactCost {
    /// The configuration with the first-contact clamp.
    pub first_contact: Config,
    /// The configuration with the measured clamp.
    pub measured: Config,
    /// `a -> b` Gbit/s ratio.
    pub ratio_a_to_b: Summary,
    /// `b -> a` Gbit/s ratio.
    pub ratio_b_to_a: Summary,
}

/// A wslnet configuration's programs on the traffic of one extra run per direction and one
/// connection-rate run, with the kernel's BPF run-time statistics on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatapathCost {
    /// Which configuration.
    #[serde(flatten)]
    pub config: ConfigName,
    /// The iperf3 run `a -> b`.
    pub a_to_b: ProgramCost,
    /// The iperf3 run `b -> a`.
    pub b_to_a: ProgramCost,
    /// The connection-rate run.
    pub connections: ProgramCost,
}

/// The programs' run time over one run (both hooks of `a`'s eth0 together).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    /// Program runs (one packet through one hook).
    pub program_runs: u64,
    /// Their run time, ns.
    pub program_ns: u64,
    /// Run time per run, ns.
    pub ns_per_run: f64,
    /// Runs per second of the run's duration.
    #[serde(deserialize_with = "nan_if_null")]
    pub runs_per_s: f64,
    /// Run time over the run's duration (a fraction of one CPU, 0.01: 1%).
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_share: f64,
    /// What the run carried.
    #[serde(flatten)]
    pub rate: RunRate,
}

/// What a run of the traffic carried, in the unit of its kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunRate {
    /// An iperf3 run.
    Iperf {
        /// Gbit/s received.
        #[serde(deserialize_with = "nan_if_null")]
        gbit_s: f64,
    },
    /// A connection-rate run.
    Connections {
        /// Connections per second.
        #[serde(deserialize_with = "nan_if_null")]
        connections_per_s: f64,
    },
}

/// Section `convergence`: the prober in the black-hole lab, and Linux's answer as the anchor
/// ([`super::convergence`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Convergence {
    /// How it was measured and how long it took.
    #[serde(flatten)]
    pub run: SectionRun,
    /// Searches per (bottleneck, RTT).
    pub repeats: usize,
    /// One entry per (bottleneck, RTT).
    pub searches: Vec<Search>,
    /// The 256 KB downloads through the 1372 black hole (absent in older results).
    pub download_256k: Option<Vec<Download>>,
}

/// The searches of one bottleneck and round-trip time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Search {
    /// The bottleneck's MTU, bytes.
    pub bottleneck: u16,
    /// Round-trip time added on the bottleneck link, ms.
    pub rtt_ms: u32,
    /// The MTU each search found, bytes (null: none).
    pub found: Vec<Option<u64>>,
    /// Every search found exactly the bottleneck.
    pub exact: bool,
    /// The prober's own `elapsed_ms`, ms.
    pub elapsed_ms: Summary,
    /// Wall time of the whole `wslnet-agent probe` command, ms.
    pub wall_ms: Summary,
    /// Rounds of probes.
    pub rounds: Summary,
    /// Probe packets sent.
    pub probes: Summary,
}

/// One 256 KB download (curl, `srv` -> `wsl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Download {
    /// What was set up, in words.
    pub case: String,
    /// Round-trip time added on the bottleneck link, ms.
    pub rtt_ms: u32,
    /// The whole file arrived with HTTP 200 within the timeout.
    pub completed: bool,
    /// curl's `time_total`, seconds (null unless completed).
    pub seconds: Option<f64>,
    /// Bytes received.
    pub bytes: u64,
    /// curl's `--max-time`, seconds.
    pub timeout_s: u32,
    /// The wslnet case: the agent's search before the download.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSearch>,
}

/// The agent's search ahead of the wslnet download.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSearch {
    /// The clamp it set for `srv`, path MTU bytes (null: none within 30 s).
    pub clamp_mtu: Option<u64>,
    /// From the agent's start to that clamp (or to giving up), ms.
    pub agent_start_to_clamp_ms: f64,
}

/// Section `footprint`: the agent's RSS and CPU ([`super::footprint`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Footprint {
    /// How it was measured and how long it took.
    #[serde(flatten)]
    pub run: SectionRun,
    /// The idle window.
    pub idle: Window,
    /// Destinations in the learned map during the second window.
    pub learned_destinations: usize,
    /// The window with them.
    pub with_learned: Window,
    /// Lines the agent logged over both windows.
    pub agent_log_lines: usize,
}

/// The agent over one window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// Its length, seconds.
    pub seconds: f64,
    /// utime + stime over the window, % of one core.
    pub cpu_percent_of_one_core: f64,
    /// utime + stime over the window, clock ticks.
    pub cpu_ticks: u64,
    /// The live threads' `schedstat` run time over the window, % of one core.
    pub cpu_percent_schedstat: f64,
    /// Clock ticks per second (`_SC_CLK_TCK`).
    pub clock_ticks_per_s: f64,
    /// VmRSS sampled every second, MB (MiB).
    pub rss_mb: Summary,
    /// VmHWM at the end, MB (MiB).
    pub peak_rss_mb: f64,
    /// Threads at the end.
    pub threads: u64,
}

/// Section `rescue`: reaction and rescue ([`super::rescue`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rescue {
    /// What answering an oversize packet costs the datapath.
    pub reflect_cost: ReflectCost,
    /// From a new destination's first SYN to its measured clamp.
    pub first_contact: FirstContact,
    /// A path that shrinks unseen under a running download.
    pub shrink: Shrink,
}

/// A 1500-byte TCP segment over a 1372 clamp entry, egress, round by round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReflectCost {
    /// Reflection off: counted only, ns per run.
    pub counted_only_ns: Summary,
    /// Reflection on: dropped with a record for the agent, ns per run.
    pub dropped_and_recorded_ns: Summary,
    /// On minus off, paired per round, ns.
    pub added_ns: Summary,
    /// Address family of the segment (`wslnet_common::FAMILY_V4`: 0).
    pub family: u32,
}

/// First contact with the lab's six addresses behind a 1372 tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstContact {
    /// From the client's connection start to the measured clamp, ms.
    pub ms: Summary,
}

/// A path that shrinks from 1500 to 1372 under a paced download, once per lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shrink {
    /// From the shrink to the first symptom the agent acted on, ms.
    pub shrink_to_symptom_ms: Summary,
    /// From that symptom to the new clamp, ms.
    pub symptom_to_clamp_ms: Summary,
    /// From the shrink to the new clamp, ms.
    pub shrink_to_clamp_ms: Summary,
    /// Downloads that completed across the shrink.
    pub downloads_completed: usize,
    /// Downloads started (one per shrink).
    pub downloads: usize,
    /// The completed downloads, seconds each.
    pub download_s: Summary,
    /// A download's length at the paced rate with nothing in its way, seconds.
    pub nominal_download_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results.json loads, and written again it is the same document: the
    /// same keys, nesting and numbers (integers stay integers).
    #[test]
    fn committed_results_round_trip() {
        let text = include_str!("../../../bench/results.json");
        let raw: serde_json::Value = serde_json::from_str(text).expect("results.json is JSON");
        let typed: Results = serde_json::from_str(text).expect("results.json loads");
        assert_eq!(serde_json::to_value(&typed).expect("serialises"), raw);
    }
}
