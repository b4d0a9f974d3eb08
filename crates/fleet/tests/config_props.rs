//! Property tests of [`VmConfig`], the one VM spec of flags, vm.toml, records and the web API:
//! generated configs survive JSON (records, the API) and TOML (vm.toml, `kiln enable`'s saved
//! configs) unchanged, vm.toml text is read or refused without a panic, and every refusal
//! names a line of the file.

use kiln_fleet::{Drive, Network, Restart, SerialTcp, Share, ShareFs, VmConfig, Vports};
use kiln_recipe::{PortForward, Protocol};
use kiln_vm::AccelChoice;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// 256 cases, or `PROPTEST_CASES` (`make fuzz` without nightly).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// An absolute host path without `:` (the separator of drive and share specs).
fn abs_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9._ -]{1,10}", 1..4).prop_map(|c| format!("/{}", c.join("/")))
}

fn port_forward() -> impl Strategy<Value = PortForward> {
    (any::<[u8; 4]>(), 1..=u16::MAX, 1..=u16::MAX, any::<bool>()).prop_map(|(a, h, g, udp)| {
        PortForward {
            host_addr: Ipv4Addr::from(a),
            host_port: h,
            guest_port: g,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        }
    })
}

fn ifname() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,15}"
}

fn serial_tcp() -> impl Strategy<Value = SerialTcp> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SerialTcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p))),
        (any::<[u16; 8]>(), any::<u16>())
            .prop_map(|(a, p)| SerialTcp(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p))),
    ]
}

/// A config `VmConfig::validate` accepts, with values as users write them.
fn vm_config() -> impl Strategy<Value = VmConfig> {
    let network = prop_oneof![
        Just(Network::User),
        Just(Network::None),
        ifname().prop_map(Network::Bridge),
        ifname().prop_map(Network::Tap),
    ];
    let vports = prop_oneof![
        (0u32..=16).prop_map(Vports::Count),
        prop::collection::vec("[a-zA-Z0-9_.-]{1,64}", 0..4)
            .prop_filter("the control port", |v| v
                .iter()
                .all(|n| n != "org.kiln.control" && n != "org.kiln.exec"))
            .prop_map(Vports::Names),
    ];
    let restart = prop::sample::select(vec![Restart::No, Restart::OnFailure, Restart::Always]);
    let accel = prop::sample::select(vec![AccelChoice::Auto, AccelChoice::Kvm, AccelChoice::Tcg]);
    (
        (
            prop::option::of(abs_path()),
            prop::option::of("[a-z0-9][a-z0-9_-]{0,62}"),
            prop::option::of(1..=64u32),
            prop::option::of(16..=65536u32),
            prop::option::of(any::<String>()),
        ),
        (
            prop::option::of((abs_path(), any::<bool>()).prop_map(|(p, ro)| Drive {
                path: PathBuf::from(p),
                readonly: ro,
            })),
            prop::collection::vec(port_forward(), 0..4),
            prop::option::of(serial_tcp()),
            prop::option::of(vports),
        ),
        (
            prop::option::of((abs_path(), "/[a-z0-9/._-]{0,12}", any::<bool>()).prop_map(
                |(h, g, ro)| Share {
                    host: PathBuf::from(h),
                    guest: g,
                    readonly: ro,
                },
            )),
            prop::option::of(prop::sample::select(vec![
                ShareFs::NineP,
                ShareFs::Virtiofs,
            ])),
            prop::option::of(network),
            any::<[bool; 3]>(),
            prop::collection::vec("[a-z0-9][a-z0-9_-]{0,62}", 0..3),
        ),
        (
            prop::option::of(restart),
            prop::option::of(1..=3600u64),
            prop::option::of(accel),
            prop::option::of(abs_path().prop_map(PathBuf::from)),
        ),
    )
        .prop_map(
            |(
                (image, name, cpus, memory, append),
                (drive, ports, serial_tcp, vports),
                (share, share_fs, network, [readonly_root, no_lock, cold], nets),
                (restart, ready_timeout, accel, from),
            )| VmConfig {
                image,
                name,
                cpus,
                memory,
                append,
                drive,
                ports,
                serial_tcp,
                vports,
                share,
                share_fs,
                network,
                nets,
                readonly_root,
                no_lock,
                restart,
                ready_timeout,
                accel,
                from,
                cold,
            },
        )
}

/// The keys of vm.toml, and values right and wrong, for text that looks like a vm.toml.
const KEYS: &[&str] = &[
    "image",
    "name",
    "cpus",
    "memory",
    "append",
    "drive",
    "ports",
    "serial_tcp",
    "vports",
    "share",
    "share_fs",
    "network",
    "nets",
    "readonly_root",
    "no_lock",
    "restart",
    "ready_timeout",
    "accel",
    "from",
    "cold",
    "memroy",
    "[net]",
];
const VALUES: &[&str] = &[
    "\"web\"",
    "\"\"",
    "1",
    "0",
    "-1",
    "17",
    "65537",
    "99999999999999999999",
    "true",
    "\"yes\"",
    "[\"8080:80\"]",
    "[\"99999:80\"]",
    "[]",
    "[\"a b\"]",
    "\"data.img:ro\"",
    "\":ro\"",
    "\"x:/mnt\"",
    "\"bridge:\"",
    "\"tap:br0\"",
    "\"on-failure\"",
    "\"4444\"",
    "\"[::1]:80\"",
    "{ a = 1 }",
    "\"\u{e9}\u{1F600}\"",
    "'''\nmulti'''",
];

fn vm_toml_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| {
            if k.starts_with('[') { k.to_string() } else { format!("{k} = {v}") }
        }),
        1 => "[ -~]{0,20}",
        1 => any::<String>(),
    ];
    prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    /// JSON (records, the web API): what is written is read back unchanged.
    #[test]
    fn json_round_trip(c in vm_config()) {
        prop_assert_eq!(c.validate(), Ok(()));
        let text = serde_json::to_string(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: VmConfig = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(back, c);
    }

    /// TOML (vm.toml, the configs `kiln enable` saves): through serde and through
    /// `VmConfig::load` (whose relative paths would be resolved: these are absolute).
    #[test]
    fn toml_round_trip(c in vm_config()) {
        let text = toml::to_string(&c).map_err(|e| TestCaseError::fail(format!("{e}: {c:?}")))?;
        let back: VmConfig = toml::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&back, &c);
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let p = d.path().join("vm.toml");
        std::fs::write(&p, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let loaded = VmConfig::load(&p).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(loaded, c);
    }

    /// Overlaying a config on itself changes nothing; on the default, gives itself.
    #[test]
    fn overlay_is_idempotent(c in vm_config()) {
        prop_assert_eq!(c.clone().overlay(c.clone()), c.clone());
        prop_assert_eq!(VmConfig::default().overlay(c.clone()), c);
    }

    /// Any vm.toml text: a config or a refusal naming the file and a line of it, no panic.
    #[test]
    fn vm_toml_loading_never_panics(text in prop_oneof![vm_toml_like(), any::<String>()]) {
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let p = d.path().join("vm.toml");
        std::fs::write(&p, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = VmConfig::load(&p) {
            let m = e.to_string();
            let prefix = format!("{}:", p.display());
            prop_assert!(m.starts_with(&prefix), "{m}");
            let line: usize = m[prefix.len()..].split(':').next().unwrap_or("").parse()
                .map_err(|_| TestCaseError::fail(format!("no line in {m}")))?;
            prop_assert!(line >= 1 && line <= text.split('\n').count().max(1), "line {line} of {text:?}: {m}");
        }
    }
}
