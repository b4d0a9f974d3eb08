//! Kconfig fragments: parsing, merging into a `.config`, and checking that
//! `make olddefconfig` kept every requested value.
//!
//! Everything here is pure (text in, text or errors out) except
//! [`fragment_options`] and [`kconfig_symbols`], which read files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use super::TinyError;

/// The value a fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// `# CONFIG_X is not set` or `CONFIG_X=n`.
    No,
    /// `CONFIG_X=y`.
    Yes,
    /// `CONFIG_X=m` (accepted as `y` when the kernel has no module support).
    Module,
    /// `CONFIG_X=0x200000`, `CONFIG_X=64`, `CONFIG_X="text"` (kept verbatim, quotes included).
    Value(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::No => f.write_str("n"),
            OptionValue::Yes => f.write_str("y"),
            OptionValue::Module => f.write_str("m"),
            OptionValue::Value(v) => f.write_str(v),
        }
    }
}

/// One option requested by a fragment, with where it was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentOption {
    /// The symbol without the `CONFIG_` prefix, e.g. `VIRTIO_MMIO`.
    pub name: String,
    /// The requested value.
    pub value: OptionValue,
    /// The fragment's name as shown to users (a path, or `kiln-base.config (built in)`).
    pub fragment: String,
    /// 1-based line number in the fragment.
    pub line: usize,
}

impl FragmentOption {
    /// The `.config` line that requests this value.
    pub fn config_line(&self) -> String {
        match &self.value {
            OptionValue::No => format!("# CONFIG_{} is not set", self.name),
            v => format!("CONFIG_{}={v}", self.name),
        }
    }
}

fn valid_symbol(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Parse a `.config` line: `Some((symbol, value))` for an assignment or a
/// `# CONFIG_X is not set` line, `None` for anything else.
fn parse_config_line(line: &str) -> Option<(&str, OptionValue)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix('#') {
        let name = rest
            .trim()
            .strip_prefix("CONFIG_")?
            .strip_suffix(" is not set")?;
        return valid_symbol(name).then_some((name, OptionValue::No));
    }
    let (lhs, rhs) = line.strip_prefix("CONFIG_")?.split_once('=')?;
    if !valid_symbol(lhs) {
        return None;
    }
    let value = match rhs.trim() {
        "y" => OptionValue::Yes,
        "m" => OptionValue::Module,
        "n" => OptionValue::No,
        v => OptionValue::Value(v.to_string()),
    };
    Some((lhs, value))
}

/// Parse fragment text. `name` is used in the returned options and errors.
///
/// Accepted lines: blank lines, `# comments`, `CONFIG_X=y|m|n|VALUE`, and
/// `# CONFIG_X is not set`. Anything else is [`TinyError::BadFragment`].
pub fn parse_fragment(name: &str, text: &str) -> Result<Vec<FragmentOption>, TinyError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        match parse_config_line(line) {
            Some((sym, value)) => {
                if let OptionValue::Value(v) = &value {
                    if v.is_empty() {
                        return Err(bad(name, idx, raw, "the value is empty"));
                    }
                    if v.starts_with('"') && (v.len() < 2 || !v.ends_with('"')) {
                        return Err(bad(name, idx, raw, "the string value is not closed"));
                    }
                }
                out.push(FragmentOption {
                    name: sym.to_string(),
                    value,
                    fragment: name.to_string(),
                    line: idx + 1,
                });
            }
            None if line.starts_with('#') => {}
            None => {
                return Err(bad(
                    name,
                    idx,
                    raw,
                    "expected CONFIG_NAME=value, `# CONFIG_NAME is not set`, a # comment or a blank line",
                ))
            }
        }
    }
    Ok(out)
}

fn bad(name: &str, idx: usize, raw: &str, reason: &str) -> TinyError {
    TinyError::BadFragment {
        fragment: name.to_string(),
        line: idx + 1,
        text: raw.trim().to_string(),
        reason: reason.to_string(),
    }
}

