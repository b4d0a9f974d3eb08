//! The state folder: one folder per VM (`vms/NAME/`) holding `record.json` (written
//! atomically), the sockets, `console.log` and the supervisor's log; the lock held while a VM
//! is admitted. While a VM's supervisor lives only it writes the record; a record read by
//! anyone else is reconciled with the processes that really exist (see [`VmRecord::reconcile`]).

use crate::error::{FleetError, Result};
use crate::host::Host;
use crate::record::VmRecord;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file a stop request is written to before the VM's keeper gets SIGTERM.
pub const STOP_REQUEST: &str = "stop-request";
/// The supervisor's pid file (for systemd's PIDFile=).
pub const PID_FILE: &str = "supervisor.pid";
/// The record's file name.
pub const RECORD: &str = "record.json";

/// The records under one state folder.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    host: Arc<dyn Host>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// The state folder `root`, reconciled against `host`.
    pub fn new(root: PathBuf, host: Arc<dyn Host>) -> Store {
        Store { root, host }
    }

    /// The state folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host the records are reconciled against.
    pub fn host(&self) -> &dyn Host {
        self.host.as_ref()
    }

    /// The folder of VM `name`.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.root.join("vms").join(name)
    }

    /// Whether a record of `name` exists (readable or not).
    pub fn exists(&self, name: &str) -> bool {
        self.vm_dir(name).join(RECORD).exists()
    }

    /// Write the record atomically.
    pub fn write(&self, rec: &VmRecord) -> Result<()> {
        let dir = self.vm_dir(&rec.name);
        std::fs::create_dir_all(&dir).map_err(FleetError::io("creating", &dir))?;
        write_json(&dir.join(RECORD), rec)
    }

    /// Read VM `name`'s record as stored.
    pub fn read_raw(&self, name: &str) -> Result<VmRecord> {
        if crate::config::check_name(name).is_err() {
            return Err(FleetError::NoSuchVm(name.to_string()));
        }
        let path = self.vm_dir(name).join(RECORD);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FleetError::NoSuchVm(name.to_string()))
            }
            Err(e) => return Err(FleetError::io("reading", &path)(e)),
        };
        serde_json::from_slice(&data).map_err(|e| FleetError::BadRecord {
            name: name.to_string(),
            path,
            reason: e.to_string(),
        })
    }

    /// Read VM `name`'s record, reconciled (and the reconciliation written back).
    pub fn read(&self, name: &str) -> Result<VmRecord> {
        let mut rec = self.read_raw(name)?;
        if !rec.reconcile(self.host()) {
            return Ok(rec);
        }
        // The supervisor records the VM's end and then exits: it may have done both between
        // the read above and the liveness check. Now that it is gone, what it wrote is there to
        // read; only a record it left active is marked crashed.
        let mut rec = self.read_raw(name)?;
        if rec.reconcile(self.host()) {
            let _ = self.write(&rec);
        }
        Ok(rec)
    }

    /// Change the stored record of `name` (no-op when there is none).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut VmRecord)) {
        if let Ok(mut rec) = self.read_raw(name) {
            f(&mut rec);
            let _ = self.write(&rec);
        }
    }

    /// Every readable record, reconciled, sorted by name.
    pub fn list(&self) -> Vec<VmRecord> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.root.join("vms")) {
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str() {
                    if let Ok(r) = self.read(name) {
                        out.push(r);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Remove VM `name`'s folder.
    pub fn remove(&self, name: &str) -> Result<()> {
        let dir = self.vm_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FleetError::io("removing", &dir)(e)),
        }
    }

    /// Block until the state folder's lock is ours: held while a VM is admitted (name, ports
    /// and disk checked, record written), so concurrent starts cannot both take a name.
    pub fn lock(&self) -> Result<StateLock> {
        std::fs::create_dir_all(&self.root).map_err(FleetError::io("creating", &self.root))?;
        Ok(StateLock {
            _file: lock_file(&self.root.join(".lock"))?,
        })
    }
}

/// Write `v` as pretty JSON to `path`, atomically.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(v).map_err(|e| FleetError::Other(e.to_string()))?;
    kiln_image::atomic_write(path, &json).map_err(FleetError::io("writing", path))
}

/// Open (creating) `path` and block until its exclusive lock is ours; released with the file.
pub(crate) fn lock_file(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(FleetError::io("opening", path))?;
    f.lock().map_err(FleetError::io("locking", path))?;
    Ok(f)
}

