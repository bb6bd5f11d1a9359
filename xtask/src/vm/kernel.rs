//! The kernels the VM boots, fetched from Debian's archive: which release comes from which
//! suite, a private apt configuration for each (the host's own sources and state are never
//! read or changed), and the unpacked, `depmod`-ed package.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::support;

/// Debian's archive (`/debian`, `/debian-security` below it), reached over plain HTTP as apt
/// does: the packages are checked against the archive keyring, not the transport.
const DEBIAN_MIRROR: &str = "http://deb.debian.org";

/// The keyring the suites are signed with (package `debian-archive-keyring`; Debian 12's holds
/// the bullseye, bookworm and trixie keys).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel line the VM run covers, named as `--kernel` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Release {
    /// Debian 11's 5.10: the oldest line WSL shipped, and older than its 5.15 and 6.1, so what
    /// verifies here verifies there. clsact.
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12's 6.1, the line of WSL's 6.1 kernels. clsact.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12 backports' 6.12: TCX, so the TCX-only tests run.
    #[value(name = "6.12")]
    V6_12,
}

impl Release {
    /// Every release, oldest first (what `./x.sh test` boots).
    pub const ALL: [Release; 3] = [Release::V5_10, Release::V6_1, Release::V6_12];

    /// As `--kernel` and the report name it.
    pub fn label(self) -> &'static str {
        match self {
            Release::V5_10 => "5.10",
            Release::V6_1 => "6.1",
            Release::V6_12 => "6.12",
        }
    }

    /// `deb` lines of the suites that carry the release's `linux-image-amd64` (archive path
    /// under [`DEBIAN_MIRROR`], suite). The security suite carries the newest build of a
    /// stable release.
    fn suites(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Release::V5_10 => &[
                ("debian", "bullseye"),
                ("debian-security", "bullseye-security"),
            ],
            Release::V6_1 => &[
                ("debian", "bookworm"),
                ("debian-security", "bookworm-security"),
            ],
            Release::V6_12 => &[("debian", "bookworm-backports")],
        }
    }

    /// The attach mode the agent picks by itself (`--attach-mode auto`) on this kernel: TCX
    /// from Linux 6.6 on, clsact before.
    pub fn auto_attach_mode(self) -> &'static str {
        match self {
            Release::V5_10 | Release::V6_1 => "clsact",
            Release::V6_12 => "tcx",
        }
    }
}

/// apt-get and apt-cache with a configuration of their own under `target/vm/apt/<name>`:
/// its sources list, package lists, cache and an empty dpkg status.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// The configuration for `release`'s suites under `cache/apt/<release>`.
    pub fn for_release(cache: &Path, release: Release) -> Result<Self> {
        let dir = cache.join("apt").join(release.label());
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources: String = release
            .suites()
            .iter()
            .map(|(archive, suite)| {
                format!(
                    "deb [signed-by={ARCHIVE_KEYRING}] {DEBIAN_MIRROR}/{archive} {suite} main\n"
                )
            })
            .collect();
        fs::write(dir.join("sources.list"), sources)?;
        fs::write(dir.join("status"), "")?;
        if !Path::new(ARCHIVE_KEYRING).exists() {
            bail!("{ARCHIVE_KEYRING} is missing: apt-get install debian-archive-keyring");
        }
        Ok(Self { dir })
    }

    /// `tool` (apt-get or apt-cache) reading only this configuration.
    fn command(&self, tool: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(tool);
        for (key, value) in [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.list.d")),
            ("Dir::Etc::Preferences", "/dev/null".into()),
            ("Dir::Etc::PreferencesParts", d("preferences.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::Status", d("status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", "amd64".into()),
            // Downloads land in a directory of ours that apt's _apt user cannot write.
            ("APT::Sandbox::User", "root".into()),
            ("Acquire::Languages", "none".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd.arg("-q");
        cmd
    }

    fn update(&self) -> Result<()> {
        support::run(
            self.command("apt-get").arg("update"),
            &format!(
                "apt-get update with {} (is {DEBIAN_MIRROR} reachable?)",
                self.dir.join("sources.list").display()
            ),
        )
    }

    /// Whether the lists know `package`.
    fn knows(&self, package: &str) -> bool {
        self.command("apt-cache")
            .args(["show", package])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// The versioned package a metapackage such as `linux-image-amd64` depends on (or the
    /// package itself); updates the lists first when they do not know it.
    pub fn resolve(&self, package: &str) -> Result<String> {
        if !self.knows(package) {
            self.update()?;
            if !self.knows(package) {
                bail!(
                    "no package {package} in {}",
                    self.dir.join("sources.list").display()
                );
            }
        }
        let out = self
            .command("apt-cache")
            .args(["depends", package])
            .output()
            .context("running apt-cache depends")?;
        let dep = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends: ")?;
            dep.starts_with("linux-image-").then(|| dep.to_string())
        });
        Ok(dep.unwrap_or_else(|| package.to_string()))
    }

    /// `apt-get download PACKAGE` into `into`, unless a .deb of it is there already.
    pub fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into)?;
        let find = || -> Option<PathBuf> {
            fs::read_dir(into)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        if !self.knows(package) {
            self.update()?;
        }
        println!("apt-get download {package}");
        support::run(
            self.command("apt-get")
                .args(["download", package])
                .current_dir(into),
            &format!("apt-get download {package}"),
        )?;
        find().with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                into.display()
            )
        })
    }
}

/// An unpacked kernel package.
pub struct Kernel {
    /// Where the package was unpacked (`boot/`, `lib/modules/`).
    pub root: PathBuf,
    /// `uname -r` of that kernel, e.g. `6.1.0-56-amd64`.
    pub version: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// Downloads and unpacks `release`'s newest `linux-image-amd64` into `cache/kernel/PKG`, with a
/// `depmod`-ed module tree; reuses an earlier one.
pub fn fetch(cache: &Path, release: Release) -> Result<Kernel> {
    let apt = PrivateApt::for_release(cache, release)?;
    let package = apt.resolve("linux-image-amd64")?;
    let root = cache.join("kernel").join(&package);
    let ready = root.join(".ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&root);
        let deb = apt.download(&package, &cache.join("dl"))?;
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
        support::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&kernel.root)
                .arg(&kernel.version),
            "depmod on the unpacked kernel",
        )?;
        fs::write(&ready, "")?;
    }
    Ok(kernel)
}

/// busybox from Debian 12's `busybox-static`, unpacked into `cache/busybox`.
pub fn fetch_busybox(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("busybox");
    let bin = root.join("bin/busybox");
    if !bin.exists() {
        let apt = PrivateApt::for_release(cache, Release::V6_1)?;
        let deb = apt.download("busybox-static", &cache.join("dl"))?;
        unpack(&deb, &root)?;
        if !bin.exists() {
            bail!("busybox-static did not contain bin/busybox");
        }
    }
    Ok(bin)
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(into)?;
    support::run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        &format!("unpacking {}", deb.display()),
    )
}
