//! Kiln nets against real VMs (issue 13, parts 1–2): three recipes/httpd VMs on one net reach
//! each other by name with busybox wget, a VM on another net cannot reach them, a member started
//! later is found by name by the earlier ones, the net survives its switch being killed, and
//! `kiln net rm` is refused while VMs are on it. The nets' switches are removed by [`Nets`]'s
//! Drop, after [`Fleet`]'s has removed the VMs.

use super::lifecycle::Fleet;
use super::*;
use kiln_test_support::{poll_until, wait_until};
use std::time::Duration;

/// The nets a test made: removed (their switches stopped) when dropped.
struct Nets {
    state: PathBuf,
    names: Vec<String>,
}

impl Drop for Nets {
    fn drop(&mut self) {
        for n in &self.names {
            let mut c = kiln(&self.state);
            c.args(["net", "rm", n]);
            let _ = run(c);
            if let Some(pid) = switch_pid(&self.state, n) {
                // SAFETY: kill(2) on the switch this test's net started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

fn switch_pid(state: &Path, net: &str) -> Option<u32> {
    let text = std::fs::read_to_string(state.join("nets").join(net).join("net.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["switch_pid"]
        .as_u64()
        .map(|p| p as u32)
        .filter(|&p| p != 0)
}

fn start_on(f: &mut Fleet, prefix: &str, args: &[&str]) -> String {
    let image = httpd_image().to_str().expect("utf-8 path").to_string();
    f.run_detached(prefix, &image, 80, args).0
}

/// `wget` of `host`'s page from inside `vm` (busybox, 10 s limit): the page, or None.
fn fetch(f: &Fleet, vm: &str, host: &str) -> Option<String> {
    let url = format!("http://{host}:80/");
    let o = f.run(&["exec", vm, "--", "timeout", "10", "wget", "-qO-", &url]);
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.success() && page.contains("Hello from a Kiln microVM")).then_some(page)
}

/// Wait until `vm` fetches `host`'s page by name.
fn reaches(f: &Fleet, vm: &str, host: &str) {
    wait_until(
        &format!("{vm} fetching http://{host}/"),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || fetch(f, vm, host),
    );
}

#[test]
fn vms_on_a_net_reach_each_other_by_name_and_others_cannot() {
    let mut f = Fleet::new();
    let mut nets = Nets {
        state: f.state.path().to_path_buf(),
        names: vec![],
    };
    let net = f.name("n");
    let other = f.name("o");
    nets.names = vec![net.clone(), other.clone()];
    let o = f.ok(&["net", "create", &net, "--subnet", "10.89.0.0/24"]);
    assert!(text(&o).contains("10.89.0.0/24"), "{}", text(&o));
    f.ok(&["net", "create", &other]);
    // Refusals: a net that exists, an overlapping subnet, a bad subnet, a VM on a net that
    // does not exist.
    for (args, want) in [
        (vec!["net", "create", net.as_str()], "exists"),
        (
            vec!["net", "create", "x1", "--subnet", "10.89.0.0/16"],
            "overlaps",
        ),
        (
            vec!["net", "create", "x2", "--subnet", "10.89.0.1/24"],
            "did you mean 10.89.0.0/24",
        ),
    ] {
        let o = f.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    let image = httpd_image().to_str().expect("utf-8").to_string();
    let o = f.run(&["run", "-d", "--net", "nosuch", &image]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kiln net create nosuch"), "{}", text(&o));

    let a = start_on(&mut f, "a", &["--net", &net]);
    let b = start_on(&mut f, "b", &["--net", &net]);
    let c = start_on(&mut f, "c", &["--net", &net]);
    // d is on another net only: no route, no name, no frames from the first net's switch.
    let d = start_on(&mut f, "d", &["--network", "none", "--net", &other]);
    reaches(&f, &a, &b);
    reaches(&f, &b, &c);
    reaches(&f, &c, &a);
    let hosts = String::from_utf8_lossy(&f.ok(&["exec", &a, "--", "cat", "/etc/hosts"]).stdout)
        .into_owned();
    assert!(hosts.contains(&b) && hosts.contains(&c), "{hosts}");
    // The members' addresses, from `kiln net ls --json`.
    let ls: serde_json::Value =
        serde_json::from_slice(&f.ok(&["net", "ls", "--json"]).stdout).expect("json");
    let row = ls
        .as_array()
        .and_then(|r| r.iter().find(|n| n["name"] == net.as_str()))
        .expect("net listed")
        .clone();
    let members = row["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 3, "{row}");
    let addr_of = |vm: &str| -> String {
        members
            .iter()
            .find(|m| m["name"] == vm)
            .and_then(|m| m["addr"].as_str())
            .expect("member")
            .to_string()
    };
    let b_addr = addr_of(&b);
    assert!(b_addr.starts_with("10.89.0."), "{b_addr}");
    assert_eq!(fetch(&f, &d, &b), None, "d must not know b by name");
    assert_eq!(fetch(&f, &d, &b_addr), None, "d must not reach b's address");

    // A member started later is found by name by the earlier ones.
    let e = start_on(&mut f, "e", &["--net", &net]);
    reaches(&f, &a, &e);
    reaches(&f, &e, &b);

    // The switch is killed: a member's keeper starts it again and the VMs' next frames reach
    // the new one (datagrams addressed by path: nothing to reconnect).
    let state = f.state.path().to_path_buf();
    let old = switch_pid(&state, &net).expect("switch pid");
    // SAFETY: kill(2) on the switch this test's net started.
    unsafe {
        libc::kill(old as i32, libc::SIGKILL);
    }
    let new = wait_until(
        "the switch restarted",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || switch_pid(&state, &net).filter(|&p| p != old),
    );
    assert_ne!(new, old);
    reaches(&f, &b, &a);
    reaches(&f, &e, &c);
    let ls = text(&f.ok(&["net", "ls"]));
    assert!(ls.contains(&new.to_string()), "{ls}");

    // A net in use cannot be removed; a stopped member leaves the others' /etc/hosts.
    let o = f.run(&["net", "rm", &net]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("in use by"), "{}", text(&o));
    f.ok(&["stop", &e]);
    poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let o = f.ok(&["exec", &a, "--", "cat", "/etc/hosts"]);
        (!String::from_utf8_lossy(&o.stdout).contains(&e)).then_some(())
    })
    .expect("e left a's /etc/hosts");
    for vm in [&a, &b, &c, &d, &e] {
        f.ok(&["rm", "-f", vm]);
    }
    f.ok(&["net", "rm", &net, &other]);
    let gone = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (!Path::new(&format!("/proc/{new}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the switch ended with its net");
    assert!(!state.join("nets").join(&net).exists());
    nets.names.clear();
}
