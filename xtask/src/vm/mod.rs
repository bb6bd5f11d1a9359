//! `cargo xtask vm-test`: the datapath and agent tests on Debian's Linux 5.10, 6.1 and 6.12,
//! each in a VM.
//!
//! WSL has shipped 5.10, 5.15, 6.1 and 6.6 kernels. Below Linux 6.6 there is no TCX: the agent
//! attaches through clsact and netlink, and the verifier is older. Each kernel is Debian's
//! `linux-image-amd64` of its suite, booted under qemu (KVM when `/dev/kvm` works, software
//! emulation otherwise) with a small initramfs of this task's own that mounts the host's root
//! file system, shared read-only over virtio-9p, under a tmpfs overlay and runs
//! `scripts/vm/guest.sh` on it: the tests one by one, then power-off. The VM has no network
//! device at all.
//!
//! Everything downloaded or built lands in `target/vm/` (kernel packages are only unpacked
//! there, never installed on the host; apt runs with a private configuration).
//!
//! # Layout
//! - `mod.rs`: the command, the plan (which tests), one run per kernel, the verdict.
//! - `kernel.rs`: which release comes from which Debian suite; download, unpack, depmod.
//! - `initramfs.rs`: the VM's first root (busybox, `init.sh`, the modules that mount the host).
//! - `guest.rs`: one boot under qemu, the console read into results.
//! - `report.rs`: outcomes, verdicts, the table and the line per kernel.

mod guest;
mod initramfs;
mod kernel;
mod report;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::support::{self, require_root, step, which};
pub use kernel::Release;
use report::{KernelReport, Outcome, Verdict};

/// Test executables (`tests/tests/<name>.rs`) run in the VM, in this order. A missing one is
/// reported as failed.
const TEST_BINARIES: &[&str] = &["load", "datapath_testrun", "corpus", "clamp", "agent"];

/// The check `scripts/vm/guest.sh` runs itself (plan entry `builtin auto-mode`): the agent left
/// to pick attaches as the kernel allows (TCX from 6.6, clsact before) and says so in `status`
/// and its metrics.
const BUILTIN_AUTO_MODE: &str = "vm::auto_mode_attaches_as_the_kernel_allows";

/// The check `scripts/vm/systemd-guest.sh` runs in a second boot with systemd as PID 1: the
/// packaged unit attaches, clamps under its own hardening, keeps clamping across stop, start
/// (adopting the pins) and `kill -9` (Restart=always).
const SYSTEMD_CHECK: &str = "vm::systemd_runs_the_packaged_unit";

/// The kernel the systemd boot runs on: the line of WSL's 6.1 kernels, without TCX (the path
/// most WSL users take). One kernel is enough: what it checks is the unit, not the datapath.
const SYSTEMD_RELEASE: Release = Release::V6_1;

/// Boots each kernel's tests are split over. Under software emulation a VM keeps one host CPU
/// busy; with one boot a kernel, the last kernel ran alone while the other CPUs idled. Split in
/// two, the six test boots (and the systemd boot) keep every CPU busy to the end, for one more
/// boot (about 25 s of CPU) a kernel.
const TEST_SHARDS: usize = 2;

/// How long a KVM boot may take to reach the initramfs before software emulation is tried (a
/// working KVM gets there in 2-3 s).
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(10);

/// Set once a KVM boot stalled: the boots after it go straight to software emulation.
static KVM_STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fetches into the cache (or finds there) what the boots of `args` need: the host tools,
/// busybox and the kernels. [`run`] does it first; `cargo xtask test` calls it early, in a
/// thread, so that the downloads (network and disk, little CPU) overlap the host tests, and
/// [`run`] then finds everything in place.
pub fn prefetch(args: &VmTestArgs) -> Result<()> {
    let releases = &args.kernels;
    let cache = support::target_dir().join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    fetch_tools(&cache)?;
    fetch_kernels(&cache, releases)?;
    Ok(())
}

