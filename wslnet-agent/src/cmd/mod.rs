//! The commands, one module each: its flags (a clap `Args` struct, whose doc comments are its
//! `--help`) and its handler, `run`, which calls the library module that does the work and
//! prints what it found. [`crate::cli`] parses the command line and dispatches here.
//!
//! - [`run`]: the agent ([`crate::service`]);
//! - [`probe`]: one path-MTU search ([`crate::prober`]);
//! - [`status`]: what the pins say ([`crate::status`]);
//! - [`check`]: kernel and permission readiness ([`crate::check`]);
//! - [`doctor`]: the WSL troubleshooting flow ([`crate::doctor`]);
//! - [`detach`]: every attachment and pin removed ([`crate::attach`], [`crate::pins`]).

pub mod check;
pub mod detach;
pub mod doctor;
pub mod probe;
pub mod run;
pub mod status;
