//! Network namespaces, veth pairs, processes inside namespaces, and a private bpffs, each
//! removed on drop (also when a test panics).

use std::{
    ffi::OsStr,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Moves the calling thread into network namespace `ns` (sockets and devices it creates then
/// live there).
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace descriptor we hold; it only affects the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity (pid 0: the
    // calling thread) only read and write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning a thread to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A short name unique to this process: `<prefix><pid % 10000>x<n>` (fits interface names too).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 10_000)
}

/// Fails the test with one clear line unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests need root (BPF, network namespaces): run `./x.sh test` as root");
    }
}

/// The line a test prints when it skips itself, followed by the reason; the VM runner reports
/// such a test as skipped (`scripts/vm/guest.sh`).
pub const SKIP_MARKER: &str = "WSLNET-SKIP:";

/// Skips the calling test (it should return at once when this is true) on kernels without TCX
/// (Linux < 6.6), printing why: tests that force `--attach-mode tcx` cannot run there.
pub fn skip_without_tcx() -> bool {
    if wslnet_agent::attach::kernel_has_tcx() {
        return false;
    }
    println!("{SKIP_MARKER} forces --attach-mode tcx; this kernel has no TCX (Linux < 6.6)");
    true
}

/// Set (to the kernel line, e.g. `5.10`) in the test VMs of `cargo xtask vm-test`.
pub const VM_ENV: &str = "WSLNET_VM";

/// Skips the calling test (it should return at once when this is true) in the test VMs,
/// printing why: for tests of user-space behaviour that no kernel version changes (the host
/// run covers them), and that cost a minute or more under software emulation.
pub fn skip_in_vm(why: &str) -> bool {
    let Ok(kernel) = std::env::var(VM_ENV) else {
        return false;
    };
    println!("{SKIP_MARKER} {why}; the host run tests it (VM kernel {kernel})");
    true
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(program)
        .args(&args)
        .output()
        .with_context(|| format!("running {program} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a shell script, failing with its output when it exits non-zero.
pub fn sh(script: &str) -> Result<String> {
    let out = run("sh", ["-c", script])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with every process still in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>...` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        run("ip", ["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace, failing on a non-zero exit.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            program.into(),
        ];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", all)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// Runs a shell script inside the namespace and returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec("sh", ["-c", script])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell script inside the namespace and returns its full output, whatever the exit.
    pub fn sh_output(&self, script: &str) -> Result<Output> {
        self.command("sh")
            .args(["-c", script])
            .output()
            .with_context(|| format!("running in {}: {script}", self.name))
    }

    /// Starts `tcpdump` on `iface` inside the namespace, writing whole packets matching `filter`
    /// (a pcap filter expression, as words; none: everything) to `pcap` as they arrive, and
    /// waits until it listens. Stop it with `signal_and_wait(SIGINT, ..)` before reading the
    /// file.
    pub fn capture(&self, iface: &str, pcap: &std::path::Path, filter: &[&str]) -> Result<Daemon> {
        let pcap = pcap.to_str().context("a pcap path that is UTF-8")?;
        let mut args = vec![
            "-i",
            iface,
            "-Z",
            "root",
            // Each packet to the file at once, and from the kernel at once (not a ring block
            // at a time, which a stop would lose).
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            pcap,
        ];
        args.extend_from_slice(filter);
        let mut d = self.spawn("tcpdump", args)?;
        d.wait_for_log(PATIENCE, |l| l.contains("listening on"))?;
        Ok(d)
    }

    /// Waits until something in the namespace listens on `port` (`transport`), failing after
    /// `within`.
    pub fn wait_for_listener(
        &self,
        transport: Transport,
        port: u16,
        within: Duration,
    ) -> Result<()> {
        let (flag, name) = match transport {
            Transport::Tcp => ("t", "TCP"),
            Transport::Udp => ("u", "UDP"),
        };
        wait_until(
            within,
            &format!("a {name} listener on port {port} in {}", self.name),
            || {
                let out = self
                    .sh_output(&format!("ss -Hl{flag}n 'sport = :{port}'"))
                    .ok()?;
                (!out.stdout.is_empty()).then_some(())
            },
        )
    }

    /// Starts a long-running process inside the namespace; killed on drop.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        Daemon::start(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what is left inside, then delete the namespace.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The transport a listener waited for with [`Netns::wait_for_listener`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP socket listening.
    Tcp,
    /// A bound UDP socket.
    Udp,
}

/// Joins two namespaces with a veth pair `a_if` (in `a`) <-> `b_if` (in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    run(
        "ip",
        [
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A child process, killed (SIGTERM, then SIGKILL) and reaped on drop; its output goes to a file
/// that [`Daemon::log`] reads back for failure messages.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr sent to a temporary log file.
    pub fn start(mut cmd: Command) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", unique("wslnet-daemon")));
        let file = std::fs::File::create(&log).context("creating daemon log")?;
        cmd.stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `pred(log)` holds, failing with the log after `timeout`.
    pub fn wait_for_log(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let log = self.log();
            if pred(&log) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("process exited ({status}) before it was ready; log:\n{log}");
            }
            if start.elapsed() > timeout {
                bail!("not ready after {timeout:?}; log:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("already stopped")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("still running after {timeout:?}; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("already stopped")?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait_for_exit(timeout)
            .with_context(|| format!("after signal {signal}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_file(&self.log);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A private bpffs mounted under /run, for pins that tests create; unmounted (with every pin in
/// it) on drop. `ip netns exec` remounts /sys, so tests pass this path as `--pin-dir` instead of
/// using /sys/fs/bpf.
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    /// Mounts a new bpffs, mode 0700 as systemd mounts /sys/fs/bpf (the agent refuses a pin
    /// directory others may write, and the tests use the mount point itself as one).
    pub fn new() -> Result<Self> {
        let path = PathBuf::from("/run").join(unique("wslnet-test-bpffs"));
        std::fs::create_dir_all(&path)?;
        run(
            "mount",
            [
                "-t",
                "bpf",
                "-o",
                "mode=0700",
                "bpf",
                path.to_str().unwrap(),
            ],
        )?;
        Ok(Self { path })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin directory tests give the agent here: `wslnet` below the mount point (the
    /// agent creates it).
    pub fn pin_dir(&self) -> PathBuf {
        self.path.join("wslnet")
    }

    /// Files below the mount point, relative to it, sorted (the kernel's own `maps.debug` and
    /// `progs.debug` left out).
    pub fn list(&self) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if dir == base
                        && (e.file_name() == "maps.debug" || e.file_name() == "progs.debug")
                    {
                        continue;
                    }
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                    if p.is_dir() {
                        walk(base, &p, out);
                    }
                }
            }
        }
        walk(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The `wslnet-agent` binary: `$WSLNET_AGENT_BIN` when set (the demo sets it), else the one
/// built next to the running executable (`target/<profile>/`, for test executables in
/// `target/<profile>/deps/` and for xtask in `target/<profile>/`).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WSLNET_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("wslnet-agent"))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "wslnet-agent not found in {candidates:?}: build it first (`cargo build -p \
                 wslnet-agent`; `cargo xtask test` does)"
            )
        })
}

/// How long a test waits for something that happens in well under a second on a normal
/// machine (a server listening, an agent reacting to an event): generous, because the VM runs
/// boot several kernels at once under software emulation. An upper bound, never a timing claim:
/// [`wait_until`] returns as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it returns `Some`, failing after `timeout` with `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
