//! Builds the datapath (`wslnet-ebpf`'s `wslnet` binary) for bpfel-unknown-none with aya-build.
//!
//! The eBPF build needs `-Z build-std=core`: it uses the pinned stable toolchain with
//! RUSTC_BOOTSTRAP=1, set here for that sub-build only (the kernel builds its Rust the same way).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Must match rust-toolchain.toml.
const TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../wslnet-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "wslnet-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
    .context("building the eBPF datapath; is bpf-linker installed? run scripts/bootstrap.sh")
}
