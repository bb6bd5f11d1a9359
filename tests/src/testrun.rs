//! `BPF_PROG_TEST_RUN` harness: the real datapath, loaded with its maps pinned in a private
//! bpffs, run on packet bytes. Returns the output bytes, the verdict and the counter deltas.
//!
//! The kernel builds the skb on the loopback device of the caller's network namespace (ifindex
//! 1), treats the data as an Ethernet frame (at least 14 bytes) and leaves it `CHECKSUM_NONE`,
//! so `bpf_l4_csum_replace` updates the real TCP checksum. `__sk_buff` context input is
//! supported: the harness always passes one, with `gso_size` set from the caller.
//!
//! Measured on kernel 6.18: besides the 14-byte minimum, the kernel refuses (EINVAL) a frame whose
//! EtherType (bytes 12-13) is IPv4 and that is shorter than 14 + 20 bytes, or IPv6 and shorter
//! than 14 + 40 ([`kernel_accepts`]); truncated IP headers are therefore tested behind an 802.1Q
//! tag or on an L3-device configuration, where the kernel does not look.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ipnet::IpNet;
use wslnet_agent::maps::{Maps, Origin};
use wslnet_common::{
    COUNTER_ENTRIES, Counters, FAMILY_V4, FAMILY_V6, Globals, LearnCacheEntry, LearnedKey,
    PEER_CACHE_SLOTS, ReflectEvent, counter_index, map_names, peer_bytes, program_names,
};
use wslnet_model::{Direction, Tables};

use crate::netns::Bpffs;

/// The ifindex every test run sees: the loopback device of the caller's namespace.
pub const TEST_IFINDEX: u32 = 1;

/// Size of the kernel's `struct __sk_buff` (uapi), and where the fields we set live.
const SKB_CTX_LEN: usize = 192;
const SKB_CTX_GSO_SIZE: usize = 176;
const SKB_CTX_MARK: usize = 8;

/// What one run of the program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The frame after the program.
    pub frame: Vec<u8>,
    /// The program's return value (tc verdict).
    pub retval: i32,
    /// Counter rows that changed: (slot, dir, family) -> delta.
    pub counters: BTreeMap<(u32, u32, u32), Counters>,
}

/// Learned destinations as [`Harness::learned`] returns them: (family, address bytes) ->
/// (SYNs, the port the entry keeps, network byte order).
pub type LearnedMap = BTreeMap<(u32, [u8; 16]), (u64, u16)>;

/// The datapath loaded for test runs. Dropping it unloads the programs and unmounts the bpffs.
pub struct Harness {
    maps: Maps,
    ebpf: Ebpf,
    /// The clamp prefixes [`Harness::set_tables`] wrote, removed by the next call.
    clamps: Vec<IpNet>,
    ifaces: Vec<u32>,
    probes: Vec<(std::net::IpAddr, u16)>,
    /// The datapath's reflection ring (dropped oversize packets for the agent).
    reflect: RingBuf<MapData>,
    // Declared last: unmounted after the maps and programs are closed.
    _fs: Bpffs,
}

impl Harness {
    /// Loads the datapath (both programs) with its maps pinned in a new private bpffs.
    pub fn new() -> Result<Self> {
        let fs = Bpffs::new().context("mounting a private bpffs")?;
        let mut ebpf = wslnet_agent::maps::load(fs.path(), 0)?;
        wslnet_agent::attach::load_programs(&mut ebpf)?;
        let maps = Maps::open(fs.path())?;
        let reflect = wslnet_agent::maps::open_ring(fs.path(), map_names::REFLECT)?;
        Ok(Self {
            maps,
            ebpf,
            clamps: Vec::new(),
            ifaces: Vec::new(),
            probes: Vec::new(),
            reflect,
            _fs: fs,
        })
    }

    /// The typed maps, to read (learned destinations, clamp entries).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The typed maps, to write entries the way the agent does.
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Replaces the clamp tables, interface settings, probe connections and globals with
    /// `tables`, written directly (the floors in `tables.globals` are used as given, not
    /// recomputed; the clamp generation is always bumped, as the agent does, so no cached lookup
    /// survives).
    pub fn set_tables(&mut self, tables: &Tables) -> Result<()> {
        for net in self.clamps.drain(..) {
            self.maps.delete_clamp(net)?;
        }
        for i in self.ifaces.drain(..) {
            let _ = self.maps.remove_iface(i);
        }
        for c in &tables.clamps {
            let max_len = if c.addr.is_ipv4() { 32 } else { 128 };
            let net = IpNet::new(c.addr, c.prefix_len.min(max_len)).context("clamp prefix")?;
            self.maps.insert_clamp(net, c.mtu, Origin::Static)?;
            self.clamps.push(net);
        }
        for (peer, port) in self.probes.drain(..) {
            let _ = self.maps.remove_probe(peer, port);
        }
        for &(peer, port) in &tables.probes {
            self.maps.add_probe(peer, port).context("probe")?;
            self.probes.push((peer, port));
        }
        for (ifindex, cfg) in &tables.ifaces {
            self.maps.set_iface(*ifindex, *cfg).context("iface")?;
            self.ifaces.push(*ifindex);
        }
        let globals = Globals {
            clamp_generation: self.maps.next_clamp_generation(),
            ..tables.globals
        };
        self.maps.globals.set(0, &globals, 0).context("globals")?;
        Ok(())
    }

