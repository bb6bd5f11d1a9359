//! `wslnet-agent doctor`: the WSL network troubleshooting flow ([`crate::doctor`]), printed as
//! text (coloured on a terminal) or JSON; the exit status says whether a check failed.

use std::{io::IsTerminal as _, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    doctor::{self, Finding, Report, Status},
    pins::DEFAULT_PIN_DIR,
};

/// `doctor` flags.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Checks, in this order: environment, route, gateway, reach, dns, proxy, \
    pmtu, agent. Each is ok, warn, fail or skip (a check whose precondition failed, or that \
    needs root). Exit status: 0 when nothing fails, 1 when something does, 2 for bad usage.\n\n\
    Without --target and --name it uses the default gateway, 1.1.1.1 and github.com (and \
    1.1.1.1 as the second resolver); with either, only what you name.\n\n\
    Examples:\n  \
    wslnet-agent doctor\n  \
    wslnet-agent doctor --target 10.8.0.1 --name intranet.corp.example --json"
)]
pub struct DoctorArgs {
    /// Address to check: answers by IP, largest packet that passes, clamped by wslnet;
    /// repeatable [default: 1.1.1.1 unless --name is given].
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<IpAddr>,
    /// Host name every configured nameserver must resolve; repeatable [default: github.com
    /// unless --target is given].
    #[arg(long = "name", value_name = "HOSTNAME")]
    pub names: Vec<String>,
    /// Second resolver, asked when a configured nameserver fails, to tell a dead resolver from
    /// a dead name [default: 1.1.1.1 when neither --target nor --name is given, else none].
    #[arg(long, value_name = "ADDR")]
    pub resolver: Option<IpAddr>,
    /// Print `{"findings":[...]}` instead of text.
    #[arg(long)]
    pub json: bool,
    /// bpffs directory of wslnet's pins (the `agent` check).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl DoctorArgs {
    /// `doctor`: runs the checks, prints them, 0 when nothing failed, 1 otherwise.
    pub async fn run(self) -> Result<ExitCode> {
        let report =
            doctor::diagnose(&self.targets, &self.names, self.resolver, &self.pin_dir).await;
        if self.json {
            let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
            println!("{json}");
        } else {
            print_text(&report, std::io::stdout().is_terminal());
        }
        Ok(if report.failed() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// ANSI colour of a status label on a terminal.
fn colour_of(status: Status) -> &'static str {
    match status {
        Status::Skip => "\x1b[2m",
        Status::Ok => "\x1b[32m",
        Status::Warn => "\x1b[33m",
        Status::Fail => "\x1b[31m",
    }
}

/// One line a check, colour on a terminal only, the fixes at the end.
fn print_text(report: &Report, colour: bool) {
    let name_width = 12;
    for f in &report.findings {
        let check = f.check.name();
        let label = format!("{:<5}", f.status.name());
        let label = if colour {
            format!("{}{label}\x1b[0m", colour_of(f.status))
        } else {
            label
        };
        println!("{label} {check:<name_width$}{}", f.summary);
    }
    let fixes: Vec<&Finding> = report.findings.iter().filter(|f| f.fix.is_some()).collect();
    if !fixes.is_empty() {
        println!("\nTo fix:");
        for f in fixes {
            println!(
                "  {}: {}",
                f.check.name(),
                f.fix.as_deref().unwrap_or_default()
            );
        }
    }
    println!(
        "\n{} packets sent, {:.1} s",
        report.packets_sent,
        report.elapsed_ms as f64 / 1000.0
    );
}
