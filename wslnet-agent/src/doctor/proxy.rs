//! `proxy`: the proxy variables programs read (`http_proxy`, `https_proxy`, `all_proxy`, either
//! case) and whether the host each names accepts a TCP connection. A classic WSL trap: a proxy
//! address written for NAT mode (the Windows host, the default gateway) kept after switching
//! to mirrored mode, where Windows is `127.0.0.1`, or the other way round.

use std::net::{IpAddr, SocketAddr};

use super::{
    ANSWER_TIMEOUT, Budget, Check, Finding, Status, by_count,
    environment::{Environment, NetworkingMode},
};

/// The variables read, in the order they are reported.
pub const VARIABLES: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// A proxy variable's host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProxyAddr {
    host: String,
    port: u16,
}

/// `proxy`: see the module docs.
pub(crate) async fn check(env: &Environment, budget: &mut Budget) -> Finding {
    let set: Vec<(&str, String)> = VARIABLES
        .iter()
        .filter_map(|&v| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| (v, s))
        })
        .collect();
    if set.is_empty() {
        return Finding::new(Check::Proxy, Status::Ok, "no proxy variables set");
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (var, value) in &set {
        let Some(addr) = parse(value) else {
            bad.push(format!("{var}={value} is no proxy URL"));
            continue;
        };
        match connect(&addr, budget).await {
            Ok(()) => good.push(format!("{var} {}:{}", addr.host, addr.port)),
            Err(why) => bad.push(format!("{var}={value}: {why}")),
        }
    }
    if bad.is_empty() {
        return Finding::new(
            Check::Proxy,
            Status::Ok,
            format!(
                "{} accept{} connections",
                good.join(", "),
                by_count(good.len(), "s", "")
            ),
        );
    }
    let hint = match env.mode {
        NetworkingMode::Mirrored => {
            "; in mirrored mode a proxy on Windows is at 127.0.0.1, not the NAT gateway"
        }
        NetworkingMode::Nat => {
            "; in NAT mode a proxy on Windows is at the default gateway's address (`ip route \
             show default`), and must listen on it, not only on 127.0.0.1"
        }
        NetworkingMode::NotWsl => "",
    };
    Finding::new(Check::Proxy, Status::Fail, bad.join("; ")).fix(format!(
        "start the proxy or correct the variable (`unset {}` if you need none){hint}",
        set.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(" ")
    ))
}

/// Host and port of a proxy URL such as `http://user:pw@10.0.0.1:3128/` or `10.0.0.1:3128`.
fn parse(value: &str) -> Option<ProxyAddr> {
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), value),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme.as_str() {
        "https" => 443,
        s if s.starts_with("socks") => 1080,
        _ => 80,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default_port),
        }
    };
    (!host.is_empty()).then_some(ProxyAddr { host, port })
}

/// One TCP connection to the proxy, within [`ANSWER_TIMEOUT`].
async fn connect(addr: &ProxyAddr, budget: &mut Budget) -> Result<(), String> {
    let target: Vec<SocketAddr> = match addr.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, addr.port)],
        Err(_) => tokio::net::lookup_host((addr.host.as_str(), addr.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", addr.host))?
            .collect(),
    };
    let first = *target
        .first()
        .ok_or_else(|| format!("{} has no address", addr.host))?;
    budget.sent += 1;
    match tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{first}: {e}")),
        Err(_) => Err(format!(
            "{first}: no answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_give_host_and_port() {
        let p = |h: &str, port| {
            Some(ProxyAddr {
                host: h.into(),
                port,
            })
        };
        assert_eq!(parse("http://10.0.0.1:3128/"), p("10.0.0.1", 3128));
        assert_eq!(parse("http://u:p@proxy.corp:8080"), p("proxy.corp", 8080));
        assert_eq!(parse("10.0.0.1:3128"), p("10.0.0.1", 3128));
        assert_eq!(parse("https://proxy.corp"), p("proxy.corp", 443));
        assert_eq!(parse("socks5://127.0.0.1"), p("127.0.0.1", 1080));
        assert_eq!(parse("http://[fd00::1]:3128"), p("fd00::1", 3128));
        assert_eq!(parse("http://:3128"), None);
        assert_eq!(parse("http://host:notaport"), None);
    }
}
