//! wslnet's datapath: a tc classifier for the ingress and egress hooks of managed interfaces.
//!
//! For every packet:
//! 1. [`packet::parse`] finds the IP header (after Ethernet and at most one 802.1Q tag, or at
//!    offset 0 on L3 devices), the transport header and where the peer address is.
//! 2. Egress only: `oversize` counts packets with DF (every IPv6 packet) that are larger than
//!    the path MTU in force for their destination (per segment for GSO packets). When that MTU is
//!    a clamp entry and reflection is on, the packet is dropped and `reflect` hands its first
//!    bytes to the agent (`WSLNET_REFLECT`), which answers its sender with the ICMP error the path
//!    never sent; the agent's own probes (`PROBE_MARK`) are never dropped.
//! 3. TCP SYN / SYN-ACK: [`mss::find`] finds the MSS option and [`mss::rewrite`] lowers it to
//!    path MTU - 40 (IPv4) / - 60 (IPv6), fixing the checksum; egress SYNs are recorded in
//!    `WSLNET_LEARNED` for the agent's prober (repeats to one destination are held back per CPU
//!    in `WSLNET_LEARN_CACHE` and written at most once per `LEARN_REFRESH_JIFFIES`).
//!
//! The path MTU of a peer is the longest matching clamp entry (LPM tries), else the interface
//! default; LPM results are kept in a per-CPU cache (`WSLNET_PEER_CACHE`) that a new
//! `Globals::clamp_generation` empties at once.
//!
//! The verdict is `TC_ACT_UNSPEC` (TCX_NEXT: other programs on the hook still run) for every
//! packet but a reflected one (`TC_ACT_SHOT`), whatever the program could or could not parse.
#![cfg_attr(target_arch = "bpf", no_std)]
// The header loads are inline assembly (`packet::load!`), as aya-ebpf itself uses; the BPF
// target is built with RUSTC_BOOTSTRAP=1 already (build-std).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod datapath;
#[cfg(target_arch = "bpf")]
mod mss;
#[cfg(target_arch = "bpf")]
mod packet;

/// The program is only meaningful for the BPF target; on the host this is an empty binary so
/// that `cargo check --workspace --all-targets` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the BPF verifier rejects any program that could reach this point (there are no
    // panicking paths left after optimisation); this is the conventional aya idiom.
    unsafe { core::hint::unreachable_unchecked() }
}

/// GPL-compatible licence: required for the helpers the datapath calls.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
