//! The black-hole lab (DESIGN.md): four namespaces in a row,
//!
//! ```text
//!  wsl (eth0 | zt..., MTU 1500 | 2800) -- win (router) --[wan0: bottleneck MTU]-- vpn (router) -- srv (eth0, MTU 1500)
//!  10.77.1.0/24, fd77:1::/64              10.77.2.0/24, fd77:2::/64                  10.77.3.0/24, fd77:3::/64
//! ```
//!
//! Both routers drop the ICMP frag-needed / packet-too-big they would send (nftables, output
//! hook), so path-MTU discovery cannot work: a black hole. Knobs: [`Lab::set_bottleneck`],
//! [`Lab::set_delay`], [`Lab::set_loss`],
//! [`Lab::drop_icmp_echo`], [`Lab::drop_icmp_errors`], [`Lab::limit_tcp`] (TCP and ICMP see
//! different paths), [`Lab::set_return_path`] (an asymmetric route). Servers in `srv`:
//! [`Lab::start_http`], [`Lab::start_tls`], [`Lab::start_sshd`], [`Lab::start_tcp_sink`].
//!
//! The bottleneck link is a pair of TAP devices (`wan0` in `win` and in `vpn`) joined by a
//! userspace wire in the test process ([`Wire`]) that adds delay and loss: this kernel has no
//! `sch_netem` (CONFIG_NET_SCH_NETEM is off), so `tc ... netem` is not available.
//!
//! Everything (namespaces with their processes, temporary files) is removed on drop, also when
//! a test panics. Addresses are private and exist only inside the namespaces; nothing touches
//! the host's interfaces.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Daemon, Netns, Transport, enter_netns, run, unique, veth};

/// `wsl`'s address (IPv4).
pub const WSL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// `wsl`'s address (IPv6).
pub const WSL_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
/// `srv`'s address (IPv4).
pub const SRV_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 2);
/// `srv`'s address (IPv6).
pub const SRV_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, 2);
/// `srv`'s further addresses (IPv4): more hosts behind the same tunnel, each new to the client
/// (first contact).
pub const SRV_MORE_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 3, 3), Ipv4Addr::new(10, 77, 3, 4)];
/// `srv`'s further addresses (IPv6), as [`SRV_MORE_V4`].
pub const SRV_MORE_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, 4),
];
/// Network of the container bridge inside `wsl` ([`Lab::add_container`]); `wsl` is
/// [`CONTAINER_GW`] on it and masquerades it out of its uplink, as Docker's default bridge does.
pub const CONTAINER_NET: &str = "172.17.0.0/16";
/// `wsl`'s address on [`CONTAINER_NET`]: the container's gateway.
pub const CONTAINER_GW: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// The container's address on [`CONTAINER_NET`].
pub const CONTAINER_V4: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
/// Name of `wsl`'s uplink in the ZeroTier variant (TAP-like: a veth named `zt` + hex).
pub const ZT_IFACE: &str = "zt7b2e4a1c";
/// MTU of the ZeroTier-style uplink (bytes).
pub const ZT_MTU: u16 = 2800;
/// The path MTU (bytes) a typical Windows VPN leaves: the lab's default bottleneck, and the
/// clamp the tests and the bench write where they mean "a path through a VPN".
pub const VPN_MTU: u16 = 1372;
/// Name of the bottleneck link's interface in both routers.
pub const WAN_IFACE: &str = "wan0";
/// Name of the wide second link between `wsl` and `vpn` ([`Lab::vpn_only_for`]).
pub const WIDE_IFACE: &str = "wide0";
/// `wsl`'s address on the wide second link.
pub const WIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 5, 2);
/// What the split-tunnel VPN of [`Lab::vpn_only_for`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpnSelector {
    /// This user's traffic (`ip rule ... uidrange`).
    User(u32),
    /// Traffic with this firewall mark (`ip rule ... fwmark`), which `wsl`'s nftables sets on
    /// the traffic of user `uid` (`meta skuid`).
    MarkOfUser { mark: u32, uid: u32 },
    /// TCP to this port (`ip rule ... ipproto tcp dport`).
    TcpPort(u16),
}

impl VpnSelector {
    /// The selector as `ip rule` takes it.
    fn rule(self) -> String {
        match self {
            Self::User(uid) => format!("uidrange {uid}-{uid}"),
            Self::MarkOfUser { mark, .. } => format!("fwmark {mark:#x}"),
            Self::TcpPort(port) => format!("ipproto tcp dport {port}"),
        }
    }
}