/// Read and parse a fragment file.
pub fn fragment_options(path: &Path) -> Result<Vec<FragmentOption>, TinyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TinyError::Io {
        action: "read the kernel config fragment",
        path: path.to_path_buf(),
        error: source,
    })?;
    parse_fragment(&path.display().to_string(), &text)
}

/// The effective request per symbol: a later fragment (or a later line)
/// overrides an earlier one, as Kconfig itself does when it reads them.
pub fn effective_options(requested: &[FragmentOption]) -> Vec<&FragmentOption> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, o) in requested.iter().enumerate() {
        last.insert(o.name.as_str(), i);
    }
    requested
        .iter()
        .enumerate()
        .filter(|(i, o)| last.get(o.name.as_str()) == Some(i))
        .map(|(_, o)| o)
        .collect()
}

/// Merge requested options into `.config` text: each requested symbol's
/// existing line is dropped and the requested line appended (last request wins).
pub fn merge_config(config: &str, requested: &[FragmentOption]) -> String {
    let effective = effective_options(requested);
    let names: HashSet<&str> = effective.iter().map(|o| o.name.as_str()).collect();
    let mut out = String::with_capacity(config.len() + effective.len() * 40);
    for line in config.lines() {
        if let Some((sym, _)) = parse_config_line(line) {
            if names.contains(sym) {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\n# Kiln fragments\n");
    for o in effective {
        out.push_str(&o.config_line());
        out.push('\n');
    }
    out
}

/// Values in a final `.config` (symbols without the `CONFIG_` prefix; `n`
/// for `# ... is not set`).
pub fn parse_dot_config(config: &str) -> BTreeMap<String, OptionValue> {
    config
        .lines()
        .filter_map(parse_config_line)
        .map(|(s, v)| (s.to_string(), v))
        .collect()
}

fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim().trim_matches('"');
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i128::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn satisfied(want: &OptionValue, got: &OptionValue, modules: bool) -> bool {
    match (want, got) {
        (OptionValue::No, OptionValue::No) => true,
        (OptionValue::Yes, OptionValue::Yes) => true,
        (OptionValue::Module, OptionValue::Module) => true,
        // With MODULES off Kconfig builds an `m` request in: that is what was meant.
        (OptionValue::Module, OptionValue::Yes) => !modules,
        (OptionValue::Value(w), OptionValue::Value(g)) => {
            w == g
                || w.trim_matches('"') == g.trim_matches('"')
                || matches!((parse_int(w), parse_int(g)), (Some(a), Some(b)) if a == b)
        }
        _ => false,
    }
}

/// A requested option that `make olddefconfig` did not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What was asked for, and where.
    pub requested: FragmentOption,
    /// What the final `.config` has (`n` when absent).
    pub actual: OptionValue,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.requested;
        write!(
            f,
            "{} ({}:{}) ended up as {}",
            r.config_line(),
            r.fragment,
            r.line,
            match &self.actual {
                OptionValue::No => format!("`# CONFIG_{} is not set`", r.name),
                v => format!("`CONFIG_{}={v}`", r.name),
            }
        )
    }
}

/// Refuse options that no Kconfig file defines (checked before configuring).
pub fn check_known(requested: &[FragmentOption], known: &HashSet<String>) -> Result<(), TinyError> {
    match requested.iter().find(|o| !known.contains(&o.name)) {
        Some(o) => Err(TinyError::UnknownOption {
            option: format!("CONFIG_{}", o.name),
            fragment: o.fragment.clone(),
            line: o.line,
        }),
        None => Ok(()),
    }
}

/// Check a final `.config` against the fragments' requests.
///
/// An option no Kconfig file defines (`known` holds every symbol of the
/// source tree) is [`TinyError::UnknownOption`]; options whose final value
/// differs from the (last) request are collected into
/// [`TinyError::NotApplied`]. `=m` is satisfied by `=y` when the kernel has
/// no module support; integers compare numerically (`0x200000` = `2097152`).
pub fn check_config(
    requested: &[FragmentOption],
    config: &str,
    known: &HashSet<String>,
) -> Result<(), TinyError> {
    check_known(requested, known)?;
    let final_values = parse_dot_config(config);
    let modules = final_values.get("MODULES") == Some(&OptionValue::Yes);
    let mismatches: Vec<Mismatch> = effective_options(requested)
        .into_iter()
        .filter_map(|o| {
            let got = final_values.get(&o.name).unwrap_or(&OptionValue::No);
            (!satisfied(&o.value, got, modules)).then(|| Mismatch {
                requested: o.clone(),
                actual: got.clone(),
            })
        })
        .collect();
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(TinyError::NotApplied { mismatches })
    }
}

