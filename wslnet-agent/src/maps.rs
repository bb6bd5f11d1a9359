//! Loading the datapath object and typed access to its maps.
//!
//! Maps are pinned under `<pin dir>/maps/<NAME>` ([`crate::pins`]) by the loader (the object
//! declares them with `PinningType::ByName`), so the agent, `status`, a restarted agent and the
//! tests all open the same maps by path, and clamping goes on while no agent runs.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    sys::SyscallError,
};
use ipnet::IpNet;
use wslnet_common::{
    ABI_VERSION, COUNTER_ENTRIES, Counters, FAMILY_V4, FAMILY_V6, FlowKey, Globals, IfaceConfig,
    LearnedDest, LearnedKey, MAX_IFINDEX, PathMtu, PeerIsn, ProbeKey, ProbeMark, counter_index,
    global_flags, iface_flags, map_names,
};

use crate::pins;

/// Loads the datapath object (verifying both programs' maps), reusing maps already pinned under
/// `pin_dir` and pinning new ones there. `log_level` is the aya-log level compiled into the
/// datapath's log calls (0 = off, 5 = trace).
pub fn load(pin_dir: &Path, log_level: u8) -> Result<Ebpf> {
    pins::ensure_bpffs(pin_dir)?;
    pins::secure_pin_dirs(pin_dir)?;
    let dir = pins::maps_dir(pin_dir);
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .load(crate::EBPF_OBJECT)
        .context(
            "loading the wslnet datapath into the kernel; run `wslnet-agent check` to see what \
             the kernel or permissions lack",
        )?;
    Ok(ebpf)
}

/// Where a clamp-table entry came from: [`PathMtu::origin`] in the map
/// ([`wslnet_common::origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Configured (`[[clamp]]`, `--clamp`): the manual override, written by `run` at start and
    /// on SIGHUP; it wins over measurements for its prefix.
    Static,
    /// Measured by the path-MTU manager (a host prefix per destination).
    Probed,
}

impl Origin {
    /// Every origin, in the order `status` and the metric labels list them.
    pub const ALL: [Origin; 2] = [Origin::Static, Origin::Probed];

    /// The name in `status` (text and JSON) and in the `wslnet_clamp_entries{origin}` label.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Probed => "probed",
        }
    }

    /// The name of an entry's origin: [`Origin::name`], or "unknown" for a raw value this agent
    /// never writes (`None` from [`Origin::try_from`]).
    pub fn name_of(origin: Option<Origin>) -> &'static str {
        origin.map_or("unknown", Origin::name)
    }
}

crate::serialize_as_name!(Origin);

impl From<Origin> for u8 {
    /// The raw value in the map.
    fn from(origin: Origin) -> u8 {
        match origin {
            Origin::Static => wslnet_common::origin::STATIC,
            Origin::Probed => wslnet_common::origin::PROBED,
        }
    }
}

impl TryFrom<u8> for Origin {
    /// The raw value, when it is none of [`wslnet_common::origin`].
    type Error = u8;

    /// The origin of a raw value in the map.
    fn try_from(raw: u8) -> Result<Self, u8> {
        Origin::ALL
            .into_iter()
            .find(|&o| u8::from(o) == raw)
            .ok_or(raw)
    }
}

/// A clamp-table entry as the agent and `status` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClampEntry {
    /// The prefix.
    pub net: IpNet,
    /// Path MTU, bytes.
    pub mtu: u16,
    /// Where it came from; `None` for a raw value this agent never writes (shown as
    /// "unknown", [`Origin::name_of`]).
    #[serde(serialize_with = "serialize_origin")]
    pub origin: Option<Origin>,
}

/// [`ClampEntry::origin`] as its name, in `status --json`.
fn serialize_origin<S: serde::Serializer>(
    origin: &Option<Origin>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(Origin::name_of(*origin))
}

