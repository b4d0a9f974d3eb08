//! Parsing of `/proc/cmdline`: splitting it into words the way the kernel
//! does, and picking out the `kiln.*` overrides.
//!
//! Recognised overrides: `kiln.ip=ADDR/PREFIX`, `kiln.gw=ADDR`,
//! `kiln.dns=ADDR[,ADDR...]`, `kiln.net=none|IFACE`, `kiln.hostname=NAME`.
//! Dotted words are ignored by the kernel itself (it treats them as parameters
//! of a module called `kiln`), so they never leak into init's argv/environment.

/// Split a kernel command line into words: whitespace separates words except
/// inside double quotes. Words are returned raw (quotes kept), as modprobe and
/// the kernel's own parameter parser expect them.
pub fn words(cmdline: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut in_quote = false;
    for (i, c) in cmdline.char_indices() {
        if c == '"' {
            in_quote = !in_quote;
        }
        if c.is_whitespace() && !in_quote {
            if let Some(s) = start.take() {
                out.push(&cmdline[s..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(&cmdline[s..]);
    }
    out
}

/// `word` with double quotes removed (`a="b c"` → `a=b c`).
pub fn unquote(word: &str) -> String {
    word.chars().filter(|&c| c != '"').collect()
}

/// `kiln.*` settings found on the kernel command line (the last occurrence of
/// each wins). Values are unquoted but otherwise unvalidated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overrides {
    /// `kiln.ip=ADDR/PREFIX`.
    pub ip: Option<String>,
    /// `kiln.gw=ADDR`.
    pub gw: Option<String>,
    /// `kiln.dns=ADDR`.
    pub dns: Option<String>,
    /// `kiln.net=none` (or an interface name).
    pub net: Option<String>,
    /// `kiln.hostname=NAME`.
    pub hostname: Option<String>,
}

/// Extract the `kiln.*` overrides from the command-line words. Unknown
/// `kiln.*` keys are returned as the second element (for warnings).
pub fn overrides<'a>(words: &[&'a str]) -> (Overrides, Vec<&'a str>) {
    let mut o = Overrides::default();
    let mut unknown = Vec::new();
    for &w in words {
        let Some(rest) = w.strip_prefix("kiln.") else {
            continue;
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, unquote(v)),
            None => (rest, String::new()),
        };
        let slot = match key {
            "ip" => &mut o.ip,
            "gw" => &mut o.gw,
            "dns" => &mut o.dns,
            "net" => &mut o.net,
            "hostname" => &mut o.hostname,
            _ => {
                unknown.push(w);
                continue;
            }
        };
        *slot = Some(value);
    }
    (o, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words() {
        assert_eq!(
            words("console=ttyS0  panic=-1\tquiet\n"),
            vec!["console=ttyS0", "panic=-1", "quiet"]
        );
        assert_eq!(words(""), Vec::<&str>::new());
        assert_eq!(words("   "), Vec::<&str>::new());
    }

    #[test]
    fn quotes_keep_spaces() {
        assert_eq!(
            words(r#"a="b c" d kiln.hostname="x y""#),
            vec![r#"a="b c""#, "d", r#"kiln.hostname="x y""#]
        );
        assert_eq!(unquote(r#"a="b c""#), "a=b c");
    }

    #[test]
    fn extracts_overrides() {
        let w = words(
            "console=ttyS0 kiln.ip=10.0.3.15/24 kiln.gw=10.0.3.2 kiln.dns=1.1.1.1 \
             kiln.hostname=web kiln.net=none kiln.bogus=1 kiln.ip=10.0.4.15/16",
        );
        let (o, unknown) = overrides(&w);
        assert_eq!(o.ip.as_deref(), Some("10.0.4.15/16"));
        assert_eq!(o.gw.as_deref(), Some("10.0.3.2"));
        assert_eq!(o.dns.as_deref(), Some("1.1.1.1"));
        assert_eq!(o.hostname.as_deref(), Some("web"));
        assert_eq!(o.net.as_deref(), Some("none"));
        assert_eq!(unknown, vec!["kiln.bogus=1"]);
    }

    #[test]
    fn no_overrides() {
        let (o, unknown) = overrides(&words("console=ttyS0 kilnx.ip=1 ip=dhcp"));
        assert_eq!(o, Overrides::default());
        assert!(unknown.is_empty());
    }
}
