//! One boot of the VM under qemu: the command line (no network device at all), the console
//! read line by line into the console log, and the guest's `WSLNET-VM:` lines turned into
//! results.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::kernel::Kernel;
use super::report::{Outcome, Verdict};

/// Marker the guest scripts put before every line meant for this task.
const MARK: &str = "WSLNET-VM: ";

/// What one boot needs.
pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    /// What the initramfs hands over to.
    pub init: Init,
    pub run_dir: &'a Path,
    pub memory: u32,
    pub kvm: bool,
    /// Put before every console line echoed, so that VMs booted side by side can be told
    /// apart (`[6.1] `).
    pub tag: String,
}

/// What runs once the initramfs has mounted the host's root.
pub enum Init {
    /// `scripts/vm/guest.sh` (this path) as PID 1: the plan's tests.
    Tests(PathBuf),
    /// systemd as PID 1, running this script as the one service of `wslnet-vm.target`.
    Systemd(PathBuf),
}

impl Init {
    pub fn name(&self) -> &'static str {
        match self {
            Init::Tests(_) => "tests",
            Init::Systemd(_) => "systemd",
        }
    }

    /// Kernel command-line words for `scripts/vm/init.sh` (and systemd).
    fn cmdline(&self) -> String {
        match self {
            Init::Tests(script) => format!("wslnet.guest={}", script.display()),
            // systemd-tmpfiles-setup walks the host's /var and /tmp over 9p, minutes under
            // software emulation, for nothing the check needs.
            Init::Systemd(script) => format!(
                "wslnet.guest={} wslnet.init=systemd systemd.unit=wslnet-vm.target \
                 systemd.show_status=false systemd.mask=systemd-tmpfiles-setup.service",
                script.display()
            ),
        }
    }
}

/// What the guest reported.
pub struct Boot {
    /// The tests' results, in the order reported.
    pub results: Vec<Outcome>,
    /// The exit status the guest reported (`None`: it reported none).
    pub exit: Option<i32>,
    /// Why the guest's init could not start the tests, when it said so.
    pub init_failure: Option<String>,
    /// Why qemu was killed (`None`: it ended by itself).
    pub killed: Option<Killed>,
}

/// Why a boot's qemu was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// The guest showed no sign of life within the boot limit.
    Stalled,
    /// The time limit was reached.
    TimedOut,
}

impl Guest<'_> {
    /// Boots the VM, echoes its console, and kills it after `limit`, or after `stall` if the
    /// initramfs has not said `BOOTED` by then.
    pub fn boot(
        &self,
        limit: Duration,
        stall: Option<Duration>,
        console_log: &Path,
    ) -> Result<Boot> {
        let append = format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 {} wslnet.run={}",
            self.init.cmdline(),
            self.run_dir.display()
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            // No network device at all: nothing in the VM can reach the host's networks.
            .args(["-nic", "none"])
            .args(["-smp", "2", "-m", &self.memory.to_string()])
            .args(if self.kvm {
                [
                    "-machine",
                    "pc,accel=kvm",
                    "-cpu",
                    "host,-arch-capabilities",
                ]
            } else {
                ["-machine", "pc,accel=tcg", "-cpu", "max"]
            })
            .arg("-kernel")
            .arg(self.kernel.vmlinuz())
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", &append])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().context("qemu stdout")?;
        let stderr = child.stderr.take().context("qemu stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
                let _ = tx2.send(format!(
                    "qemu: {}",
                    String::from_utf8_lossy(&line).trim_end()
                ));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
                let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
            }
        });
        let mut log = fs::File::create(console_log)
            .with_context(|| format!("creating {}", console_log.display()))?;
        let deadline = Instant::now() + limit;
        let mut boot = Boot {
            results: Vec::new(),
            exit: None,
            init_failure: None,
            killed: None,
        };
        let start = Instant::now();
        let mut booted = false;
        let mut in_check = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    booted |= line.contains("WSLNET-VM: BOOTED");
                    in_check = self.show(&line, &mut boot, in_check);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !booted && stall.is_some_and(|s| start.elapsed() >= s) {
                boot.killed = Some(Killed::Stalled);
                let _ = child.kill();
                break;
            }
            if Instant::now() >= deadline {
                boot.killed = Some(Killed::TimedOut);
                println!("{}vm-test: time limit reached, killing qemu", self.tag);
                let _ = child.kill();
                break;
            }
        }
        let status = child.wait().context("waiting for qemu")?;
        if boot.killed.is_none() && boot.exit.is_none() {
            println!(
                "{}vm-test: qemu exited ({status}) without the guest's exit line",
                self.tag
            );
        }
        Ok(boot)
    }

    /// Prints one console line the way a person wants to read it and records results.
    fn show(&self, line: &str, boot: &mut Boot, in_check: bool) -> bool {
        let Some(msg) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            // Verifier logs come out of `{:?}` with escaped newlines: unfold them.
            if line.contains("verifier") && line.contains("\\n") {
                for part in line.split("\\n") {
                    println!("{}{part}", self.tag);
                }
            } else if !in_check || !line.trim().is_empty() {
                println!("{}{line}", self.tag);
            }
            return in_check;
        };
        let mut words = msg.split_whitespace();
        match words.next() {
            Some("RESULT") => {
                // A test that cannot run on this kernel skips itself and says why
                // (`wslnet_tests::netns::skip_without_tcx`); the guest reports it as SKIP.
                let verdict = Verdict::from_guest(words.next());
                let label = words.next().unwrap_or_default().to_string();
                let secs = words.next().and_then(|s| s.parse().ok());
                let note = words.collect::<Vec<_>>().join(" ");
                println!(
                    "{}{verdict} {label} ({}s){}",
                    self.tag,
                    secs.unwrap_or(0.0),
                    if note.is_empty() {
                        String::new()
                    } else {
                        format!(": {note}")
                    }
                );
                boot.results.push(Outcome {
                    label,
                    verdict,
                    secs,
                    note,
                });
            }
            Some("EXIT") => boot.exit = words.next().and_then(|s| s.parse().ok()),
            Some("INIT-FAILED") => {
                let why = words.collect::<Vec<_>>().join(" ");
                println!("{}guest init failed: {why}", self.tag);
                boot.init_failure = Some(why);
            }
            Some("START") => println!("{}running {}", self.tag, words.next().unwrap_or_default()),
            Some("CHECK-BEGIN") => {
                println!("{}`wslnet-agent check` in the guest:", self.tag);
                return true;
            }
            Some("CHECK-END") => return false,
            Some("BOOTED") => println!("{}guest booted; mounting the host root", self.tag),
            _ => println!("{}{msg}", self.tag),
        }
        in_check
    }
}