/// The host tools (installed if missing) and busybox (fetched into `cache` if missing).
fn fetch_tools(cache: &Path) -> Result<PathBuf> {
    step("vm-test: host tools (qemu-system-x86, kmod, xz-utils)");
    ensure_host_tools()?;
    kernel::fetch_busybox(cache)
}

/// Each kernel of `releases`, fetched and unpacked into `cache` if it is not there yet.
fn fetch_kernels(cache: &Path, releases: &[Release]) -> Result<BTreeMap<Release, kernel::Kernel>> {
    let mut fetched = BTreeMap::new();
    for &release in releases {
        step(&format!("vm-test: kernel {} (Debian)", release.label()));
        let kernel = kernel::fetch(cache, release)?;
        println!("kernel {} at {}", kernel.version, kernel.root.display());
        fetched.insert(release, kernel);
    }
    Ok(fetched)
}

/// `cargo xtask vm-test` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct VmTestArgs {
    /// Kernel line to boot; repeatable. Each gets its own run and report line.
    #[arg(long = "kernel", value_enum, value_name = "RELEASE", default_values_t = Release::ALL)]
    kernels: Vec<Release>,
    /// Kill a VM and fail its kernel after this many seconds (counted from its boot, builds and
    /// downloads not included). Generous: three VMs under software emulation on two CPUs take
    /// about 13 minutes.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    timeout: u64,
    /// Time limit of one test inside the VM.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    test_timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u32,
    /// VMs booted side by side [default: the host's CPU count]. Under software emulation a VM
    /// keeps about one host CPU busy, so more kernels than CPUs gain nothing.
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Use software emulation even when /dev/kvm is usable.
    #[arg(long)]
    no_kvm: bool,
    /// Only run tests whose `binary::name` contains this; repeatable.
    #[arg(long, value_name = "TEXT")]
    filter: Vec<String>,
    /// Keep the run directory (target/vm/run-PID: plans, initramfs, test executables).
    #[arg(long)]
    keep: bool,
}

impl VmTestArgs {
    /// The flags' defaults: every kernel, every test (what `./x.sh test` runs).
    pub fn defaults() -> Self {
        /// The flags alone, to parse an empty command line.
        #[derive(clap::Parser)]
        struct Parse {
            #[command(flatten)]
            args: VmTestArgs,
        }
        <Parse as clap::Parser>::parse_from(["vm-test"]).args
    }
}

/// What one boot runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Shard `.0` (of [`TEST_SHARDS`]) of the plan's tests, `scripts/vm/guest.sh` as PID 1.
    Tests(usize),
    /// [`SYSTEMD_CHECK`], systemd as PID 1.
    Systemd,
}

impl Part {
    /// Names the boot's run directory and console log.
    fn name(self) -> String {
        match self {
            Part::Tests(shard) => format!("tests{}", shard + 1),
            Part::Systemd => "systemd".into(),
        }
    }
}

/// One test of the plan.
struct Entry {
    /// `binary::test`.
    label: String,
    /// `label <TAB> executable <TAB> exact test name`, as guest.sh reads it.
    line: String,
}

/// The tests to run, the same on every kernel.
struct Plan {
    entries: Vec<Entry>,
    /// Whether [`SYSTEMD_CHECK`] is selected (it runs on [`SYSTEMD_RELEASE`] only).
    systemd: bool,
}

impl Plan {
    /// The entries of test boot `shard`: every [`TEST_SHARDS`]th, so each shard gets a share of
    /// every test file (their tests differ in length file by file, little within one).
    fn shard(&self, shard: usize) -> impl Iterator<Item = &Entry> {
        self.entries.iter().skip(shard).step_by(TEST_SHARDS)
    }
}

