//! `bench/RESULTS.md`: the results ([`Results`]) as Markdown tables, every figure next to its
//! baseline and the ratio, and the targets with met / missed.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    results::{
        Convergence, Footprint, PacketCase, PerPacket, Rescue, Results, RunRate, Throughput,
    },
    stats::Summary,
    throughput::Config,
};

/// `x` with `digits` decimals; "-" where there is no figure (NaN: null in results.json).
pub fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The figure, `None` where there is none (NaN: null in results.json).
fn given(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// A value as results.json writes it (`1.0`, `null`).
fn as_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// "min-max" of a summary, `digits` decimals.
fn range(v: &Summary, digits: usize) -> String {
    format!("{}-{}", num(v.min, digits), num(v.max, digits))
}

/// Writes the title of a subsection of a section (`###`).
fn subsection(md: &mut String, title: &str) {
    let _ = writeln!(md, "### {title}\n");
}

/// Writes a table's header row `head` (`| a | b |`) and the separator row under it.
fn table_head(md: &mut String, head: &str) {
    let columns = head.matches('|').count() - 1;
    let _ = writeln!(md, "{head}\n{}|", "|---".repeat(columns));
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The verdict on summaries that must each stay on the right side of `target` (at least it
/// with `at_least`, else at most): met when every median does; missed when one's whole 95%
/// interval lies on the wrong side; else not resolved, a median on the wrong side but within
/// this run's noise of the target.
fn interval_verdict(summaries: &[&Summary], target: f64, at_least: bool) -> String {
    let ok = |x: f64| if at_least { x >= target } else { x <= target };
    // The end of the interval nearest the target's good side (the range without an interval).
    let best = |v: &Summary| match v.ci95 {
        Some((lo, hi)) => Some(if at_least { hi } else { lo }),
        None => given(if at_least { v.max } else { v.min }),
    };
    if summaries.iter().all(|v| ok(v.median)) {
        "met".into()
    } else if summaries.iter().any(|v| best(v).is_some_and(|b| !ok(b))) {
        "**missed**".into()
    } else {
        "**not resolved**: a median on the wrong side of the target, but its 95% interval reaches it".into()
    }
}

/// Renders the Markdown report of a results document.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# wslnet benchmark results\n");
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench{}` on {} (UTC), in {} s.\n",
        if r.quick { " --quick" } else { "" },
        r.started_utc,
        num(r.seconds, 0)
    );
    table_head(&mut md, "| | |");
    let _ = writeln!(md, "| Kernel | {} |", m.kernel);
    let _ = writeln!(md, "| CPU | {} ({} CPUs) |", m.cpu, m.cpus);
    let _ = writeln!(md, "| Memory | {} |", m.memory);
    let _ = writeln!(
        md,
        "| Load average (1/5/15 min) before / after | {} / {} |",
        first3(&r.load_average.before),
        first3(&r.load_average.after)
    );
    let _ = writeln!(md, "| Tools | {}; {} |\n", m.iperf3, m.nft);
    let _ = writeln!(md, "## Targets\n");
    table_head(&mut md, "| Target | Measured | |");
    let parts: Vec<&dyn Part> = [
        r.per_packet.as_ref().map(|x| x as &dyn Part),
        r.throughput.as_ref().map(|x| x as &dyn Part),
        r.convergence.as_ref().map(|x| x as &dyn Part),
        r.footprint.as_ref().map(|x| x as &dyn Part),
        r.rescue.as_ref().map(|x| x as &dyn Part),
    ]
    .into_iter()
    .flatten()
    .collect();
    for part in &parts {
        part.targets(&mut md);
    }
    let _ = writeln!(md);
    for part in &parts {
        let _ = writeln!(md, "## {}\n", part.title());
        part.section(&mut md);
    }
    let _ = writeln!(md, "## Method\n");
    for line in METHOD {
        let _ = writeln!(md, "- {line}");
    }
    md
}

/// A section's part of the report: its rows of the targets table, and its own titled section after
/// it.
trait Part {
    /// The title of its section.
    fn title(&self) -> String;
    /// Its rows of the targets table (none by default).
    fn targets(&self, _md: &mut String) {}
    /// Its tables, under the title.
    fn section(&self, md: &mut String);
}

/// The three load averages of a `/proc/loadavg` line.
fn first3(loadavg: &str) -> String {
    loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const METHOD: &[&str] = &[
    "Every figure is measured next to its baseline in the same run, interleaved (baseline and candidate alternate; the order rotates each round), and reported as the median over rounds with the range; ratios are taken within a round. Verdicts use the medians. The per-packet table also shows the fastest round of each case over the fastest round of the floor: interference only adds time, so this is the figure least moved by other work on the host. The machine has 2 CPUs shared with other work: see the load average above; ranges show the noise.",
    "Per packet: `BPF_PROG_TEST_RUN` through the raw `bpf(2)` syscall for both the empty program and wslnet (the same code path), `repeat` = 1e6 per call, on the loopback skb of the bench's namespace, with a `__sk_buff` context (gso_size set for the GSO case), from one thread pinned to one CPU (the one the throughput traffic uses), so that a round's floor and case run on the same vCPU. The empty program (`r0 = -1; exit`, TC_ACT_UNSPEC) is assembled and loaded with a raw `BPF_PROG_LOAD` at run time. Each case is first run once and checked (verdict, rewritten MSS and checksum, counters), so each figure measures the path it names.",
    "SYN rewrite: the kernel builds the skb once per call, so with a plain `repeat` only the first run rewrites the MSS; the repeat figure of a SYN is the \"MSS already fits\" path. The rewrite is timed warm, like the other figures: a reset program assembled by the bench runs first in every repetition, puts back the original MSS and checksum and tail-calls wslnet, which rewrites every time (checked: 1000 repetitions, 1000 rewrites, valid checksum). The same reset ahead of the rewritten twin is the baseline, interleaved; the rewrite's cost is the median difference. The cold figure (single runs right after the syscall, fresh frame each, 20000 calls each, difference of medians) is shown too.",
    "Learned-map write: an egress SYN writes its destination into the learned LRU map when the destination is new to the CPU, or once per refresh period (256 jiffies, 1.02 s here); repeats in between are held back in a per-CPU slot. The repeat figures of egress SYNs are therefore the held-back path. The write is timed like the rewrite: a reset program empties the destination's learn-cache slot before each repetition (checked: 1000 repetitions, 1000 writes); the baseline is the same reset with the slot looked up only.",
    "The 64 KiB GSO packet: `BPF_PROG_TEST_RUN` takes linear skbs up to a page, so it is a 3000-byte buffer whose IPv4 header says 65483 bytes, with gso_size 1448; the datapath reads headers only.",
    "Throughput: iperf3 over veth pairs between namespaces, one pair per configuration, all set up once and kept for the section, so that configurations can alternate every second: a round runs a -> b for every configuration, then -R for b -> a, then the connection rate, in an order rotated each round. iperf3's client and server (`-A c,c`) and the connection threads are pinned to one CPU, so the veth's softirq work runs there too: the figures are what one CPU moves, and placement across CPUs no longer varies between runs. The connection rate is client threads in `a` opening TCP connections to an accept-and-drop server thread in `b` and resetting them (SO_LINGER 0): one SYN out of and one SYN-ACK into `a` per connection. wslnet is the real release agent with a static clamp for 10.99.0.0/24: 1500 (the link MTU: full datapath, MSS unchanged, the program's own cost) or 1372 (MSS 1332, compared with the nft rule that sets 1332); the nft rules live in `a`. `rt mtu` is refused by the kernel in the input hook, so that rule is on output only; with a 1500-byte veth it lowers nothing (the rule's cost alone). wslnet is compared with nft by the ratio of the two within each round; a comparison is \"not resolved\" when its median is below 100% but its 95% interval reaches 100%. The programs' own cost on the traffic comes from the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`), enabled only for one extra run per direction after the rounds: they add two clock reads to every program run, which would handicap wslnet in the comparison.",
    "Convergence: `wslnet-agent probe 10.77.3.2 --json` in the black-hole lab (both routers drop frag-needed; the bottleneck is a TAP pair joined by a userspace wire that adds the delay: this kernel has no netem). Time is the prober's own `elapsed_ms`.",
    "Footprint: release agent with default settings; CPU from utime+stime over the window, RSS sampled every second. The 10000 destinations are written into the pinned learned map (unroutable addresses: the agent's searches fail at once and send nothing).",
    "Nothing here is a pass/fail test: targets are reported as met, missed, or not resolved by this run's noise.",
];

/// The largest `value` among `cases` that have one, with the case's id; NaN when none has.
fn worst_case<'a>(
    cases: impl IntoIterator<Item = &'a PacketCase>,
    value: impl Fn(&PacketCase) -> Option<f64>,
) -> (f64, &'a str) {
    cases
        .into_iter()
        .filter_map(|c| Some((value(c)?, c.id.as_str())))
        .fold((f64::NAN, ""), |a, b| {
            if a.0.is_nan() || b.0 > a.0 { b } else { a }
        })
}