/// The state folder's lock; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::record::tests::{rec, OLD_RECORD};
    use crate::record::VmState;

    fn store() -> (tempfile::TempDir, Store, Arc<FakeHost>) {
        let d = tempfile::tempdir().expect("tmp");
        let h = Arc::new(FakeHost::new());
        let s = Store::new(d.path().to_path_buf(), h.clone());
        (d, s, h)
    }

    #[test]
    fn a_ghost_is_reconciled_on_read_and_written_back() {
        let (_d, s, _h) = store();
        s.write(&rec("ghost")).expect("write");
        assert_eq!(s.read("ghost").expect("read").state, VmState::Crashed);
        assert_eq!(s.read_raw("ghost").expect("raw").state, VmState::Crashed);
    }

    /// A host on which the supervisor records the VM's end and exits at the first liveness
    /// check, as a real one can between a reader's read and its check.
    struct EndsDuringCheck {
        inner: FakeHost,
        end: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Host for EndsDuringCheck {
        fn boot_id(&self) -> String {
            self.inner.boot_id()
        }
        fn process_start(&self, pid: u32) -> Option<u64> {
            if let Some(end) = self.end.lock().expect("lock").take() {
                end();
            }
            self.inner.process_start(pid)
        }
        fn port_free(&self, forward: &kiln_recipe::PortForward) -> bool {
            self.inner.port_free(forward)
        }
        fn now(&self) -> u64 {
            self.inner.now()
        }
        fn signal(&self, pid: u32, signal: i32) -> bool {
            self.inner.signal(pid, signal)
        }
        fn spawn_supervisor(
            &self,
            argv: &[std::ffi::OsString],
            env: &[(&str, std::ffi::OsString)],
            log: &Path,
        ) -> std::io::Result<Box<dyn crate::host::SupervisorChild>> {
            self.inner.spawn_supervisor(argv, env, log)
        }
    }

    #[test]
    fn a_reader_keeps_the_end_the_supervisor_recorded_as_it_exited() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().to_path_buf();
        let record = rec("web");
        let mut ended = record.clone();
        ended.state = VmState::Crashed;
        ended.signal = Some(9);
        let writer = Store::new(root.clone(), Arc::new(FakeHost::new()));
        writer.write(&record).expect("write");
        let host = EndsDuringCheck {
            inner: FakeHost::new(),
            end: std::sync::Mutex::new(Some(Box::new(move || {
                writer.write(&ended).expect("the supervisor's last write");
            }))),
        };
        let s = Store::new(root, Arc::new(host));
        let r = s.read("web").expect("read");
        assert_eq!((r.state, r.signal), (VmState::Crashed, Some(9)), "{r:?}");
        assert_eq!(s.read_raw("web").expect("raw").signal, Some(9));
    }

    #[test]
    fn list_is_sorted_and_remove_forgets() {
        let (_d, s, _h) = store();
        for n in ["b", "a"] {
            let mut r = rec(n);
            r.state = VmState::Exited;
            s.write(&r).expect("w");
        }
        let names: Vec<String> = s.list().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b"]);
        s.remove("a").expect("rm");
        assert!(matches!(s.read("a"), Err(FleetError::NoSuchVm(_))));
        s.remove("a").expect("rm twice is fine");
        let _l = s.lock().expect("lock");
    }

    #[test]
    fn an_unreadable_record_is_refused_with_what_to_do() {
        let (_d, s, _h) = store();
        std::fs::create_dir_all(s.vm_dir("bad")).expect("mkdir");
        std::fs::write(s.vm_dir("bad").join(RECORD), "{\"name\": 3}").expect("w");
        let e = s.read("bad").expect_err("refused");
        assert!(e.is_user_error());
        assert!(e.to_string().contains("kiln rm bad"), "{e}");
        assert!(s.list().is_empty(), "not listed");
        assert!(s.exists("bad"));
    }

    #[test]
    fn an_old_record_in_the_folder_loads() {
        let (_d, s, _h) = store();
        std::fs::create_dir_all(s.vm_dir("web")).expect("mkdir");
        std::fs::write(s.vm_dir("web").join(RECORD), OLD_RECORD).expect("w");
        let r = s.read("web").expect("loads");
        assert_eq!(r.restarts, 2);
    }

    #[test]
    fn names_that_are_not_vm_names_are_no_vm() {
        let (_d, s, _h) = store();
        assert!(matches!(s.read("../etc"), Err(FleetError::NoSuchVm(_))));
    }
}
