//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `wslnet-agent/Cargo.toml`, then checked: lintian reports no
//! errors, the contents are listed, and the unpacked package puts the binary, the unit and the
//! config where the unit, systemd and the agent look for them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::support::{self, cargo, step};

/// The cargo-deb release this task installs when `cargo deb` is missing (pinned, as
/// scripts/bootstrap.sh pins bpf-linker).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// The package (and crate) name.
const PACKAGE: &str = "wslnet-agent";

/// Builds `target/debian/wslnet-agent_<version>_<arch>.deb` and checks it.
pub fn run() -> Result<()> {
    let root = support::workspace_root();
    // xtask and wslnet-agent share the workspace version.
    let version = env!("CARGO_PKG_VERSION");
    check_changelog(&root.join("packaging/deb/changelog"), version)?;

    let has_cargo_deb = support::cargo_command(&["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        step(&format!("install cargo-deb {CARGO_DEB_VERSION}"));
        cargo(&[
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])?;
    }

    step("cargo deb -p wslnet-agent (release build)");
    let out = support::cargo_command(&["deb", "-p", PACKAGE])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    ensure!(out.status.success(), "cargo deb failed ({})", out.status);
    // cargo-deb prints the path of the package as its last line.
    let deb = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .context("cargo deb printed no path")?
            .trim(),
    );
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    ensure!(
        name.starts_with(&format!("{PACKAGE}_{version}_")) && name.ends_with(".deb"),
        "unexpected package name {name}"
    );

    step("lintian (errors fail the build)");
    support::run(
        Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&deb),
        "lintian",
    )
    .context("lintian is part of scripts/bootstrap.sh's packages (apt-get install lintian)")?;

    step("contents");
    support::run(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
        "dpkg-deb --contents",
    )?;

    step("unpacked: binary, unit and config where they are looked for");
    check_layout(&deb, version)?;
    step(
        "dpkg -i, then --purge, in a throwaway root (overlay of /, private mount and network namespaces)",
    );
    install_in_throwaway_root(&deb)?;
    println!("\n{}", deb.display());
    Ok(())
}

/// Runs inside `unshare -m -n` (a private mount namespace, and a network namespace with nothing
/// in it): mounts an overlay of / whose writes go to `$1/upper`, chroots into it and installs,
/// checks and purges the package `$2` there. A tmpfs on /run hides any running systemd, so the
/// maintainer scripts enable the unit but start nothing. The host's files are never written.
const THROWAWAY_INSTALL: &str = r#"
set -eu
dir=$1; deb=$2
mount --make-rprivate /
mkdir -p "$dir/upper" "$dir/work" "$dir/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
mount --rbind /dev "$dir/merged/dev"
mount -t proc proc "$dir/merged/proc"
mount -t tmpfs tmpfs "$dir/merged/run"
cp "$deb" "$dir/merged/root/wslnet-agent.deb"
chroot "$dir/merged" sh -eu -c '
  dpkg -i /root/wslnet-agent.deb
  echo "--- installed files:"; dpkg -L wslnet-agent
  test "$(systemctl is-enabled wslnet-agent.service)" = enabled
  systemd-analyze verify /usr/lib/systemd/system/wslnet-agent.service
  wslnet-agent --version
  test -f /etc/wslnet/wslnet.toml
  dpkg --purge wslnet-agent
  test ! -e /etc/wslnet/wslnet.toml
  test ! -e /usr/bin/wslnet-agent
  ! systemctl is-enabled wslnet-agent.service 2>/dev/null
  echo "ok: installed, enabled, verified, purged"
'
"#;

/// `dpkg -i` of `deb` in a throwaway root ([`THROWAWAY_INSTALL`]); needs root.
fn install_in_throwaway_root(deb: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    support::require_root(&format!(
        "installing the package in a throwaway root needs mount namespaces and chroot (the \
         package itself is built: {})",
        deb.display()
    ))?;
    let dir = tempfile_dir()?;
    let result = support::run(
        Command::new("unshare")
            .args(["-m", "-n", "sh", "-c", THROWAWAY_INSTALL, "sh"])
            .arg(&dir)
            .arg(deb),
        "dpkg -i in a throwaway root",
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The newest entry of the Debian changelog must be `version` (add an entry when the version
/// changes).
fn check_changelog(path: &Path, version: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    let expected = format!("{PACKAGE} ({version}) ");
    ensure!(
        first.starts_with(&expected),
        "{}: the newest entry is `{first}`, not version {version}; add an entry for {version}",
        path.display()
    );
    Ok(())
}

/// Unpacks `deb` into a temporary directory (files and control area; no maintainer script
/// runs) and checks where things land.
fn check_layout(deb: &Path, version: &str) -> Result<()> {
    let dir = tempfile_dir()?;
    let files = dir.join("root");
    let control = dir.join("DEBIAN");
    support::run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&files),
        "dpkg-deb -x",
    )?;
    support::run(
        Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control),
        "dpkg-deb -e",
    )?;
    let result = (|| {
        // The unit: in a directory systemd loads units from, starting the packaged binary.
        let unit_rel = "usr/lib/systemd/system/wslnet-agent.service";
        let unit = std::fs::read_to_string(files.join(unit_rel))
            .with_context(|| format!("the package has no /{unit_rel}"))?;
        let paths = Command::new("systemd-analyze")
            .arg("unit-paths")
            .output()
            .context("running systemd-analyze unit-paths (Debian package systemd)")?;
        let unit_dir = format!("/{}", Path::new(unit_rel).parent().unwrap().display());
        ensure!(
            String::from_utf8_lossy(&paths.stdout)
                .lines()
                .any(|l| l.trim() == unit_dir),
            "{unit_dir} is not among systemd's unit paths"
        );
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .context("the unit has no ExecStart")?;
        let bin = exec.split_whitespace().next().unwrap_or_default();
        let packaged_bin = files.join(bin.trim_start_matches('/'));
        let out = Command::new(&packaged_bin)
            .arg("--version")
            .output()
            .with_context(|| format!("ExecStart's {bin} is not in the package"))?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && said.contains(version),
            "{bin} --version: {said}"
        );

        // The config: where `run` reads it, and a conffile (kept across upgrades).
        let config = wslnet_agent::config::DEFAULT_CONFIG_PATH;
        ensure!(
            files.join(config.trim_start_matches('/')).is_file(),
            "the package has no {config}"
        );
        let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
        ensure!(
            conffiles.lines().any(|l| l.trim() == config),
            "{config} is not a conffile: {conffiles:?}"
        );

        // The unit is enabled and started by the maintainer scripts where systemd runs.
        let postinst = std::fs::read_to_string(control.join("postinst")).unwrap_or_default();
        ensure!(
            postinst.contains("deb-systemd-helper") && postinst.contains("wslnet-agent.service"),
            "postinst does not enable the unit:\n{postinst}"
        );
        // The docs the unit's Documentation= names.
        for doc in unit
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation=file:"))
        {
            ensure!(
                files.join(doc.trim_start_matches('/')).is_file(),
                "Documentation={doc} is not in the package"
            );
        }
        println!("ok: /{unit_rel}, {bin}, {config} (conffile), postinst enables the unit");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wslnet-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
