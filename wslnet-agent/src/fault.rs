//! Faults a test injects into a debug build through [`ENV`], to show that `run` notices what
//! should never happen, counts it, and recovers or exits for systemd to restart it: nothing
//! else makes a probe job panic or the path-MTU manager hang on demand. Release builds never
//! read the variable: every check is `false` there.

/// The environment variable naming the fault to inject ([`Fault::name`]).
pub const ENV: &str = "WSLNET_FAULT";

/// A fault that [`ENV`] can inject, each once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The first path-MTU job panics (its destination must be measured again later).
    JobPanic,
    /// The path-MTU manager panics at its first tick (`run` must exit non-zero).
    ManagerPanic,
    /// The path-MTU manager waits forever at its first tick, as in a deadlock, while the rest
    /// of `run` goes on (`/healthz` must say so).
    ManagerStall,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 3] = [Fault::JobPanic, Fault::ManagerPanic, Fault::ManagerStall];

    /// The value of [`ENV`] that injects it.
    pub fn name(self) -> &'static str {
        match self {
            Fault::JobPanic => "job-panic",
            Fault::ManagerPanic => "manager-panic",
            Fault::ManagerStall => "manager-stall",
        }
    }

    /// True the first time it is asked for the fault [`ENV`] names (debug builds only).
    pub fn strikes(self) -> bool {
        #[cfg(debug_assertions)]
        {
            use std::sync::{
                OnceLock,
                atomic::{AtomicBool, Ordering},
            };
            static INJECTED: OnceLock<Option<Fault>> = OnceLock::new();
            static STRUCK: AtomicBool = AtomicBool::new(false);
            let injected = INJECTED.get_or_init(|| {
                let name = std::env::var(ENV).ok()?;
                Fault::ALL.into_iter().find(|f| f.name() == name)
            });
            *injected == Some(self) && !STRUCK.swap(true, Ordering::SeqCst)
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = self;
            false
        }
    }
}
