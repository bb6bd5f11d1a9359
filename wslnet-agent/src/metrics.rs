//! Prometheus metrics and the HTTP endpoint (`/metrics`, `/healthz`).
//!
//! Datapath counters live in the per-CPU map; at each scrape the agent sums the CPUs and advances
//! the Prometheus counters by what changed since the last scrape, so a restarted agent that
//! adopted the pinned maps continues from their values.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, sync::Mutex};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use wslnet_common::{CounterDef, Counters, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6};

/// Most connections to the metrics endpoint served at once. Prometheus keeps one per target;
/// the rest is people with curl. More wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send a request's headers before its connection is closed (a
/// client that never finishes them would hold a slot for ever).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest life of one connection, keep-alive included; a scraper reconnects.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// First and longest pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// An attached interface, for labelling.
#[derive(Debug, Clone)]
pub struct IfaceLabel {
    /// Counter slot in the datapath.
    pub slot: u32,
    /// Interface name.
    pub name: String,
    /// How it is attached (label `mode`: tcx, clsact).
    pub mode: crate::attach::Mode,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// The datapath counters, one for each of [`Counters::FIELDS`] (in its order): the family
    /// it is exported in, those of one family shared (`wslnet_tcp_syn_packets_total`,
    /// `wslnet_mss_clamped_total`, `wslnet_mss_unchanged_total`,
    /// `wslnet_unparseable_packets_total` by interface, direction and family;
    /// `wslnet_oversize_df_packets_total`, `wslnet_oversize_dropped_packets_total`,
    /// `wslnet_dscp_rewritten_total` by interface and family), packets.
    datapath: Vec<IntCounterVec>,
    /// `wslnet_icmp_errors_sent_total{interface,family,kind}`: ICMP "fragmentation needed" /
    /// "packet too big" the agent sent, messages; kind = local (to the local stack, for a
    /// packet the datapath dropped), peer (to the peer of a local connection whose segments are
    /// too big for the path to us).
    pub icmp_errors: IntCounterVec,
    /// `wslnet_icmp_errors_limited_total{family}`: errors not sent because their destination's
    /// rate limit (`reflect_per_sec`) was spent, messages.
    pub icmp_errors_limited: IntCounterVec,
    /// `wslnet_path_mtu_bytes{target}`: measured path MTU of each configured target, bytes
    /// (0 while unknown or unreachable).
    pub path_mtu: IntGaugeVec,
    /// `wslnet_interface_attached{interface,mode}`: 1 for each interface the datapath is on.
    attached: IntGaugeVec,
    /// `wslnet_interface_matched{interface}`: 1 for each present interface whose name matches
    /// the interface globs, attached or not (matched and not attached: attaching failed).
    matched: IntGaugeVec,
    /// `wslnet_build_info{version,kernel}`: always 1.
    build_info: IntGaugeVec,
    /// `wslnet_probe_searches_total{outcome}`: path-MTU searches and re-checks finished;
    /// outcome = found, unreachable, error, panicked (`pmtu::Ended`).
    pub searches: IntCounterVec,
    /// `wslnet_probe_search_methods_total{method}`: path MTUs found, by the evidence that set
    /// them (icmp, icmp-error, tcp, tcp-below-icmp, return-fragments; see `prober::Method`).
    pub search_methods: IntCounterVec,
    /// `wslnet_probe_search_duration_seconds`: time a full search took, seconds.
    pub search_duration: Histogram,
    /// `wslnet_probe_packets_total`: probe packets sent (searches and re-checks).
    pub probe_packets: IntCounter,
    /// `wslnet_symptom_rechecks_total{kind}`: re-measurements started at once by a stalled
    /// local connection (kind = waiting, stopped, retransmitting), or by another destination of
    /// the same interface found narrower (kind = sibling).
    pub symptom_rechecks: IntCounterVec,
    /// `wslnet_link_pins_restored_total`: TCX link pins that were removed while the agent ran
    /// and pinned again (the held link kept the datapath attached meanwhile).
    pub link_pins_restored: IntCounter,
    /// `wslnet_netlink_overruns_total`: times the kernel dropped interface and route events
    /// (the agent then lists every interface again).
    pub netlink_overruns: IntCounter,
    /// `wslnet_clamp_entries{origin}`: entries in the clamp table; origin = static, probed.
    pub clamp_entries: IntGaugeVec,
    /// `wslnet_learned_destinations`: destinations of outgoing SYNs in the learned map.
    pub learned: IntGauge,
    /// `wslnet_unreachable_destinations`: destinations kept measured whose latest search got
    /// no answer at all (each waits ever longer before the next).
    pub unreachable: IntGauge,
    /// `wslnet_filters_restored_total`: wslnet tc filters (clsact mode) found removed under the
    /// running agent and attached again.
    pub filters_restored: IntCounter,
    /// `wslnet_pending_destinations`: learned destinations waiting for the search budget
    /// (`probe.searches_per_minute`); admitted most recently seen first.
    pub pending: IntGauge,
    last: Mutex<HashMap<(u32, u32, u32), Counters>>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

const DIRS: [(u32, &str); 2] = [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")];
const FAMILIES: [(u32, &str); 2] = [(FAMILY_V4, "ipv4"), (FAMILY_V6, "ipv6")];

/// The label of an index in `DIRS` or `FAMILIES` (the first for an unknown index).
fn label_of(labels: &[(u32, &'static str)], index: u32) -> &'static str {
    labels
        .iter()
        .find(|(i, _)| *i == index)
        .map_or(labels[0].1, |(_, name)| name)
}

/// Registers the metric family of each datapath counter, once a family, and returns each
/// counter's, in the order of [`Counters::FIELDS`].
fn datapath_families(r: &Registry) -> Result<Vec<IntCounterVec>> {
    let mut registered: HashMap<&str, IntCounterVec> = HashMap::new();
    let mut out = Vec::new();
    for def in &Counters::FIELDS {
        let family = def.metric;
        let vec = match registered.get(family.name) {
            Some(vec) => vec.clone(),
            None => {
                let mut labels = vec!["interface"];
                if !family.egress_only {
                    labels.push("direction");
                }
                labels.push("family");
                labels.extend(family.label);
                let vec = counter_vec(r, family.name, family.help, &labels)?;
                registered.insert(family.name, vec.clone());
                vec
            }
        };
        out.push(vec);
    }
    Ok(out)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let r = Registry::new();
        let m = Self {
            datapath: datapath_families(&r)?,
            icmp_errors: counter_vec(
                &r,
                "wslnet_icmp_errors_sent_total",
                "ICMP fragmentation-needed / packet-too-big messages the agent sent, by kind \
                 (local: to the local stack, for a packet the datapath dropped; peer: to the \
                 peer of a connection whose segments are too big for the path).",
                &["interface", "family", "kind"],
            )?,
            icmp_errors_limited: counter_vec(
                &r,
                "wslnet_icmp_errors_limited_total",
                "ICMP errors not sent because their destination's rate limit was spent.",
                &["family"],
            )?,
            path_mtu: gauge_vec(
                &r,
                "wslnet_path_mtu_bytes",
                "Measured path MTU of a configured target in bytes (0 while unknown or \
                 unreachable).",
                &["target"],
            )?,
            attached: gauge_vec(
                &r,
                "wslnet_interface_attached",
                "1 for each interface the datapath is attached to, by attach mode.",
                &["interface", "mode"],
            )?,
            matched: gauge_vec(
                &r,
                "wslnet_interface_matched",
                "1 for each present interface whose name matches the interface globs, attached \
                 or not.",
                &["interface"],
            )?,
            build_info: gauge_vec(
                &r,
                "wslnet_build_info",
                "wslnet version and the running kernel; always 1.",
                &["version", "kernel"],
            )?,
            searches: counter_vec(
                &r,
                "wslnet_probe_searches_total",
                "Path-MTU searches finished, by outcome (found, unreachable, error, panicked).",
                &["outcome"],
            )?,
            search_methods: counter_vec(
                &r,
                "wslnet_probe_search_methods_total",
                "Path MTUs found, by the evidence that set them (icmp: echo; icmp-error: an ICMP \
                 error, confirmed; tcp: TCP alone; tcp-below-icmp: TCP carried less than echo; \
                 return-fragments: echo replies came back fragmented).",
                &["method"],
            )?,
            search_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "wslnet_probe_search_duration_seconds",
                        "Time a full path-MTU search took, in seconds.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            probe_packets: counter(
                &r,
                "wslnet_probe_packets_total",
                "Probe packets sent by path-MTU searches and re-checks.",
            )?,
            link_pins_restored: counter(
                &r,
                "wslnet_link_pins_restored_total",
                "TCX link pins removed while the agent ran and pinned again by it.",
            )?,
            netlink_overruns: counter(
                &r,
                "wslnet_netlink_overruns_total",
                "Times the kernel dropped interface and route events; every interface was \
                 listed again.",
            )?,
            symptom_rechecks: counter_vec(
                &r,
                "wslnet_symptom_rechecks_total",
                "Path re-measurements started at once by a black-hole symptom, by kind \
                 (waiting, stopped, retransmitting: a stalled local connection; sibling: another \
                 destination on the same interface was found narrower).",
                &["kind"],
            )?,
            clamp_entries: gauge_vec(
                &r,
                "wslnet_clamp_entries",
                "Entries in the clamp table, by origin (static, probed).",
                &["origin"],
            )?,
            learned: gauge(
                &r,
                "wslnet_learned_destinations",
                "Destinations of outgoing SYNs in the learned map.",
            )?,
            unreachable: gauge(
                &r,
                "wslnet_unreachable_destinations",
                "Destinations kept measured whose latest search got no answer at all.",
            )?,
            filters_restored: counter(
                &r,
                "wslnet_filters_restored_total",
                "wslnet tc filters (clsact mode) found removed under the running agent and attached again.",
            )?,
            pending: gauge(
                &r,
                "wslnet_pending_destinations",
                "Learned destinations waiting for the search budget, admitted most recently seen first.",
            )?,
            registry: r,
            last: Mutex::new(HashMap::new()),
        };
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &kernel])
            .set(1);
        for t in crate::symptoms::Trigger::ALL {
            m.symptom_rechecks.with_label_values(&[t.label()]);
        }
        for (_, fam) in FAMILIES {
            m.icmp_errors_limited.with_label_values(&[fam]);
        }
        for outcome in crate::pmtu::SearchOutcome::ALL {
            m.searches.with_label_values(&[outcome.label()]);
        }
        for m2 in crate::prober::Method::ALL {
            m.search_methods.with_label_values(&[m2.label()]);
        }
        for origin in crate::maps::Origin::ALL {
            m.clamp_entries.with_label_values(&[origin.name()]);
        }
        Ok(m)
    }

    /// Marks an interface attached (creating its counter series at 0).
    pub fn interface_attached(&self, iface: &IfaceLabel) {
        self.attached
            .with_label_values(&[iface.name.as_str(), iface.mode.name()])
            .set(1);
        for (dir, _) in DIRS {
            for (fam, _) in FAMILIES {
                self.datapath_series(iface, dir, fam, |_, _| {});
            }
        }
        for (_, fam) in FAMILIES {
            for kind in crate::reflect::ErrorKind::ALL {
                self.icmp_errors
                    .with_label_values(&[iface.name.as_str(), fam, kind.label()]);
            }
        }
    }

    /// The label of a family index (`FAMILY_V4` / `FAMILY_V6`).
    pub fn family_label(family: u32) -> &'static str {
        label_of(&FAMILIES, family)
    }