/// A case's fastest round over the floor's fastest round (ns): interference only adds time, so
/// this is the per-packet figure least moved by other work on the host.
fn fastest_over_floor(pp: &PerPacket, case: &PacketCase) -> f64 {
    case.repeat.ns.min - pp.floor_ns.min
}

/// A run's rate with its unit ("15.07 Gbit/s", "27126/s").
fn rate(rate: RunRate) -> String {
    match rate {
        RunRate::Iperf { gbit_s } => format!("{} Gbit/s", num(gbit_s, 2)),
        RunRate::Connections { connections_per_s } => format!("{}/s", num(connections_per_s, 0)),
    }
}

/// A ratio summary as "median% (95% CI lo-hi%)", or the range when there is no interval.
fn pct_ci(v: &Summary) -> String {
    let p = |x: f64| match given(x) {
        Some(x) => format!("{:.1}", x * 100.0),
        None => "-".into(),
    };
    match v.ci95 {
        Some((lo, hi)) => format!("{}% (CI {}-{}%)", p(v.median), p(lo), p(hi)),
        None => format!("{}% (range {}-{}%)", p(v.median), p(v.min), p(v.max)),
    }
}

/// "; the programs' own run time on this traffic: a% (a->b) and b% (b->a) of the CPU" for the
/// wslnet 1500 bed, from the run-time statistics pass.
fn cost_note(tp: &Throughput) -> String {
    let row = tp
        .datapath_cost
        .iter()
        .flatten()
        .find(|r| r.config.id == Config::Wslnet1500);
    match row {
        Some(r) => format!(
            "; the programs' own run time on this traffic: {:.2}% (a->b) and {:.2}% (b->a) of the CPU",
            r.a_to_b.cpu_share * 100.0,
            r.b_to_a.cpu_share * 100.0
        ),
        None => String::new(),
    }
}