/// Symbols defined by `config X` / `menuconfig X` in a Kconfig file's text.
pub fn kconfig_symbols_in(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("config" | "menuconfig"), Some(sym)) if valid_symbol(sym) => Some(sym),
            _ => None,
        }
    })
}

/// Every Kconfig symbol defined anywhere in a kernel source tree (all
/// architectures): the files named `Kconfig*`.
pub fn kconfig_symbols(tree: &Path) -> Result<HashSet<String>, TinyError> {
    let mut out = HashSet::new();
    let walk = walkdir::WalkDir::new(tree)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git");
    for entry in walk {
        let entry = entry.map_err(|e| TinyError::Io {
            action: "scan the Kconfig files of",
            path: tree.to_path_buf(),
            error: e.into(),
        })?;
        if !entry.file_type().is_file()
            || !entry.file_name().to_string_lossy().starts_with("Kconfig")
        {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|source| TinyError::Io {
            action: "read",
            path: entry.path().to_path_buf(),
            error: source,
        })?;
        out.extend(kconfig_symbols_in(&String::from_utf8_lossy(&bytes)).map(String::from));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_all_line_kinds() {
        let text = "# comment\n\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=0x200000\n  CONFIG_E=\"-kiln\"  \nCONFIG_F=n\n#CONFIG_G is not set\n";
        let opts = parse_fragment("f.config", text).expect("parse");
        let got: Vec<(&str, &OptionValue, usize)> = opts
            .iter()
            .map(|o| (o.name.as_str(), &o.value, o.line))
            .collect();
        assert_eq!(
            got,
            [
                ("A", &OptionValue::Yes, 3),
                ("B", &OptionValue::Module, 4),
                ("C", &OptionValue::No, 5),
                ("D", &OptionValue::Value("0x200000".into()), 6),
                ("E", &OptionValue::Value("\"-kiln\"".into()), 7),
                ("F", &OptionValue::No, 8),
                ("G", &OptionValue::No, 9),
            ]
        );
        assert!(opts.iter().all(|o| o.fragment == "f.config"));
        assert_eq!(opts[2].config_line(), "# CONFIG_C is not set");
        assert_eq!(opts[3].config_line(), "CONFIG_D=0x200000");
    }

    #[test]
    fn refuses_malformed_lines_with_file_and_line() {
        for (text, line) in [
            ("CONFIG_A=y\nVIRTIO=y\n", 2),
            ("CONFIG_lower=y\n", 1),
            ("\n\nCONFIG_A=\n", 3),
            ("CONFIG_A=\"open\n", 1),
            ("CONFIG_A y\n", 1),
        ] {
            match parse_fragment("x.config", text) {
                Err(TinyError::BadFragment {
                    fragment, line: l, ..
                }) => {
                    assert_eq!((fragment.as_str(), l), ("x.config", line), "{text:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_shipped_fragments_parse() {
        let base = parse_fragment("kiln-base.config", super::super::BASE_FRAGMENT).expect("base");
        assert!(base.len() > 40);
        for want in [
            "PVH",
            "VIRTIO_MMIO_CMDLINE_DEVICES",
            "FANOTIFY",
            "PHYSICAL_START",
            "9P_FS",
            "MODULES",
        ] {
            assert!(base.iter().any(|o| o.name == want), "{want}");
        }
        let modules = base.iter().find(|o| o.name == "MODULES").expect("MODULES");
        assert_eq!(modules.value, OptionValue::No);
        let ufs = parse_fragment("ufs.config", super::super::UFS_FRAGMENT).expect("ufs");
        let names: Vec<&str> = ufs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["MISC_FILESYSTEMS", "UFS_FS"]);
    }

    #[test]
    fn unknown_option_is_refused_with_name_file_and_line() {
        let opts = parse_fragment("extra.config", "CONFIG_A=y\n\n# x\nCONFIG_NOPE=y\n").expect("p");
        let err = check_config(&opts, "CONFIG_A=y\n", &known(&["A"])).expect_err("unknown");
        match &err {
            TinyError::UnknownOption {
                option,
                fragment,
                line,
            } => {
                assert_eq!(
                    (option.as_str(), fragment.as_str(), *line),
                    ("CONFIG_NOPE", "extra.config", 4)
                );
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("CONFIG_NOPE") && msg.contains("extra.config:4"),
            "{msg}"
        );
    }

    #[test]
    fn check_accepts_applied_values() {
        let opts = parse_fragment(
            "f",
            "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=0x200000\nCONFIG_E=\"-kiln\"\n# CONFIG_F is not set\nCONFIG_G=64\n",
        )
        .expect("p");
        // B built in because MODULES is off; F absent from .config counts as n;
        // G given in hex by Kconfig still matches.
        let config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=0x200000\nCONFIG_E=\"-kiln\"\nCONFIG_G=0x40\n# CONFIG_MODULES is not set\n";
        check_config(&opts, config, &known(&["A", "B", "C", "D", "E", "F", "G"])).expect("ok");
    }

    #[test]
    fn check_reports_every_dropped_option() {
        let opts =
            parse_fragment("f", "CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=y\nCONFIG_D=4\n").expect("p");
        let config =
            "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_MODULES=y\nCONFIG_C=y\nCONFIG_D=5\n";
        let err = check_config(&opts, config, &known(&["A", "B", "C", "D"])).expect_err("bad");
        let TinyError::NotApplied { mismatches } = &err else {
            panic!("{err:?}")
        };
        let names: Vec<&str> = mismatches
            .iter()
            .map(|m| m.requested.name.as_str())
            .collect();
        assert_eq!(names, ["A", "B", "D"]);
        let msg = err.to_string();
        assert!(
            msg.contains("CONFIG_A=y (f:1) ended up as `# CONFIG_A is not set`"),
            "{msg}"
        );
        assert!(
            msg.contains("CONFIG_D=4 (f:4) ended up as `CONFIG_D=5`"),
            "{msg}"
        );
    }

    #[test]
    fn later_fragments_override_earlier_ones() {
        let mut opts = parse_fragment("base", "CONFIG_PCI=y\nCONFIG_A=y\n").expect("p");
        opts.extend(parse_fragment("user", "# CONFIG_PCI is not set\n").expect("p"));
        let merged = merge_config("CONFIG_PCI=y\nCONFIG_X=y\n# CONFIG_A is not set\n", &opts);
        assert!(merged.contains("CONFIG_X=y\n"));
        assert!(merged.contains("# CONFIG_PCI is not set\n"));
        assert!(merged.contains("CONFIG_A=y\n"));
        assert!(!merged.contains("CONFIG_PCI=y"));
        assert!(!merged.contains("# CONFIG_A is not set"));
        check_config(&opts, "CONFIG_A=y\n", &known(&["PCI", "A"])).expect("override wins");
    }

    #[test]
    fn finds_kconfig_symbols() {
        let text = "menu \"x\"\nconfig FOO\n\tbool \"foo\"\nmenuconfig BAR_2\n  config   BAZ\n\thelp\n\t  config options here\nendmenu\n";
        let syms: Vec<&str> = kconfig_symbols_in(text).collect();
        assert_eq!(syms, ["FOO", "BAR_2", "BAZ"]);
    }
}
