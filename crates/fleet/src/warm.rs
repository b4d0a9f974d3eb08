//! Making saved states: [`Fleet::make_template`] boots an image to its ready point with its
//! RAM in a file, freezes it and saves only the device state; [`Fleet::snapshot`] saves a
//! running detached VM whole (RAM in the zstd stream) and lets it go on (or stops it). Both
//! land content-addressed in `CACHE/snapshots/` (or a folder the user names) — see
//! [`crate::template`] for the formats and for how a clone starts.

use crate::config::VmConfig;
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::plan::{self, Image, PlanOptions};
use crate::template::{
    self, compress, content_hash, send_control, send_control_kept, Saved, SavedMeta, Signature,
    TemplateRef, META_FILE, TEMPLATE_FILE,
};
use crate::watch::{Session, Until, Watched};
use kiln_vm::{Accel, ConsoleEvent, RamBacking};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// How long a guest has to answer `freeze`.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a save may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Why an image cannot have a template, if it cannot.
fn refuse_template(image: &Image) -> Result<()> {
    let m = &image.manifest;
    if m.boot.is_bsd() {
        return Err(FleetError::BadInput(format!(
            "{}: a {} guest cannot be a template: thawing a clone is kiln-init's work",
            m.name, m.boot.guest
        )));
    }
    if m.initramfs.is_disk() {
        return Err(FleetError::BadInput(format!(
            "{}: format = \"{}\" cannot be a template: the root disk's writes live in an overlay thrown away with the VM, so a clone's memory would not match its disk; use the initramfs format",
            m.name, m.initramfs.format
        )));
    }
    Ok(())
}

/// Wait for `kiln: frozen` on `session`'s console.
fn wait_frozen(session: &mut Session) -> Result<()> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(ConsoleEvent::Frozen) = session.next_event(Duration::from_millis(50)) {
            return Ok(());
        }
    }
    Err(FleetError::Other(format!(
        "the guest did not answer `freeze` within {} s (an image built before templates existed? rebuild it); console:\n{}",
        FREEZE_TIMEOUT.as_secs(),
        session.tail()
    )))
}