    /// Sets (`true`) or removes an interface's `matched` series.
    pub fn interface_matched(&self, name: &str, matched: bool) {
        if matched {
            self.matched.with_label_values(&[name]).set(1);
        } else {
            let _ = self.matched.remove_label_values(&[name]);
        }
    }

    /// Removes an interface's `attached` series.
    pub fn interface_detached(&self, name: &str, mode: crate::attach::Mode) {
        let _ = self.attached.remove_label_values(&[name, mode.name()]);
    }

    /// Advances the datapath counters of `ifaces` to the values read by `read`.
    pub fn update_counters(
        &self,
        ifaces: &[IfaceLabel],
        read: impl Fn(u32, u32, u32) -> Option<Counters>,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for iface in ifaces {
            for (dir, _) in DIRS {
                for (fam, _) in FAMILIES {
                    let Some(now) = read(iface.slot, dir, fam) else {
                        continue;
                    };
                    let key = (iface.slot, dir, fam);
                    let prev = last.insert(key, now).unwrap_or_default();
                    self.datapath_series(iface, dir, fam, |def, series| {
                        series.inc_by((def.get)(&now).saturating_sub((def.get)(&prev)));
                    });
                }
            }
        }
    }

    /// Calls `f` with each datapath counter's series of an interface, direction and family
    /// (creating it at 0); egress-only counters have no ingress series.
    fn datapath_series(
        &self,
        iface: &IfaceLabel,
        dir: u32,
        family: u32,
        mut f: impl FnMut(&CounterDef, IntCounter),
    ) {
        for (def, vec) in Counters::FIELDS.iter().zip(&self.datapath) {
            if def.metric.egress_only && dir != DIR_EGRESS {
                continue;
            }
            let mut labels = vec![iface.name.as_str()];
            if !def.metric.egress_only {
                labels.push(label_of(&DIRS, dir));
            }
            labels.push(label_of(&FAMILIES, family));
            labels.extend(def.label_value);
            f(def, vec.with_label_values(&labels));
        }
    }