impl Part for PerPacket {
    fn title(&self) -> String {
        let cpu = self.cpu.map(|c| format!("; on CPU {c}"));
        let s = &self.settings;
        format!(
            "Per-packet cost (BPF_PROG_TEST_RUN, repeat {}, {} rounds{})",
            s.repeat,
            s.rounds,
            cpu.unwrap_or_default()
        )
    }

    fn targets(&self, md: &mut String) {
        let fast: Vec<&PacketCase> = self
            .cases
            .iter()
            .filter(|c| !c.diagnostic && c.rewrite.is_none())
            .collect();
        let over = |c: &PacketCase| c.repeat.over_floor_ns;
        let worst = worst_case(fast.iter().copied(), |c| Some(over(c).median));
        let best = fast.iter().map(|c| over(c).median).fold(f64::NAN, f64::min);
        let worst_ci = fast
            .iter()
            .find(|c| c.id == worst.1)
            .and_then(|c| over(c).ci95)
            .map(|(lo, hi)| format!(", 95% CI {}-{} ns", num(lo, 0), num(hi, 0)))
            .unwrap_or_default();
        let fastest: Vec<f64> = fast.iter().map(|c| fastest_over_floor(self, c)).collect();
        let overs: Vec<&Summary> = fast.iter().map(|c| &c.repeat.over_floor_ns).collect();
        let _ = writeln!(
            md,
            "| Non-SYN fast path within 15 ns of the empty program | {:.0}-{:.0} ns over the floor ({:.0} ns) (worst: {}{worst_ci}); fastest rounds over the fastest floor: {:+.0} to {:+.0} ns | {} |",
            best,
            worst.0,
            self.floor_ns.median,
            worst.1,
            fastest.iter().copied().fold(f64::NAN, f64::min),
            fastest.iter().copied().fold(f64::NAN, f64::max),
            interval_verdict(&overs, 15.0, false)
        );
        if let Some(dscp) = &self.dscp {
            let _ = writeln!(
                md,
                "| DSCP normalisation (`set_dscp`), {}: per packet with it off / on (nothing to write) / the rewrite itself | {:+.1} / {:+.1} ns over the floor; rewrite +{:.1} ns (cold single runs, paired) | info |",
                dscp.label,
                dscp.off_over_floor_ns.median,
                dscp.on_no_write_over_floor_ns.median,
                dscp.cold_rewrite_extra_ns.median,
            );
        }
        let syn_rows = [
            (
                "SYN rewrite under 150 ns",
                worst_case(&self.cases, |c| c.rewrite.as_ref().map(|w| w.ns)),
            ),
            (
                "The same for a destination's first SYN on a CPU in a refresh period (+ learned-map write)",
                worst_case(&self.cases, |c| {
                    c.learn_write.as_ref().map(|w| w.rewritten_ns)
                }),
            ),
        ];
        for (target, (ns, id)) in syn_rows {
            if !ns.is_nan() {
                let _ = writeln!(
                    md,
                    "| {target} | up to {ns:.0} ns/packet ({id}) | {} |",
                    verdict(ns < 150.0)
                );
            }
        }
    }

