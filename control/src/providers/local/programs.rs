//! The programs local VMs run (vm-agent and the stand-in cloudflared): as configured, else
//! next to the control executable, built from the workspace when they are missing, so that
//! `cargo run -p control -- serve` works on a fresh clone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Config;

/// The programs local VMs run: as configured, else next to this executable. Started from the
/// workspace it was built in (`cargo run -p control -- serve` on a fresh clone), control builds
/// the missing ones itself, into its own target directory and profile; one older than its
/// sources is used as it is, with a warning (cargo decides what to rebuild, not us).
pub fn local_binaries(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot locate the control executable")?;
    let beside = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .filter(|w| w.join("Cargo.toml").is_file());
    // (configured path, default name, package, the sources it is built from, config key)
    let wanted = [
        (
            &config.local.vm_agent,
            "vm-agent",
            "vm-agent",
            &["vm-agent/src", "control/api/src"][..],
            "vm_agent",
        ),
        (
            &config.local.cloudflared,
            "stand-in-cloudflared",
            "test-support",
            &["tests/support/src"][..],
            "cloudflared",
        ),
    ];
    let binaries = wanted
        .map(|(configured, name, ..)| configured.clone().unwrap_or_else(|| beside.join(name)));
    if let Some(workspace) = &workspace {
        let mut missing = Vec::new();
        for ((configured, name, package, sources, _), binary) in wanted.iter().zip(&binaries) {
            if configured.is_some() {
                continue;
            }
            if !binary.is_file() {
                missing.push((*package, *name));
                continue;
            }
            let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
            let changed = sources
                .iter()
                .filter_map(|dir| newest(&workspace.join(dir)))
                .max();
            if let (Some(built), Some(changed)) = (built, changed)
                && changed > built
            {
                warn!(binary = %binary.display(), "local VMs run a {name} older than its sources; rebuild it with `cargo build -p {package}`");
            }
        }
        if !missing.is_empty() {
            build_beside(workspace, &beside, &missing)?;
        }
    }
    for ((_, name, package, _, key), binary) in wanted.iter().zip(&binaries) {
        anyhow::ensure!(
            binary.is_file(),
            "the local provider needs {name} at {}: build it (cargo build -p {package}) or set local_provider.{key}",
            binary.display()
        );
    }
    let [vm_agent, cloudflared] = binaries;
    Ok((vm_agent, cloudflared))
}

/// Builds `(package, binary)`s with one cargo run, into the target directory and profile this
/// executable was built in (`<target>/<profile>/`).
fn build_beside(workspace: &Path, beside: &Path, missing: &[(&str, &str)]) -> anyhow::Result<()> {
    let (Some(target), Some(profile)) =
        (beside.parent(), beside.file_name().and_then(|n| n.to_str()))
    else {
        anyhow::bail!("cannot tell the target directory of {}", beside.display());
    };
    let profile = if profile == "debug" { "dev" } else { profile };
    let names: Vec<&str> = missing.iter().map(|(_, name)| *name).collect();
    info!(
        binaries = %names.join(", "),
        profile,
        "building the programs the local provider's VMs run"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.current_dir(workspace).arg("build");
    for (package, name) in missing {
        build.args(["-p", package, "--bin", name]);
    }
    let status = build
        .args(["--profile", profile, "--target-dir"])
        .arg(target)
        .status()
        .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "building {} failed", names.join(" and "));
    Ok(())
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}
