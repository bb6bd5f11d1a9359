//! `wslnet-agent status`: what the pins say ([`crate::status`]), as tables or JSON.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use wslnet_common::Counters;

use crate::{
    maps::Origin,
    pins::DEFAULT_PIN_DIR,
    status::{self, Status},
};

/// `status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl StatusArgs {
    /// `status`: prints the status read from the pins ([`status::read`]) as tables or JSON.
    pub fn run(self) -> Result<ExitCode> {
        let s = status::read(&self.pin_dir)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
            return Ok(ExitCode::SUCCESS);
        }
        print_tables(&s);
        Ok(ExitCode::SUCCESS)
    }
}

/// The status as the tables of `status` without `--json`.
fn print_tables(s: &Status) {
    println!("pins: {}", s.pin_dir);
    println!(
        "\nINTERFACE        MODE    L3  DEFAULT-MTU(v4/v6)  SYN(in/out)  CLAMPED(in/out)  OVERSIZE-DF  DSCP"
    );
    for i in &s.interfaces {
        let sum = |dir: &str, f: fn(&Counters) -> u64| -> u64 {
            ["ipv4", "ipv6"]
                .iter()
                .map(|fam| i.counters.get(&format!("{dir}/{fam}")).map(f).unwrap_or(0))
                .sum()
        };
        println!(
            "{:<16} {:<7} {:<3} {:>8}/{:<10} {:>5}/{:<6} {:>7}/{:<8} {:<12} {}",
            i.name,
            i.mode.name(),
            i.l3_offset,
            i.default_mtu_v4,
            i.default_mtu_v6,
            sum("ingress", |c| c.syn),
            sum("egress", |c| c.syn),
            sum("ingress", |c| c.mss_clamped),
            sum("egress", |c| c.mss_clamped),
            sum("egress", |c| c.oversize_df),
            i.set_dscp.map_or_else(
                || "as sent".to_string(),
                |d| format!(
                    "set {d} ({} rewritten)",
                    sum("egress", |c| c.dscp_rewritten)
                )
            ),
        );
    }
    println!("\nCLAMP TABLE ({} entries)", s.clamps.len());
    for c in &s.clamps {
        println!(
            "  {:<43} mtu {:>5}  {}",
            c.net.to_string(),
            c.mtu,
            Origin::name_of(c.origin)
        );
    }
    println!("\nLEARNED DESTINATIONS ({})", s.learned.len());
    for l in s.learned.iter().take(50) {
        println!(
            "  {:<40} syns {:>6}  ifindex {}  port {}",
            l.addr.to_string(),
            l.syns,
            l.ifindex,
            l.port.map_or_else(|| "-".to_string(), |p| p.to_string())
        );
    }
    if s.learned.len() > 50 {
        println!("  ... {} more (see --json)", s.learned.len() - 50);
    }
}