    /// The counters of one row, summed over CPUs.
    pub fn counters(&self, slot: u32, dir: u32, family: u32) -> Result<Counters> {
        self.maps.counters(slot, dir, family)
    }

    /// Every non-zero counter row.
    pub fn all_counters(&self) -> Result<BTreeMap<u32, Counters>> {
        let mut out = BTreeMap::new();
        for index in 0..COUNTER_ENTRIES {
            let sum = self.maps.counter_row(index)?;
            if sum != Counters::default() {
                out.insert(index, sum);
            }
        }
        Ok(out)
    }

    /// Learned destinations: key -> (SYN count, the port kept, network byte order), the SYNs
    /// still held back in the datapath's per-CPU learn cache included (so every SYN counts at
    /// once, as in the model). What the agent sees, without the held-back SYNs, is
    /// `maps().learned()`.
    pub fn learned(&self) -> Result<LearnedMap> {
        let mut out: BTreeMap<_, _> = self
            .maps
            .learned
            .iter()
            .flatten()
            .map(|(k, v): (LearnedKey, _)| ((k.family, k.addr), (v.syns, v.port_be)))
            .collect();
        let cache = self.learn_cache()?;
        for slot in 0..PEER_CACHE_SLOTS {
            for e in cache
                .get(&slot, 0)
                .context("reading the learn cache")?
                .iter()
            {
                if e.written != 0 && e.pending != 0 {
                    out.entry((e.family, peer_bytes(&e.peer))).or_default().0 +=
                        u64::from(e.pending);
                }
            }
        }
        Ok(out)
    }