/// A learned destination as the agent and `status` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Learned {
    /// Destination of egress SYNs.
    pub addr: IpAddr,
    /// Kernel jiffies at the first SYN (see `LearnedDest::first_seen_jiffies`).
    pub first_seen_jiffies: u64,
    /// Kernel jiffies at the latest SYN, up to about a second late.
    pub last_seen_jiffies: u64,
    /// SYNs seen (approximate).
    pub syns: u64,
    /// Interface of the latest SYN.
    pub ifindex: u32,
    /// Destination port of its first SYN (a service it runs); `None` if the datapath could not
    /// read it.
    pub port: Option<u16>,
    /// User owning the socket of its latest SYN; `None` without a local socket (forwarded).
    pub uid: Option<u32>,
    /// Firewall mark of its latest SYN (0: none).
    pub mark: u32,
}

impl Learned {
    /// The learned-map entry `v` of `addr`.
    fn of(addr: IpAddr, v: &LearnedDest) -> Self {
        Self {
            addr,
            first_seen_jiffies: v.first_seen_jiffies,
            last_seen_jiffies: v.last_seen_jiffies,
            syns: v.syns,
            ifindex: v.ifindex,
            port: Some(u16::from_be(v.port_be)).filter(|&p| p != 0),
            uid: Some(v.uid).filter(|&u| u != wslnet_common::NO_SOCKET_UID),
            mark: v.mark,
        }
    }
}

/// Typed handles to the pinned maps.
pub struct Maps {
    /// IPv4 prefix -> path MTU.
    pub clamp_v4: LpmTrie<MapData, [u8; 4], PathMtu>,
    /// IPv6 prefix -> path MTU.
    pub clamp_v6: LpmTrie<MapData, [u8; 16], PathMtu>,
    /// ifindex -> interface settings (entries without `PRESENT` are unconfigured).
    pub ifaces: Array<MapData, IfaceConfig>,
    /// Per-CPU counters.
    pub counters: PerCpuArray<MapData, Counters>,
    /// Destinations of egress SYNs (LRU).
    pub learned: HashMap<MapData, LearnedKey, LearnedDest>,
    /// Global settings.
    pub globals: Array<MapData, Globals>,
    /// The prober's TCP connections in flight, exempt from the ingress clamp.
    pub probes: HashMap<MapData, ProbeKey, ProbeMark>,
    /// The initial sequence numbers of peers, per CPU, by [`wslnet_common::isn_slot`].
    pub peer_isns: PerCpuArray<MapData, PeerIsn>,
    /// Whether the datapath drops oversize packets for the agent to answer
    /// ([`global_flags::REFLECT`]); written into [`Globals`] by [`Maps::refresh_floor`].
    pub reflect: bool,
}

fn open_pin(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pins::map_pin(pin_dir, name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the agent or its pins there? start `wslnet-agent run`)",
            path.display()
        )
    })
}

/// The configured entries of an interface array: (ifindex, settings).
fn present_ifaces(ifaces: &Array<MapData, IfaceConfig>) -> Vec<(u32, IfaceConfig)> {
    ifaces
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i as u32, c.ok()?)))
        .filter(|(_, c)| c.is_present())
        .collect()
}

/// The interfaces recorded in the pinned interface array alone, for `detach`: it works on
/// pins whose other maps another version laid out differently.
pub fn recorded_ifaces(pin_dir: &Path) -> Result<Vec<(u32, IfaceConfig)>> {
    let ifaces = Array::try_from(Map::Array(open_pin(pin_dir, map_names::IFACES)?))?;
    Ok(present_ifaces(&ifaces))
}

