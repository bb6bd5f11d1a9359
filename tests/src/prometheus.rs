//! A real Prometheus server inside a test namespace, next to the agent it scrapes, and queries
//! of its HTTP API (with curl, from inside the namespace).

use std::path::Path;

use anyhow::Result;

use crate::netns::{Daemon, Netns};

/// Where the Prometheus of [`start`] listens, inside its namespace.
pub const ADDR: &str = "127.0.0.1:9090";

/// Starts `prometheus` in `ns` with the configuration file `config`, its database under
/// `data`, listening on [`ADDR`]; stopped on drop.
pub fn start(ns: &Netns, config: &Path, data: &Path) -> Result<Daemon> {
    ns.spawn(
        "prometheus",
        [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={ADDR}"),
        ],
    )
}

/// `GET /api/v1/<path>` (with `query` url-encoded as the `query` parameter when given) from the
/// Prometheus in `ns`, parsed; `None` while it does not answer with JSON.
pub fn api(ns: &Netns, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
    let mut curl = ns.command("curl");
    curl.args(["-sS", "--max-time", "5", "-G"]);
    if let Some(q) = query {
        curl.arg("--data-urlencode").arg(format!("query={q}"));
    }
    let out = curl
        .arg(format!("http://{ADDR}/api/v1/{path}"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The result array of the PromQL `query` against the Prometheus in `ns`; `None` while it does
/// not answer. Panics when it answers with an error (the query itself is wrong).
pub fn query(ns: &Netns, query: &str) -> Option<Vec<serde_json::Value>> {
    let v = api(ns, "query", Some(query))?;
    assert_eq!(v["status"], "success", "{query}: {v}");
    v["data"]["result"].as_array().cloned()
}

/// The value of the first sample of the PromQL `query` (e.g. a `sum(...)`), if there is one.
pub fn first_value(ns: &Netns, query: &str) -> Option<f64> {
    self::query(ns, query)?
        .first()?
        .get("value")?
        .get(1)?
        .as_str()?
        .parse()
        .ok()
}
