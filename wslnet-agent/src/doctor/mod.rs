//! `wslnet-agent doctor`: the WSL network troubleshooting flow as one command.
//!
//! People who meet these problems walk a decision tree by hand: is this WSL, and in which
//! networking mode; is there a route and does the gateway answer; do the targets answer by IP;
//! does DNS answer, and is it the resolver or the name that is dead; do the proxy variables point
//! at something; what is the largest packet that passes; is wslnet clamping. `doctor` walks it
//! and says, for every check, what it saw and what to do.
//!
//! # Layout
//! - `mod.rs`: the findings ([`Check`], [`Status`], [`Finding`]), the order the checks run in
//!   and what depends on what. The flags, the text and JSON output and the exit status are the
//!   command's ([`crate::cmd::doctor`]).
//! - `environment.rs`: WSL or not, NAT or mirrored, systemd, `/etc/wsl.conf`.
//! - `network.rs`: `route` (default route), `gateway` and `reach` (ICMP echo).
//! - `dns.rs`: `dns` (a query to every configured nameserver for every name; a second resolver
//!   tells a dead resolver from a dead name).
//! - `proxy.rs`: `proxy` (the proxy variables and whether their host accepts a connection).
//! - `path.rs`: `pmtu` (the prober's search against the interface MTU) and `agent` (wslnet's
//!   pins: attached, and each target clamped to what was measured).
//!
//! Every packet it sends is counted ([`Report::packets_sent`]): a fixed number per check and
//! target, never a flood.

mod dns;
mod environment;
mod network;
mod path;
mod proxy;

pub use proxy::VARIABLES as PROXY_VARIABLES;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Targets probed when the user names none: a well-known anycast address that answers echo.
pub const DEFAULT_TARGETS: &[IpAddr] = &[IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))];
/// Names resolved when the user names none.
pub const DEFAULT_NAMES: &[&str] = &["github.com"];
/// The second resolver asked when the user names no target or name of their own: tells a
/// dead configured resolver from a dead name.
pub const DEFAULT_SECOND_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));

/// The checks, in the order they run and are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// WSL or not, NAT or mirrored, systemd, `/etc/wsl.conf`.
    Environment,
    /// A default route and its interface.
    Route,
    /// The default gateway answers ICMP echo.
    Gateway,
    /// Each target answers ICMP echo.
    Reach,
    /// Each configured nameserver answers a query for each name.
    Dns,
    /// The proxy variables point at a host that accepts connections.
    Proxy,
    /// The largest packet that passes to each target, against the interface MTU.
    Pmtu,
    /// wslnet attached, each target clamped to what was measured.
    Agent,
}

impl Check {
    /// The name in text and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Check::Environment => "environment",
            Check::Route => "route",
            Check::Gateway => "gateway",
            Check::Reach => "reach",
            Check::Dns => "dns",
            Check::Proxy => "proxy",
            Check::Pmtu => "pmtu",
            Check::Agent => "agent",
        }
    }
}

crate::serialize_as_name!(Check);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Not run: a check it depends on failed, or it needs root.
    Skip,
    /// Works.
    Ok,
    /// Works, with something to know or to improve.
    Warn,
    /// Broken: the fix says what to do.
    Fail,
}

impl Status {
    /// The name in text and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Skip => "skip",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

crate::serialize_as_name!(Status);

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check.
    pub check: Check,
    /// Its outcome.
    pub status: Status,
    /// One line: what was seen.
    pub summary: String,
    /// What to do (a command or a config line); `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: Check, status: Status, summary: impl Into<String>) -> Self {
        Self {
            check,
            status,
            summary: summary.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Everything `doctor` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One finding per check, in [`Check`] order.
    pub findings: Vec<Finding>,
    /// Packets the checks sent (echo requests, DNS queries, TCP SYNs, probes).
    pub packets_sent: u32,
    /// Wall-clock time of the whole run, milliseconds.
    pub elapsed_ms: u64,
}

impl Report {
    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }
}

/// Packets sent so far, shared by the checks.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pub sent: u32,
}

/// How long one answer (echo reply, DNS answer, TCP handshake) is waited for.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs every check in order; later checks see what earlier ones found. `targets`, `names`
/// and `resolver` are what the user named (`--target`, `--name`, `--resolver`): with none of
/// the first two, [`DEFAULT_TARGETS`], [`DEFAULT_NAMES`] and [`DEFAULT_SECOND_RESOLVER`].
/// `pin_dir` holds wslnet's pins (the `agent` check).
pub async fn diagnose(
    targets: &[IpAddr],
    names: &[String],
    resolver: Option<IpAddr>,
    pin_dir: &Path,
) -> Report {
    let started = Instant::now();
    let own_choice = !targets.is_empty() || !names.is_empty();
    let mut targets = targets.to_vec();
    let mut names = names.to_vec();
    if !own_choice {
        targets = DEFAULT_TARGETS.to_vec();
        names = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    }
    let second_resolver = resolver.or((!own_choice).then_some(DEFAULT_SECOND_RESOLVER));
    let root = nix::unistd::geteuid().is_root();
    let mut budget = Budget::default();
    let mut findings = Vec::new();

    let env = environment::inspect();
    findings.push(env.finding());

    let routes = network::routes(&targets).await;
    findings.push(routes.finding());
    findings.push(network::gateway(&routes, &mut budget).await);
    let reach = network::reach(&targets, &routes, &mut budget).await;
    findings.push(reach.finding());
    findings.push(dns::check(&names, second_resolver, &env, &mut budget).await);
    findings.push(proxy::check(&env, &mut budget).await);

    let agent = path::AgentView::read(pin_dir, root);
    let measured = path::measure(&reach.answered, &mut budget).await;
    findings.push(path::pmtu_finding(&targets, &measured, &agent));
    findings.push(path::agent_finding(&measured, &agent));

    Report {
        findings,
        packets_sent: budget.sent,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// `one` when a summary speaks of `n` == 1 things, else `many`: the endings of the words that
/// agree with the count (`by_count(n, "", "s")` for "nameserver(s)", `by_count(n, "s", "")` for
/// "accept(s)").
pub(crate) fn by_count(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Addresses as a summary lists them: `a, b, c`.
pub(crate) fn join_addrs(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
