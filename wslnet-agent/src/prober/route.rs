//! Bounds of a search: the egress device for the route to the target (rtnetlink `RTM_GETROUTE`,
//! like `ip route get`) and its MTU; the floors.
use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteType},
    },
};

use super::{
    Bounds, DEFAULT_MIN_MTU_V4, MIN_MTU_V4_ABSOLUTE, MIN_MTU_V6, SearchOptions, Traffic, sys,
};

/// `IPPROTO_TCP`, as `RTA_IP_PROTO` carries it.
const IPPROTO_TCP: u8 = 6;

/// Where probes to a target leave: the egress interface of the route, its MTU and the
/// source address the route picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Egress {
    /// Interface name (`?` when only the route's MTU could be found).
    pub iface: String,
    /// Its MTU in bytes.
    pub mtu: u32,
    /// The route's preferred source address, if it names one.
    pub source: Option<IpAddr>,
}

/// The egress of the route to `target` that `traffic` would take (`ip route get TARGET uid UID
/// mark MARK ipproto tcp dport PORT`: policy rules on them apply; empty: as this process's own
/// packets), or of `iface` when given.
pub(crate) async fn egress(
    target: IpAddr,
    iface: Option<&str>,
    traffic: &Traffic,
) -> Result<Egress> {
    Lookups::open().egress(target, iface, traffic).await
}

/// One rtnetlink connection for the route lookups of a search (`None` when none could be
/// opened: the lookups then fall back to the route's MTU, see [`Lookups::egress`]).
struct Lookups {
    netlink: Option<(rtnetlink::Handle, tokio::task::JoinHandle<()>)>,
    /// Why there is no connection.
    error: String,
}

impl Lookups {
    fn open() -> Self {
        match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => Self {
                netlink: Some((handle, tokio::spawn(conn))),
                error: String::new(),
            },
            Err(e) => Self {
                netlink: None,
                error: format!("opening an rtnetlink socket: {e}"),
            },
        }
    }

    /// [`egress`] on this connection.
    async fn egress(
        &self,
        target: IpAddr,
        iface: Option<&str>,
        traffic: &Traffic,
    ) -> Result<Egress> {
        let result = match &self.netlink {
            Some((handle, _)) => netlink_egress(handle, target, iface, traffic).await,
            None => Err(anyhow::anyhow!("{}", self.error)),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if iface.is_none() && traffic.is_empty() && !e.is::<super::LocalTarget>() => {
                // No usable netlink (unusual): the route's MTU from a connected UDP socket.
                tracing::debug!(error = %format!("{e:#}"), "rtnetlink route lookup failed; using IP_MTU");
                let mtu = socket_route_mtu(target).with_context(|| {
                    format!("finding the egress interface for {target} (rtnetlink failed: {e:#})")
                })?;
                Ok(Egress {
                    iface: "?".into(),
                    mtu,
                    source: None,
                })
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Lookups {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.netlink {
            task.abort();
        }
    }
}

async fn netlink_egress(
    handle: &rtnetlink::Handle,
    target: IpAddr,
    iface: Option<&str>,
    traffic: &Traffic,
) -> Result<Egress> {
    let mut source = None;
    let mut links = if let Some(name) = iface {
        handle.link().get().match_name(name.to_owned()).execute()
    } else {
        let mut msg = match target {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        msg.attributes.extend(traffic.uid.map(RouteAttribute::Uid));
        if traffic.mark != 0 {
            msg.attributes.push(RouteAttribute::Mark(traffic.mark));
        }
        if let Some(port) = traffic.dport {
            msg.attributes.push(RouteAttribute::IpProto(IPPROTO_TCP));
            msg.attributes.push(RouteAttribute::Dport(port));
        }
        let route = handle
            .route()
            .get(msg)
            .execute()
            .try_next()
            .await
            .with_context(|| {
                format!("no route to {target}: add one (`ip route`) or check the address")
            })?
            .with_context(|| format!("no route to {target}"))?;
        if route.header.kind == RouteType::Local {
            return Err(super::LocalTarget(target).into());
        }
        let mut oif = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => source = Some((*a).into()),
                RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => source = Some((*a).into()),
                _ => {}
            }
        }
        let oif = oif.with_context(|| format!("the route to {target} has no output interface"))?;
        handle.link().get().match_index(oif).execute()
    };
    let link: LinkMessage = links
        .try_next()
        .await
        .with_context(|| match iface {
            Some(n) => format!("no interface named {n:?} (see `ip link`)"),
            None => format!("looking up the egress interface for {target}"),
        })?
        .context("empty link reply")?;
    let mut name = String::new();
    let mut mtu = None;
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    let mtu = mtu.with_context(|| format!("interface {name} reports no MTU"))?;
    Ok(Egress {
        iface: name,
        mtu,
        source,
    })
}

/// MTU of the route to `target` as a connected UDP socket sees it (`IP_MTU` / `IPV6_MTU`).
fn socket_route_mtu(target: IpAddr) -> Result<u32> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(target, 9))
        .with_context(|| format!("no route to {target}"))?;
    let mtu = match target {
        IpAddr::V4(_) => sys::getsockopt_int(&s, libc::IPPROTO_IP, libc::IP_MTU)?,
        IpAddr::V6(_) => sys::getsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_MTU)?,
    };
    Ok(mtu as u32)
}

/// Lower and upper bound (bytes) of a search to `target` with `opts`.
///
/// With [`SearchOptions::traffic`] and no interface given, the route is the one that traffic
/// takes; where it leaves through another interface than this process's own would, the probes
/// are sent out of that interface from its source address ([`Bounds::bind`], [`Bounds::source`]).
pub(crate) async fn bounds(target: IpAddr, opts: &SearchOptions) -> Result<Bounds> {
    let lookups = Lookups::open();
    let own = lookups
        .egress(target, opts.iface.as_deref(), &Traffic::default())
        .await?;
    let theirs = if opts.iface.is_none() && !opts.traffic.is_empty() {
        let theirs = lookups.egress(target, None, &opts.traffic).await?;
        (theirs.iface != own.iface).then(|| {
            tracing::debug!(%target, traffic = ?opts.traffic, iface = %theirs.iface, "the traffic takes another route: probing along it");
            theirs
        })
    } else {
        None
    };
    let (bind, source) = match &theirs {
        Some(t) => (Some(t.iface.clone()), t.source),
        None => (opts.iface.clone(), None),
    };
    let Egress {
        iface,
        mtu: dev_mtu,
        ..
    } = theirs.unwrap_or(own);
    let dev_mtu = dev_mtu.min(u32::from(u16::MAX)) as u16;
    let mut upper = dev_mtu;
    if let Some(m) = opts.max_mtu {
        if m > dev_mtu {
            tracing::warn!(
                max_mtu = m,
                dev_mtu,
                %iface,
                "max MTU above the egress device's MTU; using the device's"
            );
        }
        upper = upper.min(m);
    }
    let lower = match target {
        IpAddr::V4(_) => opts
            .min_mtu
            .unwrap_or(DEFAULT_MIN_MTU_V4)
            .max(MIN_MTU_V4_ABSOLUTE),
        IpAddr::V6(_) => opts.min_mtu.unwrap_or(MIN_MTU_V6).max(MIN_MTU_V6),
    };
    if lower > upper {
        bail!(
            "lower bound {lower} is above the upper bound {upper} (egress {iface}, MTU {dev_mtu}): \
             lower --min-mtu or raise --max-mtu"
        );
    }
    Ok(Bounds {
        lower,
        upper,
        iface,
        bind,
        source,
    })
}
