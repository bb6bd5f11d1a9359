//! Empty on the host: the datapath is the `wslnet` binary (src/main.rs), built for
//! `bpfel-unknown-none` by wslnet-agent's build.rs. This library exists so that the agent can
//! name this crate as a build dependency and be rebuilt when the datapath changes.
#![no_std]
