//! What the clamp table must hold, and the changes that take it there from what it holds.
//!
//! Two writers share the table: the configuration's static clamps (`service.rs`, at start and
//! on SIGHUP: [`statics`]) and the path-MTU manager's measurements (`pmtu.rs`, probed /32 and
//! /128 entries; at start and after every reload: [`probed`]). Together they keep one rule: the
//! table holds every configured clamp, and a probed entry for every measured destination outside
//! the static prefixes, and nothing else (a probed entry of an earlier run stays while its
//! destination is still in the learned map, until it is measured again: no gap across a
//! restart). The planners are pure, so a property test checks the rule on random sequences.

use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;

use crate::{
    config::Clamp,
    maps::{ClampEntry, Origin},
};

/// Changes to make to the clamp table, removals first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries to remove (exact prefixes).
    pub remove: Vec<IpNet>,
    /// Entries to write: prefix, path MTU in bytes, origin (overwriting an entry of the same
    /// prefix).
    pub write: Vec<(IpNet, u16, Origin)>,
}

/// The static side: static entries no longer configured go; every configured clamp is written
/// (over a probed entry of exactly its prefix, which it replaces).
pub fn statics(table: &[ClampEntry], config: &[Clamp]) -> Plan {
    let remove = table
        .iter()
        .filter(|e| e.origin == Some(Origin::Static))
        .filter(|e| !config.iter().any(|c| c.cidr.trunc() == e.net))
        .map(|e| e.net)
        .collect();
    let write = config
        .iter()
        .map(|c| (c.cidr.trunc(), c.mtu, Origin::Static))
        .collect();
    Plan { remove, write }
}

