//! [`Fleet`]: the VMs of one state folder, the cache they boot from and how their
//! supervisors are started; preparing a spec ([`Prepared`]) and admitting it. The operations
//! on it live beside their concern: `supervise` (detached), `foreground`, `ops` (by name).

use crate::admit;
use crate::config::VmConfig;
use crate::error::{FleetError, Result};
use crate::host::{Host, RealHost};
use crate::plan::{self, Image, Plan};
use crate::record::{VmRecord, VmState};
use crate::store::Store;
use kiln_bake::Progress;
use kiln_vm::{Accel, AccelChoice, AccelProbe};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A VM spec with its image resolved: ready to plan.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The spec (name and image set).
    pub config: VmConfig,
    /// The image.
    pub image: Image,
}

impl Prepared {
    /// The VM's name.
    pub fn name(&self) -> &str {
        self.config
            .name
            .as_deref()
            .unwrap_or(&self.image.manifest.name)
    }
}

/// The VMs of one state folder, and how to start their supervisors.
#[derive(Clone)]
pub struct Fleet {
    store: Store,
    cache_root: PathBuf,
    pub(crate) supervisor: Vec<OsString>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("state", &self.store.root())
            .field("cache", &self.cache_root)
            .finish()
    }
}

impl Fleet {
    /// The fleet of `state_root` on the real host. Supervisors are this program run as
    /// `PROGRAM __supervise NAME` (the `kiln` binary, whichever front end it is serving).
    pub fn new(state_root: PathBuf, cache_root: PathBuf) -> Result<Fleet> {
        let exe = std::env::current_exe()
            .map_err(|e| FleetError::Other(format!("finding this program: {e}")))?;
        Ok(Fleet::with_host(
            state_root,
            cache_root,
            Arc::new(RealHost),
            vec![exe.into(), "__supervise".into()],
        ))
    }

    /// The fleet of `state_root` on `host`, starting supervisors with `supervisor` + NAME.
    pub fn with_host(
        state_root: PathBuf,
        cache_root: PathBuf,
        host: Arc<dyn Host>,
        supervisor: Vec<OsString>,
    ) -> Fleet {
        Fleet {
            store: Store::new(state_root, host),
            cache_root,
            supervisor,
        }
    }

    /// The records.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The host.
    pub fn host(&self) -> &dyn Host {
        self.store.host()
    }

    /// The cache folder.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// Check `cfg`, resolve its image (building a recipe when stale) and fill in its name and
    /// image.
    pub fn prepare(&self, cfg: VmConfig, progress: &dyn Progress) -> Result<Prepared> {
        let mut cfg = self.spec_from_saved(cfg)?;
        cfg.validate()
            .map_err(|(key, msg)| FleetError::BadInput(format!("{}: {msg}", flag(key))))?;
        plan::check_network_privilege(&cfg)?;
        let Some(target) = cfg.image.clone() else {
            return Err(FleetError::BadInput(
                "no image: give a recipe or image folder, or `image` in the config file".into(),
            ));
        };
        let image = plan::resolve_image(Path::new(&target), &self.cache_root, progress)?;
        self.ensure_template(&cfg, &image, progress)?;
        cfg.image = Some(image.dir.display().to_string());
        cfg.name.get_or_insert_with(|| image.manifest.name.clone());
        if cfg.nets.is_empty() {
            // The recipe's `[network] nets`, unless the spec names its own.
            cfg.nets = image.manifest.boot.nets.clone();
        }
        for n in &cfg.nets {
            // Refused before anything starts (the accelerator probe boots a VM).
            self.net_record(n)?;
        }
        Ok(Prepared { config: cfg, image })
    }

    /// Make the image's template when its recipe asks for one (`[template]`) and it has none
    /// (a new build has none), unless this VM does not start from it anyway.
    fn ensure_template(
        &self,
        cfg: &VmConfig,
        image: &Image,
        progress: &dyn Progress,
    ) -> Result<()> {
        if !image.manifest.boot.template || cfg.cold || cfg.from.is_some() {
            return Ok(());
        }
        if !matches!(crate::template::of_image(&image.dir), Ok(None)) {
            return Ok(());
        }
        progress.phase("making the template");
        let p = Prepared {
            config: cfg.clone(),
            image: image.clone(),
        };
        let accel = self.probe_accel(&p)?.accel;
        self.make_template(image, accel).map(drop)
    }