/// Runs the whole task: build, then per kernel fetch, boot, report; fails when any kernel does.
pub fn run(args: VmTestArgs) -> Result<()> {
    require_root("vm-test runs apt-get and the tests in the VM run as root")?;
    let root = support::workspace_root();
    if root.to_string_lossy().contains(char::is_whitespace) {
        bail!(
            "the workspace path {} contains whitespace, which the kernel command line cannot \
             carry; move the checkout",
            root.display()
        );
    }
    let mut kernels = args.kernels.clone();
    kernels.sort();
    kernels.dedup();
    let cache = support::target_dir().join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let busybox = fetch_tools(&cache)?;

    step("vm-test: build the agent and the test executables");
    support::cargo(&["build", "-p", "wslnet-agent"])?;
    let exes = test_executables()?;
    let run_dir = RunDir::create(&cache, args.keep)?;
    let bin = run_dir.path.join("bin");
    fs::create_dir_all(bin.join("deps"))?;
    let agent = bin.join("wslnet-agent");
    copy(&support::target_dir().join("debug/wslnet-agent"), &agent)?;
    let plan = plan(&exes, &bin, &args.filter)?;

    // Kernels first, one after another (apt and depmod on one tree must not race); the boots
    // then find them unpacked.
    let fetched = fetch_kernels(&cache, &kernels)?;
    // One job per boot: the test shards of each kernel, then the systemd boot, so that a worker
    // that finishes early takes the short systemd boot instead of idling while another runs.
    let mut boots: Vec<(Release, Part)> = kernels
        .iter()
        .flat_map(|&r| (0..TEST_SHARDS).map(move |shard| (r, Part::Tests(shard))))
        .filter(|(_, part)| match part {
            Part::Tests(shard) => plan.shard(*shard).next().is_some(),
            Part::Systemd => true,
        })
        .collect();
    if plan.systemd && kernels.contains(&SYSTEMD_RELEASE) {
        boots.push((SYSTEMD_RELEASE, Part::Systemd));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, boots.len());
    let queue = Mutex::new(boots.into_iter());
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    // Taken in its own statement: a guard in the `while let` would hold the
                    // queue for the whole run and boot the kernels one after another.
                    let next = queue.lock().expect("queue").next();
                    let Some((release, part)) = next else { break };
                    let dir = run_dir
                        .path
                        .join(format!("{}-{}", release.label(), part.name()));
                    let report = fs::create_dir_all(&dir)
                        .map_err(anyhow::Error::from)
                        .and_then(|()| {
                            let kernel = &fetched[&release];
                            run_kernel(
                                release, kernel, part, &args, &cache, &busybox, &dir, &agent, &plan,
                            )
                        })
                        .unwrap_or_else(|e| KernelReport {
                            release: release.label(),
                            version: "?".into(),
                            accel: "-",
                            outcomes: Vec::new(),
                            secs: 0.0,
                            error: Some(format!("{e:#}")),
                        });
                    reports.lock().expect("reports").push(report);
                }
            });
        }
    });
    let mut reports = KernelReport::merged(reports.into_inner().expect("reports"));
    reports.sort_by_key(|r| r.release);

    for r in &reports {
        step(&format!("vm-test: Linux {} ({})", r.version, r.release));
        r.print_table();
    }
    step("vm-test summary");
    for r in &reports {
        println!("{} {}", if r.passed() { "ok  " } else { "FAIL" }, r.line());
    }
    println!(
        "console logs: {}",
        cache.join("console-<release>-<boot>.log").display()
    );
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.release)
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on Linux {}", failed.join(", "));
    }
    Ok(())
}

/// Every test of [`TEST_BINARIES`] matching the filters, plus [`BUILTIN_AUTO_MODE`]; the
/// executables are copied under `bin/deps` so a rebuild during the run changes nothing.
fn plan(exes: &BTreeMap<String, PathBuf>, bin: &Path, filter: &[String]) -> Result<Plan> {
    let selected = |label: &str| filter.is_empty() || filter.iter().any(|f| label.contains(f));
    let mut plan = Plan {
        entries: Vec::new(),
        systemd: selected(SYSTEMD_CHECK),
    };
    for &name in TEST_BINARIES {
        let exe = exes
            .get(name)
            .with_context(|| format!("no test executable for tests/tests/{name}.rs"))?;
        let snapshot = bin.join("deps").join(name);
        copy(exe, &snapshot)?;
        for test in list_tests(&snapshot)? {
            let label = format!("{name}::{test}");
            if selected(&label) {
                plan.entries.push(Entry {
                    line: format!("{label}\t{}\t{test}\n", snapshot.display()),
                    label,
                });
            }
        }
    }
    if selected(BUILTIN_AUTO_MODE) {
        plan.entries.push(Entry {
            label: BUILTIN_AUTO_MODE.to_string(),
            line: format!("{BUILTIN_AUTO_MODE}\tbuiltin\tauto-mode\n"),
        });
    }
    if plan.entries.is_empty() && !plan.systemd {
        bail!("no test selected (filters: {filter:?})");
    }
    Ok(plan)
}

