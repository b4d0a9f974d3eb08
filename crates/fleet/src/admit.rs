//! Admission: a new VM is refused when a live VM holds its name, one of its host ports, or its
//! writable disk, or when anything else on the host holds one of its ports. A pure function of
//! the live records, the plan and the host's port probe; called with the state lock held.

use crate::error::{FleetError, Result};
use crate::host::Host;
use crate::plan::Plan;
use crate::record::VmRecord;
use kiln_recipe::{PortForward, Protocol};

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn clash(a: &PortForward, b: &PortForward) -> bool {
    a.host_port == b.host_port
        && a.protocol == b.protocol
        && (a.host_addr == b.host_addr
            || a.host_addr.is_unspecified()
            || b.host_addr.is_unspecified())
}

fn port_in_use(f: &PortForward, by: String) -> FleetError {
    kiln_vm::VmError::PortInUse {
        addr: f.host_addr.to_string(),
        port: f.host_port,
        proto: proto(f.protocol),
        by,
    }
    .into()
}

/// Refuse `plan` if a live VM in `records` holds its name, ports or writable disk, or the
/// host holds one of its ports.
pub fn admit(records: &[VmRecord], plan: &Plan, host: &dyn Host) -> Result<()> {
    for r in records.iter().filter(|r| r.is_live(host)) {
        if r.name == plan.name {
            return Err(FleetError::BadInput(format!(
                "a VM named `{}` is already {} (supervisor pid {}); stop it with `kiln stop {0}` or pick another --name",
                plan.name, r.state, r.supervisor_pid
            )));
        }
        if let Some(mine) = plan
            .ports
            .iter()
            .find(|m| r.ports.iter().any(|t| clash(m, t)))
        {
            return Err(port_in_use(mine, format!(", by VM `{}`", r.name)));
        }
        let (Some((mine, my_rw)), Some(theirs)) = (&plan.drive, &r.config.drive) else {
            continue;
        };
        let unlocked = plan.config.no_lock || r.config.no_lock;
        if &theirs.path == mine && (*my_rw || !theirs.readonly) && !unlocked {
            return Err(FleetError::BadInput(format!(
                "disk {} is in use by VM `{}`{}; two VMs never open the same writable disk: attach it read-only (`{}:ro`), or pass --no-lock if the guests coordinate",
                mine.display(),
                r.name,
                if theirs.readonly { " (read-only)" } else { " (writable)" },
                mine.display()
            )));
        }
    }
    if let Some(f) = plan.ports.iter().find(|f| !host.port_free(f)) {
        return Err(port_in_use(f, String::new()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Drive, VmConfig};
    use crate::host::FakeHost;
    use crate::record::tests::rec;
    use crate::record::VmState;

    pub(crate) fn plan(name: &str, ports: &[&str], drive: Option<(&str, bool)>) -> Plan {
        let config = VmConfig {
            drive: drive.map(|(p, rw)| Drive {
                path: p.into(),
                readonly: !rw,
            }),
            ..VmConfig::default()
        };
        Plan {
            name: name.into(),
            spec: kiln_vm::VmSpec {
                name: name.into(),
                kernel: "/k".into(),
                initrd: None,
                cmdline: String::new(),
                cpus: 1,
                memory_mib: 32,
                accel: kiln_vm::Accel::Tcg,
                net: kiln_vm::NetSpec::None,
                lans: vec![],
                console_socket: "/c".into(),
                console_wait: true,
                console_log: None,
                control_socket: "/ctl".into(),
                exec_socket: None,
                qmp_socket: "/q".into(),
                drives: vec![],
                shares: vec![],
                vports: vec![],
                acpi: false,
                ram: Default::default(),
                incoming: None,
                free_page_reporting: false,
                extra_args: vec![],
            },
            ready_timeout: std::time::Duration::from_secs(30),
            ports: ports.iter().map(|p| p.parse().expect("port")).collect(),
            run_dir: "/run".into(),
            drive: drive.map(|(p, rw)| (p.into(), rw)),
            serial_tcp: None,
            config,
            guest: "linux".into(),
            ready_at_launch: false,
            restore: None,
            cold_reason: None,
            image_initrd: None,
        }
    }

    /// A live VM `name` (supervisor pid `pid`) with `ports` and an optional drive.
    fn live(
        host: &FakeHost,
        name: &str,
        pid: u32,
        ports: &[&str],
        drive: Option<&str>,
    ) -> VmRecord {
        host.processes.lock().expect("lock").insert(pid, 1);
        let mut r = rec(name);
        r.supervisor_pid = pid;
        r.supervisor_start = Some(1);
        r.ports = ports.iter().map(|p| p.parse().expect("port")).collect();
        r.config.drive = drive.map(|d| d.parse().expect("drive"));
        r
    }

    #[test]
    fn a_name_held_by_a_live_vm_is_refused() {
        let h = FakeHost::new();
        let recs = vec![live(&h, "web", 100, &[], None)];
        let e = admit(&recs, &plan("web", &[], None), &h).expect_err("taken");
        assert!(e.is_user_error());
        assert!(e.to_string().contains("already running"), "{e}");
        admit(&recs, &plan("web2", &[], None), &h).expect("another name");
    }

    #[test]
    fn a_dead_vm_holds_nothing() {
        let h = FakeHost::new();
        let mut r = live(&h, "web", 100, &["8080:80"], Some("/d.img"));
        h.end_process(100);
        admit(
            std::slice::from_ref(&r),
            &plan("web", &["8080:80"], Some(("/d.img", true))),
            &h,
        )
        .expect("free");
        r.state = VmState::Exited;
        h.processes.lock().expect("lock").insert(100, 1);
        admit(&[r], &plan("web", &["8080:80"], None), &h).expect("an ended record holds nothing");
    }

    #[test]
    fn ports_clash_by_port_protocol_and_address() {
        let h = FakeHost::new();
        let recs = vec![live(
            &h,
            "a",
            100,
            &["8080:80", "0.0.0.0:5353:53/udp"],
            None,
        )];
        let e = admit(&recs, &plan("b", &["8080:81"], None), &h).expect_err("same port");
        assert!(
            e.to_string()
                .contains("8080/tcp is already in use, by VM `a`"),
            "{e}"
        );
        assert!(e.is_user_error());
        admit(&recs, &plan("b", &["8080:80/udp"], None), &h).expect("other protocol");
        admit(&recs, &plan("b", &["127.0.0.2:8080:80"], None), &h).expect("other address");
        admit(&recs, &plan("b", &["127.0.0.5:5353:53/udp"], None), &h)
            .expect_err("0.0.0.0 covers every address");
    }

    #[test]
    fn a_port_held_outside_kiln_is_refused() {
        let h = FakeHost::new();
        h.take_port(9090);
        let e = admit(&[], &plan("b", &["9090:80"], None), &h).expect_err("held");
        assert!(e.to_string().contains("9090/tcp is already in use;"), "{e}");
    }

    #[test]
    fn one_writer_per_disk() {
        let h = FakeHost::new();
        let rw = vec![live(&h, "a", 100, &[], Some("/d.img"))];
        let e = admit(&rw, &plan("b", &[], Some(("/d.img", false))), &h).expect_err("a writes");
        assert!(e.to_string().contains("(writable)"), "{e}");
        let ro = vec![live(&h, "a", 100, &[], Some("/d.img:ro"))];
        admit(&ro, &plan("b", &[], Some(("/d.img", false))), &h).expect("two readers");
        admit(&ro, &plan("b", &[], Some(("/d.img", true))), &h).expect_err("a reader and a writer");
        admit(&rw, &plan("b", &[], Some(("/e.img", true))), &h).expect("another disk");
        let mut unlocked = plan("b", &[], Some(("/d.img", true)));
        unlocked.config.no_lock = true;
        admit(&rw, &unlocked, &h).expect("no_lock");
    }
}