    /// Forgets the last-seen values of a counter slot (before it is reused).
    pub fn forget_slot(&self, slot: u32) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|(s, _, _), _| *s != slot);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics` (calling `render` at each scrape) and `/healthz` (200 `ok`, or 503 with
/// what `health` says is wrong) on `addr` until the task is dropped. Binding happens before this returns, so a busy port is reported at start.
///
/// Any local user can connect, so no client may take the agent down: at most
/// [`MAX_CONNECTIONS`] are served at once (the rest wait in the accept queue, costing no file
/// descriptor), a client gets [`HEADER_READ_TIMEOUT`] to send its headers and
/// [`CONNECTION_LIFETIME`] in all, and a failing `accept` is retried after a growing pause.
pub async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics endpoint to {addr}; pick another with --metrics-addr")
    })?;
    tracing::info!(%addr, "serving metrics on /metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // A slot first: while every slot is taken, further connections wait in the
            // kernel's accept queue and cost this process no file descriptor.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    stream
                }
                Err(e) => {
                    // Out of file descriptors (or memory): retrying at once would spin.
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let render = render.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let render = render.clone();
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(respond(&req, render, &*health).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(slot);
            });
        }
    }))
}

/// Answers one request. A scrape renders on tokio's blocking pool: it walks the maps (a
/// system call per entry, up to 16,384 learned destinations), which must not hold up the
/// runtime's one thread, where the path-MTU manager runs.
async fn respond(
    req: &Request<Incoming>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    health: &(dyn Fn() -> Result<(), String> + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => match tokio::task::spawn_blocking(move || render()).await {
            Ok(text) => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("rendering the metrics failed: {e}\n"),
            ),
        },
        "/healthz" => match health() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy:\n{why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The datapath counters keep the metric names, labels and HELP texts dashboards use
    /// (checked against the output before the counters were driven by `Counters::FIELDS`), and
    /// each series is advanced by what its counter moved between two scrapes.
    #[test]
    fn datapath_counters_keep_their_metric_names_and_labels() {
        let m = Metrics::new().unwrap();
        let eth = IfaceLabel {
            slot: 1,
            name: "eth9".into(),
            mode: crate::attach::Mode::Tcx,
        };
        m.interface_attached(&eth);
        // Counter i of row (dir, family) reads round * (100 * row + i + 1).
        for round in 1..3u64 {
            m.update_counters(std::slice::from_ref(&eth), |_, dir, fam| {
                let mut c = Counters::default();
                for (i, f) in Counters::FIELDS.iter().enumerate() {
                    *(f.get_mut)(&mut c) = round * (100 * u64::from(dir * 2 + fam) + i as u64 + 1);
                }
                Some(c)
            });
        }
        let text = m.render();
        for line in [
            "# HELP wslnet_tcp_syn_packets_total TCP SYN and SYN-ACK segments seen by the datapath.",
            r#"wslnet_tcp_syn_packets_total{direction="ingress",family="ipv4",interface="eth9"} 2"#,
            "# HELP wslnet_mss_clamped_total SYN and SYN-ACK segments whose MSS option was lowered \
             to the path MTU.",
            r#"wslnet_mss_clamped_total{direction="egress",family="ipv6",interface="eth9"} 604"#,
            "# HELP wslnet_mss_unchanged_total SYN and SYN-ACK segments left unchanged, by reason \
             (already_low, no_clamp, no_option).",
            "# TYPE wslnet_mss_unchanged_total counter",
            r#"wslnet_mss_unchanged_total{direction="egress",family="ipv4",interface="eth9",reason="already_low"} 406"#,
            r#"wslnet_mss_unchanged_total{direction="ingress",family="ipv6",interface="eth9",reason="no_clamp"} 208"#,
            r#"wslnet_mss_unchanged_total{direction="ingress",family="ipv4",interface="eth9",reason="no_option"} 10"#,
            "# HELP wslnet_unparseable_packets_total Packets passed untouched because a header or \
             the TCP options were malformed or truncated.",
            r#"wslnet_unparseable_packets_total{direction="egress",family="ipv4",interface="eth9"} 412"#,
            "# HELP wslnet_oversize_df_packets_total Egress packets with DF (all IPv6) larger than \
             the path MTU in force for their destination.",
            r#"wslnet_oversize_df_packets_total{family="ipv4",interface="eth9"} 414"#,
            "# HELP wslnet_oversize_dropped_packets_total Egress oversize DF packets the datapath \
             dropped to answer their sender with an ICMP error (their destination has a clamp \
             entry, reflection is on).",
            r#"wslnet_oversize_dropped_packets_total{family="ipv6",interface="eth9"} 616"#,
            "# HELP wslnet_dscp_rewritten_total Egress packets whose DSCP the datapath set to the \
             configured set_dscp (packets already carrying it are not counted).",
            r#"wslnet_dscp_rewritten_total{family="ipv4",interface="eth9"} 418"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line}\nmissing from\n{text}"
            );
        }
        // syn, clamped, unparseable and 3 reasons unchanged, each in 4 rows (2 directions x 2
        // families); 3 egress-only counters in 2 rows.
        let series = text
            .lines()
            .filter(|l| l.starts_with("wslnet_") && l.contains(r#"interface="eth9""#))
            .filter(|l| !l.starts_with("wslnet_icmp_errors") && !l.starts_with("wslnet_interface"))
            .count();
        assert_eq!(series, 6 * 4 + 3 * 2);
    }
}
