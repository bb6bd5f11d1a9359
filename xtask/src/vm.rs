//! `cargo xtask vm-test`: the datapath and agent tests on Debian's 6.1 kernel, in a VM.
//!
//! Below Linux 6.6 there is no TCX: the agent attaches through clsact and netlink, and the
//! verifier is older. This task boots Debian's `linux-image-amd64` (6.1) under qemu (KVM when
//! `/dev/kvm` is usable, software emulation otherwise) with a small initramfs of its own
//! (busybox from Debian's `busybox-static`, the virtio/9p/overlay modules of that kernel and
//! `scripts/vm/init.sh`). The initramfs mounts the host's root file system, shared read-only
//! over virtio-9p, under a tmpfs overlay and runs `scripts/vm/guest.sh` on it, which runs the
//! 6.1-relevant tests one by one and powers the VM off. The VM has no network device at all.
//!
//! Everything downloaded or built lands in `target/vm/` (the kernel package is only unpacked
//! there, never installed on the host).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Test executables (`tests/tests/<name>.rs`) run in the VM, in this order. A missing one is
/// reported as skipped.
const TEST_BINARIES: &[&str] = &["load", "datapath_testrun", "corpus", "clamp", "agent"];

/// Modules the initramfs loads (with their dependencies) to mount the host's root.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// How long a KVM boot may take to reach the initramfs before software emulation is tried.
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(20);

/// Marker the guest scripts put before every line meant for this task.
const MARK: &str = "WSLNET-VM: ";

/// `cargo xtask vm-test` flags.
#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Kill the VM and fail after this many seconds (counted from the first boot, builds and
    /// downloads not included).
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    timeout: u64,
    /// Time limit of one test inside the VM.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    test_timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u32,
    /// Debian kernel package to boot (the metapackage or a versioned linux-image-*-amd64).
    #[arg(long, default_value = "linux-image-amd64", value_name = "PKG")]
    kernel_package: String,
    /// Use software emulation even when /dev/kvm is usable.
    #[arg(long)]
    no_kvm: bool,
    /// Only run tests whose `binary::name` contains this; repeatable.
    #[arg(long, value_name = "TEXT")]
    filter: Vec<String>,
    /// Keep the run directory (target/vm/run-PID: plan, initramfs, test executables).
    #[arg(long)]
    keep: bool,
}

/// One test's outcome, as the summary shows it.
#[derive(Debug)]
struct Outcome {
    label: String,
    verdict: &'static str,
    secs: Option<f64>,
    note: String,
}

