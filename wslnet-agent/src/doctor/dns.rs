//! `dns`: every nameserver of `/etc/resolv.conf` is asked for every name; when one fails, a
//! second resolver tells a dead resolver from a dead name. WSL's generated `resolv.conf` and
//! its DNS tunneling are named in the advice.
//!
//! The query is built here (a 12-byte header and one question, RFC 1035 section 4.1): the check
//! needs one A query and the response code, which a resolver library would hide behind its own
//! retries and caches.

use std::net::{IpAddr, SocketAddr};

use super::{
    ANSWER_TIMEOUT, Budget, Check, Finding, Status, by_count,
    environment::{Environment, NetworkingMode, RESOLV_CONF},
    join_addrs,
};

/// The DNS port.
const DNS_PORT: u16 = 53;
/// Nameservers asked at most (glibc uses the first three: `MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// Query type A (an IPv4 address).
const QTYPE_A: u16 = 1;
/// Class IN.
const QCLASS_IN: u16 = 1;
/// Header flags of a query: recursion desired.
const FLAGS_RD: u16 = 0x0100;
/// Header flag of a response.
const FLAG_QR: u16 = 0x8000;
/// Response code "no such name".
const RCODE_NXDOMAIN: u16 = 3;

/// What one query got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// At least one record.
    Resolved,
    /// The server answered that the name does not exist (NXDOMAIN) or has no A record.
    NoSuchName,
    /// The server answered with an error code (SERVFAIL, REFUSED, ...).
    Error(u16),
    /// No answer within [`ANSWER_TIMEOUT`].
    Silent,
}

impl Answer {
    fn describe(self) -> String {
        match self {
            Answer::Resolved => "resolved".into(),
            Answer::NoSuchName => "no such name".into(),
            Answer::Error(2) => "SERVFAIL".into(),
            Answer::Error(5) => "REFUSED".into(),
            Answer::Error(c) => format!("error code {c}"),
            Answer::Silent => "no answer".into(),
        }
    }
}

/// `dns`: see the module docs.
pub(crate) async fn check(
    names: &[String],
    second: Option<IpAddr>,
    env: &Environment,
    budget: &mut Budget,
) -> Finding {
    if names.is_empty() {
        return Finding::new(Check::Dns, Status::Skip, "no name to resolve (--name)");
    }
    let configured: Vec<IpAddr> = env
        .nameservers
        .iter()
        .copied()
        .take(MAX_NAMESERVERS)
        .collect();
    if configured.is_empty() {
        return Finding::new(
            Check::Dns,
            Status::Fail,
            format!("no nameserver in {RESOLV_CONF}"),
        )
        .fix(resolver_fix(env));
    }
    // A nameserver without a route is the `route` check's finding, not this one's.
    let mut servers = Vec::new();
    for &s in &configured {
        if crate::prober::egress(s).await.is_ok() {
            servers.push(s);
        }
    }
    if servers.is_empty() {
        let summary = format!("no route to the {}", nameservers(&configured));
        return Finding::new(Check::Dns, Status::Skip, summary);
    }
    // (server, name, answer) for every pair.
    let mut answers = Vec::new();
    for &server in &servers {
        for name in names {
            answers.push((server, name.as_str(), query(server, name, budget).await));
        }
    }
    let dead: Vec<IpAddr> = servers
        .iter()
        .copied()
        .filter(|s| {
            answers
                .iter()
                .filter(|(a, _, _)| a == s)
                .all(|(_, _, r)| *r == Answer::Silent)
        })
        .collect();
    // Names the first responsive server did not resolve: what a program sees.
    let first = servers.iter().find(|s| !dead.contains(s)).copied();
    let unresolved: Vec<(&str, Answer)> = match first {
        Some(f) => answers
            .iter()
            .filter(|(s, _, r)| *s == f && *r != Answer::Resolved)
            .map(|(_, n, r)| (*n, *r))
            .collect(),
        None => Vec::new(),
    };
    // Ask the second resolver only when something failed.
    let second_says = match second {
        Some(s) if (!dead.is_empty() || !unresolved.is_empty()) && !servers.contains(&s) => {
            let mut resolved = Vec::new();
            for name in names {
                if query(s, name, budget).await == Answer::Resolved {
                    resolved.push(name.as_str());
                }
            }
            Some((s, resolved))
        }
        _ => None,
    };
    if first.is_none() {
        let mut summary = format!(
            "{} do{} not answer",
            nameservers(&dead),
            by_count(dead.len(), "es", "")
        );
        if let Some((s, resolved)) = &second_says {
            if resolved.is_empty() {
                summary.push_str(&format!("; {s} does not resolve them either"));
            } else {
                summary.push_str(&format!(
                    "; {s} resolves {}: the resolver is dead, not the name",
                    resolved.join(", ")
                ));
            }
        }
        return Finding::new(Check::Dns, Status::Fail, summary).fix(resolver_fix(env));
    }
    let first = first.unwrap_or(servers[0]);
    if !unresolved.is_empty() {
        let what: Vec<String> = unresolved
            .iter()
            .map(|(n, r)| format!("{n} ({})", r.describe()))
            .collect();
        let mut summary = format!("{first} does not resolve {}", what.join(", "));
        let mut fix = "check the name; names of a VPN's network are only known to the VPN's \
                       resolver: in WSL NAT mode set `dnsTunneling=true` under `[wsl2]` in \
                       %UserProfile%\\.wslconfig so Windows' resolver (and its NRPT rules) \
                       answers"
            .to_string();
        if let Some((s, resolved)) = &second_says
            && !resolved.is_empty()
        {
            summary.push_str(&format!("; {s} resolves {}", resolved.join(", ")));
            fix = resolver_fix(env);
        }
        return Finding::new(Check::Dns, Status::Fail, summary).fix(fix);
    }
    let mut summary = format!(
        "{first} resolves {}{}",
        names.join(", "),
        if env.dns_tunneling() {
            " (WSL DNS tunneling)"
        } else {
            ""
        }
    );
    if !dead.is_empty() {
        summary.push_str(&format!(
            "; {} do{} not answer (every lookup waits for {} first)",
            join_addrs(&dead),
            by_count(dead.len(), "es", ""),
            by_count(dead.len(), "it", "them")
        ));
        return Finding::new(Check::Dns, Status::Warn, summary)
            .fix(format!("remove {} from {RESOLV_CONF}", join_addrs(&dead)));
    }
    Finding::new(Check::Dns, Status::Ok, summary)
}

