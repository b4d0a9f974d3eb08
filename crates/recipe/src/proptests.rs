//! Property tests: kiln.toml parsing never panics, accepts what it renders for generated valid
//! configs, and port forwards round-trip through their text form.

use super::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

/// 256 cases (a fraction of a second), or `PROPTEST_CASES` (`make fuzz` without nightly).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// The keys of kiln.toml (top level and tables), for text that looks like a kiln.toml.
const KEYS: &[&str] = &[
    "name",
    "description",
    "guest",
    "sets",
    "kernel",
    "cmdline",
    "kernel_fragments",
    "cpus",
    "memory",
    "ports",
    "ready",
    "ready_timeout",
    "hook_timeout",
    "packages",
    "index",
    "[image]",
    "format",
    "compression",
    "size_mib",
    "[template]",
    "at",
    "[root]",
    "busybox",
    "binaries",
    "files",
    "modules",
    "[network]",
    "mode",
    "address",
    "gateway",
    "dns",
    "[env]",
    "A",
];

/// Values a kiln.toml key might be given, right or wrong.
const VALUES: &[&str] = &[
    "\"web\"",
    "\"\"",
    "1",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    "1.5",
    "true",
    "[\"8080:80\"]",
    "[\"99999:80\"]",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ a = 1 }",
    "\"tcp:80\"",
    "\"debian\"",
    "\"debian:\"",
    "\"netbsd\"",
    "\"disk\"",
    "\"ready\"",
    "\"10.0.2.15/24\"",
    "\"/tmp/x\"",
    "\"/etc/hostname:/proc/x\"",
    "\"a\\nb\"",
    "\"\\u0000\"",
    "'''multi\nline'''",
    "\"\u{e9}\u{1F600}\"",
    "1979-05-27T07:32:00Z",
];

/// Text that looks like a kiln.toml: known keys, assorted values, table headers, junk.
fn kiln_toml_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| {
            if k.starts_with('[') {
                k.to_string()
            } else {
                format!("{k} = {v}")
            }
        }),
        1 => "[ -~]{0,20}",
        1 => any::<String>(),
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
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

/// A guest path no mount of kiln-init hides.
fn visible_path() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9]{0,7}",
        prop::collection::vec("[a-zA-Z0-9._-]{1,8}", 0..3),
    )
        .prop_filter("not below a guest mount", |(first, _)| {
            !["dev", "proc", "sys", "tmp", "run", "var"].contains(&first.as_str())
        })
        .prop_map(|(first, rest)| {
            let mut p = format!("/{first}");
            for c in rest {
                p.push('/');
                p.push_str(&c);
            }
            p
        })
}

/// A valid configuration, as values and as the kiln.toml that says it.
#[derive(Debug, Clone)]
struct Valid {
    name: String,
    description: String,
    cpus: u32,
    memory: u32,
    ports: Vec<PortForward>,
    ready: Ready,
    ready_timeout: u32,
    hook_timeout: u32,
    kernel: KernelChoice,
    cmdline: String,
    compression: Compression,
    disk_size: Option<Option<u32>>,
    template: bool,
    busybox: bool,
    binaries: Vec<String>,
    files: Vec<String>,
    network_none: bool,
    address: (Ipv4Addr, u8),
    env: Vec<(String, String)>,
}