/// Runs the whole task: fetch, build, boot, report.
pub fn run(args: VmTestArgs) -> Result<()> {
    let started = Instant::now();
    require_root()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    if root.to_string_lossy().contains(char::is_whitespace) {
        bail!(
            "the workspace path {} contains whitespace, which the kernel command line cannot \
             carry; move the checkout",
            root.display()
        );
    }
    let cache = root.join("target/vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    step("host tools (qemu-system-x86, kmod)");
    ensure_host_tools()?;
    step(&format!("kernel ({})", args.kernel_package));
    let kernel = fetch_kernel(&cache, &args.kernel_package)?;
    println!("kernel {} at {}", kernel.version, kernel.root.display());
    let busybox = fetch_busybox(&cache)?;

    step("build the agent and the test executables");
    cargo(&root, &["build", "-p", "wslnet-agent"])?;
    let exes = test_executables(&root)?;

    let run_dir = RunDir::create(&cache, args.keep)?;
    let bin = run_dir.path.join("bin");
    fs::create_dir_all(bin.join("deps"))?;
    let agent = bin.join("wslnet-agent");
    copy(&root.join("target/debug/wslnet-agent"), &agent)?;

    let mut outcomes = Vec::new();
    let mut plan = String::new();
    let mut planned = Vec::new();
    for &name in TEST_BINARIES {
        let Some(exe) = exes.get(name) else {
            outcomes.push(Outcome {
                label: format!("{name}::*"),
                verdict: "SKIP",
                secs: None,
                note: format!("no test executable (tests/tests/{name}.rs not built)"),
            });
            continue;
        };
        let snapshot = bin.join("deps").join(name);
        copy(exe, &snapshot)?;
        for test in list_tests(&snapshot)? {
            let label = format!("{name}::{test}");
            if !args.filter.is_empty() && !args.filter.iter().any(|f| label.contains(f)) {
                continue;
            }
            plan.push_str(&format!("{label}\t{}\t{test}\n", snapshot.display()));
            planned.push(label);
        }
    }
    let builtin = "vm::auto_mode_is_clsact_in_status_and_metrics";
    if args.filter.is_empty() || args.filter.iter().any(|f| builtin.contains(f)) {
        // scripts/vm/guest.sh runs this one itself.
        plan.push_str(&format!("{builtin}\tbuiltin\tauto-mode\n"));
        planned.push(builtin.to_string());
    }
    if planned.is_empty() {
        bail!("no test selected (filters: {:?})", args.filter);
    }
    fs::write(run_dir.path.join("plan.tsv"), &plan)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    fs::write(
        run_dir.path.join("env.sh"),
        format!(
            "export PATH={}\nexport HOME={}\nexport RUST_BACKTRACE=1\nexport WSLNET_REPO={}\n\
             export WSLNET_KERNEL_ROOT={}\nexport WSLNET_MODULES={}\nexport WSLNET_TEST_TIMEOUT={}\n\
             export WSLNET_AGENT_BIN={}\n",
            // System directories first: the tests want Debian's tools, and shims such as pyenv's
            // (a shell script that forks a dozen processes) are slow under software emulation.
            sh_quote(&format!(
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{path}"
            )),
            sh_quote(&home),
            sh_quote(&root.to_string_lossy()),
            sh_quote(&kernel.root.to_string_lossy()),
            sh_quote(&kernel.modules_dir().to_string_lossy()),
            args.test_timeout,
            sh_quote(&agent.to_string_lossy()),
        ),
    )?;
    let initramfs = run_dir.path.join("initramfs.cpio");
    build_initramfs(&root, &kernel, &busybox, &initramfs)?;

    let mut kvm = !args.no_kvm
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let console_log = cache.join("last-console.log");
    let limit = Duration::from_secs(args.timeout);
    let vm_started = Instant::now();
    let boot = loop {
        step(&format!(
            "boot Linux {} ({}, {} tests, limit {} s)",
            kernel.version,
            if kvm { "KVM" } else { "software emulation" },
            planned.len(),
            args.timeout
        ));
        let guest = Guest {
            kernel: &kernel,
            initramfs: &initramfs,
            guest_script: &root.join("scripts/vm/guest.sh"),
            run_dir: &run_dir.path,
            memory: args.memory,
            kvm,
        };
        // A working KVM reaches the initramfs in a few seconds. Nested KVM on some hosts hangs
        // in the kernel's decompressor instead: then fall back to software emulation.
        let stall = kvm.then_some(KVM_BOOT_LIMIT);
        let left = limit.saturating_sub(vm_started.elapsed());
        let boot = guest.boot(left, stall, &console_log)?;
        if boot.stalled {
            println!(
                "vm-test: no sign of the guest after {} s under KVM (nested KVM not working on \
                 this host?); retrying with software emulation (--no-kvm skips this try)",
                KVM_BOOT_LIMIT.as_secs()
            );
            kvm = false;
            continue;
        }
        break boot;
    };

    for label in &planned {
        match boot.results.iter().find(|o| &o.label == label) {
            Some(o) => outcomes.push(Outcome {
                label: o.label.clone(),
                verdict: o.verdict,
                secs: o.secs,
                note: o.note.clone(),
            }),
            None => outcomes.push(Outcome {
                label: label.clone(),
                verdict: "FAIL",
                secs: None,
                note: if boot.timed_out {
                    format!("no result: the VM was killed after {} s", args.timeout)
                } else {
                    "no result: the VM stopped before running it".into()
                },
            }),
        }
    }
    outcomes.sort_by_key(|o| {
        let bin = o.label.split("::").next().unwrap_or_default();
        (
            TEST_BINARIES.iter().position(|b| *b == bin),
            o.label.clone(),
        )
    });

    let elapsed = started.elapsed().as_secs_f64();
    step(&format!(
        "vm-test summary: Linux {} ({}), {elapsed:.0} s in all",
        kernel.version,
        if kvm { "KVM" } else { "TCG" }
    ));
    let width = outcomes.iter().map(|o| o.label.len()).max().unwrap_or(0);
    for o in &outcomes {
        let secs = o
            .secs
            .map(|s| format!("{s:>6.1} s"))
            .unwrap_or_else(|| " ".repeat(8));
        println!(
            "  {:<4}  {:<width$}  {secs}  {}",
            o.verdict, o.label, o.note
        );
    }
    let count = |v: &str| outcomes.iter().filter(|o| o.verdict == v).count();
    let (passed, failed, skipped) = (count("PASS"), count("FAIL"), count("SKIP"));
    println!("vm-test: {passed} passed, {failed} failed, {skipped} skipped");
    println!("console log: {}", console_log.display());
    if let Some(why) = &boot.init_failure {
        bail!(
            "the guest could not start the tests: {why} (see {})",
            console_log.display()
        );
    }
    if boot.timed_out {
        bail!(
            "the VM did not finish within {} s and was killed (raise --timeout, or see {})",
            args.timeout,
            console_log.display()
        );
    }
    if failed > 0 {
        bail!("{failed} test(s) failed on Linux {}", kernel.version);
    }
    if boot.exit != Some(0) {
        bail!(
            "the guest reported exit {:?} although no test failed; see {}",
            boot.exit,
            console_log.display()
        );
    }
    Ok(())
}

/// An unpacked kernel package.
struct Kernel {
    /// Where the package was unpacked (`boot/`, `lib/modules/`).
    root: PathBuf,
    /// `uname -r` of that kernel, e.g. `6.1.0-56-amd64`.
    version: String,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// Installs qemu and kmod from Debian when they are missing.
fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("depmod", "kmod"),
        ("modprobe", "kmod"),
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
    let mut pkgs = missing.clone();
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
        run_cmd(Command::new("apt-get").arg("update"), "apt-get update")?;
        if !install(&pkgs) {
            bail!(
                "could not install {}: run `apt-get install qemu-system-x86 kmod` by hand",
                pkgs.join(" ")
            );
        }
    }
    Ok(())
}

