//! `route`, `gateway`, `reach`: a default route and its interface, the gateway answering echo,
//! each target answering echo by IP (before any name or TCP is involved).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage},
};

use super::{ANSWER_TIMEOUT, Budget, Check, Finding, Status, by_count, join_addrs};
use crate::prober;

/// Extra echo requests after the first (against the loss of one).
const ECHO_RETRIES: u32 = 1;

/// A default route.
#[derive(Debug, Clone)]
pub(crate) struct DefaultRoute {
    /// Its gateway; `None` on a point-to-point interface.
    pub gateway: Option<IpAddr>,
    /// Its interface.
    pub iface: String,
}

/// The egress interface of a route: its name and MTU (bytes).
pub(crate) type Egress = (String, u32);

/// The routes that matter: the defaults, and each target's egress interface.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub default_v4: Option<DefaultRoute>,
    pub default_v6: Option<DefaultRoute>,
    /// Each target with its egress interface (name, MTU in bytes), or why it has none.
    pub targets: Vec<(IpAddr, Result<Egress, String>)>,
    /// Reading the routing table failed.
    pub error: Option<String>,
}

impl Routes {
    /// The egress interface of `addr` when it was looked up and has a route.
    pub fn egress(&self, addr: IpAddr) -> Option<&Egress> {
        self.targets
            .iter()
            .find(|(a, _)| *a == addr)
            .and_then(|(_, r)| r.as_ref().ok())
    }

    pub fn finding(&self) -> Finding {
        if let Some(e) = &self.error {
            return Finding::new(
                Check::Route,
                Status::Fail,
                format!("cannot read the routing table: {e}"),
            )
            .fix("check that rtnetlink works here (`ip route` should list routes)");
        }
        let describe = |r: &DefaultRoute| match r.gateway {
            Some(g) => format!("via {g} dev {}", r.iface),
            None => format!("dev {}", r.iface),
        };
        let mut parts = Vec::new();
        if let Some(r) = &self.default_v4 {
            parts.push(format!("default {}", describe(r)));
        }
        if let Some(r) = &self.default_v6 {
            parts.push(format!("IPv6 default {}", describe(r)));
        }
        let unrouted: Vec<IpAddr> = self
            .targets
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(a, _)| *a)
            .collect();
        if parts.is_empty() {
            let mut summary = "no default route".to_string();
            if !unrouted.is_empty() {
                summary.push_str(&format!("; no route to {}", join_addrs(&unrouted)));
            }
            return Finding::new(Check::Route, Status::Fail, summary).fix(
                "in WSL, run `wsl --shutdown` from Windows and start again (WSL sets the route \
                 at boot); elsewhere `ip route add default via GATEWAY dev IFACE`",
            );
        }
        if !unrouted.is_empty() {
            parts.push(format!("no route to {}", join_addrs(&unrouted)));
            return Finding::new(Check::Route, Status::Fail, parts.join("; "))
                .fix("add a route to them (`ip route add PREFIX via GATEWAY`), or check the VPN");
        }
        Finding::new(Check::Route, Status::Ok, parts.join("; "))
    }
}

/// Reads the default routes of the main table and each target's egress interface.
pub(crate) async fn routes(targets: &[IpAddr]) -> Routes {
    let mut routes = Routes::default();
    match default_routes().await {
        Ok((v4, v6)) => {
            routes.default_v4 = v4;
            routes.default_v6 = v6;
        }
        Err(e) => routes.error = Some(format!("{e:#}")),
    }
    for &t in targets {
        let r = prober::egress(t).await.map_err(|e| format!("{e:#}"));
        routes.targets.push((t, r));
    }
    routes
}

/// The default routes (IPv4, IPv6) of the main routing table, from an rtnetlink dump.
async fn default_routes() -> anyhow::Result<(Option<DefaultRoute>, Option<DefaultRoute>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    // Every route of one family (the filter a builder of that family's address type makes).
    let dump = |filter: RouteMessage| handle.route().get(filter).execute().try_collect();
    let result = async {
        let v4: Vec<RouteMessage> = dump(RouteMessageBuilder::<Ipv4Addr>::new().build()).await?;
        let v6: Vec<RouteMessage> = dump(RouteMessageBuilder::<Ipv6Addr>::new().build()).await?;
        Ok::<_, anyhow::Error>((default_of(&v4), default_of(&v6)))
    }
    .await;
    task.abort();
    result
}