fn valid() -> impl Strategy<Value = Valid> {
    let name = "[a-z0-9][a-z0-9_-]{0,62}";
    let ready = prop_oneof![
        Just(Ready::None),
        Just(Ready::Exit),
        (1..=u16::MAX).prop_map(Ready::Tcp)
    ];
    let kernel = prop_oneof![
        Just(KernelChoice::Tiny),
        Just(KernelChoice::Debian(config::DEFAULT_KERNEL_PACKAGE.into())),
        "[a-z0-9][a-z0-9.+-]{0,20}".prop_map(KernelChoice::Debian),
    ];
    let compression = prop::sample::select(vec![
        Compression::Zstd,
        Compression::Xz,
        Compression::Gzip,
        Compression::None,
    ]);
    let env = prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,10}", "[^\n\0]{0,40}", 0..4)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    let file = prop_oneof![
        visible_path(),
        (visible_path(), visible_path()).prop_map(|(a, b)| format!("{a}:{b}")),
    ];
    (
        (name, any::<String>(), 1..=64u32, 16..=65536u32),
        (
            prop::collection::vec(port_forward(), 0..4),
            ready,
            1..=3600u32,
            1..=MAX_HOOK_TIMEOUT,
        ),
        (
            kernel,
            "[ -~]{0,100}",
            compression,
            prop::option::of(prop::option::of(8..=65536u32)),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(visible_path(), 0..3),
            prop::collection::vec(file, 0..3),
        ),
        (any::<bool>(), (any::<[u8; 4]>(), 0..=32u8), env),
    )
        .prop_map(
            |(
                (name, description, cpus, memory),
                (ports, ready, ready_timeout, hook_timeout),
                (kernel, cmdline, compression, disk_size),
                (template, busybox, binaries, files),
                (network_none, (addr, prefix), env),
            )| Valid {
                name,
                description,
                cpus,
                memory,
                ports,
                ready,
                ready_timeout,
                hook_timeout,
                kernel,
                cmdline,
                compression,
                disk_size,
                template,
                busybox,
                binaries,
                files,
                network_none,
                address: (Ipv4Addr::from(addr), prefix),
                env,
            },
        )
}

impl Valid {
    fn render(&self) -> String {
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut t = String::new();
        t += &format!("name = {}\n", toml_str(&self.name));
        t += &format!("description = {}\n", toml_str(&self.description));
        t += &format!("cpus = {}\nmemory = {}\n", self.cpus, self.memory);
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        t += &format!("ports = {}\n", list(&ports));
        t += &format!("ready = {}\n", toml_str(&self.ready.as_conf()));
        t += &format!(
            "ready_timeout = {}\nhook_timeout = {}\n",
            self.ready_timeout, self.hook_timeout
        );
        let kernel = match &self.kernel {
            KernelChoice::Tiny => "tiny".to_string(),
            KernelChoice::Debian(p) => format!("debian:{p}"),
            KernelChoice::File(f) => f.get_ref().clone(),
        };
        t += &format!("kernel = {}\n", toml_str(&kernel));
        t += &format!("cmdline = {}\n", toml_str(&self.cmdline));
        t += "[image]\n";
        // Compression is an initramfs's: a disk has none.
        if self.disk_size.is_none() {
            t += &format!("compression = {}\n", toml_str(self.compression.as_str()));
        }
        if let Some(size) = self.disk_size {
            t += "format = \"disk\"\n";
            if let Some(s) = size {
                t += &format!("size_mib = {s}\n");
            }
        }
        if self.template {
            t += "[template]\nat = \"ready\"\n";
        }
        t += &format!(
            "[root]\nbusybox = {}\nbinaries = {}\nfiles = {}\n",
            self.busybox,
            list(&self.binaries),
            list(&self.files)
        );
        t += &format!(
            "[network]\nmode = {}\naddress = \"{}/{}\"\n",
            if self.network_none {
                "\"none\""
            } else {
                "\"user\""
            },
            self.address.0,
            self.address.1
        );
        t += "[env]\n";
        for (k, v) in &self.env {
            t += &format!("{} = {}\n", toml_str(k), toml_str(v));
        }
        t
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any text: parsed or refused with a message, never a panic.
    #[test]
    fn kiln_toml_parsing_never_panics(text in any::<String>()) {
        let _ = Config::parse(&text);
    }

    /// Text that looks like a kiln.toml (known keys, right and wrong values): never a panic, and
    /// a refusal's span lies inside the text.
    #[test]
    fn kiln_toml_like_text_is_parsed_or_refused_with_a_span_inside_it(text in kiln_toml_like()) {
        if let Err((Some(span), message)) = Config::parse(&text) {
            prop_assert!(span.start <= text.len(), "{span:?} beyond {} bytes: {message}", text.len());
            let (line, _) = line_col(&text, span.start);
            prop_assert!(line <= text.lines().count().max(1) + 1);
        }
    }

    /// A generated valid configuration, rendered as kiln.toml, parses back into the same values.
    #[test]
    fn rendered_valid_configs_parse_back(v in valid()) {
        let text = v.render();
        let c = match Config::parse(&text) {
            Ok(c) => c,
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}\n{text}"))),
        };
        prop_assert_eq!(&c.name, &v.name);
        prop_assert_eq!(&c.description, &v.description);
        prop_assert_eq!((c.cpus, c.memory), (v.cpus, v.memory));
        prop_assert_eq!(&c.ports, &v.ports);
        prop_assert_eq!(c.ready, v.ready);
        prop_assert_eq!((c.ready_timeout, c.hook_timeout), (v.ready_timeout, v.hook_timeout));
        prop_assert_eq!(&c.kernel, &v.kernel);
        prop_assert_eq!(&c.cmdline, &v.cmdline);
        if v.disk_size.is_none() {
            prop_assert_eq!(c.image.compression, v.compression);
        }
        let format = if v.disk_size.is_some() { "disk" } else { "initramfs" };
        prop_assert_eq!(c.image.format.as_str(), format);
        prop_assert_eq!(c.image.size_mib, v.disk_size.flatten());
        prop_assert_eq!(c.template.is_some(), v.template);
        prop_assert_eq!(c.root.busybox, v.busybox);
        let binaries: Vec<String> = c.root.binaries.iter().map(|b| b.get_ref().clone()).collect();
        prop_assert_eq!(binaries, v.binaries.clone());
        let files: Vec<String> = c.root.files.iter().map(|b| b.get_ref().clone()).collect();
        prop_assert_eq!(files, v.files.clone());
        prop_assert_eq!(c.network.mode.as_str(), if v.network_none { "none" } else { "user" });
        prop_assert_eq!(c.network.address, format!("{}/{}", v.address.0, v.address.1));
        let env: Vec<(String, String)> = c.env.into_iter().collect();
        prop_assert_eq!(env, v.env.clone());
    }