/// Downloads and unpacks the kernel package into `cache/kernel/PKG`, with a `depmod`-ed module
/// tree; reuses an earlier one.
fn fetch_kernel(cache: &Path, package: &str) -> Result<Kernel> {
    let package = resolve_kernel_package(package)?;
    let root = cache.join("kernel").join(&package);
    let ready = root.join(".ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&root);
        let deb = apt_download(cache, &package)?;
        unpack(&deb, &root)?;
    }
    let version = fs::read_dir(root.join("lib/modules"))
        .with_context(|| format!("{package} has no lib/modules; is it a kernel image package?"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} has an empty lib/modules"))?;
    let kernel = Kernel { root, version };
    if !kernel.vmlinuz().exists() {
        bail!("{} missing from {package}", kernel.vmlinuz().display());
    }
    if !ready.exists() {
        let mut depmod = Command::new("depmod");
        depmod.arg("-b").arg(&kernel.root).arg(&kernel.version);
        run_cmd(&mut depmod, "depmod on the unpacked kernel")?;
        fs::write(&ready, "")?;
    }
    Ok(kernel)
}

/// `linux-image-amd64` -> the versioned package it depends on (`linux-image-6.1.0-NN-amd64`).
fn resolve_kernel_package(package: &str) -> Result<String> {
    let depends = |pkg: &str| -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", pkg])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends: ")?;
            dep.starts_with("linux-image-").then(|| dep.to_string())
        })
    };
    let known = |pkg: &str| {
        Command::new("apt-cache")
            .args(["show", pkg])
            .output()
            .map(|o| o.status.success() && !o.stdout.is_empty())
            .unwrap_or(false)
    };
    if !known(package) {
        run_cmd(Command::new("apt-get").arg("update"), "apt-get update")?;
        if !known(package) {
            bail!("apt knows no package {package}; check /etc/apt/sources.list");
        }
    }
    Ok(depends(package).unwrap_or_else(|| package.to_string()))
}

/// busybox from Debian's `busybox-static`, unpacked into `cache/busybox`.
fn fetch_busybox(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("busybox");
    let bin = root.join("bin/busybox");
    if !bin.exists() {
        let deb = apt_download(cache, "busybox-static")?;
        unpack(&deb, &root)?;
        if !bin.exists() {
            bail!("busybox-static did not contain bin/busybox");
        }
    }
    Ok(bin)
}

/// `apt-get download PKG` into `cache/dl`; returns the .deb.
fn apt_download(cache: &Path, package: &str) -> Result<PathBuf> {
    let dl = cache.join("dl");
    fs::create_dir_all(&dl)?;
    let find = || -> Option<PathBuf> {
        fs::read_dir(&dl)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    println!("apt-get download {package}");
    let mut cmd = Command::new("apt-get");
    cmd.args(["-q", "download", package]).current_dir(&dl);
    run_cmd(
        &mut cmd,
        &format!("apt-get download {package} (try `apt-get update` first)"),
    )?;
    find().with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            dl.display()
        )
    })
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(into)?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(into);
    run_cmd(&mut cmd, &format!("unpacking {}", deb.display()))
}