/// The main table's default route among `routes`, the first one when several.
fn default_of(routes: &[RouteMessage]) -> Option<DefaultRoute> {
    /// The kernel's main routing table (`RT_TABLE_MAIN`).
    const MAIN_TABLE: u32 = 254;
    routes.iter().find_map(|r| {
        // The table attribute, when present, holds table ids beyond the header's 8 bits.
        let mut table = u32::from(r.header.table);
        let mut gateway = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if r.header.destination_prefix_length != 0 || table != MAIN_TABLE {
            return None;
        }
        let iface = crate::attach::interface_name(oif?)?;
        Some(DefaultRoute { gateway, iface })
    })
}

/// `gateway`: the default gateway answers echo.
pub(crate) async fn gateway(routes: &Routes, budget: &mut Budget) -> Finding {
    let Some(route) = routes.default_v4.as_ref().or(routes.default_v6.as_ref()) else {
        return Finding::new(Check::Gateway, Status::Skip, "no default route");
    };
    let Some(gw) = route.gateway else {
        return Finding::new(
            Check::Gateway,
            Status::Skip,
            format!("the default route has no gateway (dev {})", route.iface),
        );
    };
    match prober::echo(gw, ECHO_RETRIES, ANSWER_TIMEOUT).await {
        Ok(e) => {
            budget.sent += e.probes_sent;
            if e.answered {
                Finding::new(
                    Check::Gateway,
                    Status::Ok,
                    format!("{gw} on {} answers", route.iface),
                )
            } else {
                Finding::new(
                    Check::Gateway,
                    Status::Fail,
                    format!("{gw} on {} does not answer echo", route.iface),
                )
                .fix(format!(
                    "check the link (`ip link show {}`); in WSL NAT mode the gateway is the \
                     Windows host: `wsl --shutdown` and start again, or check Windows' firewall",
                    route.iface
                ))
            }
        }
        Err(e) => Finding::new(Check::Gateway, Status::Skip, echo_unavailable(&e)),
    }
}

/// What `reach` found: the targets that answered.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    /// Targets that answered echo, with their egress interface (name, MTU in bytes).
    pub answered: Vec<(IpAddr, String, u32)>,
    /// Targets that did not answer.
    pub silent: Vec<IpAddr>,
    /// Targets without a route (not tried).
    pub unrouted: Vec<IpAddr>,
    /// Echo could not be sent at all (no ICMP socket allowed).
    pub unavailable: Option<String>,
}

impl Reach {
    pub fn finding(&self) -> Finding {
        if let Some(why) = &self.unavailable {
            return Finding::new(Check::Reach, Status::Skip, why.clone());
        }
        if self.answered.is_empty() && self.silent.is_empty() {
            return Finding::new(
                Check::Reach,
                Status::Skip,
                format!("no route to {}", join_addrs(&self.unrouted)),
            );
        }
        let answered: Vec<IpAddr> = self.answered.iter().map(|(a, _, _)| *a).collect();
        let mut summary = if answered.is_empty() {
            String::new()
        } else {
            format!(
                "{} answer{}",
                join_addrs(&answered),
                by_count(answered.len(), "s", "")
            )
        };
        if !self.silent.is_empty() {
            if !summary.is_empty() {
                summary.push_str("; ");
            }
            summary.push_str(&format!("{} do not answer echo", join_addrs(&self.silent)));
            return Finding::new(Check::Reach, Status::Fail, summary).fix(
                "check the VPN and the route to them (`ip route get ADDR`); a host that drops \
                 echo but serves TCP is not broken: try `curl` or `nc -vz ADDR PORT`",
            );
        }
        if !self.unrouted.is_empty() {
            summary.push_str(&format!("; no route to {}", join_addrs(&self.unrouted)));
        }
        Finding::new(Check::Reach, Status::Ok, summary)
    }
}

/// `reach`: each routed target answers echo.
pub(crate) async fn reach(targets: &[IpAddr], routes: &Routes, budget: &mut Budget) -> Reach {
    let mut reach = Reach::default();
    for &t in targets {
        let Some((iface, mtu)) = routes.egress(t) else {
            reach.unrouted.push(t);
            continue;
        };
        match prober::echo(t, ECHO_RETRIES, ANSWER_TIMEOUT).await {
            Ok(e) => {
                budget.sent += e.probes_sent;
                if e.answered {
                    reach.answered.push((t, iface.clone(), *mtu));
                } else {
                    reach.silent.push(t);
                }
            }
            Err(e) => {
                reach.unavailable = Some(echo_unavailable(&e));
                break;
            }
        }
    }
    reach
}

/// Why echo could not be sent (the prober's error says what allows it).
fn echo_unavailable(e: &anyhow::Error) -> String {
    format!("cannot send ICMP echo: {e:#}")
}
