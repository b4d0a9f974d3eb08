//! Parsing of `/proc/cmdline`: splitting it into words the way the kernel
//! does, and picking out the `kiln.*` overrides.
//!
//! Recognised overrides: `kiln.ip=ADDR/PREFIX`, `kiln.gw=ADDR`,
//! `kiln.dns=ADDR[,ADDR...]`, `kiln.net=none|IFACE`, `kiln.hostname=NAME`,
//! and the repeatable `kiln.share=TAG:PATH[:virtiofs|9p]` (mount a host
//! share), `kiln.vport=NAME` (wait for that virtio-console port and link it
//! as `/dev/virtio-ports/NAME`), `kiln.lan=MAC,ADDR/PREFIX` (configure the NIC
//! with that MAC: a Kiln net), plus `kiln.ro` (read-only root).
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
    /// `kiln.share=TAG:PATH[:FSTYPE]`, in order.
    pub shares: Vec<String>,
    /// `kiln.vport=NAME`, in order.
    pub vports: Vec<String>,
    /// `kiln.lan=MAC,ADDR/PREFIX` (a NIC on a Kiln net), in order.
    pub lans: Vec<String>,
    /// `kiln.ro`: remount the root read-only before rc starts.
    pub readonly_root: bool,
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
        match key {
            "share" => {
                o.shares.push(value);
                continue;
            }
            "vport" => {
                o.vports.push(value);
                continue;
            }
            "lan" => {
                o.lans.push(value);
                continue;
            }
            "ro" => {
                o.readonly_root = value.is_empty() || value == "1";
                continue;
            }
            _ => {}
        }
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
    fn shares_vports_and_ro() {
        let w = words(
            "kiln.share=s0:/mnt/a kiln.share=s1:/b:9p kiln.vport=data kiln.ro \
             kiln.lan=02:6b:00:00:00:01,10.88.0.5/24",
        );
        let (o, unknown) = overrides(&w);
        assert!(unknown.is_empty());
        assert_eq!(o.lans, vec!["02:6b:00:00:00:01,10.88.0.5/24"]);
        assert_eq!(o.shares, vec!["s0:/mnt/a", "s1:/b:9p"]);
        assert_eq!(o.vports, vec!["data"]);
        assert!(o.readonly_root);
        assert!(!overrides(&words("kiln.ro=0")).0.readonly_root);
    }

    #[test]
    fn no_overrides() {
        let (o, unknown) = overrides(&words("console=ttyS0 kilnx.ip=1 ip=dhcp"));
        assert_eq!(o, Overrides::default());
        assert!(unknown.is_empty());
    }
}
