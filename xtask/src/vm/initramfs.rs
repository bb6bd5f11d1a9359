//! The VM's first root: a newc cpio archive with busybox, `scripts/vm/init.sh` as `/init`, a
//! console node and the modules that mount the host's root (virtio, 9p, overlay), uncompressed
//! so that busybox's `insmod` loads them on every kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::kernel::Kernel;

/// Modules the initramfs loads (with their dependencies) to mount the host's root.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Writes the initramfs of `kernel` to `out`.
pub fn build(root: &Path, kernel: &Kernel, busybox: &Path, out: &Path) -> Result<()> {
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
    let mut list = String::new();
    for path in modules_in_load_order(kernel)? {
        let (name, data) = module_file(&path)?;
        cpio.file(&format!("modules/{name}"), 0o644, &data);
        list.push_str(&format!("{name}\n"));
    }
    cpio.file("modules/order", 0o644, list.as_bytes());
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// [`INITRAMFS_MODULES`] and what they depend on, dependencies first (`modprobe
/// --show-depends` on the unpacked tree).
fn modules_in_load_order(kernel: &Kernel) -> Result<Vec<PathBuf>> {
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
    Ok(order)
}

/// A module's `NAME.ko` and its bytes, decompressed when the package ships it as `.ko.xz`
/// (Debian does from 6.x on; busybox's insmod takes plain ELF only).
fn module_file(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .context("module without a file name")?
        .to_string_lossy()
        .into_owned();
    if let Some(stem) = name.strip_suffix(".xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .context("running xz (package xz-utils)")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        return Ok((stem.to_string(), out.stdout));
    }
    if !name.ends_with(".ko") {
        bail!(
            "{}: a module compressed in a way this task does not unpack",
            path.display()
        );
    }
    Ok((name, fs::read(path)?))
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
