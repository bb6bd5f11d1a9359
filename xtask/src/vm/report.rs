//! What a VM run reports: one outcome per planned test, a table per kernel and one line per
//! kernel at the end.

use std::fmt;

/// A test's verdict in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The test decided it cannot run on this kernel and said why
    /// (`wslnet_tests::netns::skip_without_tcx`).
    Skip,
}

impl Verdict {
    /// As the guest writes it in a `RESULT` line (`scripts/vm/guest.sh`); anything else is a
    /// failure.
    pub fn from_guest(word: Option<&str>) -> Self {
        match word {
            Some("PASS") => Verdict::Pass,
            Some("SKIP") => Verdict::Skip,
            _ => Verdict::Fail,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One test's outcome, as the summary shows it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `binary::test`, or `vm::NAME` for the guest's own checks.
    pub label: String,
    pub verdict: Verdict,
    /// Run time in the guest, seconds; none when it never ran.
    pub secs: Option<f64>,
    /// Why it failed or skipped.
    pub note: String,
}

/// The outcomes of one kernel's run and how the run ended.
pub struct KernelReport {
    /// `--kernel` name, e.g. `6.1`.
    pub release: &'static str,
    /// `uname -r` of the kernel booted.
    pub version: String,
    /// "KVM" or "TCG".
    pub accel: &'static str,
    pub outcomes: Vec<Outcome>,
    /// Seconds from the first boot attempt to the guest's end.
    pub secs: f64,
    /// Why the run as a whole failed (the guest could not start, timed out, exited oddly);
    /// none when only the outcomes tell.
    pub error: Option<String>,
}

impl KernelReport {
    /// One report per kernel from the reports of its boots: outcomes in boot order, seconds
    /// added, errors joined.
    pub fn merged(boots: Vec<KernelReport>) -> Vec<KernelReport> {
        let mut out: Vec<KernelReport> = Vec::new();
        for b in boots {
            match out.iter_mut().find(|r| r.release == b.release) {
                None => out.push(b),
                Some(r) => {
                    if r.version == "?" {
                        r.version = b.version;
                        r.accel = b.accel;
                    }
                    r.outcomes.extend(b.outcomes);
                    r.secs += b.secs;
                    r.error = match (r.error.take(), b.error) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        out
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.verdict == verdict)
            .count()
    }

    pub fn passed(&self) -> bool {
        self.error.is_none() && self.count(Verdict::Fail) == 0
    }

    /// The table of every test.
    pub fn print_table(&self) {
        let width = self
            .outcomes
            .iter()
            .map(|o| o.label.len())
            .max()
            .unwrap_or(0);
        for o in &self.outcomes {
            let secs = o
                .secs
                .map(|s| format!("{s:>6.1} s"))
                .unwrap_or_else(|| " ".repeat(8));
            println!(
                "  {:<4}  {:<width$}  {secs}  {}",
                o.verdict, o.label, o.note
            );
        }
    }

    /// The one line this kernel gets in the final summary.
    pub fn line(&self) -> String {
        format!(
            "Linux {} ({}, {}): {} passed, {} failed, {} skipped in {:.0} s{}",
            self.version,
            self.release,
            self.accel,
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip),
            self.secs,
            self.error
                .as_deref()
                .map(|e| format!("; {e}"))
                .unwrap_or_default()
        )
    }
}