impl Maps {
    /// Opens the maps pinned under `pin_dir` (by a loader, a running agent or an earlier one).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let clamp_v4 = LpmTrie::try_from(Map::LpmTrie(open_pin(pin_dir, map_names::CLAMP_V4)?))?;
        let clamp_v6 = LpmTrie::try_from(Map::LpmTrie(open_pin(pin_dir, map_names::CLAMP_V6)?))?;
        let ifaces = Array::try_from(Map::Array(open_pin(pin_dir, map_names::IFACES)?))?;
        let counters =
            PerCpuArray::try_from(Map::PerCpuArray(open_pin(pin_dir, map_names::COUNTERS)?))?;
        let learned = HashMap::try_from(Map::LruHashMap(open_pin(pin_dir, map_names::LEARNED)?))?;
        let globals = Array::try_from(Map::Array(open_pin(pin_dir, map_names::GLOBALS)?))?;
        let probes = HashMap::try_from(Map::HashMap(open_pin(pin_dir, map_names::PROBES)?))?;
        let peer_isns =
            PerCpuArray::try_from(Map::PerCpuArray(open_pin(pin_dir, map_names::PEER_ISN)?))?;
        Ok(Self {
            clamp_v4,
            clamp_v6,
            ifaces,
            counters,
            learned,
            globals,
            probes,
            peer_isns,
            reflect: false,
        })
    }

    /// Sets the path MTU for a prefix (the address bits beyond the prefix are ignored):
    /// [`Maps::insert_clamp`], then [`Maps::refresh_floor`].
    pub fn set_clamp(&mut self, net: IpNet, mtu: u16, origin: Origin) -> Result<()> {
        self.insert_clamp(net, mtu, origin)?;
        self.refresh_floor()
    }

    /// Removes the entry for exactly this prefix, if any: [`Maps::delete_clamp`], then
    /// [`Maps::refresh_floor`].
    pub fn remove_clamp(&mut self, net: IpNet) -> Result<()> {
        self.delete_clamp(net)?;
        self.refresh_floor()
    }

    /// Writes the path MTU for a prefix (the address bits beyond the prefix are ignored), the
    /// write alone: the floors and the clamp generation in [`Globals`] are left as they are, so
    /// the caller must [`Maps::refresh_floor`] after a batch of writes (or set [`Globals`]
    /// itself, as the TestRun harness does).
    pub fn insert_clamp(&mut self, net: IpNet, mtu: u16, origin: Origin) -> Result<()> {
        let value = PathMtu {
            mtu,
            origin: origin.into(),
            reserved: 0,
        };
        match net.trunc() {
            IpNet::V4(n) => self.clamp_v4.insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                &value,
                0,
            ),
            IpNet::V6(n) => self.clamp_v6.insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                &value,
                0,
            ),
        }
        .with_context(|| format!("writing clamp {net} = {mtu}"))
    }

    /// Removes the entry for exactly this prefix (the address bits beyond the prefix are
    /// ignored), the removal alone (the caller must [`Maps::refresh_floor`], as after
    /// [`Maps::insert_clamp`]). `Ok(false)` when there was no such entry.
    pub fn delete_clamp(&mut self, net: IpNet) -> Result<bool> {
        let removed = match net.trunc() {
            IpNet::V4(n) => self
                .clamp_v4
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
            IpNet::V6(n) => self
                .clamp_v6
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
        };
        match removed {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing clamp {net}")),
        }
    }

    /// Every clamp-table entry, IPv4 first.
    pub fn clamps(&self) -> Vec<ClampEntry> {
        clamp_entries(&self.clamp_v4)
            .chain(clamp_entries(&self.clamp_v6))
            .collect()
    }

    /// Writes the settings of an interface (marking the entry present).
    pub fn set_iface(&mut self, ifindex: u32, cfg: IfaceConfig) -> Result<()> {
        if ifindex >= MAX_IFINDEX {
            bail!(
                "ifindex {ifindex} is beyond the {MAX_IFINDEX} interfaces the datapath can \
                 configure; recreate the interface or raise MAX_IFINDEX"
            );
        }
        let cfg = IfaceConfig {
            flags: cfg.flags | iface_flags::PRESENT,
            ..cfg
        };
        self.ifaces
            .set(ifindex, &cfg, 0)
            .with_context(|| format!("writing interface settings for ifindex {ifindex}"))?;
        self.refresh_floor()
    }

    /// Forgets an interface.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        if ifindex < MAX_IFINDEX {
            self.ifaces
                .set(ifindex, &IfaceConfig::default(), 0)
                .with_context(|| format!("clearing interface settings for ifindex {ifindex}"))?;
        }
        self.refresh_floor()
    }

    /// The settings of one interface, if configured.
    pub fn iface(&self, ifindex: u32) -> Option<IfaceConfig> {
        self.ifaces
            .get(&ifindex, 0)
            .ok()
            .filter(IfaceConfig::is_present)
    }

    /// Every configured interface: (ifindex, settings).
    pub fn ifaces(&self) -> Vec<(u32, IfaceConfig)> {
        present_ifaces(&self.ifaces)
    }

    /// The counters of (slot, direction, family), summed over CPUs.
    pub fn counters(&self, slot: u32, dir: u32, family: u32) -> Result<Counters> {
        let index = counter_index(slot, dir, family);
        if index >= COUNTER_ENTRIES {
            bail!("counter slot {slot} out of range");
        }
        self.counter_row(index)
    }

    /// The counters of one row of the counter array (by [`counter_index`], below
    /// [`COUNTER_ENTRIES`]), summed over CPUs.
    pub fn counter_row(&self, index: u32) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&index, 0)
            .with_context(|| format!("reading counter row {index}"))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum += *c;
        }
        Ok(sum)
    }

    /// Sets every CPU's counters of a slot to zero (before the slot is given to a new interface).
    pub fn zero_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow::anyhow!("{m}: {e}"))?;
        for dir in [wslnet_common::DIR_INGRESS, wslnet_common::DIR_EGRESS] {
            for family in [FAMILY_V4, FAMILY_V6] {
                let zeros = aya::maps::PerCpuValues::try_from(vec![
                    Counters::default();
                    cpus.get() as usize
                ])?;
                self.counters
                    .set(counter_index(slot, dir, family), zeros, 0)
                    .context("zeroing counters")?;
            }
        }
        Ok(())
    }

    /// Every learned destination.
    pub fn learned(&self) -> Vec<Learned> {
        self.learned
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some(Learned::of(learned_addr(&k)?, &v)))
            .collect()
    }

    /// The learned-map entry of one destination.
    pub fn learned_entry(&self, addr: IpAddr) -> Option<Learned> {
        let v = self.learned.get(&learned_key(addr), 0).ok()?;
        Some(Learned::of(addr, &v))
    }

    /// Forgets a learned destination.
    pub fn forget_learned(&mut self, addr: IpAddr) {
        let _ = self.learned.remove(&learned_key(addr));
    }

    /// Exempts the prober's TCP connection from `local_port` to `peer` from the ingress clamp
    /// (its SYN-ACK keeps the peer's MSS) until [`Maps::remove_probe`].
    pub fn add_probe(&mut self, peer: IpAddr, local_port: u16) -> Result<()> {
        self.probes
            .insert(&probe_key(peer, local_port), &ProbeMark::default(), 0)
            .with_context(|| format!("registering the TCP probe to {peer} from port {local_port}"))
    }

    /// Ends the exemption of [`Maps::add_probe`].
    pub fn remove_probe(&mut self, peer: IpAddr, local_port: u16) -> Result<()> {
        self.probes
            .remove(&probe_key(peer, local_port))
            .with_context(|| format!("removing the TCP probe to {peer} from port {local_port}"))
    }

    /// The initial sequence number of the peer `peer` of our connection from `local_port`, as
    /// the datapath saw it in the peer's SYN or SYN-ACK.
    pub fn peer_isn(&self, peer: std::net::SocketAddr, local_port: u16) -> Option<u32> {
        self.isn_of(&flow_key(peer, local_port))
    }

    /// The ISN recorded for `key` on any CPU, if its slot still holds it.
    pub fn isn_of(&self, key: &FlowKey) -> Option<u32> {
        let slot = wslnet_common::isn_slot(
            &wslnet_common::peer_words(&key.addr),
            key.peer_port_be,
            key.local_port_be,
        );
        let per_cpu = self.peer_isns.get(&slot, 0).ok()?;
        per_cpu.iter().find(|e| e.key == *key).map(|e| e.isn)
    }

    /// The global settings.
    pub fn globals(&self) -> Result<Globals> {
        Ok(self.globals.get(&0, 0)?)
    }

    /// The clamp generation after the one in force (wrapping past 0, which means "no cache").
    pub fn next_clamp_generation(&self) -> u32 {
        let current = self.globals().map(|g| g.clamp_generation).unwrap_or(0);
        current.wrapping_add(1).max(1)
    }

    /// Recomputes [`Globals`]: the smallest MTU in force per family (the datapath's oversize
    /// pre-check) and the ABI version, and starts a new clamp generation (which drops the
    /// datapath's cached lookups). Called after every change to the clamp tables.
    pub fn refresh_floor(&mut self) -> Result<()> {
        let mut v4 = u16::MAX;
        let mut v6 = u16::MAX;
        for (_, v) in self.clamp_v4.iter().flatten() {
            v4 = v4.min(v.mtu);
        }
        for (_, v) in self.clamp_v6.iter().flatten() {
            v6 = v6.min(v.mtu);
        }
        for (_, cfg) in self.ifaces() {
            if cfg.default_mtu_v4 != 0 {
                v4 = v4.min(cfg.default_mtu_v4);
            }
            if cfg.default_mtu_v6 != 0 {
                v6 = v6.min(cfg.default_mtu_v6);
            }
        }
        let g = Globals {
            min_mtu_v4: v4,
            min_mtu_v6: v6,
            abi_version: ABI_VERSION,
            clamp_generation: self.next_clamp_generation(),
            flags: if self.reflect {
                global_flags::REFLECT
            } else {
                0
            },
        };
        self.globals
            .set(0, &g, 0)
            .context("writing global settings")?;
        Ok(())
    }
}

