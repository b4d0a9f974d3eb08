//! Property tests of the web API's create request: any body is parsed or refused with a stable
//! code (never a panic), a generated valid body parses into the settings it names, and the
//! checks after parsing refuse with their documented codes.

use kiln_serve::api::{validate, CreateRequest};
use kiln_serve::catalog::Catalog;
use proptest::prelude::*;
use serde_json::{json, Value};

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

/// The codes a create request may be refused with before anything is started (docs/web.md).
const CODES: &[&str] = &[
    "bad_body",
    "invalid_request",
    "recipe_not_found",
    "image_not_found",
];

/// Keys of the create request, and some that are not.
const KEYS: &[&str] = &[
    "recipe",
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
    "readonly_root",
    "no_lock",
    "restart",
    "ready_timeout",
    "accel",
    "from",
    "cold",
    "memroy",
    "",
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[a-z0-9:/.-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A request body: arbitrary bytes, arbitrary JSON, or an object of the request's keys.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec((prop::sample::select(KEYS), any_json()), 0..6).prop_map(|kv| {
            let m: serde_json::Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            Value::Object(m).to_string().into_bytes()
        }),
    ]
}

fn catalog() -> Catalog {
    Catalog {
        recipe_roots: vec![
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes")
        ],
        image_roots: vec![],
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any body: a request or a refusal with a documented code, never a panic; and a parsed
    /// request is checked without a panic too.
    #[test]
    fn any_body_is_parsed_or_refused(b in body()) {
        match CreateRequest::parse(&b) {
            Err(e) => prop_assert!(CODES.contains(&e.code), "{} {}", e.code, e.message),
            Ok(r) => {
                if let Err(e) = validate(&r, &catalog()) {
                    prop_assert!(CODES.contains(&e.code), "{} {}", e.code, e.message);
                }
            }
        }
    }

    /// A body of valid settings parses into exactly those settings, and a known recipe passes.
    #[test]
    fn valid_bodies_parse_into_their_settings(
        name in prop::option::of("[a-z0-9][a-z0-9_-]{0,20}"),
        cpus in prop::option::of(1..=64u32),
        memory in prop::option::of(16..=65536u32),
        ports in prop::collection::vec((1..=u16::MAX, 1..=u16::MAX), 0..3),
        restart in prop::option::of(prop::sample::select(vec!["no", "on-failure", "always"])),
        ready_timeout in prop::option::of(1..=3600u64),
        vports in prop::option::of(0u32..=16),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("recipe".into(), json!("httpd"));
        if let Some(n) = &name { body.insert("name".into(), json!(n)); }
        if let Some(c) = cpus { body.insert("cpus".into(), json!(c)); }
        if let Some(m) = memory { body.insert("memory".into(), json!(m)); }
        let ports: Vec<String> = ports.iter().map(|(h, g)| format!("{h}:{g}")).collect();
        body.insert("ports".into(), json!(ports));
        if let Some(r) = restart { body.insert("restart".into(), json!(r)); }
        if let Some(t) = ready_timeout { body.insert("ready_timeout".into(), json!(t)); }
        if let Some(v) = vports { body.insert("vports".into(), json!(v)); }
        let text = Value::Object(body).to_string();
        let r = CreateRequest::parse(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{}: {}", e.code, e.message)))?;
        prop_assert_eq!(r.recipe.as_deref(), Some("httpd"));
        prop_assert_eq!(&r.spec.name, &name);
        prop_assert_eq!((r.spec.cpus, r.spec.memory, r.spec.ready_timeout), (cpus, memory, ready_timeout));
        let got: Vec<String> = r.spec.ports.iter().map(|p| format!("{}:{}", p.host_port, p.guest_port)).collect();
        prop_assert_eq!(got, ports);
        prop_assert_eq!(r.spec.restart.map(|x| x.to_string()), restart.map(str::to_string));
        let spec = validate(&r, &catalog()).map_err(|e| TestCaseError::fail(format!("{}: {}", e.code, e.message)))?;
        prop_assert_eq!(spec.name, Some(name.unwrap_or_else(|| "httpd".into())));
        prop_assert!(spec.image.is_some_and(|i| i.ends_with("recipes/httpd")));
    }
}
