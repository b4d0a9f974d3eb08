//! The shim's task service: containerd's calls mapped onto kiln-bake and kiln-fleet.
//!
//! - `create`: mount the request's rootfs mounts on `BUNDLE/rootfs`, read `config.json`,
//!   write a recipe (`BUNDLE/kiln/recipe`: `from = "dir:BUNDLE/rootfs"`, etc/rc exec'ing the
//!   process's args in its cwd with its env and user), build it (`BUNDLE/kiln/image`),
//!   `Fleet::prepare` it, open containerd's stdout/stderr.
//! - `start`: `Fleet::launch_foreground` (this shim keeps the VM: QEMU is its child), a thread
//!   watches it to its end and records the exit.
//! - `state`/`pids`/`connect`: from what is kept here; the task's pid is QEMU's.
//! - `wait`: blocks until the exit is recorded: etc/rc's status as kiln-init reported it, else
//!   128 + the signal of a kill.
//! - `kill`: a stop request in the VM's folder (graceful, 10 s; SIGKILL: forced) and the
//!   watcher's stop flag.
//! - `delete`: forget, unmount, remove the bundle's build; `shutdown`: end the shim when no
//!   container is left.

use crate::mount::unmount;
use crate::output::{ServiceFilter, Target};
use crate::spec::ContainerSpec;
use containerd_shim as shim;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::ttrpc::{self, Code};
use kiln_fleet::watch::{Until, Watched};
use kiln_fleet::{Fleet, Prepared, VmConfig};
use shim::api;
use shim::synchronous::publisher::RemotePublisher;
use shim::{Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

/// How long a graceful stop waits for the guest before it is forced.
const GRACE: Duration = Duration::from_secs(10);

/// Why a shim call failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The bundle's spec.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// Building the VM image.
    #[error("building the container's image: {0}")]
    Build(#[from] kiln_bake::BuildError),
    /// The recipe made from the bundle.
    #[error("the container's recipe: {0}")]
    Recipe(#[from] kiln_recipe::RecipeError),
    /// Preparing, starting or stopping the VM.
    #[error(transparent)]
    Fleet(#[from] kiln_fleet::FleetError),
    /// Mounting the rootfs, or containerd's stdio.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// A value in the request Kiln cannot use.
    #[error("{0}")]
    Invalid(String),
    /// Mounting the rootfs.
    #[error(transparent)]
    Mount(#[from] crate::mount::MountError),
    /// From the shim crate.
    #[error(transparent)]
    Shim(#[from] shim::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |error| ShimError::Io { what, error }
}

fn rpc(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        let code = match &e {
            ShimError::Spec(_) | ShimError::Recipe(_) | ShimError::Invalid(_) => {
                Code::INVALID_ARGUMENT
            }
            ShimError::Build(b) if b.is_user_error() => Code::INVALID_ARGUMENT,
            ShimError::Fleet(f) if f.is_user_error() => Code::INVALID_ARGUMENT,
            _ => Code::INTERNAL,
        };
        rpc(code, e)
    }
}

/// The VM's name for container `id` in `namespace`: Kiln's name rules (lower case letters,
/// digits, `-`, `_`; at most 63).
pub fn vm_name(namespace: &str, id: &str) -> String {
    let mut n: String = format!("{namespace}-{id}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '-',
        })
        .collect();
    n = n.trim_start_matches(['-', '_']).to_string();
    n.truncate(63);
    n
}

fn fleet() -> Result<Fleet, ShimError> {
    Ok(Fleet::new(
        kiln_fleet::default_state_root(),
        kiln_fleet::default_cache_root(),
    )?)
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped,
}

struct Life {
    phase: Phase,
    /// Until `start`.
    prepared: Option<Prepared>,
    /// QEMU's pid once started (this shim's before).
    pid: u32,
    /// The VM's folder (stop requests go there), once started.
    run_dir: Option<PathBuf>,
    exit: Option<(u32, SystemTime)>,
}

struct Container {
    id: String,
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    mounted: bool,
    out: Target,
    err: Target,
    stop: Arc<AtomicBool>,
    /// The signal of the last kill (for the exit status of a stopped VM).
    signal: AtomicU32,
    life: Mutex<Life>,
    exited: Condvar,
}

impl Container {
    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_exit(&self, status: u32) {
        let mut l = self.life();
        l.phase = Phase::Stopped;
        l.exit = Some((status, SystemTime::now()));
        drop(l);
        self.exited.notify_all();
    }
}

/// The shim: one per container (grouped by id), serving containerd's task API.
pub struct Service {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// The task service the shim serves.
#[derive(Clone)]
pub struct Tasks {
    exit: Arc<ExitSignal>,
    namespace: String,
    publisher: Arc<Mutex<RemotePublisher>>,
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
}

impl shim::Shim for Service {
    type T = Tasks;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let grouping = opts.id.clone();
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd's cleanup after a shim that died: the VM (if its record is left) is
    /// killed, the rootfs unmounted.
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        if let Ok(f) = fleet() {
            let _ = f.stop(&vm_name(&self.namespace, &self.id), None);
        }
        if let Ok(cwd) = std::env::current_dir() {
            unmount(&cwd.join("rootfs"));
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Tasks {
            exit: self.exit.clone(),
            namespace: self.namespace.clone(),
            publisher: Arc::new(Mutex::new(publisher)),
            containers: Arc::default(),
        }
    }
}

impl Tasks {
    fn get(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| rpc(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn publish(&self, topic: &str, event: Box<dyn shim::protos::protobuf::MessageDyn>) {
        let p = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = p.publish(
            ttrpc::context::with_timeout(0),
            topic,
            &self.namespace,
            event,
        ) {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// Build and prepare the VM of the create request.
    fn make(&self, req: &api::CreateTaskRequest) -> Result<(Container, Prepared), ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        let mut mounted = false;
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(io(format!("{}", rootfs.display())))?;
            for m in &req.rootfs {
                crate::mount::mount(&m.type_, &m.source, &m.options, &rootfs)?;
                mounted = true;
            }
        }
        let made = (|| {
            let spec = ContainerSpec::load(&bundle)?;
            let name = vm_name(&self.namespace, &req.id);
            if name.is_empty() {
                return Err(ShimError::Invalid(format!(
                    "container id `{}` makes no VM name",
                    req.id
                )));
            }
            let work = bundle.join("kiln");
            let recipe_dir = work.join("recipe");
            std::fs::create_dir_all(recipe_dir.join("etc"))
                .map_err(io(format!("{}", recipe_dir.display())))?;
            let (toml, rc) =
                kiln_bake::oci::rootfs_recipe_text(&name, &rootfs, &spec.process, spec.memory)?;
            std::fs::write(recipe_dir.join("kiln.toml"), toml).map_err(io("writing kiln.toml"))?;
            std::fs::write(recipe_dir.join("etc/rc"), rc).map_err(io("writing etc/rc"))?;
            let recipe = kiln_recipe::Recipe::load(&recipe_dir)?;
            let fleet = fleet()?;
            let out_dir = work.join("image");
            let opts = kiln_bake::BuildOptions {
                out_dir: out_dir.clone(),
                cache_root: fleet.cache_root().to_path_buf(),
                init_binary: kiln_bake::find_init()?,
                refresh: false,
                force: false,
            };
            kiln_bake::build(&recipe, &opts, &kiln_bake::Quiet)?;
            let mut ports = Vec::new();
            for p in &spec.ports {
                ports.push(p.parse().map_err(|e| {
                    ShimError::Invalid(format!("{}: `{p}`: {e}", crate::spec::PORTS_ANNOTATION))
                })?);
            }
            let cfg = VmConfig {
                image: Some(out_dir.display().to_string()),
                name: Some(name),
                memory: Some(spec.memory),
                cpus: spec.cpus,
                ports,
                ..VmConfig::default()
            };
            let prepared = fleet.prepare(cfg, &kiln_bake::Quiet)?;
            let out = Target::open(&req.stdout).map_err(io(format!("stdout {}", req.stdout)))?;
            let err = Target::open(&req.stderr).map_err(io(format!("stderr {}", req.stderr)))?;
            Ok((out, err, prepared))
        })();
        let (out, err, prepared) = match made {
            Ok(m) => m,
            Err(e) => {
                if mounted {
                    unmount(&rootfs);
                }
                return Err(e);
            }
        };
        let c = Container {
            id: req.id.clone(),
            bundle,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            mounted,
            out,
            err,
            stop: Arc::new(AtomicBool::new(false)),
            signal: AtomicU32::new(0),
            life: Mutex::new(Life {
                phase: Phase::Created,
                prepared: None,
                pid: std::process::id(),
                run_dir: None,
                exit: None,
            }),
            exited: Condvar::new(),
        };
        Ok((c, prepared))
    }

    /// Boot the container's VM and watch it to its end in a thread.
    fn boot(&self, c: &Arc<Container>) -> Result<u32, ShimError> {
        let mut life = c.life();
        let Some(p) = life.prepared.take() else {
            return Err(ShimError::Invalid(format!(
                "container {} was started already",
                c.id
            )));
        };
        let fleet = fleet()?;
        let accel = fleet.probe_accel(&p)?.accel;
        let sink = Box::new(ServiceFilter::new(c.out.clone()));
        let mut fg = fleet.launch_foreground(&p, accel, false, Some(sink))?;
        let pid = fg.session.vm.pid();
        life.pid = pid;
        life.run_dir = Some(fg.plan.run_dir.clone());
        life.phase = Phase::Running;
        drop(life);
        let (c2, tasks) = (c.clone(), self.clone());
        std::thread::spawn(move || {
            let mut on = |_: kiln_fleet::watch::Seen<'_>| {};
            let status = match fg.watch(Until::End, &c2.stop, &mut on) {
                Watched::Ended(end) => match end.rc_status {
                    Some(s) => s.clamp(0, 255) as u32,
                    None if end.stopped.is_some() => {
                        128 + match c2.signal.load(Ordering::Relaxed) {
                            0 => libc::SIGTERM as u32,
                            s => s,
                        }
                    }
                    None => match fg.exit_code(&end) {
                        Ok(code) => u32::from(code),
                        Err(e) => {
                            log::error!("container {}: {e}", c2.id);
                            c2.err.write_line(&format!("kiln: {e}"));
                            255
                        }
                    },
                },
                Watched::Ready => 255,
            };
            // The record and the VM's sockets go; then the output is closed (EOF for
            // containerd's readers) before the exit is told.
            drop(fg);
            c2.out.close();
            c2.err.close();
            c2.set_exit(status);
            let (pid, at) = {
                let l = c2.life();
                (l.pid, l.exit.map(|e| e.1).unwrap_or_else(SystemTime::now))
            };
            tasks.publish(
                "/tasks/exit",
                Box::new(shim::protos::events::task::TaskExit {
                    container_id: c2.id.clone(),
                    id: c2.id.clone(),
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            );
        });
        Ok(pid)
    }
}

fn status(p: Phase) -> EnumOrUnknown<api::Status> {
    EnumOrUnknown::new(match p {
        Phase::Created => api::Status::CREATED,
        Phase::Running => api::Status::RUNNING,
        Phase::Stopped => api::Status::STOPPED,
    })
}

fn no_exec(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(rpc(
            Code::NOT_FOUND,
            format!("exec {exec_id}: a Kiln container runs one process (use `kiln exec`)"),
        ))
    }
}

impl shim::Task for Tasks {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.get(&req.id).is_ok() {
            return Err(rpc(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let (c, prepared) = self.make(&req)?;
        let pid = c.life().pid;
        c.life().prepared = Some(prepared);
        let c = Arc::new(c);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), c.clone());
        self.publish(
            "/tasks/create",
            Box::new(shim::protos::events::task::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let pid = self.boot(&c)?;
        self.publish(
            "/tasks/start",
            Box::new(shim::protos::events::task::TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let l = c.life();
        Ok(api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: l.pid,
            status: status(l.phase),
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            terminal: c.terminal,
            exit_status: l.exit.map(|e| e.0).unwrap_or(0),
            exited_at: match l.exit {
                Some((_, at)) => MessageField::some(timestamp(at)),
                None => MessageField::none(),
            },
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let mut l = c.life();
        while l.exit.is_none() {
            l = c.exited.wait(l).unwrap_or_else(|e| e.into_inner());
        }
        let (status, at) = l.exit.unwrap_or((255, SystemTime::now()));
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let l = c.life();
        match l.phase {
            Phase::Stopped => Err(rpc(
                Code::NOT_FOUND,
                format!("container {}: process already finished", c.id),
            )),
            Phase::Created => {
                drop(l);
                c.life().prepared = None;
                c.set_exit(128 + req.signal);
                Ok(api::Empty::new())
            }
            Phase::Running => {
                let grace = (req.signal != libc::SIGKILL as u32).then_some(GRACE);
                if let Some(dir) = &l.run_dir {
                    kiln_fleet::watch::write_stop_request(dir, grace)
                        .map_err(|e| rpc(Code::INTERNAL, format!("stop request: {e}")))?;
                }
                c.signal.store(req.signal, Ordering::Relaxed);
                c.stop.store(true, Ordering::Relaxed);
                Ok(api::Empty::new())
            }
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let (pid, exit) = {
            let l = c.life();
            if l.phase == Phase::Running {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is running: kill it first", c.id),
                ));
            }
            (l.pid, l.exit)
        };
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        c.out.close();
        c.err.close();
        let _ = std::fs::remove_dir_all(c.bundle.join("kiln"));
        if c.mounted {
            unmount(&c.bundle.join("rootfs"));
        }
        let (status, at) = exit.unwrap_or((0, SystemTime::now()));
        self.publish(
            "/tasks/delete",
            Box::new(shim::protos::events::task::TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid,
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let c = self.get(&req.id)?;
        let pid = c.life().pid;
        Ok(api::PidsResponse {
            processes: vec![shim::protos::api::ProcessInfo {
                pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.get(&req.id).map(|c| c.life().pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_make_vm_names() {
        assert_eq!(vm_name("default", "t1"), "default-t1");
        assert_eq!(vm_name("k8s.io", "Web.App"), "k8s-io-web-app");
        assert_eq!(vm_name("a", &"x".repeat(100)).len(), 63);
    }
}