/// One boot of a kernel (fetched already): write its run directory (`plan.tsv`, `env.sh`,
/// initramfs), boot (KVM first when usable), collect the outcomes.
#[allow(clippy::too_many_arguments)]
fn run_kernel(
    release: Release,
    kernel: &kernel::Kernel,
    part: Part,
    args: &VmTestArgs,
    cache: &Path,
    busybox: &Path,
    dir: &Path,
    agent: &Path,
    plan: &Plan,
) -> Result<KernelReport> {
    let root = support::workspace_root();
    let entries: Vec<&Entry> = match part {
        Part::Tests(shard) => plan.shard(shard).collect(),
        Part::Systemd => Vec::new(),
    };
    let tsv: String = entries.iter().map(|e| e.line.as_str()).collect();
    fs::write(dir.join("plan.tsv"), tsv)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let env = [
        // System directories first: the tests want Debian's tools, and shims such as pyenv's
        // (a shell script that forks a dozen processes) are slow under software emulation.
        (
            "PATH",
            format!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{path}"),
        ),
        ("HOME", home),
        ("RUST_BACKTRACE", "1".into()),
        ("WSLNET_REPO", root.to_string_lossy().into_owned()),
        (
            "WSLNET_KERNEL_ROOT",
            kernel.root.to_string_lossy().into_owned(),
        ),
        (
            "WSLNET_MODULES",
            kernel.modules_dir().to_string_lossy().into_owned(),
        ),
        ("WSLNET_TEST_TIMEOUT", args.test_timeout.to_string()),
        (wslnet_tests::netns::VM_ENV, release.label().to_string()),
        ("WSLNET_AGENT_BIN", agent.to_string_lossy().into_owned()),
        (
            "WSLNET_AUTO_ATTACH_MODE",
            release.auto_attach_mode().to_string(),
        ),
    ];
    let env: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", sh_quote(v)))
        .collect();
    fs::write(dir.join("env.sh"), env)?;
    let initramfs = dir.join("initramfs.cpio");
    initramfs::build(&root, kernel, busybox, &initramfs)?;

    let mut kvm = !args.no_kvm
        && !KVM_STALLED.load(std::sync::atomic::Ordering::Relaxed)
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let console_log = cache.join(format!("console-{}-{}.log", release.label(), part.name()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut guest = guest::Guest {
        kernel,
        initramfs: &initramfs,
        init: guest::Init::Tests(root.join("scripts/vm/guest.sh")),
        run_dir: dir,
        memory: args.memory,
        kvm,
        tag: format!("[{} {}] ", release.label(), part.name()),
    };
    // The boot with the labels it was to report and its console log.
    let mut boots = Vec::new();
    match part {
        Part::Tests(_) => {
            let labels: Vec<String> = entries.iter().map(|e| e.label.clone()).collect();
            let boot = boot_guest(&mut guest, deadline, &console_log, labels.len())?;
            boots.push((labels, boot, console_log));
        }
        Part::Systemd => {
            guest.init = guest::Init::Systemd(root.join("scripts/vm/systemd-guest.sh"));
            let boot = boot_guest(&mut guest, deadline, &console_log, 1)?;
            boots.push((vec![SYSTEMD_CHECK.to_string()], boot, console_log));
        }
    }
    kvm = guest.kvm;

    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for (labels, boot, log) in &boots {
        for label in labels {
            outcomes.push(match boot.results.iter().find(|o| &o.label == label) {
                Some(o) => o.clone(),
                None => Outcome {
                    label: label.clone(),
                    verdict: Verdict::Fail,
                    secs: None,
                    note: if boot.killed == Some(guest::Killed::TimedOut) {
                        format!("no result: the VM was killed after {} s", args.timeout)
                    } else {
                        "no result: the VM stopped before running it".into()
                    },
                },
            });
        }
        let error = if let Some(why) = &boot.init_failure {
            Some(format!("the guest could not start the tests: {why}"))
        } else if boot.killed == Some(guest::Killed::TimedOut) {
            Some(format!(
                "the VM did not finish within {} s and was killed (raise --timeout)",
                args.timeout
            ))
        } else if boot.exit.is_none_or(|e| e != 0)
            && boot.results.iter().all(|o| o.verdict != Verdict::Fail)
        {
            Some(format!(
                "the guest reported exit {:?} although no test failed",
                boot.exit
            ))
        } else {
            None
        };
        errors.extend(error.map(|e| format!("{e}; see {}", log.display())));
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    Ok(KernelReport {
        release: release.label(),
        version: kernel.version.clone(),
        accel: if kvm { "KVM" } else { "TCG" },
        outcomes,
        secs: started.elapsed().as_secs_f64(),
        error,
    })
}

/// Boots `guest` until it ends or `deadline`, after a KVM try that stalls (then software
/// emulation, and `guest.kvm` says so from then on).
fn boot_guest(
    guest: &mut guest::Guest<'_>,
    deadline: Instant,
    console_log: &Path,
    tests: usize,
) -> Result<guest::Boot> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        step(&format!(
            "vm-test: boot Linux {} ({}, {}, {tests} tests, {} s left)",
            guest.kernel.version,
            guest.init.name(),
            if guest.kvm {
                "KVM"
            } else {
                "software emulation"
            },
            left.as_secs()
        ));
        // A working KVM reaches the initramfs in a few seconds. Nested KVM on some hosts hangs
        // in the kernel's decompressor instead: then fall back to software emulation.
        let stall = guest.kvm.then_some(KVM_BOOT_LIMIT);
        let boot = guest.boot(left, stall, console_log)?;
        if boot.killed != Some(guest::Killed::Stalled) {
            return Ok(boot);
        }
        println!(
            "vm-test: no sign of the guest after {} s under KVM (nested KVM not working on this \
             host?); retrying with software emulation (--no-kvm skips this try)",
            KVM_BOOT_LIMIT.as_secs()
        );
        guest.kvm = false;
        KVM_STALLED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `cargo test -p wslnet-tests --no-run`: test target name -> executable.
fn test_executables() -> Result<BTreeMap<String, PathBuf>> {
    let out = support::cargo_command(&[
        "test",
        "-p",
        "wslnet-tests",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit())
    .output()
    .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed (cargo test -p wslnet-tests --no-run)");
    }
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if v["reason"] == "compiler-artifact"
            && is_test
            && let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
        {
            exes.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(exes)
}

/// Names of the tests in a libtest executable (`--list --format terse`, run on the host).
fn list_tests(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// `target/vm/run-PID`, removed on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(cache: &Path, keep: bool) -> Result<Self> {
        let path = cache.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Installs qemu, kmod and xz-utils from Debian when they are missing.
fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("depmod", "kmod"),
        ("modprobe", "kmod"),
        ("xz", "xz-utils"),
    ]
    .iter()
    .filter(|(tool, _)| which(tool).is_none())
    .map(|(_, pkg)| *pkg)
    .collect();
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if which(tool).is_none() {
            bail!("{tool} not found: vm-test needs a Debian (or derived) host with apt and dpkg");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs = missing;
    pkgs.sort();
    pkgs.dedup();
    println!("installing {}", pkgs.join(" "));
    let install = |pkgs: &[&str]| {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install(&pkgs) {
        support::run(Command::new("apt-get").arg("update"), "apt-get update")?;
        if !install(&pkgs) {
            bail!(
                "could not install {}: run `apt-get install qemu-system-x86 kmod xz-utils` by hand",
                pkgs.join(" ")
            );
        }
    }
    Ok(())
}