/// Move a finished saved state from `tmp` to its content address under `snapshots` (or to
/// `out`), keeping an existing identical one.
fn place(
    tmp: tempfile::TempDir,
    snapshots: &Path,
    files: &[&str],
    out: Option<&Path>,
) -> Result<PathBuf> {
    let paths: Vec<PathBuf> = files.iter().map(|f| tmp.path().join(f)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let dest = match out {
        Some(o) => o.to_path_buf(),
        None => snapshots.join(content_hash(&refs)?),
    };
    if dest.join(META_FILE).is_file() && out.is_none() {
        return Ok(dest);
    }
    if out.is_some() && dest.exists() {
        return Err(FleetError::BadInput(format!(
            "-o {}: already exists; pick a new folder",
            dest.display()
        )));
    }
    for sock in ["console.sock", "control.sock", "qmp.sock"] {
        let _ = std::fs::remove_file(tmp.path().join(sock));
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &dest).map_err(FleetError::io("renaming", &dest))?;
    Ok(dest)
}

impl Fleet {
    /// Boot `image` once to its ready point and save it as its template; the image folder's
    /// `template.json` then names it.
    pub fn make_template(&self, image: &Image, accel: Accel) -> Result<Saved> {
        refuse_template(image)?;
        let snapshots = self.cache_root().join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(FleetError::io("creating", &snapshots))?;
        let tmp = tempfile::Builder::new()
            .prefix(".template-")
            .tempdir_in(&snapshots)
            .map_err(FleetError::io("creating a folder in", &snapshots))?;
        let cfg = VmConfig {
            name: Some(format!("template-{}", std::process::id())),
            cold: true,
            ..VmConfig::default()
        };
        let mut plan = plan::plan(
            &cfg,
            image,
            &PlanOptions {
                run_dir: tmp.path().to_path_buf(),
                accel,
                supervised: false,
                verbose: false,
                lans: vec![],
                cache_root: self.cache_root().to_path_buf(),
                on_paper: false,
            },
        )?;
        // No host ports: forwards are host-side state each clone gets its own of, and the
        // recipe's default ports may be in use.
        if let kiln_vm::NetSpec::User { forwards } = &mut plan.spec.net {
            forwards.clear();
        }
        let ram = tmp.path().join("ram");
        plan.spec.ram = RamBacking::File {
            path: ram.clone(),
            shared: true,
        };
        let signature = Signature::of(&plan.spec, image);
        let paths = plan::run_paths(tmp.path(), false);
        let mut session = Session::start(&plan, &paths, None)?;
        let never = AtomicBool::new(false);
        if let Watched::Ended(end) = session.watch(Until::Ready, &never, &mut |_| {}) {
            return Err(FleetError::NotStarted {
                name: image.manifest.name.clone(),
                status: "failed".into(),
                reason: format!(
                    "the template boot ended before it was ready ({}) {}",
                    end.status.map(|s| s.to_string()).unwrap_or_default(),
                    session.vm.qemu_stderr().trim()
                ),
                tail: end.tail,
            });
        }
        let mut q = kiln_vm::qmp::Qmp::connect(&paths.qmp_socket)?;
        link(&mut q, &plan.spec, false)?;
        let control = send_control_kept(&paths.control_socket, "freeze\n")?;
        wait_frozen(&mut session)?;
        let t = Instant::now();
        q.save(
            &format!("exec:cat > {}", quoted(&tmp.path().join("state"))),
            true,
            SAVE_TIMEOUT,
        )?;
        let save_ms = t.elapsed().as_millis() as u64;
        let _ = q.quit();
        session.vm.wait_exit(Duration::from_secs(5));
        drop((session, control));
        compress(&ram, &tmp.path().join("ram.zst"))?;
        let meta = SavedMeta {
            signature,
            kind: "template".into(),
            image_dir: image.dir.display().to_string(),
            config: VmConfig::default(),
            stored_bytes: size(&tmp.path().join("ram.zst")) + size(&tmp.path().join("state")),
            save_ms,
        };
        write_meta(tmp.path(), &meta)?;
        let dir = place(tmp, &snapshots, &["ram.zst", "state"], None)?;
        let r = serde_json::to_vec_pretty(&TemplateRef { dir: dir.clone() })
            .map_err(|e| FleetError::Other(e.to_string()))?;
        let tref = image.dir.join(TEMPLATE_FILE);
        kiln_image::atomic_write(&tref, &r).map_err(FleetError::io("writing", &tref))?;
        Saved::load(&dir)
    }

    /// Save running VM `name` whole (into `out`, or the cache); it runs on (with fresh
    /// entropy) unless `stop`.
    pub fn snapshot(&self, name: &str, out: Option<&Path>, stop: bool) -> Result<Saved> {
        let rec = self.get(name)?;
        if !rec.is_live(self.host()) || rec.pid == 0 {
            return Err(FleetError::BadInput(format!(
                "{name} is not running ({}): only a running VM can be saved",
                rec.status()
            )));
        }
        if rec.foreground {
            return Err(FleetError::BadInput(format!(
                "{name} runs in the foreground of `kiln run`: snapshot a detached VM (`kiln run -d`)"
            )));
        }
        if let Some(s) = &rec.config.share {
            return Err(FleetError::BadInput(format!(
                "{name} shares {} with the host (9p or virtiofs): a shared folder's state lives on the host and cannot be saved; run it without --share to snapshot it",
                s.host.display()
            )));
        }
        if !rec.config.nets.is_empty() {
            return Err(FleetError::BadInput(format!(
                "{name} is on Kiln nets ({}): its NICs there are not saved; run it without --net \
                 to snapshot it",
                rec.config.nets.join(", ")
            )));
        }
        let image =
            plan::resolve_image(Path::new(&rec.image), self.cache_root(), &kiln_bake::Quiet)?;
        let dir = self.store().vm_dir(name);
        let plan = plan::plan(
            &VmConfig {
                cold: true,
                from: None,
                ..rec.config.clone()
            },
            &image,
            &PlanOptions {
                run_dir: dir.clone(),
                accel: rec.accel,
                supervised: true,
                verbose: false,
                lans: vec![],
                cache_root: self.cache_root().to_path_buf(),
                on_paper: false,
            },
        )?;
        let paths = plan::run_paths(&dir, true);
        let snapshots = self.cache_root().join("snapshots");
        let parent = out
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty());
        let work_in = parent.map(Path::to_path_buf).unwrap_or(snapshots.clone());
        std::fs::create_dir_all(&work_in).map_err(FleetError::io("creating", &work_in))?;
        let tmp = tempfile::Builder::new()
            .prefix(".snapshot-")
            .tempdir_in(&work_in)
            .map_err(FleetError::io("creating a folder in", &work_in))?;
        let log = dir.join("console.log");
        let from = size(&log);
        let mut q = kiln_vm::qmp::Qmp::connect(&paths.qmp_socket)?;
        link(&mut q, &plan.spec, false)?;
        let control = match send_control_kept(&paths.control_socket, "freeze\n")
            .and_then(|c| wait_frozen_in_log(&log, from).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                // It runs on, reachable as before.
                let _ = link(&mut q, &plan.spec, true);
                return Err(e);
            }
        };
        let t = Instant::now();
        q.save(
            &format!(
                "exec:zstd -1 -q > {}",
                quoted(&tmp.path().join("state.zst"))
            ),
            false,
            SAVE_TIMEOUT,
        )?;
        let save_ms = t.elapsed().as_millis() as u64;
        drop(control);
        if stop {
            drop(q);
            self.stop(name, None)?;
        } else {
            q.cont()?;
            send_control(
                &paths.control_socket,
                &template::thaw_line(&template::fresh_seed()?, name),
            )?;
            // The VM keeps its identity: its link comes back at once.
            link(&mut q, &plan.spec, true)?;
        }
        let mut config = rec.config.clone();
        config.from = None;
        config.cold = false;
        let meta = SavedMeta {
            signature: Signature::of(&plan.spec, &image),
            kind: "snapshot".into(),
            image_dir: rec.image.clone(),
            config,
            stored_bytes: size(&tmp.path().join("state.zst")),
            save_ms,
        };
        write_meta(tmp.path(), &meta)?;
        let dir = place(tmp, &snapshots, &["state.zst"], out)?;
        Saved::load(&dir)
    }
}

