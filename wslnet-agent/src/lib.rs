//! wslnet agent: attaches the MSS-clamping datapath, probes path MTUs, exports metrics.
//!
//! Data flows one way: packets -> datapath (`wslnet-ebpf`) -> maps ([`maps`]) -> agent ->
//! metrics ([`metrics`]). The modules:
//! - [`checksum`]: the Internet checksum of the ICMP packets the agent builds;
//! - [`cli`]: the command line (`run`, `probe`, `status`, `check`, `doctor`, `detach`);
//! - [`config`]: the TOML config file merged with CLI flags, validated;
//! - [`maps`]: loading the datapath object and typed access to its maps and pins;
//! - [`attach`]: attaching the programs to interfaces (TCX or clsact) and pinning the links;
//! - [`ifaces`]: following interfaces that match the globs (netlink);
//! - [`prober`]: path-MTU search (ICMP with DF, TCP fallback);
//! - [`metrics`]: Prometheus metrics and the HTTP endpoint;
//! - [`pmtu`]: which destinations to measure and when, inside `run`;
//! - [`symptoms`]: stalled local connections (sock_diag), which make `run` re-measure at once;
//! - [`reflect`]: the ICMP errors for oversize packets the datapath dropped (rescue);
//! - [`service`]: `run`, which ties them together;
//! - [`status`], [`check`]: the inspection commands;
//! - [`doctor`]: the WSL troubleshooting flow (route, DNS, proxy, path MTU, the agent).
pub mod attach;
pub mod check;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod ifaces;
pub mod maps;
pub mod metrics;
pub mod pmtu;
pub mod prober;
pub mod reflect;
pub mod service;
pub mod status;
pub mod symptoms;

/// The compiled datapath object (`wslnet-ebpf`, built by build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wslnet"));
