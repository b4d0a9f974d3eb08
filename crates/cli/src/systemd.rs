//! Autostart at host boot, the systemd way (bhyve's `vm_enable`/rc.conf done as a unit):
//! `kiln enable NAME` saves the VM's config as `configs/NAME.toml` in the state folder and
//! installs `kiln-NAME.service`, which runs `kiln run -f … --detach` (Type=forking, the
//! supervisor is the main process) and `kiln stop` on shutdown. `--print` shows both without
//! installing; `kiln disable NAME` removes them. `KILN_SYSTEMD_DIR` installs elsewhere than
//! /etc/systemd/system (and then skips systemctl).

use crate::{dirs, BadInput};
use anyhow::{Context, Result};
use kiln_fleet::store::PID_FILE;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn unit_dir() -> (PathBuf, bool) {
    match std::env::var_os("KILN_SYSTEMD_DIR") {
        Some(d) => (PathBuf::from(d), false),
        None => (PathBuf::from("/etc/systemd/system"), true),
    }
}

/// The unit's file name.
pub fn unit_name(name: &str) -> String {
    format!("kiln-{name}.service")
}

/// The unit text.
pub fn unit(
    name: &str,
    kiln: &Path,
    config: &Path,
    state_root: &Path,
    ready_timeout: u64,
) -> String {
    let pid = state_root.join("vms").join(name).join(PID_FILE);
    format!(
        "# Written by `kiln enable {name}`; remove with `kiln disable {name}`.
[Unit]
Description=Kiln microVM {name}
Wants=network-online.target
After=network-online.target

[Service]
Type=forking
Environment=KILN_STATE_DIR={state}
ExecStart={kiln} run -f {config} --detach
ExecStop={kiln} stop {name} --timeout 10
PIDFile={pid}
TimeoutStartSec={start}
TimeoutStopSec=40
# Kiln's own --restart policy restarts the VM; systemd restarts the supervisor if it dies.
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
",
        state = state_root.display(),
        kiln = kiln.display(),
        config = config.display(),
        pid = pid.display(),
        start = ready_timeout + 60,
    )
}

/// `kiln enable NAME [--print]`.
pub fn enable(name: &str, print: bool) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    let root = fleet.store().root().to_path_buf();
    let rec = fleet.get(name)?;
    let mut cfg = rec.config.clone();
    cfg.name = Some(name.to_string());
    cfg.image = Some(rec.image.clone());
    let toml_text = format!(
        "# The config of VM `{name}`, saved by `kiln enable`; `kiln run -f` reads it.\n{}",
        toml::to_string(&cfg).context("writing the VM config")?
    );
    let config_path = root.join("configs").join(format!("{name}.toml"));
    let kiln = std::env::current_exe().context("finding the kiln binary")?;
    let text = unit(
        name,
        &kiln,
        &config_path,
        &root,
        cfg.ready_timeout.unwrap_or(30),
    );
    let (dir, use_systemctl) = unit_dir();
    let unit_path = dir.join(unit_name(name));
    if print {
        println!(
            "# {}\n{text}\n# {}\n{toml_text}",
            unit_path.display(),
            config_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(root.join("configs"))?;
    kiln_image::atomic_write(&config_path, toml_text.as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    kiln_image::atomic_write(&unit_path, text.as_bytes())
        .with_context(|| format!("writing {}", unit_path.display()))?;
    eprintln!(
        "kiln: wrote {} and {}",
        unit_path.display(),
        config_path.display()
    );
    if use_systemctl {
        if !Path::new("/run/systemd/system").is_dir() {
            eprintln!("kiln: systemd is not running on this host; enable it later with `systemctl enable {}`", unit_name(name));
        } else {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", &unit_name(name)])?;
            eprintln!("kiln: {name} starts at boot ({})", unit_name(name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln disable NAME`.
pub fn disable(name: &str) -> Result<ExitCode> {
    let root = dirs::state_root();
    let (dir, use_systemctl) = unit_dir();
    let unit_path = dir.join(unit_name(name));
    if !unit_path.exists() {
        return Err(BadInput(format!(
            "{name} is not enabled (no {})",
            unit_path.display()
        ))
        .into());
    }
    if use_systemctl && Path::new("/run/systemd/system").is_dir() {
        systemctl(&["disable", &unit_name(name)])?;
    }
    std::fs::remove_file(&unit_path)
        .with_context(|| format!("removing {}", unit_path.display()))?;
    let _ = std::fs::remove_file(root.join("configs").join(format!("{name}.toml")));
    if use_systemctl && Path::new("/run/systemd/system").is_dir() {
        systemctl(&["daemon-reload"])?;
    }
    eprintln!("kiln: {name} no longer starts at boot");
    Ok(ExitCode::SUCCESS)
}

fn systemctl(args: &[&str]) -> Result<()> {
    let s = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    anyhow::ensure!(s.success(), "systemctl {} failed ({s})", args.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_saved_config_detached_and_stops_gracefully() {
        let u = unit(
            "web",
            Path::new("/usr/local/bin/kiln"),
            Path::new("/var/lib/kiln/configs/web.toml"),
            Path::new("/var/lib/kiln"),
            30,
        );
        assert!(u.contains(
            "ExecStart=/usr/local/bin/kiln run -f /var/lib/kiln/configs/web.toml --detach"
        ));
        assert!(u.contains("ExecStop=/usr/local/bin/kiln stop web --timeout 10"));
        assert!(u.contains("PIDFile=/var/lib/kiln/vms/web/supervisor.pid"));
        assert!(u.contains("Type=forking") && u.contains("WantedBy=multi-user.target"));
    }
}
