//! Following the machine's interfaces over rtnetlink: a dump at start, then link and route
//! events (an interface appears, goes, is renamed or changes MTU; a route changes, e.g. a VPN
//! comes up), turned into [`NetEvent`]s for the service.

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkLayerType, LinkMessage},
        tc::{TcHandle, TcMessage},
    },
};
use tokio::sync::mpsc;
use wslnet_common::{L3_OFFSET_ETHERNET, L3_OFFSET_NONE};

/// An interface as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Kernel interface index.
    pub ifindex: u32,
    /// Current name.
    pub name: String,
    /// Interface MTU, bytes (never changed by wslnet).
    pub mtu: u32,
    /// Bytes before the IP header: 14 on Ethernet/veth/TAP, 0 on L3 devices (tun, WireGuard).
    pub l3_offset: u16,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// An interface exists (new, renamed, or changed, e.g. its MTU).
    LinkUp(Link),
    /// An interface was deleted.
    LinkGone(u32),
    /// A route was added or removed: path MTUs may have changed.
    RouteChanged,
    /// The kernel dropped events (the socket's buffer overran during a burst): whatever
    /// changed meanwhile is unknown, so everything must be listed again.
    Overrun,
}

/// The L3 offset for a link-layer type.
pub fn l3_offset(kind: LinkLayerType) -> u16 {
    match kind {
        LinkLayerType::Ether | LinkLayerType::Loopback => L3_OFFSET_ETHERNET,
        _ => L3_OFFSET_NONE,
    }
}

fn to_link(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Some(Link {
        ifindex: msg.header.index,
        name: name?,
        mtu,
        l3_offset: l3_offset(msg.header.link_layer_type),
    })
}

/// Every interface in this network namespace.
pub async fn list() -> Result<Vec<Link>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping links")? {
        if let Some(l) = to_link(&msg) {
            links.push(l);
        }
    }
    task.abort();
    Ok(links)
}

/// Subscribes to link and route events; they arrive on the returned channel until it is dropped.
/// Subscribe before listing, so that nothing that happens in between is missed.
pub fn watch() -> Result<mpsc::Receiver<NetEvent>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .context("subscribing to rtnetlink link and route events")?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    to_link(&l).map(NetEvent::LinkUp)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    Some(NetEvent::LinkGone(l.header.index))
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
                ) => Some(NetEvent::RouteChanged),
                NetlinkPayload::Overrun(_) => Some(NetEvent::Overrun),
                _ => None,
            };
            if let Some(e) = event
                && tx.send(e).await.is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}

/// Deletes the clsact qdisc of an interface (and every filter on it).
pub async fn delete_clsact(ifindex: u32) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut req = handle.qdisc().del(ifindex as i32);
    let msg: &mut TcMessage = req.message_mut();
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    let result = req.execute().await;
    task.abort();
    result.with_context(|| format!("deleting the clsact qdisc of ifindex {ifindex}"))
}