/// The routing table of the split-tunnel VPN ([`Lab::vpn_only_for`]).
pub const USER_VPN_TABLE: u32 = 100;
/// Name of the return link's interface in both routers ([`Lab::set_return_path`]).
pub const RETURN_IFACE: &str = "ret0";

/// How to build a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// MTU (bytes) of the win--vpn link. Below 1280 that link carries no IPv6.
    pub bottleneck: u16,
    /// Round-trip time (ms) added on the bottleneck link (half each way).
    pub rtt_ms: u32,
    /// `wsl`'s uplink is a `zt...` interface with MTU 2800 instead of `eth0` with MTU 1500.
    pub zerotier: bool,
    /// Routers drop the frag-needed / packet-too-big they would send (the black hole).
    pub drop_icmp_errors: bool,
    /// Join the routers with a kernel veth pair instead of the userspace [`Wire`]: far more
    /// throughput (for load tests), but no delay or loss ([`Lab::set_delay`] then fails).
    pub kernel_link: bool,
}

impl Default for LabConfig {
    /// Bottleneck [`VPN_MTU`], no delay, `eth0`, ICMP errors dropped.
    fn default() -> Self {
        Self {
            bottleneck: VPN_MTU,
            rtt_ms: 0,
            zerotier: false,
            drop_icmp_errors: true,
            kernel_link: false,
        }
    }
}

/// How long a server started in `srv` may take to listen (an upper bound, not a timing claim).
const SERVER_START: Duration = Duration::from_secs(20);

/// The lab. Field order is drop order: servers, then namespaces, then the temporary directory.
pub struct Lab {
    daemons: Mutex<Vec<Daemon>>,
    wire: Option<Wire>,
    /// The client side: uplink [`Lab::wsl_iface`], default routes via `win`.
    pub wsl: Netns,
    /// Router between `wsl` and the bottleneck (a Windows host / VPN client).
    pub win: Netns,
    /// Router between the bottleneck and `srv` (the VPN's far end).
    pub vpn: Netns,
    /// The servers' namespace.
    pub srv: Netns,
    wsl_iface: String,
    /// `/etc/netns/<wsl>/`, where `ip netns exec` finds `wsl`'s own `resolv.conf`.
    wsl_etc: TempDir,
    tmp: TempDir,
}