    fn section(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "Empty tc program (the floor), same run: **{} ns** (range {}).\n",
            num(self.floor_ns.median, 1),
            range(&self.floor_ns, 0)
        );
        table_head(
            md,
            "| Packet | wslnet ns/packet | floor ns | over the floor | ratio | range (ns) | fastest round over the fastest floor |",
        );
        let floor = self.floor_ns.median;
        for c in &self.cases {
            let ns = c.repeat.ns.median;
            let label = if c.rewrite.is_some() {
                format!("{}: MSS already fits (repeat runs)", c.label)
            } else if c.diagnostic {
                format!("{} _(diagnostic)_", c.label)
            } else {
                c.label.clone()
            };
            let fastest = fastest_over_floor(self, c);
            let _ = writeln!(
                md,
                "| {label} | {ns:.1} | {floor:.1} | +{:.1} | {:.1}x | {} | +{fastest:.0} |",
                c.repeat.over_floor_ns.median,
                ns / floor,
                range(&c.repeat.ns, 0)
            );
        }
        for c in &self.cases {
            let Some(w) = &c.rewrite else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {}: **MSS rewritten** (fits + {} ns rewrite, warm; cold: +{} ns) | {:.1} | {floor:.1} | +{:.1} | {:.1}x | rewrite {} ns | |",
                c.label,
                num(w.rewrite_extra_ns.median, 1),
                num(w.cold_rewrite_extra_ns, 0),
                w.ns,
                w.ns - floor,
                w.ns / floor,
                range(&w.rewrite_extra_ns, 0),
            );
        }
        for c in &self.cases {
            let Some(w) = &c.learn_write else {
                continue;
            };
            for (what, ns) in [("MSS fits", w.fits_ns), ("MSS rewritten", w.rewritten_ns)] {
                let _ = writeln!(
                    md,
                    "| {}: {what}, **learned-map write** (a destination's first SYN on a CPU in a refresh period: + {} ns, warm) | {ns:.1} | {floor:.1} | +{:.1} | {:.1}x | write {} ns | |",
                    c.label,
                    num(w.extra_ns.median, 1),
                    ns - floor,
                    ns / floor,
                    range(&w.extra_ns, 0),
                );
            }
        }
        let _ = writeln!(md);
    }
}