    /// Every port forward's text form parses back into it.
    #[test]
    fn port_forward_display_parse_round_trip(p in port_forward()) {
        let text = p.to_string();
        prop_assert_eq!(text.parse::<PortForward>(), Ok(p.clone()));
        // The short forms users write mean the same.
        if p.host_addr == Ipv4Addr::LOCALHOST && p.protocol == Protocol::Tcp {
            let short = format!("{}:{}", p.host_port, p.guest_port);
            prop_assert_eq!(short.parse::<PortForward>(), Ok(p));
        }
    }

    /// Any text: a forward or a message naming the text; and a forward's text form is stable.
    #[test]
    fn port_forward_parsing_never_panics(s in prop_oneof!["[0-9a-z.:/ -]{0,24}", any::<String>()]) {
        match s.parse::<PortForward>() {
            Ok(p) => {
                let again: PortForward = p.to_string().parse().map_err(TestCaseError::fail)?;
                prop_assert_eq!(again, p);
            }
            Err(m) => prop_assert!(m.contains("port forward"), "{m}"),
        }
    }

    /// `ready` values round-trip through their kiln.toml form; any text is parsed or refused.
    #[test]
    fn ready_round_trips(port in 1..=u16::MAX, s in any::<String>()) {
        for r in [Ready::Tcp(port), Ready::Exit, Ready::None] {
            prop_assert_eq!(r.as_conf().parse::<Ready>(), Ok(r));
        }
        let _ = s.parse::<Ready>();
    }

    /// `--kernel` overrides and guest paths: never a panic.
    #[test]
    fn kernel_overrides_and_guest_paths_never_panic(s in any::<String>(), p in "[/a-z.]{0,30}") {
        let _ = KernelChoice::parse_override(&s);
        if let Some((mount, _)) = hidden_by_mount(&p) {
            prop_assert!(GUEST_MOUNTS.iter().any(|(m, _)| *m == mount));
        }
        let _ = split_file_spec(&s);
    }
}
