//! wslnet agent: attaches the MSS-clamping datapath, probes path MTUs, exports metrics.
//!
//! Data flows one way: packets -> datapath (`wslnet-ebpf`) -> maps ([`maps`]) -> agent ->
//! metrics ([`metrics`]).
//!
//! # Layout
//! - [`cli`]: the command line: parses it, checks for root, dispatches to [`cmd`], exit codes;
//! - [`cmd`]: one module per command (`run`, `probe`, `status`, `check`, `doctor`, `detach`):
//!   its flags and its handler, which calls the library module below and prints;
//! - [`config`]: the TOML config file merged with CLI flags, validated;
//! - [`pins`]: the pin directory: its layout (`maps/`, `links/`), bpffs, its security checks;
//! - [`maps`]: loading the datapath object and typed access to its pinned maps;
//! - [`attach`]: attaching the programs to interfaces (TCX or clsact) and pinning the links;
//! - [`ifaces`]: following interfaces that match the globs (netlink);
//! - [`service`]: `run`, which ties the parts below together;
//! - [`shared`]: the state `run`'s parts share (maps, attached interfaces, metrics);
//! - [`reconcile`]: what the clamp table must hold (static and probed entries), as plans;
//! - [`pmtu`]: which destinations to measure and when, inside `run`;
//! - [`prober`]: path-MTU search (ICMP with DF, TCP fallback), a library;
//! - [`symptoms`]: stalled local connections (sock_diag), which make `run` re-measure at once;
//! - [`reflect`]: the ICMP errors for oversize packets the datapath dropped (rescue);
//! - [`checksum`]: the Internet checksum of the ICMP packets the agent builds;
//! - [`metrics`]: Prometheus metrics and the HTTP endpoint;
//! - [`privileges`]: the capabilities `run` keeps once the datapath is loaded;
//! - [`health`]: what `/healthz` says (the manager turning, the datapath in place);
//! - [`fault`]: faults a test injects into a debug build (a panicking job, a hung manager);
//! - [`status`]: what `status` shows, read from the pins;
//! - [`check`]: what `check` checks (kernel, permissions);
//! - [`doctor`]: the WSL troubleshooting flow (route, DNS, proxy, path MTU, the agent).

/// Implements `serde::Serialize` for enums with a `fn name(self) -> &'static str`: each value
/// serialises as its name, so text output, JSON and metric labels share one spelling.
macro_rules! serialize_as_name {
    ($($t:ty),+ $(,)?) => {$(
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    )+};
}
pub(crate) use serialize_as_name;

pub mod attach;
pub mod check;
pub mod checksum;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod doctor;
pub mod fault;
pub mod health;
pub mod ifaces;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod pmtu;
pub mod privileges;
pub mod prober;
pub mod reconcile;
pub mod reflect;
pub mod service;
pub mod shared;
pub mod status;
pub mod symptoms;

/// The compiled datapath object (`wslnet-ebpf`, built by build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wslnet"));