impl Part for Throughput {
    fn title(&self) -> String {
        let s = &self.settings;
        format!(
            "Throughput over veth ({} rounds; iperf3 {} s per direction; connections {} s, {} threads; all traffic on CPU {})",
            s.rounds,
            s.iperf_seconds,
            as_json(&s.connection_seconds),
            s.connection_threads,
            self.cpu
        )
    }

    fn targets(&self, md: &mut String) {
        if let Some(w1500) = self
            .configs
            .iter()
            .find(|c| c.config.id == Config::Wslnet1500)
        {
            let ratios = [&w1500.vs_none.a_to_b, &w1500.vs_none.b_to_a];
            let _ = writeln!(
                md,
                "| Throughput with wslnet >= 97% of no program (clamp entry 1500, MSS unchanged: the datapath's own cost) | a->b {}, b->a {}{} | {} |",
                pct_ci(ratios[0]),
                pct_ci(ratios[1]),
                cost_note(self),
                interval_verdict(&ratios, 0.97, true)
            );
        }
        if let Some(cmp) = &self.against_nft {
            let (mut ratios, mut parts) = (Vec::new(), Vec::new());
            for c in cmp {
                for (dir, ratio) in [("a->b", &c.ratio.a_to_b), ("b->a", &c.ratio.b_to_a)] {
                    ratios.push(ratio);
                    parts.push(format!("{} / {} {dir} {}", c.ours, c.theirs, pct_ci(ratio)));
                }
            }
            let _ = writeln!(
                md,
                "| Throughput not below the nftables rule doing the same (paired ratio wslnet / nft per round) | {} | {} |",
                parts.join("; "),
                interval_verdict(&ratios, 1.0, true)
            );
        }
        if let Some(fc) = &self.first_contact_cost {
            let _ = writeln!(
                md,
                "| What safe first contact costs a destination on a wide path until measured (clamp 1280, MSS 1240, against 1500) | throughput a->b {}, b->a {} of the measured clamp's | info |",
                pct_ci(&fc.ratio_a_to_b),
                pct_ci(&fc.ratio_b_to_a),
            );
        }
    }