/// `cargo test -p wslnet-tests --no-run`: test target name -> executable.
fn test_executables(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new(cargo_bin())
        .args([
            "test",
            "-p",
            "wslnet-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root)
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

/// The newc cpio archive the kernel unpacks as its first root: busybox, `/init`, a console
/// node and the modules needed to mount the host's root.
fn build_initramfs(root: &Path, kernel: &Kernel, busybox: &Path, out: &Path) -> Result<()> {
    let init = root.join("scripts/vm/init.sh");
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "modules", "proc", "sys"] {
        cpio.dir(dir);
    }
    cpio.node("dev/console", 0o020600, (5, 1));
    cpio.file(
        "init",
        0o755,
        &fs::read(&init).with_context(|| format!("reading {}", init.display()))?,
    );
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    let mut order: Vec<PathBuf> = Vec::new();
    for module in INITRAMFS_MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args(["-S", &kernel.version, "--show-depends", module])
            .output()
            .context("running modprobe --show-depends (package kmod)")?;
        if !out.status.success() {
            bail!(
                "modprobe --show-depends {module} failed for {}: {}",
                kernel.version,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.trim().strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    let mut list = String::new();
    for path in &order {
        let name = path
            .file_name()
            .context("module without a file name")?
            .to_string_lossy();
        cpio.file(&format!("modules/{name}"), 0o644, &fs::read(path)?);
        list.push_str(&format!("{name}\n"));
    }
    cpio.file("modules/order", 0o644, list.as_bytes());
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// A minimal writer of the `newc` cpio format (what the kernel's initramfs unpacker reads).
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            u32::try_from(data.len()).expect("initramfs file over 4 GiB"),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("name length"),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// What one boot needs.
struct Guest<'a> {
    kernel: &'a Kernel,
    initramfs: &'a Path,
    guest_script: &'a Path,
    run_dir: &'a Path,
    memory: u32,
    kvm: bool,
}

/// What the guest reported.
struct Boot {
    results: Vec<Outcome>,
    exit: Option<i32>,
    init_failure: Option<String>,
    timed_out: bool,
    /// The guest showed no sign of life within the boot limit (and was killed).
    stalled: bool,
}

impl Guest<'_> {
    /// Boots the VM, echoes its console, and kills it after `limit`, or after `stall` if the
    /// initramfs has not said `BOOTED` by then.
    fn boot(&self, limit: Duration, stall: Option<Duration>, console_log: &Path) -> Result<Boot> {
        let append = format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 wslnet.guest={} wslnet.run={}",
            self.guest_script.display(),
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
            timed_out: false,
            stalled: false,
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
                boot.stalled = true;
                let _ = child.kill();
                break;
            }
            if Instant::now() >= deadline {
                boot.timed_out = true;
                println!("vm-test: time limit reached, killing qemu");
                let _ = child.kill();
                break;
            }
        }
        let status = child.wait().context("waiting for qemu")?;
        if !boot.timed_out && !boot.stalled && boot.exit.is_none() {
            println!("vm-test: qemu exited ({status}) without the guest's exit line");
        }
        Ok(boot)
    }

    /// Prints one console line the way a person wants to read it and records results.
    fn show(&self, line: &str, boot: &mut Boot, in_check: bool) -> bool {
        let Some(msg) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            // Verifier logs come out of `{:?}` with escaped newlines: unfold them.
            if line.contains("verifier") && line.contains("\\n") {
                for part in line.split("\\n") {
                    println!("{part}");
                }
            } else if !in_check || !line.trim().is_empty() {
                println!("{line}");
            }
            return in_check;
        };
        let mut words = msg.split_whitespace();
        match words.next() {
            Some("RESULT") => {
                // A test that cannot run on this kernel skips itself and says why
                // (`wslnet_tests::netns::skip_without_tcx`); the guest reports it as SKIP.
                let verdict = match words.next() {
                    Some("PASS") => "PASS",
                    Some("SKIP") => "SKIP",
                    _ => "FAIL",
                };
                let label = words.next().unwrap_or_default().to_string();
                let secs = words.next().and_then(|s| s.parse().ok());
                let note = words.collect::<Vec<_>>().join(" ");
                println!(
                    "{verdict} {label} ({}s){}",
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
                println!("guest init failed: {why}");
                boot.init_failure = Some(why);
            }
            Some("START") => println!("running {}", words.next().unwrap_or_default()),
            Some("CHECK-BEGIN") => {
                println!("`wslnet-agent check` in the guest:");
                return true;
            }
            Some("CHECK-END") => return false,
            Some("BOOTED") => println!("guest booted; mounting the host root"),
            _ => println!("{msg}"),
        }
        in_check
    }
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

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args).current_dir(root);
    run_cmd(&mut cmd, &format!("cargo {}", args.join(" ")))
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!(
            "vm-test needs root (apt-get, and the tests in the VM run as root): run it with sudo"
        );
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}