/// True when a map operation failed only because the key was not there (aya's
/// [`MapError::KeyNotFound`], or the kernel's `ENOENT` from `bpf_map_delete_elem`).
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}

/// The entries of one clamp trie (IPv4 or IPv6, by its key's address bytes).
fn clamp_entries<K>(trie: &LpmTrie<MapData, K, PathMtu>) -> impl Iterator<Item = ClampEntry> + '_
where
    K: aya::Pod,
    IpAddr: From<K>,
{
    trie.iter().flatten().filter_map(|(key, v)| {
        let net = IpNet::new(IpAddr::from(key.data()), key.prefix_len() as u8).ok()?;
        Some(ClampEntry {
            net,
            mtu: v.mtu,
            origin: Origin::try_from(v.origin).ok(),
        })
    })
}

/// Opens a pinned ring buffer: [`map_names::NEW_DESTS`] or [`map_names::REFLECT`].
pub fn open_ring(pin_dir: &Path, name: &str) -> Result<aya::maps::RingBuf<MapData>> {
    Ok(aya::maps::RingBuf::try_from(Map::RingBuf(open_pin(
        pin_dir, name,
    )?))?)
}

/// The address in a learned-map key, if its family is known.
pub fn learned_addr(k: &LearnedKey) -> Option<IpAddr> {
    match k.family {
        FAMILY_V4 => Some(IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(k.addr)),
        _ => None,
    }
}

/// The probe-map key of the prober's connection from `local_port` to `peer`.
pub fn probe_key(peer: IpAddr, local_port: u16) -> ProbeKey {
    let LearnedKey { family, addr } = learned_key(peer);
    ProbeKey {
        family,
        port_be: local_port.to_be(),
        reserved: 0,
        addr,
    }
}

/// The peer-ISN map key of our connection from `local_port` to `peer`.
pub fn flow_key(peer: std::net::SocketAddr, local_port: u16) -> FlowKey {
    let LearnedKey { family, addr } = learned_key(peer.ip());
    FlowKey {
        family,
        peer_port_be: peer.port().to_be(),
        local_port_be: local_port.to_be(),
        addr,
    }
}

/// The learned-map key of an address.
pub fn learned_key(addr: IpAddr) -> LearnedKey {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            LearnedKey {
                family: FAMILY_V4,
                addr: b,
            }
        }
        IpAddr::V6(a) => LearnedKey {
            family: FAMILY_V6,
            addr: a.octets(),
        },
    }
}