    fn section(&self, md: &mut String) {
        table_head(
            md,
            "| Configuration | client MSS | a->b Gbit/s | vs none | b->a Gbit/s | vs none | connections/s | vs none |",
        );
        for c in &self.configs {
            let _ = writeln!(
                md,
                "| {} | {} | {} ({}) | {} | {} ({}) | {} | {} ({}) | {} |",
                c.config.label,
                as_json(&c.client_mss),
                num(c.traffic.gbit_s_a_to_b.median, 2),
                range(&c.traffic.gbit_s_a_to_b, 1),
                pct_ci(&c.vs_none.a_to_b),
                num(c.traffic.gbit_s_b_to_a.median, 2),
                range(&c.traffic.gbit_s_b_to_a, 1),
                pct_ci(&c.vs_none.b_to_a),
                num(c.traffic.connections_per_s.median, 0),
                range(&c.traffic.connections_per_s, 0),
                pct_ci(&c.vs_none.connections),
            );
        }
        let _ = writeln!(
            md,
            "\nMedians with the range over rounds in parentheses; \"vs none\" is the median of per-round ratios to no program, with its distribution-free 95% confidence interval (CI).\n"
        );
        if let Some(cmp) = &self.against_nft {
            subsection(
                md,
                "wslnet against the nftables rule doing the same (paired per round)",
            );
            table_head(md, "| wslnet | nft | a->b | b->a | connections/s |");
            for c in cmp {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    c.ours,
                    c.theirs,
                    pct_ci(&c.ratio.a_to_b),
                    pct_ci(&c.ratio.b_to_a),
                    pct_ci(&c.ratio.connections),
                );
            }
            let _ = writeln!(md);
        }
        if let Some(rows) = &self.datapath_cost {
            subsection(
                md,
                "wslnet's programs on this traffic (kernel BPF run-time statistics, one extra run each)",
            );
            table_head(
                md,
                "| Configuration | traffic | rate | program runs/s | ns per run | share of the CPU |",
            );
            for r in rows {
                for (what, c) in [
                    ("iperf3 a->b", &r.a_to_b),
                    ("iperf3 b->a", &r.b_to_a),
                    ("connections", &r.connections),
                ] {
                    let _ = writeln!(
                        md,
                        "| {} | {what} | {} | {} | {} | {:.3}% |",
                        r.config.label,
                        rate(c.rate),
                        num(c.runs_per_s, 0),
                        num(c.ns_per_run, 1),
                        c.cpu_share * 100.0,
                    );
                }
            }
            let _ = writeln!(
                md,
                "\nA run is one packet through one hook (ingress or egress of `a`'s eth0); the share is the programs' run time over the run's duration, on the one CPU that carries all the traffic.\n"
            );
        }
    }
}

impl Part for Convergence {
    fn title(&self) -> String {
        format!(
            "Probe convergence (black-hole lab, {} searches each)",
            self.repeats
        )
    }

    fn targets(&self, md: &mut String) {
        let s = &self.searches;
        let exact = s.iter().all(|x| x.exact);
        let max_rounds = s.iter().map(|x| x.rounds.max).fold(f64::NAN, f64::max);
        let _ = writeln!(
            md,
            "| Exact MTU in <= 3 rounds | {} of {} searches exact; at most {:.0} rounds | {} |",
            s.iter().filter(|x| x.exact).count(),
            s.len(),
            max_rounds,
            verdict(exact && max_rounds <= 3.0)
        );
        let at20 = s
            .iter()
            .filter(|x| x.rtt_ms == 20)
            .map(|x| x.elapsed_ms.max)
            .fold(f64::NAN, f64::max);
        let _ = writeln!(
            md,
            "| Under 1 s at 20 ms RTT | at most {:.0} ms | {} |",
            at20,
            verdict(at20 < 1000.0)
        );
    }

    fn section(&self, md: &mut String) {
        table_head(
            md,
            "| Bottleneck MTU | RTT | found | exact | time (ms) | rounds | probes |",
        );
        for s in &self.searches {
            let found: Vec<String> = s
                .found
                .iter()
                .map(|v| v.map_or("none".into(), |x| x.to_string()))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} ms | {} | {} | {} ({}) | {} | {} |",
                s.bottleneck,
                s.rtt_ms,
                found.join(", "),
                if s.exact { "yes" } else { "**no**" },
                num(s.elapsed_ms.median, 0),
                range(&s.elapsed_ms, 0),
                num(s.rounds.median, 0),
                num(s.probes.median, 0),
            );
        }
        if let Some(d) = &self.download_256k {
            // The table above ends without a blank line.
            let _ = writeln!(md);
            subsection(
                md,
                "256 KB download through the 1372 black hole (curl, srv -> wsl)",
            );
            table_head(md, "| Case | RTT | completed | time |");
            for x in d {
                let time = if x.completed {
                    format!("{} s", num(x.seconds.unwrap_or(f64::NAN), 2))
                } else {
                    format!("never (stalled until the {} s timeout)", x.timeout_s)
                };
                let mut case = x.case.clone();
                if let Some(a) = &x.agent {
                    case += &format!(
                        " (agent start to clamp {}: {:.0} ms)",
                        as_json(&a.clamp_mtu),
                        a.agent_start_to_clamp_ms
                    );
                }
                let _ = writeln!(
                    md,
                    "| {case} | {} ms | {} | {time} |",
                    x.rtt_ms,
                    if x.completed { "yes" } else { "no" },
                );
            }
        }
        let _ = writeln!(md);
    }
}