    /// The accelerator for `p`: KVM when a probe boot of its kernel works, else TCG (cached).
    pub fn probe_accel(&self, p: &Prepared) -> Result<AccelProbe> {
        let qemu = kiln_vm::check_qemu()?;
        Ok(kiln_vm::accel::choose(
            p.config.accel_choice(),
            &qemu,
            &p.image.dir.join(&p.image.manifest.kernel.file),
            &self.cache_root,
        ))
    }

    /// Plan `p` on paper (for `--dry-run`): its folder in the state folder, the accelerator
    /// asked for (TCG for auto, no probe).
    pub fn plan_dry(&self, p: &Prepared, supervised: bool, verbose: bool) -> Result<Plan> {
        let accel = match p.config.accel_choice() {
            AccelChoice::Kvm => Accel::Kvm,
            _ => Accel::Tcg,
        };
        plan::plan(
            &p.config,
            &p.image,
            &plan::PlanOptions {
                run_dir: self.store.vm_dir(p.name()),
                accel,
                supervised,
                verbose,
                lans: self.peek_lans(p.name(), &p.config.nets)?,
                cache_root: self.cache_root().to_path_buf(),
                on_paper: true,
            },
        )
    }

    /// The record of a VM about to start from `plan`: no processes yet, nothing ended.
    fn new_record(&self, plan: &Plan, accel: Accel) -> VmRecord {
        VmRecord {
            name: plan.name.clone(),
            state: VmState::Starting,
            pid: 0,
            pid_start: None,
            supervisor_pid: 0,
            supervisor_start: None,
            boot_id: self.host().boot_id(),
            image: plan.config.image.clone().unwrap_or_default(),
            ports: plan.ports.clone(),
            cpus: plan.spec.cpus,
            memory: plan.spec.memory_mib,
            accel,
            started: self.host().now(),
            ready_ms: None,
            restarts: 0,
            exit_code: None,
            signal: None,
            stopped: None,
            error: None,
            tail: None,
            config: plan.config.clone(),
            foreground: false,
        }
    }

    /// Plan `p` into its folder and admit it under the state lock; `write` finishes the
    /// record (with the lock still held) and returns what the caller keeps.
    pub(crate) fn admit<T>(
        &self,
        p: &Prepared,
        accel: Accel,
        supervised: bool,
        verbose: bool,
        write: impl FnOnce(&mut VmRecord) -> Result<T>,
    ) -> Result<(Plan, T)> {
        let name = p.name().to_string();
        let dir = self.store.vm_dir(&name);
        let _lock = self.store.lock()?;
        let plan = plan::plan(
            &p.config,
            &p.image,
            &plan::PlanOptions {
                run_dir: dir.clone(),
                accel,
                supervised,
                verbose,
                lans: self.lease_lans(&name, &p.config.nets)?,
                cache_root: self.cache_root().to_path_buf(),
                on_paper: false,
            },
        )?;
        admit::admit(&self.store.list(), &plan, self.host())?;
        // A record left by an ended VM of the same name is replaced.
        self.store.remove(&name)?;
        std::fs::create_dir_all(&dir).map_err(FleetError::io("creating", &dir))?;
        let mut rec = self.new_record(&plan, accel);
        let kept = write(&mut rec).and_then(|kept| self.store.write(&rec).map(|()| kept));
        if kept.is_err() {
            // A start that cannot be recorded (a full or read-only disk) leaves no folder: one
            // without a record could be neither listed nor removed by name.
            let _ = self.store.remove(&name);
        }
        Ok((plan, kept?))
    }
}

/// How a spec key is named on the command line (`ready_timeout` → `--ready-timeout`).
pub fn flag(key: &str) -> String {
    if key == "nets" {
        return "--net".into();
    }
    format!("--{}", key.replace('_', "-"))
}
