//! Unit tests of the applet list, the configuration rewrite and its check.

use super::*;

fn on(list: &[&str]) -> Vec<(String, String)> {
    list.iter()
        .map(|s| (s.to_string(), s.to_lowercase()))
        .collect()
}

#[test]
fn applet_names_map_to_their_symbols() {
    assert_eq!(symbols("httpd").expect("ok"), ["HTTPD"]);
    assert_eq!(symbols("run-parts").expect("ok"), ["RUN_PARTS"]);
    assert_eq!(symbols("sh").expect("ok"), ["SH_IS_ASH", "ASH"]);
    assert_eq!(symbols("[").expect("ok"), ["TEST", "TEST1"]);
    assert_eq!(
        symbols("CONFIG_FEATURE_HTTPD_CGI").expect("ok"),
        ["FEATURE_HTTPD_CGI"]
    );
    for bad in [
        "",
        "Httpd",
        "a b",
        "../x",
        "CONFIG_",
        "CONFIG_lower",
        "-x",
        "x;y",
    ] {
        assert!(
            matches!(symbols(bad), Err(UserlandError::BadName(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_core_is_always_there_and_extras_are_added_once() {
    let core = requested(&[]).expect("core");
    assert!(core.iter().any(|(s, _)| s == "SH_IS_ASH"));
    assert!(core.iter().any(|(s, _)| s == "STATIC"));
    let with = requested(&["httpd".into(), "cat".into()]).expect("extras");
    assert_eq!(with.len(), core.len() + 1, "cat is in the core already");
    assert_eq!(
        with.last(),
        Some(&("HTTPD".to_string(), "httpd".to_string()))
    );
}

#[test]
fn the_cache_key_follows_the_symbols_not_their_order() {
    let a = cache_key(&on(&["A", "B"]));
    assert_eq!(a, cache_key(&on(&["B", "A"])));
    assert_ne!(a, cache_key(&on(&["A", "B", "C"])));
}

#[test]
fn merge_turns_requested_symbols_on_once() {
    let base = "# comment\n# CONFIG_HTTPD is not set\nCONFIG_CAT=n\n# CONFIG_LS is not set\n";
    let merged = merge_config(base, &on(&["HTTPD", "CAT"]));
    assert_eq!(
        merged,
        "# comment\n# CONFIG_LS is not set\n\n# Kiln fragments\nCONFIG_HTTPD=y\nCONFIG_CAT=y\n"
    );
}

#[test]
fn the_check_tells_unknown_from_dropped() {
    let cfg = "CONFIG_HTTPD=y\n# CONFIG_FEATURE_X is not set\n";
    assert!(check_config(cfg, &on(&["HTTPD"])).is_ok());
    let e = check_config(cfg, &on(&["HTTPD", "FEATURE_X"])).expect_err("dropped");
    assert!(
        matches!(&e, UserlandError::NotApplied { symbol, .. } if symbol == "CONFIG_FEATURE_X"),
        "{e}"
    );
    let e = check_config(cfg, &on(&["NOSUCH"])).expect_err("unknown");
    assert!(
        matches!(&e, UserlandError::Unknown { name, .. } if name == "nosuch"),
        "{e}"
    );
    assert!(e.is_user_error());
}

#[test]
fn httpd_cgi_brings_basic_auth_for_its_index_page() {
    let with = requested(&["httpd".into(), "CONFIG_FEATURE_HTTPD_CGI".into()]).expect("ok");
    assert!(with.iter().any(|(s, _)| s == "FEATURE_HTTPD_BASIC_AUTH"));
    let without = requested(&["httpd".into()]).expect("ok");
    assert!(!without.iter().any(|(s, _)| s == "FEATURE_HTTPD_BASIC_AUTH"));
}