impl Part for Footprint {
    fn title(&self) -> String {
        "Agent footprint (release build)".into()
    }

    fn targets(&self, md: &mut String) {
        let (rss, cpu) = (self.idle.peak_rss_mb, self.idle.cpu_percent_of_one_core);
        let _ = writeln!(
            md,
            "| Idle agent under 20 MB RSS | peak {rss:.1} MB | {} |",
            verdict(rss < 20.0)
        );
        let _ = writeln!(
            md,
            "| Idle agent under 0.5% of one core | {cpu:.2}% | {} |",
            verdict(cpu < 0.5)
        );
    }

    fn section(&self, md: &mut String) {
        table_head(
            md,
            "| Window | seconds | RSS median (MB) | peak RSS (MB) | CPU (% of one core) | threads |",
        );
        for (label, w) in [
            ("idle".to_string(), &self.idle),
            (
                format!("{} learned destinations", self.learned_destinations),
                &self.with_learned,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} |",
                num(w.seconds, 0),
                num(w.rss_mb.median, 1),
                num(w.peak_rss_mb, 1),
                num(w.cpu_percent_of_one_core, 3),
                w.threads,
            );
        }
        let _ = writeln!(md);
    }
}

impl Part for Rescue {
    fn title(&self) -> String {
        "Reaction and rescue".into()
    }

    fn section(&self, md: &mut String) {
        let (c, sh) = (&self.reflect_cost, &self.shrink);
        table_head(md, "| figure | median | range | n |");
        for (label, v) in [
            (
                "1500 B over a 1372 entry, counted only (reflection off), ns/run",
                &c.counted_only_ns,
            ),
            (
                "the same, dropped with a record for the agent (reflection on), ns/run",
                &c.dropped_and_recorded_ns,
            ),
            (
                "what a reflected packet adds, ns (paired rounds)",
                &c.added_ns,
            ),
            (
                "first SYN to measured clamp, ms (1372 tunnel, 6 new addresses)",
                &self.first_contact.ms,
            ),
            (
                "path shrinks unseen -> first symptom acted on, ms",
                &sh.shrink_to_symptom_ms,
            ),
            ("first symptom -> new clamp, ms", &sh.symptom_to_clamp_ms),
            (
                "path shrinks unseen -> new clamp, ms",
                &sh.shrink_to_clamp_ms,
            ),
            (
                "paced download running across the shrink, s to complete",
                &sh.download_s,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                num(v.median, 1),
                range(v, 1),
                v.n
            );
        }
        let _ = writeln!(
            md,
            "\nDownloads completed across the shrink: {} of {} (nominal length {} s at the paced \
             rate). The agent's ICMP error itself is sent from user space (a raw socket), outside \
             these figures.\n",
            sh.downloads_completed,
            sh.downloads,
            num(sh.nominal_download_s, 2)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed RESULTS.md is the report of the committed results.json, to the byte
    /// (`cargo xtask bench --report-only` renders it again).
    #[test]
    fn committed_report_is_rendered_from_committed_results() {
        let results: Results = serde_json::from_str(include_str!("../../../bench/results.json"))
            .expect("results.json loads");
        assert_eq!(
            markdown(&results),
            include_str!("../../../bench/RESULTS.md")
        );
    }
}