/// A temporary directory removed (recursively) on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    /// Builds the lab with [`LabConfig::default`] except the bottleneck MTU (bytes).
    pub fn new(bottleneck: u16) -> Result<Self> {
        Self::with(LabConfig {
            bottleneck,
            ..LabConfig::default()
        })
    }

    /// Builds the ZeroTier variant of the lab ([`LabConfig::zerotier`]) with a bottleneck of
    /// `bottleneck` bytes, the rest as [`LabConfig::default`].
    pub fn zerotier(bottleneck: u16) -> Result<Self> {
        Self::with(LabConfig {
            bottleneck,
            zerotier: true,
            ..LabConfig::default()
        })
    }

    /// Builds the lab.
    pub fn with(cfg: LabConfig) -> Result<Self> {
        crate::netns::require_root();
        let tmp = TempDir(std::env::temp_dir().join(unique("wslnet-lab")));
        std::fs::create_dir_all(&tmp.0).context("creating the lab's temporary directory")?;
        let wsl_iface = if cfg.zerotier { ZT_IFACE } else { "eth0" }.to_string();
        let wsl = Netns::new("wlw")?;
        let wsl_etc = TempDir(PathBuf::from("/etc/netns").join(wsl.name()));
        let mut lab = Self {
            daemons: Mutex::new(Vec::new()),
            wire: None,
            wsl,
            win: Netns::new("wlr")?,
            vpn: Netns::new("wlv")?,
            srv: Netns::new("wls")?,
            wsl_iface,
            wsl_etc,
            tmp,
        };
        lab.build(&cfg)
            .context("building the lab (needs root, iproute2, nftables)")?;
        Ok(lab)
    }

    fn build(&mut self, cfg: &LabConfig) -> Result<()> {
        let uplink_mtu = if cfg.zerotier { ZT_MTU } else { 1500 };
        // No duplicate address detection: while a router's link-local address is tentative it
        // cannot resolve neighbours for forwarded packets, and IPv6 would be dead for ~2 s.
        for ns in [&self.wsl, &self.win, &self.vpn, &self.srv] {
            ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")?;
        }
        veth(&self.wsl, &self.wsl_iface, &self.win, "lan0")?;
        if cfg.kernel_link {
            veth(&self.win, WAN_IFACE, &self.vpn, WAN_IFACE)?;
        } else {
            self.wire = Some(Wire::new(&self.win, &self.vpn, WAN_IFACE)?);
        }
        for ns in [&self.win, &self.vpn] {
            ns.ip(&["link", "set", WAN_IFACE, "up"])?;
        }
        veth(&self.vpn, "lan1", &self.srv, "eth0")?;
        let w = &self.wsl_iface;
        self.wsl.sh(&format!(
            "ip link set {w} mtu {uplink_mtu}
             ip addr add {WSL_V4}/24 dev {w}
             ip addr add {WSL_V6}/64 dev {w} nodad
             ip route add default via 10.77.1.1
             ip -6 route add default via fd77:1::1"
        ))?;
        self.win.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             ip link set lan0 mtu {uplink_mtu}
             ip addr add 10.77.1.1/24 dev lan0
             ip addr add fd77:1::1/64 dev lan0 nodad
             ip addr add 10.77.2.1/24 dev {WAN_IFACE}
             ip route add 10.77.3.0/24 via 10.77.2.2"
        ))?;
        self.vpn.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             ip addr add 10.77.2.2/24 dev {WAN_IFACE}
             ip addr add 10.77.3.1/24 dev lan1
             ip addr add fd77:3::1/64 dev lan1 nodad
             ip route add 10.77.1.0/24 via 10.77.2.1"
        ))?;
        self.srv.sh(&format!(
            "ip addr add {SRV_V4}/24 dev eth0
             ip addr add {SRV_V6}/64 dev eth0 nodad
             ip route add default via 10.77.3.1
             ip -6 route add default via fd77:3::1"
        ))?;
        for (v4, v6) in SRV_MORE_V4.iter().zip(SRV_MORE_V6) {
            self.srv.sh(&format!(
                "ip addr add {v4}/24 dev eth0
                 ip addr add {v6}/64 dev eth0 nodad"
            ))?;
        }
        // The bottleneck's IPv6 side exists only while its MTU is at least 1280.
        self.set_bottleneck(cfg.bottleneck)?;
        self.drop_icmp_errors(cfg.drop_icmp_errors)?;
        if cfg.rtt_ms > 0 {
            self.set_delay(cfg.rtt_ms)?;
        }
        Ok(())
    }

    /// Name of `wsl`'s uplink (`eth0`, or [`ZT_IFACE`] in the ZeroTier variant).
    pub fn wsl_iface(&self) -> &str {
        &self.wsl_iface
    }

    /// `srv`'s address of the given family.
    pub fn srv_addr(&self, v6: bool) -> IpAddr {
        if v6 { SRV_V6.into() } else { SRV_V4.into() }
    }

    /// Every address of `srv` of the given family: [`Lab::srv_addr`] first, then
    /// [`SRV_MORE_V4`] / [`SRV_MORE_V6`].
    pub fn srv_addrs(&self, v6: bool) -> Vec<IpAddr> {
        let mut all = vec![self.srv_addr(v6)];
        if v6 {
            all.extend(SRV_MORE_V6.map(IpAddr::from));
        } else {
            all.extend(SRV_MORE_V4.map(IpAddr::from));
        }
        all
    }

    /// A container inside `wsl`, as Docker in WSL runs one: a namespace on a bridge-side veth
    /// (`docker0` in `wsl`, unmanaged by wslnet), [`CONTAINER_V4`] on [`CONTAINER_NET`], its
    /// traffic forwarded by `wsl` and masqueraded out of `wsl`'s uplink (nftables). IPv4 only,
    /// like Docker's default bridge. Removed when the returned namespace is dropped.
    pub fn add_container(&self) -> Result<Netns> {
        let ctr = Netns::new("wlc")?;
        veth(&self.wsl, "docker0", &ctr, "eth0")?;
        let uplink = &self.wsl_iface;
        self.wsl.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1
             ip addr add {CONTAINER_GW}/16 dev docker0
             ip link set docker0 up"
        ))?;
        nft_table(
            &self.wsl,
            "wslnet_lab_docker",
            Some(&format!(
                "chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
                   ip saddr {CONTAINER_NET} oifname \"{uplink}\" masquerade
                 }}"
            )),
        )?;
        ctr.sh(&format!(
            "ip addr add {CONTAINER_V4}/16 dev eth0
             ip route add default via {CONTAINER_GW}"
        ))?;
        Ok(ctr)
    }

    /// Makes the bottleneck a VPN for some traffic only, chosen by policy routing as
    /// split-tunnel VPN clients do it (`ip rule add SELECTOR lookup` [`USER_VPN_TABLE`]):
    /// everything else from `wsl`, the agent's own probes included, reaches `srv`'s network over
    /// a second, wide link ([`WIDE_IFACE`], `wsl` -- `vpn`, 1500 bytes, [`WIDE_V4`]). IPv4 only.
    pub fn vpn_only_for(&self, selector: VpnSelector) -> Result<()> {
        veth(&self.wsl, WIDE_IFACE, &self.vpn, WIDE_IFACE)?;
        self.vpn
            .sh(&format!("ip addr add 10.77.5.1/24 dev {WIDE_IFACE}"))?;
        let w = &self.wsl_iface;
        self.wsl.sh(&format!(
            "ip addr add {WIDE_V4}/24 dev {WIDE_IFACE}
             ip route add 10.77.3.0/24 via 10.77.5.1 dev {WIDE_IFACE} src {WIDE_V4}
             ip route add default via 10.77.1.1 dev {w} table {USER_VPN_TABLE}
             ip rule add {} lookup {USER_VPN_TABLE}",
            selector.rule()
        ))?;
        if let VpnSelector::MarkOfUser { mark, uid } = selector {
            nft_table(
                &self.wsl,
                "wslnet_lab_mark",
                Some(&format!(
                    "chain output {{ type route hook output priority mangle; policy accept;
                       meta skuid {uid} meta mark set {mark:#x}
                     }}"
                )),
            )?;
        }
        Ok(())
    }

    /// `wsl`'s address of the given family.
    pub fn wsl_addr(&self, v6: bool) -> IpAddr {
        if v6 { WSL_V6.into() } else { WSL_V4.into() }
    }

    /// The lab's temporary directory (removed with the lab).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp.0
    }

    /// Sets the MTU (bytes) of the bottleneck link, both ends. At 1280 and above the link's
    /// IPv6 addresses and routes are (re)installed (the kernel drops them below 1280).
    pub fn set_bottleneck(&self, mtu: u16) -> Result<()> {
        for ns in [&self.win, &self.vpn] {
            ns.ip(&["link", "set", WAN_IFACE, "mtu", &mtu.to_string()])?;
        }
        if mtu >= 1280 {
            self.win.sh(&format!(
                "ip -6 addr replace fd77:2::1/64 dev {WAN_IFACE} nodad
                 ip -6 route replace fd77:3::/64 via fd77:2::2 dev {WAN_IFACE}"
            ))?;
            self.vpn.sh(&format!(
                "ip -6 addr replace fd77:2::2/64 dev {WAN_IFACE} nodad
                 ip -6 route replace fd77:1::/64 via fd77:2::1 dev {WAN_IFACE}"
            ))?;
        }
        Ok(())
    }

    /// Whether both routers drop the frag-needed (IPv4) / packet-too-big (IPv6) they send.
    pub fn drop_icmp_errors(&self, drop: bool) -> Result<()> {
        for ns in [&self.win, &self.vpn] {
            nft_table(
                ns,
                "wslnet_lab_pmtu",
                drop.then_some(
                    "chain pmtu_out { type filter hook output priority 0; policy accept;
                       icmp type destination-unreachable icmp code 4 counter drop
                       icmpv6 type packet-too-big counter drop
                     }",
                ),
            )?;
        }
        Ok(())
    }

    /// Frag-needed / packet-too-big messages the routers have dropped so far.
    pub fn dropped_icmp_errors(&self) -> Result<u64> {
        let mut total = 0;
        for ns in [&self.win, &self.vpn] {
            let out = ns.sh_output("nft list table inet wslnet_lab_pmtu")?.stdout;
            total += String::from_utf8_lossy(&out)
                .split("packets ")
                .skip(1)
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// Whether `vpn` drops ICMP echo requests (IPv4 and IPv6) it forwards, so that only the
    /// TCP probe can measure the path.
    pub fn drop_icmp_echo(&self, drop: bool) -> Result<()> {
        nft_table(
            &self.vpn,
            "wslnet_lab_echo",
            drop.then_some(
                "chain echo_fwd { type filter hook forward priority 0; policy accept;
                   icmp type echo-request drop
                   icmpv6 type echo-request drop
                 }",
            ),
        )
    }

    /// Makes `win` (the Windows host's NAT) silently drop the packets from `wsl` marked with one
    /// of the DSCPs named (nftables names: `cs1`, `af21`, ...), as VMware's NAT and some VPN
    /// clients do with OpenSSH's default `IPQoS af21 cs1`; packets to `wsl` pass whatever their
    /// marks. An empty list removes the rule.
    pub fn drop_marked(&self, dscps: &[&str]) -> Result<()> {
        let set = dscps.join(", ");
        let body = format!(
            "chain marks_fwd {{ type filter hook forward priority 0; policy accept;
               iifname \"lan0\" ip dscp {{ {set} }} counter drop
               iifname \"lan0\" ip6 dscp {{ {set} }} counter drop
             }}"
        );
        nft_table(
            &self.win,
            "wslnet_lab_dscp",
            (!dscps.is_empty()).then_some(body.as_str()),
        )
    }

    /// Whether `vpn` silently drops forwarded TCP packets larger than `v4` (IPv4) / `v6` (IPv6)
    /// bytes (IP header included), both directions, while ICMP of any size up to the link MTU
    /// crosses: a path that treats TCP unlike echo (a user's report: ping passed 1372, TLS needed
    /// 1257). `None` removes it.
    pub fn limit_tcp(&self, limits: Option<(u16, u16)>) -> Result<()> {
        let body = limits.map(|(v4, v6)| {
            format!(
                "chain tcp_fwd {{ type filter hook forward priority 0; policy accept;
                   meta nfproto ipv4 meta l4proto tcp ip length > {v4} counter drop
                   meta nfproto ipv6 meta l4proto tcp ip6 length > {} counter drop
                 }}",
                v6.saturating_sub(40)
            )
        });
        // A middlebox judges packets as they cross the wire. `srv`'s stack hands `vpn` whole
        // TSO bursts over the veth (one 64 KiB packet, segmented only where it leaves `vpn`),
        // which the rule would drop as one oversize packet: make `srv` send wire-sized
        // segments.
        let offload = if limits.is_some() { "off" } else { "on" };
        self.srv
            .sh(&format!("ethtool -K eth0 tso {offload} gso {offload}"))?;
        nft_table(&self.vpn, "wslnet_lab_tcp", body.as_deref())
    }

    /// Sends `srv`'s IPv4 packets to `wsl` back over a second link between the routers
    /// ([`RETURN_IFACE`], a kernel veth) of MTU `mtu` bytes, while `wsl`'s packets to `srv` keep
    /// crossing the bottleneck: an asymmetric route. `vpn` fragments what it may there (no DF:
    /// Linux's echo replies) and drops what it may not (DF: TCP segments) with its frag-needed
    /// dropped too ([`Lab::drop_icmp_errors`]), so only the return direction is a black hole.
    /// IPv4 only: IPv6 routers never fragment, so an echo reply that comes back whole proves
    /// the IPv6 return path. `None` sends everything back over the bottleneck again.
    pub fn set_return_path(&self, mtu: Option<u16>) -> Result<()> {
        let exists = self.vpn.sh(&format!("ip link show {RETURN_IFACE}")).is_ok();
        match mtu {
            Some(mtu) => {
                if !exists {
                    veth(&self.win, RETURN_IFACE, &self.vpn, RETURN_IFACE)?;
                    self.win.sh(&format!(
                        "ip addr add 10.77.4.1/24 dev {RETURN_IFACE}
                         sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{RETURN_IFACE}.rp_filter=0"
                    ))?;
                    self.vpn
                        .sh(&format!("ip addr add 10.77.4.2/24 dev {RETURN_IFACE}"))?;
                }
                for ns in [&self.win, &self.vpn] {
                    ns.ip(&["link", "set", RETURN_IFACE, "mtu", &mtu.to_string()])?;
                }
                self.vpn.sh(&format!(
                    "ip route replace 10.77.1.0/24 via 10.77.4.1 dev {RETURN_IFACE}"
                ))?;
                Ok(())
            }
            None => {
                self.vpn.sh(&format!(
                    "ip route replace 10.77.1.0/24 via 10.77.2.1 dev {WAN_IFACE}"
                ))?;
                if exists {
                    self.vpn.ip(&["link", "del", RETURN_IFACE])?;
                }
                Ok(())
            }
        }
    }

    /// Adds `rtt_ms` of round-trip time on the bottleneck link (half each way); 0 removes it.
    pub fn set_delay(&self, rtt_ms: u32) -> Result<()> {
        self.wire()?
            .one_way_us
            .store(u64::from(rtt_ms) * 500, Ordering::Relaxed);
        Ok(())
    }

    /// Drops `percent` (0..=100) of the frames crossing the bottleneck link, each direction;
    /// 100 drops everything, 0 removes it.
    pub fn set_loss(&self, percent: f32) -> Result<()> {
        let ppm = (percent.clamp(0.0, 100.0) * 10_000.0) as u32;
        self.wire()?.loss_ppm.store(ppm, Ordering::Relaxed);
        Ok(())
    }

    fn wire(&self) -> Result<&Wire> {
        self.wire.as_ref().context("the lab has no bottleneck wire")
    }

    fn keep(&self, d: Daemon) {
        self.daemons.lock().unwrap().push(d);
    }

    /// Starts `program args` in `srv` (kept until the lab is dropped) and waits until something
    /// listens on TCP `port` there.
    pub fn spawn_srv_server(
        &self,
        what: &str,
        port: u16,
        program: &str,
        args: &[&str],
    ) -> Result<()> {
        let d = self.srv.spawn(program, args)?;
        self.keep_listening(what, d, Transport::Tcp, port)
    }

    /// Keeps `d` (a server started in `srv`) until the lab is dropped, once it listens on
    /// `port`; fails with its log when it does not within [`SERVER_START`].
    fn keep_listening(&self, what: &str, d: Daemon, transport: Transport, port: u16) -> Result<()> {
        if let Err(e) = self.srv.wait_for_listener(transport, port, SERVER_START) {
            bail!("{e}; {what} log:\n{}", d.log());
        }
        self.keep(d);
        Ok(())
    }

    /// Gives `wsl` its own `/etc/resolv.conf` with these nameservers: `ip netns exec` mounts
    /// `/etc/netns/<name>/resolv.conf` over it for every command run in the namespace.
    pub fn set_nameservers(&self, servers: &[IpAddr]) -> Result<()> {
        std::fs::create_dir_all(&self.wsl_etc.0)
            .with_context(|| format!("creating {}", self.wsl_etc.0.display()))?;
        let conf: String = servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        std::fs::write(self.wsl_etc.0.join("resolv.conf"), conf).context("writing resolv.conf")
    }

    /// Starts dnsmasq in `srv` on [`SRV_V4`] port 53 (UDP), answering `names` with their
    /// addresses and NXDOMAIN for everything else (it forwards nothing), and waits until it
    /// listens.
    pub fn start_dns(&self, names: &[(&str, Ipv4Addr)]) -> Result<()> {
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={SRV_V4}"),
            "--user=root".into(),
            format!(
                "--pid-file={}",
                self.tmp.0.join("dnsmasq.pid").to_string_lossy()
            ),
            "--log-facility=-".into(),
        ];
        args.extend(names.iter().map(|(n, a)| format!("--address=/{n}/{a}")));
        let d = self.srv.spawn("dnsmasq", &args)?;
        self.keep_listening("dnsmasq", d, Transport::Udp, 53)
    }

    /// Starts `python3 -m http.server` in `srv` on `port` (both families), serving
    /// [`HttpServer::path`], a file of [`HttpServer::size`] bytes.
    pub fn start_http(&self, port: u16) -> Result<HttpServer> {
        let root = self.tmp.0.join("www");
        std::fs::create_dir_all(&root)?;
        let size = 400 * 1024;
        let data: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("big.bin"), &data).context("writing the HTTP test file")?;
        let port_s = port.to_string();
        self.spawn_srv_server(
            "python3 http.server",
            port,
            "python3",
            &[
                "-u",
                "-m",
                "http.server",
                &port_s,
                "--bind",
                "::",
                "--directory",
                root.to_str().unwrap(),
            ],
        )?;
        Ok(HttpServer {
            port,
            path: "/big.bin".into(),
            size,
        })
    }

    /// Starts `openssl s_server -www` in `srv` on `port` (both families) with a fresh
    /// self-signed 4096-bit RSA certificate for `srv`'s addresses (its server flight is several
    /// full-sized packets).
    pub fn start_tls(&self, port: u16) -> Result<TlsServer> {
        let dir = &self.tmp.0;
        let (key, cert) = (dir.join("tls.key"), dir.join("tls.crt"));
        run(
            "openssl",
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:4096",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=srv.wslnet.test",
                "-addext",
                &format!(
                    "subjectAltName=IP:{SRV_V4},IP:{SRV_V6},{},DNS:srv.wslnet.test",
                    SRV_MORE_V4
                        .map(|a| format!("IP:{a}"))
                        .into_iter()
                        .chain(SRV_MORE_V6.map(|a| format!("IP:{a}")))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        )
        .context("generating the TLS certificate")?;
        self.spawn_srv_server(
            "openssl s_server",
            port,
            "openssl",
            &[
                "s_server",
                "-accept",
                &port.to_string(),
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
                "-www",
                "-quiet",
            ],
        )?;
        Ok(TlsServer { port, cert })
    }

    /// Starts Debian's OpenSSH server in `srv` on `port` (both families) with temporary host
    /// keys (RSA 4096 only, so the key exchange reply is large) and a temporary client key
    /// allowed to log in as root.
    pub fn start_sshd(&self, port: u16) -> Result<SshServer> {
        let dir = self.tmp.0.join("ssh");
        std::fs::create_dir_all(&dir)?;
        let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
        run(
            "ssh-keygen",
            [
                "-q",
                "-t",
                "rsa",
                "-b",
                "4096",
                "-N",
                "",
                "-f",
                &p("host_rsa"),
            ],
        )
        .context("generating the SSH host key")?;
        run(
            "ssh-keygen",
            ["-q", "-t", "ed25519", "-N", "", "-f", &p("client")],
        )
        .context("generating the SSH client key")?;
        std::fs::copy(p("client.pub"), p("authorized_keys"))?;
        let config = format!(
            "Port {port}\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\nPidFile none\n\
             UsePAM no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             AuthorizedKeysFile {}\nStrictModes no\nLogLevel VERBOSE\n",
            p("host_rsa"),
            p("authorized_keys")
        );
        std::fs::write(p("sshd_config"), config)?;
        // sshd's privilege-separation directory (Debian's package creates it at boot).
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        self.spawn_srv_server(
            "sshd",
            port,
            "/usr/sbin/sshd",
            &["-D", "-e", "-f", &p("sshd_config")],
        )?;
        Ok(SshServer {
            port,
            client_key: dir.join("client"),
        })
    }

    /// One SYN from `wsl` to `host:port` (a connect that may be refused, given up after 1 s):
    /// what makes the datapath learn `host`.
    pub fn syn_from_wsl(&self, host: IpAddr, port: u16) -> Result<()> {
        self.wsl.sh(&format!(
            "python3 -c 'import socket; socket.create_connection((\"{host}\", {port}), 1)' || true"
        ))?;
        Ok(())
    }

    /// SYNs from `wsl` to `count` addresses of 10.200.0.0/16, from the `first`-th on (wrapping
    /// at 60000), port 443, as fast as Python connects: a flood of new destinations. Nothing
    /// answers there unless a test routes it.
    pub fn syn_flood_from_wsl(&self, first: u32, count: u32) -> Result<()> {
        self.wsl.sh(&format!(
            "python3 -c '
import socket
for i in range({count}):
    n = ({first} + i) % 60000
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((\"10.200.%d.%d\" % (n // 250, n % 250 + 1), 443))
    s.close()
'"
        ))?;
        Ok(())
    }

    /// Starts a TCP listener in `srv` on `port` (both families, backlog 4096) that reads and
    /// discards whatever it gets: a target for the prober's TCP probe.
    pub fn start_tcp_sink(&self, port: u16) -> Result<()> {
        self.start_slow_tcp_sink(port, 4096, 0)
    }

    /// [`Lab::start_tcp_sink`] with an accept queue of `backlog` connections, pausing
    /// `accept_pause_ms` after each accept: a busy service whose queue overflows.
    pub fn start_slow_tcp_sink(&self, port: u16, backlog: u32, accept_pause_ms: u32) -> Result<()> {
        let pause = f64::from(accept_pause_ms) / 1000.0;
        let script = format!(
            "import socket, threading, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', {port}))
s.listen({backlog})
def drain(c):
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
    time.sleep({pause})
"
        );
        self.spawn_srv_server("tcp sink", port, "python3", &["-u", "-c", &script])
    }
}

/// Creates (with `body`) or deletes (with `None`) `table inet NAME` in `ns`.
fn nft_table(ns: &Netns, name: &str, body: Option<&str>) -> Result<()> {
    let mut script = format!("nft add table inet {name}\nnft delete table inet {name}\n");
    if let Some(body) = body {
        script += &format!("nft -f - <<'EOF'\ntable inet {name} {{\n{body}\n}}\nEOF\n");
    }
    ns.sh(&script)
        .with_context(|| format!("nftables table {name} in {}", ns.name()))?;
    Ok(())
}

/// The HTTP server of [`Lab::start_http`].
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// TCP port.
    pub port: u16,
    /// URL path of the test file.
    pub path: String,
    /// Size of the test file in bytes.
    pub size: usize,
}

/// `host` as the host part of a URL (IPv6 in brackets).
fn url_host(host: IpAddr) -> String {
    match host {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl HttpServer {
    /// URL of the test file at `host`, one of `srv`'s addresses ([`Lab::srv_addrs`]).
    pub fn url(&self, host: IpAddr) -> String {
        format!("http://{}:{}{}", url_host(host), self.port, self.path)
    }
}

/// The TLS server of [`Lab::start_tls`].
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// TCP port.
    pub port: u16,
    /// The self-signed certificate (PEM), for `curl --cacert` / `openssl s_client -CAfile`.
    pub cert: PathBuf,
}

impl TlsServer {
    /// `https://` URL at `host`, one of `srv`'s addresses ([`Lab::srv_addrs`]).
    pub fn url(&self, host: IpAddr) -> String {
        format!("https://{}:{}/", url_host(host), self.port)
    }

    /// `host:port` for `openssl s_client -connect` (IPv6 in brackets).
    pub fn connect_arg(&self, host: IpAddr) -> String {
        format!("{}:{}", url_host(host), self.port)
    }
}

/// The SSH server of [`Lab::start_sshd`].
#[derive(Debug, Clone)]
pub struct SshServer {
    /// TCP port.
    pub port: u16,
    /// Private key allowed to log in as root.
    pub client_key: PathBuf,
}

impl SshServer {
    /// Arguments for `ssh` that log in to `host` (one of `srv`'s addresses) as root and run
    /// `command`, non-interactively, without host-key prompts. `timeout_s` bounds the TCP
    /// connect and the banner exchange only: wrap the command in `timeout` to bound a stalled
    /// key exchange.
    pub fn ssh_args(&self, host: IpAddr, timeout_s: u32, command: &str) -> Vec<String> {
        [
            "-i",
            self.client_key.to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            &format!("ConnectTimeout={timeout_s}"),
            &format!("root@{host}"),
            command,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// The bottleneck link: a TAP device of the same name in each of two namespaces, frames copied
/// between them by threads of the test process after `one_way_us` and with `loss_ppm` loss.
/// Stopped (threads joined, devices gone with their file descriptors) on drop.
pub struct Wire {
    one_way_us: Arc<AtomicU64>,
    loss_ppm: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Wire {
    /// Creates TAP `name` in `a` and in `b` (down; bring them up with `ip link`) and starts
    /// copying frames between them.
    pub fn new(a: &Netns, b: &Netns, name: &str) -> Result<Self> {
        let ta = Arc::new(open_tap(a.name(), name)?);
        let tb = Arc::new(open_tap(b.name(), name)?);
        let mut w = Self {
            one_way_us: Arc::new(AtomicU64::new(0)),
            loss_ppm: Arc::new(AtomicU32::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (from, to, seed) in [
            (ta.clone(), tb.clone(), 0x9e37_79b9u32),
            (tb, ta, 0x85eb_ca6b),
        ] {
            w.pump(from, to, seed)?;
        }
        Ok(w)
    }

    fn pump(&mut self, from: Arc<OwnedFd>, to: Arc<OwnedFd>, seed: u32) -> Result<()> {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (stop, delay, loss) = (
            self.stop.clone(),
            self.one_way_us.clone(),
            self.loss_ppm.clone(),
        );
        self.threads.push(
            std::thread::Builder::new()
                .name("lab-wire-rx".into())
                .spawn(move || {
                    let mut rng = seed;
                    let mut buf = vec![0u8; 65_600];
                    while !stop.load(Ordering::Relaxed) {
                        let mut pfd = libc::pollfd {
                            fd: from.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, 100 ms timeout.
                        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                            continue;
                        }
                        // SAFETY: buf is valid for writes of buf.len() bytes.
                        let n = unsafe {
                            libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        };
                        if n <= 0 {
                            continue;
                        }
                        rng ^= rng << 13;
                        rng ^= rng >> 17;
                        rng ^= rng << 5;
                        if rng % 1_000_000 < loss.load(Ordering::Relaxed) {
                            continue;
                        }
                        let due =
                            Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                        if tx.send((due, buf[..n as usize].to_vec())).is_err() {
                            break;
                        }
                    }
                })
                .context("starting a lab wire thread")?,
        );
        let stop = self.stop.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name("lab-wire-tx".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((due, frame)) = rx.recv_timeout(Duration::from_millis(100)) else {
                            continue;
                        };
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        // SAFETY: frame is valid for reads of frame.len() bytes. A failed write
                        // is a lost frame, as on a real wire.
                        unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                    }
                })
                .context("starting a lab wire thread")?,
        );
        Ok(())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Creates TAP device `name` inside namespace `ns` (from a short-lived thread that enters it);
/// the device lives as long as the returned descriptor.
fn open_tap(ns: &str, name: &str) -> Result<OwnedFd> {
    let (ns, name) = (ns.to_string(), name.to_string());
    std::thread::spawn(move || -> Result<OwnedFd> {
        // Only this short-lived thread enters the namespace.
        enter_netns(&ns)?;
        // SAFETY: plain open(2) of a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            bail!("opening /dev/net/tun: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(15);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: TUNSETIFF reads and writes one struct ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            bail!(
                "TUNSETIFF {name} in namespace {ns}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(fd)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("TAP thread panicked"))?
}