    /// Empties the learned map and the per-CPU learn cache, as if no SYN had left yet.
    pub fn clear_learned(&mut self) -> Result<()> {
        let keys: Vec<_> = self.maps.learned.keys().flatten().collect();
        for k in keys {
            let _ = self.maps.learned.remove(&k);
        }
        let map = self
            .ebpf
            .map_mut(map_names::LEARN_CACHE)
            .with_context(|| format!("map {} missing", map_names::LEARN_CACHE))?;
        let mut cache: PerCpuArray<&mut MapData, LearnCacheEntry> =
            PerCpuArray::try_from(map).context("the learn cache's type")?;
        let cpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow::anyhow!("{m}: {e}"))?;
        for slot in 0..PEER_CACHE_SLOTS {
            let empty =
                PerCpuValues::try_from(vec![LearnCacheEntry::default(); cpus.get() as usize])?;
            cache
                .set(slot, empty, 0)
                .context("emptying the learn cache")?;
        }
        Ok(())
    }

    /// The peer ISN the datapath recorded for `key`, if any.
    pub fn peer_isn(&self, key: &wslnet_common::FlowKey) -> Option<u32> {
        self.maps.isn_of(key)
    }

    /// Every ISN any CPU holds for `key` (a test thread may have run on several).
    pub fn peer_isns(&self, key: &wslnet_common::FlowKey) -> Vec<u32> {
        let slot = wslnet_common::isn_slot(
            &wslnet_common::peer_words(&key.addr),
            key.peer_port_be,
            key.local_port_be,
        );
        self.maps
            .peer_isns
            .get(&slot, 0)
            .map(|v| v.iter().filter(|e| e.key == *key).map(|e| e.isn).collect())
            .unwrap_or_default()
    }

    /// The packets handed to the agent since the last call (oldest first), as the agent reads
    /// them from the reflection ring.
    pub fn reflected(&mut self) -> Vec<ReflectEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.reflect.next() {
            if item.len() >= std::mem::size_of::<ReflectEvent>() {
                // SAFETY: the datapath writes whole ReflectEvent values (plain old data); the
                // length was checked just above.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        out
    }

    /// The datapath's per-CPU learn cache (a private map of the loaded object).
    fn learn_cache(&self) -> Result<PerCpuArray<&MapData, LearnCacheEntry>> {
        let map = self
            .ebpf
            .map(map_names::LEARN_CACHE)
            .with_context(|| format!("map {} missing", map_names::LEARN_CACHE))?;
        PerCpuArray::try_from(map).context("the learn cache's type")
    }

    /// Runs the program of `dir` on `frame` once and returns what it did, with the deltas of the
    /// counter rows of `watch_slots` (both families, this direction).
    pub fn run_watch(
        &self,
        dir: Direction,
        frame: &[u8],
        gso_size: u32,
        watch_slots: &[u32],
    ) -> Result<RunResult> {
        let mut before = Vec::new();
        for &slot in watch_slots {
            for family in [FAMILY_V4, FAMILY_V6] {
                before.push((
                    (slot, dir.index(), family),
                    self.counters(slot, dir.index(), family)?,
                ));
            }
        }
        let (out, retval) = self.run_raw(dir, frame, gso_size)?;
        let mut counters = BTreeMap::new();
        for (row, b) in before {
            let a = self.counters(row.0, row.1, row.2)?;
            if a != b {
                counters.insert(row, a.since(&b));
            }
        }
        Ok(RunResult {
            frame: out,
            retval,
            counters,
        })
    }

    /// Runs the program of `dir` on `frame` once, watching the counters of slots 0 and the slot
    /// configured for [`TEST_IFINDEX`].
    pub fn run(&self, dir: Direction, frame: &[u8], gso_size: u32) -> Result<RunResult> {
        let mut slots = vec![0];
        if let Some(cfg) = self.maps.iface(TEST_IFINDEX)
            && cfg.slot != 0
        {
            slots.push(cfg.slot);
        }
        self.run_watch(dir, frame, gso_size, &slots)
    }

    /// Runs the program once: output frame and verdict, nothing else read.
    pub fn run_raw(&self, dir: Direction, frame: &[u8], gso_size: u32) -> Result<(Vec<u8>, i32)> {
        self.run_raw_marked(dir, frame, gso_size, 0)
    }

    /// The loaded object: programs and maps by name, for what the typed maps do not cover (the
    /// bench's reset programs write the learn cache).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The program of `dir`'s hook, for runs issued elsewhere (the bench's own
    /// `BPF_PROG_TEST_RUN` calls, its program arrays).
    pub fn program_fd(&self, dir: Direction) -> Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        let (_, prog) = self.program(dir)?;
        Ok(prog.fd()?.as_fd())
    }

    /// The program of a hook, with its name.
    fn program(&self, dir: Direction) -> Result<(&'static str, &SchedClassifier)> {
        let name = match dir {
            Direction::Ingress => program_names::INGRESS,
            Direction::Egress => program_names::EGRESS,
        };
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        Ok((name, prog))
    }

    /// Runs the program of `dir` on `frame` `repeat` times in the kernel and returns the
    /// verdict and the kernel's mean time per run (the skb is built once: repetitions after the
    /// first see the frame as the previous one left it).
    pub fn time_run(
        &self,
        dir: Direction,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(i32, std::time::Duration)> {
        let (name, prog) = self.program(dir)?;
        let mut out = vec![0u8; frame.len() + 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}, repeat {repeat}"))?;
        Ok((res.return_value as i32, res.duration))
    }

    /// [`Harness::run_raw`] with `skb->mark` set to `mark`.
    pub fn run_raw_marked(
        &self,
        dir: Direction,
        frame: &[u8],
        gso_size: u32,
        mark: u32,
    ) -> Result<(Vec<u8>, i32)> {
        if frame.len() < 14 {
            bail!("BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes)");
        }
        let (name, prog) = self.program(dir)?;
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_CTX_GSO_SIZE..SKB_CTX_GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
        ctx[SKB_CTX_MARK..SKB_CTX_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut out = vec![0u8; frame.len() + 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name} on {} bytes", frame.len()))?;
        out.truncate(res.data_size_out as usize);
        Ok((out, res.return_value as i32))
    }
}

/// True when `BPF_PROG_TEST_RUN` accepts `frame` for a tc program (see the module notes).
pub fn kernel_accepts(frame: &[u8]) -> bool {
    let min = match frame.get(12..14) {
        Some([0x08, 0x00]) => 34,
        Some([0x86, 0xdd]) => 54,
        _ => 14,
    };
    frame.len() >= min
}

/// The counter index of a row, for comparing with [`Harness::all_counters`].
pub fn row_index(slot: u32, dir: u32, family: u32) -> u32 {
    counter_index(slot, dir, family)
}
