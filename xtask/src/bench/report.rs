//! `bench/RESULTS.md`: the results as Markdown tables, every figure next to its baseline and
//! the ratio, and the targets with met / missed.

use std::fmt::Write as _;

use serde_json::Value;

pub fn num(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

fn range(v: &Value, digits: usize) -> String {
    format!("{}-{}", num(&v["min"], digits), num(&v["max"], digits))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The verdict on summaries (each with a median and a 95% interval `ci95`) that must each stay
/// on the right side of `target` (at least it with `at_least`, else at most): met when every
/// median does; missed when one's whole interval lies on the wrong side; else not resolved,
/// a median on the wrong side but within this run's noise of the target.
fn interval_verdict(summaries: &[&Value], target: f64, at_least: bool) -> String {
    let ok = |x: f64| if at_least { x >= target } else { x <= target };
    // The end of the interval nearest the target's good side (the range without an interval).
    let best = |v: &Value| {
        let (ci, end) = if at_least { (1, "max") } else { (0, "min") };
        v["ci95"][ci].as_f64().or(v[end].as_f64())
    };
    if summaries.iter().all(|v| ok(med(v))) {
        "met".into()
    } else if summaries.iter().any(|v| best(v).is_some_and(|b| !ok(b))) {
        "**missed**".into()
    } else {
        "**not resolved**: a median on the wrong side of the target, but its 95% interval reaches it".into()
    }
}

/// Renders the Markdown report of a results document.
pub fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let m = &r["machine"];
    let _ = writeln!(md, "# wslnet benchmark results\n");
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench{}` on {} (UTC), in {} s.\n",
        if r["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        r["started_utc"].as_str().unwrap_or("?"),
        num(&r["seconds"], 0)
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| Kernel | {} |", m["kernel"].as_str().unwrap_or("?"));
    let _ = writeln!(
        md,
        "| CPU | {} ({} CPUs) |",
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"].as_str().unwrap_or("?")
    );
    let _ = writeln!(md, "| Memory | {} |", m["memory"].as_str().unwrap_or("?"));
    let _ = writeln!(
        md,
        "| Load average (1/5/15 min) before / after | {} / {} |",
        first3(&r["load_average"]["before"]),
        first3(&r["load_average"]["after"])
    );
    let _ = writeln!(
        md,
        "| Tools | {}; {} |\n",
        m["iperf3"].as_str().unwrap_or("?"),
        m["nft"].as_str().unwrap_or("?")
    );
    targets(&mut md, r);
    per_packet(&mut md, &r["per_packet"]);
    throughput(&mut md, &r["throughput"]);
    convergence(&mut md, &r["convergence"]);
    footprint(&mut md, &r["footprint"]);
    super::rescue::markdown(&mut md, &r["rescue"]);
    let _ = writeln!(md, "## Method\n");
    for line in METHOD {
        let _ = writeln!(md, "- {line}");
    }
    md
}

fn first3(v: &Value) -> String {
    v.as_str()
        .unwrap_or("?")
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

fn cases(pp: &Value) -> Vec<&Value> {
    pp["cases"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn configs(tp: &Value) -> Vec<&Value> {
    tp["configs"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn config<'a>(tp: &'a Value, id: &str) -> Option<&'a Value> {
    configs(tp).into_iter().find(|c| c["id"] == id)
}

/// The largest `value` among `cases` that have one, with the case's id; NaN when none has.
fn worst_case<'a>(
    cases: impl IntoIterator<Item = &'a Value>,
    value: impl Fn(&Value) -> Option<f64>,
) -> (f64, &'a str) {
    cases
        .into_iter()
        .filter_map(|c| Some((value(c)?, c["id"].as_str().unwrap_or(""))))
        .fold((f64::NAN, ""), |a, b| {
            if a.0.is_nan() || b.0 > a.0 { b } else { a }
        })
}

/// A case's fastest round over the floor's fastest round (ns): interference only adds time, so
/// this is the per-packet figure least moved by other work on the host.
fn fastest_over_floor(pp: &Value, case: &Value) -> f64 {
    let min = |v: &Value| v["min"].as_f64().unwrap_or(f64::NAN);
    min(&case["repeat"]["ns"]) - min(&pp["floor_ns"])
}

fn targets(md: &mut String, r: &Value) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| Target | Measured | |\n|---|---|---|");
    let pp = &r["per_packet"];
    if pp.is_object() {
        let fast: Vec<&Value> = cases(pp)
            .into_iter()
            .filter(|c| c["diagnostic"] != true && c["rewrite"].is_null())
            .collect();
        fn over<'a>(c: &&'a Value) -> &'a Value {
            &c["repeat"]["over_floor_ns"]
        }
        let worst = worst_case(fast.iter().copied(), |c| Some(med(over(&c))));
        let best = fast.iter().map(|c| med(over(c))).fold(f64::NAN, f64::min);
        let worst_ci = fast
            .iter()
            .find(|c| c["id"] == worst.1)
            .and_then(|c| over(c)["ci95"].as_array())
            .map(|ci| format!(", 95% CI {}-{} ns", num(&ci[0], 0), num(&ci[1], 0)))
            .unwrap_or_default();
        let fastest: Vec<f64> = fast.iter().map(|c| fastest_over_floor(pp, c)).collect();
        let _ = writeln!(
            md,
            "| Non-SYN fast path within 15 ns of the empty program | {:.0}-{:.0} ns over the floor ({:.0} ns) (worst: {}{worst_ci}); fastest rounds over the fastest floor: {:+.0} to {:+.0} ns | {} |",
            best,
            worst.0,
            med(&pp["floor_ns"]),
            worst.1,
            fastest.iter().copied().fold(f64::NAN, f64::min),
            fastest.iter().copied().fold(f64::NAN, f64::max),
            interval_verdict(&fast.iter().map(over).collect::<Vec<_>>(), 15.0, false)
        );
        let dscp = &pp["dscp"];
        if dscp.is_object() {
            let _ = writeln!(
                md,
                "| DSCP normalisation (`set_dscp`), {}: per packet with it off / on (nothing to write) / the rewrite itself | {:+.1} / {:+.1} ns over the floor; rewrite +{:.1} ns (cold single runs, paired) | info |",
                dscp["label"].as_str().unwrap_or("?"),
                med(&dscp["off_over_floor_ns"]),
                med(&dscp["on_no_write_over_floor_ns"]),
                med(&dscp["cold_rewrite_extra_ns"]),
            );
        }
        let syn_rows = [
            (
                "SYN rewrite under 150 ns",
                worst_case(cases(pp), |c| c["rewrite"]["ns"].as_f64()),
            ),
            (
                "The same for a destination's first SYN on a CPU in a refresh period (+ learned-map write)",
                worst_case(cases(pp), |c| c["learn_write"]["rewritten_ns"].as_f64()),
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
    let tp = &r["throughput"];
    if let Some(w1500) = config(tp, "wslnet_1500") {
        let ratios = [&w1500["ratio_a_to_b"], &w1500["ratio_b_to_a"]];
        let _ = writeln!(
            md,
            "| Throughput with wslnet >= 97% of no program (clamp entry 1500, MSS unchanged: the datapath's own cost) | a->b {}, b->a {}{} | {} |",
            pct_ci(ratios[0]),
            pct_ci(ratios[1]),
            cost_note(tp),
            interval_verdict(&ratios, 0.97, true)
        );
    }
    if let Some(cmp) = tp["against_nft"].as_array() {
        let (mut ratios, mut parts) = (Vec::new(), Vec::new());
        for c in cmp {
            for (dir, key) in [("a->b", "ratio_a_to_b"), ("b->a", "ratio_b_to_a")] {
                ratios.push(&c[key]);
                parts.push(format!(
                    "{} / {} {dir} {}",
                    c["ours"].as_str().unwrap_or("?"),
                    c["theirs"].as_str().unwrap_or("?"),
                    pct_ci(&c[key])
                ));
            }
        }
        let _ = writeln!(
            md,
            "| Throughput not below the nftables rule doing the same (paired ratio wslnet / nft per round) | {} | {} |",
            parts.join("; "),
            interval_verdict(&ratios, 1.0, true)
        );
    }
    let fc = &tp["first_contact_cost"];
    if fc.is_object() {
        let _ = writeln!(
            md,
            "| What safe first contact costs a destination on a wide path until measured (clamp 1280, MSS 1240, against 1500) | throughput a->b {}, b->a {} of the measured clamp's | info |",
            pct_ci(&fc["ratio_a_to_b"]),
            pct_ci(&fc["ratio_b_to_a"]),
        );
    }
    let cv = &r["convergence"];
    if let Some(s) = cv["searches"].as_array() {
        let exact = s.iter().all(|x| x["exact"] == true);
        let max_rounds = s
            .iter()
            .map(|x| x["rounds"]["max"].as_f64().unwrap_or(f64::NAN))
            .fold(f64::NAN, f64::max);
        let _ = writeln!(
            md,
            "| Exact MTU in <= 3 rounds | {} of {} searches exact; at most {:.0} rounds | {} |",
            s.iter().filter(|x| x["exact"] == true).count(),
            s.len(),
            max_rounds,
            verdict(exact && max_rounds <= 3.0)
        );
        let at20 = s
            .iter()
            .filter(|x| x["rtt_ms"] == 20)
            .map(|x| x["elapsed_ms"]["max"].as_f64().unwrap_or(f64::NAN))
            .fold(f64::NAN, f64::max);
        let _ = writeln!(
            md,
            "| Under 1 s at 20 ms RTT | at most {:.0} ms | {} |",
            at20,
            verdict(at20 < 1000.0)
        );
    }
    let fp = &r["footprint"];
    if fp.is_object() {
        let rss = fp["idle"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        let cpu = fp["idle"]["cpu_percent_of_one_core"]
            .as_f64()
            .unwrap_or(f64::NAN);
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
    let _ = writeln!(md);
}

fn per_packet(md: &mut String, pp: &Value) {
    if !pp.is_object() {
        return;
    }
    let _ = writeln!(
        md,
        "## Per-packet cost (BPF_PROG_TEST_RUN, repeat {}, {} rounds{})\n",
        pp["repeat"],
        pp["rounds"],
        pp["cpu"]
            .as_u64()
            .map(|c| format!("; on CPU {c}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "Empty tc program (the floor), same run: **{} ns** (range {}).\n",
        num(&pp["floor_ns"]["median"], 1),
        range(&pp["floor_ns"], 0)
    );
    let _ = writeln!(
        md,
        "| Packet | wslnet ns/packet | floor ns | over the floor | ratio | range (ns) | fastest round over the fastest floor |\n|---|---|---|---|---|---|---|"
    );
    let floor = med(&pp["floor_ns"]);
    for c in cases(pp) {
        let ns = med(&c["repeat"]["ns"]);
        let label = c["label"].as_str().unwrap_or("?");
        let label = if c["rewrite"].is_object() {
            format!("{label}: MSS already fits (repeat runs)")
        } else if c["diagnostic"] == true {
            format!("{label} _(diagnostic)_")
        } else {
            label.to_string()
        };
        let fastest = fastest_over_floor(pp, c);
        let _ = writeln!(
            md,
            "| {label} | {ns:.1} | {floor:.1} | +{:.1} | {:.1}x | {} | +{fastest:.0} |",
            med(&c["repeat"]["over_floor_ns"]),
            ns / floor,
            range(&c["repeat"]["ns"], 0)
        );
    }
    for c in cases(pp) {
        let w = &c["rewrite"];
        if !w.is_object() {
            continue;
        }
        let ns = w["ns"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {}: **MSS rewritten** (fits + {} ns rewrite, warm; cold: +{} ns) | {ns:.1} | {floor:.1} | +{:.1} | {:.1}x | rewrite {} ns | |",
            c["label"].as_str().unwrap_or("?"),
            num(&w["rewrite_extra_ns"]["median"], 1),
            num(&w["cold_rewrite_extra_ns"], 0),
            ns - floor,
            ns / floor,
            range(&w["rewrite_extra_ns"], 0),
        );
    }
    for c in cases(pp) {
        let w = &c["learn_write"];
        if !w.is_object() {
            continue;
        }
        for (what, key) in [("MSS fits", "fits_ns"), ("MSS rewritten", "rewritten_ns")] {
            let ns = w[key].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| {}: {what}, **learned-map write** (a destination's first SYN on a CPU in a refresh period: + {} ns, warm) | {ns:.1} | {floor:.1} | +{:.1} | {:.1}x | write {} ns | |",
                c["label"].as_str().unwrap_or("?"),
                num(&w["extra_ns"]["median"], 1),
                ns - floor,
                ns / floor,
                range(&w["extra_ns"], 0),
            );
        }
    }
    let _ = writeln!(md);
}

/// A ratio summary as "median% (95% CI lo-hi%)", or the range when there is no interval.
fn pct_ci(v: &Value) -> String {
    let p = |x: &Value| match x.as_f64() {
        Some(x) if x.is_finite() => format!("{:.1}", x * 100.0),
        _ => "-".into(),
    };
    match v["ci95"].as_array() {
        Some(ci) if ci.len() == 2 => {
            format!("{}% (CI {}-{}%)", p(&v["median"]), p(&ci[0]), p(&ci[1]))
        }
        _ => format!(
            "{}% (range {}-{}%)",
            p(&v["median"]),
            p(&v["min"]),
            p(&v["max"])
        ),
    }
}

/// "; the programs' own run time on this traffic: a% (a->b) and b% (b->a) of the CPU" for the
/// wslnet 1500 bed, from the run-time statistics pass.
fn cost_note(tp: &Value) -> String {
    let Some(rows) = tp["datapath_cost"].as_array() else {
        return String::new();
    };
    match rows.iter().find(|r| r["id"] == "wslnet_1500") {
        Some(r) => format!(
            "; the programs' own run time on this traffic: {:.2}% (a->b) and {:.2}% (b->a) of the CPU",
            r["a_to_b"]["cpu_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
            r["b_to_a"]["cpu_share"].as_f64().unwrap_or(f64::NAN) * 100.0
        ),
        None => String::new(),
    }
}

fn throughput(md: &mut String, tp: &Value) {
    if !tp.is_object() {
        return;
    }
    let _ = writeln!(
        md,
        "## Throughput over veth ({} rounds; iperf3 {} s per direction; connections {} s, {} threads; all traffic on CPU {})\n",
        tp["rounds"],
        tp["iperf_seconds"],
        tp["connection_seconds"],
        tp["connection_threads"],
        tp["cpu"]
    );
    let _ = writeln!(
        md,
        "| Configuration | client MSS | a->b Gbit/s | vs none | b->a Gbit/s | vs none | connections/s | vs none |\n|---|---|---|---|---|---|---|---|"
    );
    for c in configs(tp) {
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}) | {} | {} ({}) | {} | {} ({}) | {} |",
            c["label"].as_str().unwrap_or("?"),
            c["client_mss"],
            num(&c["gbit_s_a_to_b"]["median"], 2),
            range(&c["gbit_s_a_to_b"], 1),
            pct_ci(&c["ratio_a_to_b"]),
            num(&c["gbit_s_b_to_a"]["median"], 2),
            range(&c["gbit_s_b_to_a"], 1),
            pct_ci(&c["ratio_b_to_a"]),
            num(&c["connections_per_s"]["median"], 0),
            range(&c["connections_per_s"], 0),
            pct_ci(&c["ratio_connections"]),
        );
    }
    let _ = writeln!(
        md,
        "\nMedians with the range over rounds in parentheses; \"vs none\" is the median of per-round ratios to no program, with its distribution-free 95% confidence interval (CI).\n"
    );
    if let Some(cmp) = tp["against_nft"].as_array() {
        let _ = writeln!(
            md,
            "### wslnet against the nftables rule doing the same (paired per round)\n\n| wslnet | nft | a->b | b->a | connections/s |\n|---|---|---|---|---|"
        );
        for c in cmp {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                c["ours"].as_str().unwrap_or("?"),
                c["theirs"].as_str().unwrap_or("?"),
                pct_ci(&c["ratio_a_to_b"]),
                pct_ci(&c["ratio_b_to_a"]),
                pct_ci(&c["ratio_connections"]),
            );
        }
        let _ = writeln!(md);
    }
    if let Some(rows) = tp["datapath_cost"].as_array() {
        let _ = writeln!(
            md,
            "### wslnet's programs on this traffic (kernel BPF run-time statistics, one extra run each)\n\n| Configuration | traffic | rate | program runs/s | ns per run | share of the CPU |\n|---|---|---|---|---|---|"
        );
        for r in rows {
            for (what, key, rate) in [
                ("iperf3 a->b", "a_to_b", "gbit_s"),
                ("iperf3 b->a", "b_to_a", "gbit_s"),
                ("connections", "connections", "connections_per_s"),
            ] {
                let c = &r[key];
                let unit = if rate == "gbit_s" { " Gbit/s" } else { "/s" };
                let _ = writeln!(
                    md,
                    "| {} | {what} | {}{unit} | {} | {} | {:.3}% |",
                    r["label"].as_str().unwrap_or("?"),
                    num(&c[rate], if rate == "gbit_s" { 2 } else { 0 }),
                    num(&c["runs_per_s"], 0),
                    num(&c["ns_per_run"], 1),
                    c["cpu_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
                );
            }
        }
        let _ = writeln!(
            md,
            "\nA run is one packet through one hook (ingress or egress of `a`'s eth0); the share is the programs' run time over the run's duration, on the one CPU that carries all the traffic.\n"
        );
    }
}

fn convergence(md: &mut String, cv: &Value) {
    let Some(searches) = cv["searches"].as_array() else {
        return;
    };
    let _ = writeln!(
        md,
        "## Probe convergence (black-hole lab, {} searches each)\n",
        cv["repeats"]
    );
    let _ = writeln!(
        md,
        "| Bottleneck MTU | RTT | found | exact | time (ms) | rounds | probes |\n|---|---|---|---|---|---|---|"
    );
    for s in searches {
        let found: Vec<String> = s["found"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_u64().map_or("none".into(), |x| x.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} ms | {} | {} | {} ({}) | {} | {} |",
            s["bottleneck"],
            s["rtt_ms"],
            found.join(", "),
            if s["exact"] == true { "yes" } else { "**no**" },
            num(&s["elapsed_ms"]["median"], 0),
            range(&s["elapsed_ms"], 0),
            num(&s["rounds"]["median"], 0),
            num(&s["probes"]["median"], 0),
        );
    }
    if let Some(d) = cv["download_256k"].as_array() {
        let _ = writeln!(
            md,
            "\n### 256 KB download through the 1372 black hole (curl, srv -> wsl)\n"
        );
        let _ = writeln!(md, "| Case | RTT | completed | time |\n|---|---|---|---|");
        for x in d {
            let time = if x["completed"] == true {
                format!("{} s", num(&x["seconds"], 2))
            } else {
                format!("never (stalled until the {} s timeout)", x["timeout_s"])
            };
            let mut case = x["case"].as_str().unwrap_or("?").to_string();
            if let Some(ms) = x["agent_start_to_clamp_ms"].as_f64() {
                case += &format!(" (agent start to clamp {}: {ms:.0} ms)", x["clamp_mtu"]);
            }
            let _ = writeln!(
                md,
                "| {case} | {} ms | {} | {time} |",
                x["rtt_ms"],
                if x["completed"] == true { "yes" } else { "no" },
            );
        }
    }
    let _ = writeln!(md);
}

fn footprint(md: &mut String, fp: &Value) {
    if !fp.is_object() {
        return;
    }
    let _ = writeln!(md, "## Agent footprint (release build)\n");
    let _ = writeln!(
        md,
        "| Window | seconds | RSS median (MB) | peak RSS (MB) | CPU (% of one core) | threads |\n|---|---|---|---|---|---|"
    );
    for (label, w) in [
        ("idle".to_string(), &fp["idle"]),
        (
            format!("{} learned destinations", fp["learned_destinations"]),
            &fp["with_learned"],
        ),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            num(&w["seconds"], 0),
            num(&w["rss_mb"]["median"], 1),
            num(&w["peak_rss_mb"], 1),
            num(&w["cpu_percent_of_one_core"], 3),
            w["threads"],
        );
    }
    let _ = writeln!(md);
}