/// What to do about a resolver that does not work, for this environment.
fn resolver_fix(env: &Environment) -> String {
    match env.mode {
        NetworkingMode::NotWsl => {
            format!("put a working nameserver into {RESOLV_CONF} (or your network manager)")
        }
        _ if env.resolv_generated_by_wsl => "WSL wrote this resolv.conf: behind a VPN set \
             `dnsTunneling=true` under `[wsl2]` in %UserProfile%\\.wslconfig, or set \
             `generateResolvConf=false` under `[network]` in /etc/wsl.conf and write a working \
             nameserver into /etc/resolv.conf; then `wsl --shutdown`"
            .into(),
        _ => format!(
            "put a working nameserver into {RESOLV_CONF}; keep WSL from overwriting it with \
             `generateResolvConf=false` under `[network]` in /etc/wsl.conf"
        ),
    }
}

/// One A query for `name` to `server`, one retry after [`ANSWER_TIMEOUT`].
async fn query(server: IpAddr, name: &str, budget: &mut Budget) -> Answer {
    let Some(packet) = build_query(u16::from_ne_bytes(crate::prober::random_bytes()), name) else {
        return Answer::NoSuchName;
    };
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return Answer::Silent;
    };
    if sock.connect((server, DNS_PORT)).await.is_err() {
        return Answer::Silent;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    for _ in 0..2 {
        if sock.send(&packet).await.is_err() {
            return Answer::Silent;
        }
        budget.sent += 1;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let mut buf = [0u8; 1500];
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    if let Some(answer) = parse_response(&buf[..n], id) {
                        return answer;
                    }
                }
                // ICMP port unreachable arrives as an error on a connected socket.
                Ok(Err(_)) => return Answer::Silent,
                Err(_) => break,
            }
        }
    }
    Answer::Silent
}

/// A recursive A query for `name` with `id`; `None` when `name` is no valid DNS name.
fn build_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(18 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&FLAGS_RD.to_be_bytes());
    // One question, no answer, authority or additional records.
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&QTYPE_A.to_be_bytes());
    p.extend_from_slice(&QCLASS_IN.to_be_bytes());
    (p.len() <= 512).then_some(p)
}

/// The answer a response to query `id` carries; `None` when it is not one.
fn parse_response(r: &[u8], id: u16) -> Option<Answer> {
    if r.len() < 12 || u16::from_be_bytes([r[0], r[1]]) != id {
        return None;
    }
    let flags = u16::from_be_bytes([r[2], r[3]]);
    if flags & FLAG_QR == 0 {
        return None;
    }
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    Some(match flags & 0x000f {
        0 if ancount > 0 => Answer::Resolved,
        0 | RCODE_NXDOMAIN => Answer::NoSuchName,
        code => Answer::Error(code),
    })
}

/// The nameservers `addrs` as a summary names them: "nameserver 10.0.0.1", "nameservers
/// 10.0.0.1, 10.0.0.2".
fn nameservers(addrs: &[IpAddr]) -> String {
    format!(
        "nameserver{} {}",
        by_count(addrs.len(), "", "s"),
        join_addrs(addrs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_what_rfc_1035_says_and_responses_are_judged_by_code_and_answers() {
        let q = build_query(0xbeef, "github.com.").unwrap();
        assert_eq!(
            q,
            [
                &[0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
                b"\x06github\x03com\x00",
                &[0, 1, 0, 1]
            ]
            .concat()
        );
        assert_eq!(build_query(1, "a..b"), None);
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(parse_response(&r, 0xbeef), Some(Answer::NoSuchName));
        r[7] = 1;
        assert_eq!(parse_response(&r, 0xbeef), Some(Answer::Resolved));
        assert_eq!(parse_response(&r, 0xbeee), None);
        r[3] = 0x02;
        assert_eq!(parse_response(&r, 0xbeef), Some(Answer::Error(2)));
        assert_eq!(parse_response(&q, 0xbeef), None, "a query is no response");
    }
}
