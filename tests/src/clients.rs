//! The three real clients a user runs into the black hole with, from `wsl` to `srv`: an HTTP
//! download (curl), a TLS handshake with a 4096-bit RSA certificate (openssl s_client) and an
//! SSH key exchange plus a command (ssh). Shared by the demo and the end-to-end tests.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    lab::{HttpServer, Lab, SshServer, TlsServer},
    netns::Netns,
};

/// The rate [`paced_download`] reads at, bytes a second.
pub const PACED_RATE: u32 = 150_000;

/// Downloads the lab's HTTP file from `host` (one of `srv`'s addresses) in namespace `from`,
/// through a 16 KB receive buffer read at [`PACED_RATE`]: the server can only send as fast as it
/// is read, so the transfer runs for seconds (about 2.7 s for the 400 KB file) and a path that
/// changes meanwhile changes under it. Returns whether the whole body arrived within `limit`,
/// and how long it took.
pub fn paced_download(
    from: &Netns,
    http: &HttpServer,
    host: IpAddr,
    limit: Duration,
) -> (bool, Duration) {
    let family = if host.is_ipv4() {
        "AF_INET"
    } else {
        "AF_INET6"
    };
    let script = format!(
        "timeout {limit} python3 -c '
import socket, time
s = socket.socket(socket.{family}, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((\"{host}\", {port}))
s.sendall(b\"GET {path} HTTP/1.0\\r\\nHost: srv\\r\\n\\r\\n\")
data, start = b\"\", time.time()
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
    time.sleep(max(0.0, start + len(data) / {PACED_RATE} - time.time()))
print(\"done\", len(data.split(b\"\\r\\n\\r\\n\", 1)[1]))
'",
        limit = limit.as_secs().max(1),
        port = http.port,
        path = http.path,
    );
    let start = Instant::now();
    let out = from.sh_output(&script);
    let done = out
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("done {}", http.size));
    (done, start.elapsed())
}

/// Port of the HTTP server of [`Servers`].
pub const HTTP_PORT: u16 = 8080;

/// The servers of a lab started for the clients.
pub struct Servers {
    /// HTTP on port [`HTTP_PORT`] serving a 400 KB file.
    pub http: HttpServer,
    /// TLS on port 8443 with a 4096-bit RSA certificate.
    pub tls: TlsServer,
    /// OpenSSH on port 2222.
    pub ssh: SshServer,
}

impl Servers {
    /// Starts the three servers in the lab's `srv`.
    pub fn start(lab: &Lab) -> Result<Self> {
        Ok(Self {
            http: lab.start_http(HTTP_PORT)?,
            tls: lab.start_tls(8443)?,
            ssh: lab.start_sshd(2222)?,
        })
    }
}

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// curl downloading the HTTP file.
    Http,
    /// openssl s_client completing a verified handshake.
    Tls,
    /// ssh completing the key exchange and running `true`.
    Ssh,
}

impl Client {
    /// All three.
    pub const ALL: [Client; 3] = [Client::Http, Client::Tls, Client::Ssh];

    /// A human label.
    pub fn label(self) -> &'static str {
        match self {
            Client::Http => "HTTP download (curl, 400 KB)",
            Client::Tls => "TLS handshake (openssl, RSA-4096 certificate)",
            Client::Ssh => "SSH key exchange (OpenSSH)",
        }
    }
}

/// What a client run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which client.
    pub client: Client,
    /// The server address it connected to.
    pub host: IpAddr,
    /// It completed and its result checked out.
    pub ok: bool,
    /// It was killed by the timeout (the black-hole signature), rather than failing fast.
    pub timed_out: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// Last lines of its output, for failure messages.
    pub detail: String,
}

/// Runs `client` from `wsl` against `srv` (address of the given family) with a `timeout`.
pub fn run(lab: &Lab, servers: &Servers, client: Client, v6: bool, timeout: Duration) -> Outcome {
    run_from(&lab.wsl, servers, client, lab.srv_addr(v6), timeout)
}

/// Runs `client` from namespace `from` (`wsl`, or a container behind it) against `host`, one of
/// `srv`'s addresses ([`Lab::srv_addrs`]), with a `timeout`.
pub fn run_from(
    from: &Netns,
    servers: &Servers,
    client: Client,
    host: IpAddr,
    timeout: Duration,
) -> Outcome {
    run_from_as(from, None, servers, client, host, timeout)
}

/// [`run_from`] as user `uid` (`setpriv`, no supplementary groups), or as root with `None`.
pub fn run_from_as(
    from: &Netns,
    uid: Option<u32>,
    servers: &Servers,
    client: Client,
    host: IpAddr,
    timeout: Duration,
) -> Outcome {
    let t = timeout.as_secs().max(1);
    let user = uid.map_or(String::new(), |u| {
        format!("setpriv --reuid {u} --regid {u} --clear-groups ")
    });
    let script = user
        + &match client {
            Client::Http => format!(
                "curl -sS --max-time {t} -o /dev/null -w '%{{size_download}}' '{}'",
                servers.http.url(host)
            ),
            Client::Tls => format!(
                "timeout {t} openssl s_client -connect {} -CAfile {} \
             -verify_return_error -brief </dev/null 2>&1",
                servers.tls.connect_arg(host),
                servers.tls.cert.display()
            ),
            Client::Ssh => {
                let args: Vec<String> = servers
                    .ssh
                    .ssh_args(host, t as u32, "echo kex-ok")
                    .into_iter()
                    .map(|a| format!("'{a}'"))
                    .collect();
                format!("timeout {t} ssh {} 2>&1", args.join(" "))
            }
        };
    let start = Instant::now();
    let out = from.sh_output(&script);
    let elapsed = start.elapsed();
    let (code, text) = match out {
        Ok(o) => (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (None, e.to_string()),
    };
    let ok = code == Some(0)
        && match client {
            Client::Http => text.trim() == servers.http.size.to_string(),
            Client::Tls => {
                text.contains("Verification: OK") || text.contains("CONNECTION ESTABLISHED")
            }
            Client::Ssh => text.contains("kex-ok"),
        };
    // curl exits 28 on its timeout; `timeout` exits 124.
    let timed_out = matches!(code, Some(28) | Some(124))
        || (!ok && elapsed + Duration::from_millis(300) >= timeout);
    let detail = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    Outcome {
        client,
        host,
        ok,
        timed_out,
        elapsed,
        detail,
    }
}

/// Runs every client on both families in parallel threads, `timeout` each.
pub fn run_all(lab: &Lab, servers: &Servers, families: &[bool], timeout: Duration) -> Vec<Outcome> {
    let hosts: Vec<IpAddr> = families.iter().map(|&v6| lab.srv_addr(v6)).collect();
    run_all_from(&lab.wsl, servers, &hosts, timeout)
}

/// Runs every client against each of `hosts` (`srv`'s addresses) from namespace `from`, all in
/// parallel threads, `timeout` each.
pub fn run_all_from(
    from: &Netns,
    servers: &Servers,
    hosts: &[IpAddr],
    timeout: Duration,
) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .flat_map(|&host| Client::ALL.map(|c| (c, host)))
            .map(|(c, host)| s.spawn(move || run_from(from, servers, c, host, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}