fn write_meta(dir: &Path, meta: &SavedMeta) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| FleetError::Other(e.to_string()))?;
    let p = dir.join(META_FILE);
    kiln_image::atomic_write(&p, &json).map_err(FleetError::io("writing", &p))
}

/// Wait for `kiln: frozen` in a detached VM's console log after byte `from`.
fn wait_frozen_in_log(log: &Path, from: u64) -> Result<()> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    while Instant::now() < deadline {
        let text = std::fs::read(log).unwrap_or_default();
        let new = text.get(from as usize..).unwrap_or_default();
        if String::from_utf8_lossy(new)
            .lines()
            .any(|l| kiln_vm::console::parse_line(l) == Some(ConsoleEvent::Frozen))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(FleetError::Other(format!(
        "the guest did not answer `freeze` within {} s",
        FREEZE_TIMEOUT.as_secs()
    )))
}

impl Fleet {
    /// Check and resolve a spec that starts `from` a saved state: the image defaults to the
    /// saved one's, and a snapshot's own spec is the base the given settings override. A
    /// snapshot's writable drive must be given again (its content must be what the VM had).
    pub fn spec_from_saved(&self, cfg: VmConfig) -> Result<VmConfig> {
        let Some(from) = cfg.from.clone() else {
            return Ok(cfg);
        };
        let saved = template::find(&from)?;
        let mut base = if saved.meta.kind == "snapshot" {
            let mut b = saved.meta.config.clone();
            b.name = None;
            if let Some(d) = b.drive.take() {
                if !d.readonly && cfg.drive.is_none() {
                    return Err(FleetError::BadInput(format!(
                        "--from {}: the snapshot had the writable drive {}: give --drive again to attach it (its content must be what the VM had)",
                        from.display(),
                        d.path.display()
                    )));
                }
                if d.readonly {
                    b.drive = Some(d);
                }
            }
            b
        } else {
            VmConfig::default()
        };
        if cfg.image.is_none() {
            base.image = Some(saved.meta.image_dir.clone());
        }
        Ok(base.overlay(cfg))
    }
}

/// Take the VM's network link down before a save, or bring it up again (QMP `set_link`);
/// nothing for a VM without a network device.
pub(crate) fn link(
    q: &mut kiln_vm::qmp::Qmp,
    spec: &kiln_vm::VmSpec,
    up: bool,
) -> Result<(), FleetError> {
    if spec.net == kiln_vm::NetSpec::None {
        return Ok(());
    }
    Ok(q.set_link(kiln_vm::qemu::NETDEV_ID, up)?)
}