/// The probed side, given the static prefixes, the measured destinations (address, path MTU in
/// bytes) and the addresses in the learned map:
/// - a probed entry inside a static prefix goes (the static clamp wins; a longer probed prefix
///   would win the lookup);
/// - a probed entry that no destination stands for goes: not a host prefix, or neither measured
///   nor in the learned map (written by an earlier run for a destination nobody measures now);
/// - every measured destination outside the static prefixes gets its entry (a reload that
///   removed a static clamp of exactly its address left it with none).
pub fn probed(
    table: &[ClampEntry],
    statics: &[IpNet],
    measured: &[(IpAddr, u16)],
    learned: &HashSet<IpAddr>,
) -> Plan {
    let is_static = |a: IpAddr| statics.iter().any(|n| n.contains(&a));
    let remove = table
        .iter()
        .filter(|e| e.origin == Some(Origin::Probed))
        .filter(|e| {
            let addr = e.net.addr();
            let stands_for = e.net.prefix_len() == e.net.max_prefix_len()
                && !is_static(addr)
                && (measured.iter().any(|&(a, _)| a == addr) || learned.contains(&addr));
            !stands_for
        })
        .map(|e| e.net)
        .collect();
    let write = measured
        .iter()
        .filter(|&&(a, _)| !is_static(a))
        .map(|&(a, mtu)| (IpNet::from(a), mtu, Origin::Probed))
        .collect();
    Plan { remove, write }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};

    use super::*;

    /// The clamp table as the tests keep it.
    type Table = BTreeMap<IpNet, (u16, Origin)>;

    fn entries(t: &Table) -> Vec<ClampEntry> {
        t.iter()
            .map(|(&net, &(mtu, origin))| ClampEntry {
                net,
                mtu,
                origin: Some(origin),
            })
            .collect()
    }

    fn apply(t: &mut Table, plan: Plan) {
        for net in plan.remove {
            t.remove(&net);
        }
        for (net, mtu, origin) in plan.write {
            t.insert(net, (mtu, origin));
        }
    }

    /// What the rule says the table holds.
    fn expected(config: &[Clamp], measured: &HashMap<IpAddr, u16>) -> Table {
        let mut t = Table::new();
        for c in config {
            t.insert(c.cidr.trunc(), (c.mtu, Origin::Static));
        }
        for (&a, &mtu) in measured {
            if !config.iter().any(|c| c.cidr.contains(&a)) {
                t.insert(IpNet::from(a), (mtu, Origin::Probed));
            }
        }
        t
    }

    /// A reload as `service.rs` and `pmtu.rs` do it: statics, then the probed side.
    fn reload(
        t: &mut Table,
        config: &[Clamp],
        measured: &HashMap<IpAddr, u16>,
        learned: &HashSet<IpAddr>,
    ) {
        apply(t, statics(&entries(t), config));
        let nets: Vec<IpNet> = config.iter().map(|c| c.cidr.trunc()).collect();
        let measured: Vec<(IpAddr, u16)> = measured.iter().map(|(&a, &m)| (a, m)).collect();
        apply(t, probed(&entries(t), &nets, &measured, learned));
    }

    /// Random sequences of reloads (static clamps added, changed, removed), measurements,
    /// evictions and restarts over a few addresses and overlapping prefixes: after every step
    /// but a restart the table is exactly what the configuration and the measurements say; after
    /// a restart, that plus the earlier run's entries of destinations still learned.
    #[test]
    fn the_table_always_holds_what_the_config_and_the_measurements_say() {
        let addrs: Vec<IpAddr> = (1..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let prefixes: Vec<IpNet> = [
            "10.0.0.0/29",
            "10.0.0.0/30",
            "10.0.0.4/30",
            "10.0.0.2/32",
            "10.0.0.5/32",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        for seed in 0..500 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut t, mut config) = (Table::new(), Vec::<Clamp>::new());
            let mut measured = HashMap::<IpAddr, u16>::new();
            let mut learned = HashSet::<IpAddr>::new();
            for step in 0..40 {
                let what = match rng.gen_range(0..10) {
                    0..=2 => {
                        let n = rng.gen_range(0..=3);
                        config = prefixes
                            .choose_multiple(&mut rng, n)
                            .map(|&cidr| Clamp {
                                cidr,
                                mtu: rng.gen_range(1200..=1500),
                            })
                            .collect();
                        reload(&mut t, &config, &measured, &learned);
                        "reload"
                    }
                    3..=6 => {
                        // A search finished: `Manager::finish` writes unless static.
                        let a = *addrs.choose(&mut rng).unwrap();
                        let mtu = rng.gen_range(1000..=1500);
                        measured.insert(a, mtu);
                        learned.insert(a);
                        if !config.iter().any(|c| c.cidr.contains(&a)) {
                            t.insert(IpNet::from(a), (mtu, Origin::Probed));
                        }
                        "measured"
                    }
                    7..=8 => {
                        // Evicted: `Manager::evict_if_full` removes its probed entry and its
                        // learned entry.
                        let a = *addrs.choose(&mut rng).unwrap();
                        measured.remove(&a);
                        learned.remove(&a);
                        if !config.iter().any(|c| c.cidr.contains(&a)) {
                            t.remove(&IpNet::from(a));
                        }
                        "evicted"
                    }
                    _ => {
                        // A restart: nothing measured yet, some destinations still learned.
                        measured.clear();
                        learned.retain(|_| rng.gen_bool(0.5));
                        reload(&mut t, &config, &measured, &learned);
                        let mut want = expected(&config, &measured);
                        for (&net, &v) in &t {
                            if v.1 == Origin::Probed && learned.contains(&net.addr()) {
                                want.insert(net, v);
                            }
                        }
                        assert_eq!(t, want, "seed {seed} step {step}: restart");
                        // What the earlier run left stands until measured again.
                        continue;
                    }
                };
                let mut want = expected(&config, &measured);
                // Entries an earlier run left for destinations still learned stay too.
                for (&net, &v) in &t {
                    if v.1 == Origin::Probed
                        && !measured.contains_key(&net.addr())
                        && learned.contains(&net.addr())
                        && !config.iter().any(|c| c.cidr.contains(&net.addr()))
                    {
                        want.insert(net, v);
                    }
                }
                assert_eq!(t, want, "seed {seed} step {step}: {what}");
            }
        }
    }
}
