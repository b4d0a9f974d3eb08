//! Dockerfiles as recipes (docs/dockerfile.md). `kiln build` and `kiln run` on a folder holding a
//! `Dockerfile` (or `Containerfile`) and no kiln.toml, or on the file itself, make a recipe from
//! it in the cache (`CACHE/dockerfile/NAME-HASH/`, made again when the file, its build context or
//! its base image change) and build that like any other:
//!
//! - `FROM` is the recipe's `from` image (pulled to read its config, pinned by digest);
//! - `COPY` and `ADD` of the build context become the recipe's `files/`;
//! - `RUN` steps, with the `ENV`/`ARG` values and `WORKDIR` of their place in the file, become
//!   one in-root hook (`postinst/50-run.chroot.sh`: inside the root, no network);
//! - `ENV`, `WORKDIR`, `USER`, `EXPOSE`, `CMD` and `ENTRYPOINT` change the image's config as
//!   Docker would, and the recipe's keys and etc/rc come from the result.
//!
//! `LABEL`, `MAINTAINER` and `VOLUME` change nothing in a VM and are skipped. What Kiln cannot do
//! as Docker does (a second `FROM`, `COPY --from`/`--chown`/`--chmod`, `ADD` of a URL or an
//! archive, `HEALTHCHECK`, `SHELL`, `ONBUILD`, `STOPSIGNAL`, `FROM scratch`, a variable without
//! a value) is refused, naming the file and line.

use crate::oci::{insecure_for, pull_options, recipe_text, sh_quote};
use crate::BuildError;
use kiln_oci::{ImageConfig, Source};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The file names looked for in a folder, in order.
pub const NAMES: [&str; 2] = ["Dockerfile", "Containerfile"];

/// The cache folder (under the cache root) of the recipes made from Dockerfiles.
pub const CACHE_DIR: &str = "dockerfile";

/// The in-root hook holding the `RUN` steps, in the made recipe.
pub const RUN_HOOK: &str = "postinst/50-run.chroot.sh";

/// One instruction, its variables expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `FROM REF`.
    From(String),
    /// `RUN`: a shell command (the exec form quoted into one).
    Run(String),
    /// `COPY`/`ADD`: sources in the build context, and the destination.
    Copy {
        /// Paths relative to the context.
        sources: Vec<String>,
        /// Where they go (relative: under the `WORKDIR` of the time).
        dest: String,
    },
    /// `ENV` (and `ARG`, whose values `RUN` sees too): `KEY=VALUE` pairs.
    Env(Vec<(String, String)>),
    /// `ARG NAME=VALUE`: seen by `RUN`, not kept in the image.
    Arg(String, String),
    /// `WORKDIR`, made absolute.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `EXPOSE`: (port, `tcp`|`udp`).
    Expose(Vec<(u16, String)>),
    /// `CMD`, as argv (the shell form as `/bin/sh -c TEXT`).
    Cmd(Vec<String>),
    /// `ENTRYPOINT`, as argv.
    Entrypoint(Vec<String>),
}

/// An instruction and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line in the file.
    pub line: usize,
    /// What it says.
    pub instruction: Instruction,
}

/// A refusal: the line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 1-based line.
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(line: usize, message: impl Into<String>) -> Refusal {
    Refusal {
        line,
        message: message.into(),
    }
}

/// The instructions of `text` (one stage, variables expanded), or the first refusal.
pub fn parse(text: &str) -> Result<Vec<Step>, Refusal> {
    let mut steps = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut from_seen = false;
    let mut workdir = "/".to_string();
    for (line, raw) in logical_lines(text) {
        let (word, rest) = match raw.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (raw.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if rest.is_empty() && !matches!(keyword.as_str(), "LABEL" | "MAINTAINER") {
            return Err(refuse(line, format!("{keyword} needs arguments")));
        }
        macro_rules! expand {
            ($s:expr) => {
                expand_vars($s, &vars).map_err(|m| refuse(line, m))
            };
        }
        let instruction = match keyword.as_str() {
            "FROM" => {
                if from_seen {
                    return Err(refuse(
                        line,
                        "a second FROM (a multi-stage build) is not supported: build that stage \
                         apart and COPY its output from the build context",
                    ));
                }
                from_seen = true;
                let words: Vec<String> = expand!(rest)?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                let mut words = words.as_slice();
                if let Some(p) = words.first().and_then(|w| w.strip_prefix("--platform=")) {
                    if p != "linux/amd64" {
                        return Err(refuse(
                            line,
                            format!("--platform={p}: only linux/amd64 images run here"),
                        ));
                    }
                    words = &words[1..];
                }
                let ok = match words {
                    [_] => true,
                    [_, as_, _] => as_.eq_ignore_ascii_case("as"),
                    _ => false,
                };
                if !ok {
                    return Err(refuse(line, "FROM takes one image, optionally `AS NAME`"));
                }
                if words[0] == "scratch" {
                    return Err(refuse(
                        line,
                        "FROM scratch: there is no image to start from; write a kiln.toml \
                         recipe instead (root.binaries and files/ give the root its files)",
                    ));
                }
                Instruction::From(words[0].clone())
            }
            "ARG" => {
                let (name, value) = match rest.split_once('=') {
                    Some((n, v)) => (n.trim().to_string(), unquote(&expand!(v.trim())?)),
                    None => {
                        return Err(refuse(
                            line,
                            format!(
                                "ARG {rest} has no default and Kiln takes no build arguments: \
                                 give it one (ARG {rest}=VALUE)"
                            ),
                        ))
                    }
                };
                check_name(&name).map_err(|m| refuse(line, m))?;
                vars.insert(name.clone(), value.clone());
                Instruction::Arg(name, value)
            }
            _ if !from_seen => {
                return Err(refuse(
                    line,
                    format!("{keyword} before FROM: only ARG may come first"),
                ))
            }
            "RUN" => {
                if rest.starts_with("--") {
                    return Err(refuse(
                        line,
                        "RUN flags (--mount, --network, …) are not supported",
                    ));
                }
                Instruction::Run(match exec_form(rest).map_err(|m| refuse(line, m))? {
                    Some(argv) => argv
                        .iter()
                        .map(|w| sh_quote(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                    None => rest.to_string(),
                })
            }
            "COPY" | "ADD" => {
                if let Some(flag) = rest.split_whitespace().find(|w| w.starts_with("--")) {
                    return Err(refuse(
                        line,
                        format!(
                            "{keyword} {flag}: not supported (files of a recipe are root's, and \
                             there is one stage)"
                        ),
                    ));
                }
                let words = match exec_form(rest).map_err(|m| refuse(line, m))? {
                    Some(w) => w,
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                let words = words
                    .iter()
                    .map(|w| expand!(w))
                    .collect::<Result<Vec<_>, _>>()?;
                let Some((dest, sources)) = words.split_last() else {
                    return Err(refuse(
                        line,
                        format!("{keyword} needs a source and a destination"),
                    ));
                };
                if sources.is_empty() {
                    return Err(refuse(
                        line,
                        format!("{keyword} needs a source and a destination"),
                    ));
                }
                for s in sources {
                    if keyword == "ADD" && s.contains("://") {
                        return Err(refuse(
                            line,
                            format!("ADD {s}: nothing is downloaded at build time; fetch it into the build context and COPY it"),
                        ));
                    }
                    let archive = [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst"];
                    if keyword == "ADD" && archive.iter().any(|x| s.ends_with(x)) {
                        return Err(refuse(
                            line,
                            format!("ADD {s}: Docker would unpack the archive; unpack it into the build context and COPY the folder"),
                        ));
                    }
                    if s.contains(['*', '?', '[']) {
                        return Err(refuse(
                            line,
                            format!("{keyword} {s}: wildcards are not supported; name the files or their folder"),
                        ));
                    }
                    context_path(s).map_err(|m| refuse(line, m))?;
                }
                Instruction::Copy {
                    sources: sources.to_vec(),
                    dest: absolute(&workdir, dest),
                }
            }
            "ENV" => {
                let pairs = env_pairs(rest, &vars).map_err(|m| refuse(line, m))?;
                for (k, v) in &pairs {
                    check_name(k).map_err(|m| refuse(line, m))?;
                    vars.insert(k.clone(), v.clone());
                }
                Instruction::Env(pairs)
            }
            "WORKDIR" => {
                workdir = absolute(&workdir, &expand!(rest)?);
                Instruction::Workdir(workdir.clone())
            }
            "USER" => Instruction::User(expand!(rest)?),
            "EXPOSE" => {
                let mut ports = Vec::new();
                for w in expand!(rest)?.split_whitespace() {
                    let (n, proto) = w.split_once('/').unwrap_or((w, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    match (n.parse::<u16>(), proto.as_str()) {
                        (Ok(p), "tcp" | "udp") if p > 0 => ports.push((p, proto)),
                        _ => {
                            return Err(refuse(
                                line,
                                format!("EXPOSE {w}: expected PORT or PORT/tcp|udp"),
                            ))
                        }
                    }
                }
                Instruction::Expose(ports)
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = match exec_form(rest).map_err(|m| refuse(line, m))? {
                    Some(a) => a,
                    None => vec!["/bin/sh".into(), "-c".into(), rest.to_string()],
                };
                if keyword == "CMD" {
                    Instruction::Cmd(argv)
                } else {
                    Instruction::Entrypoint(argv)
                }
            }
            "LABEL" | "MAINTAINER" | "VOLUME" => continue,
            "HEALTHCHECK" => return Err(refuse(
                line,
                "HEALTHCHECK is not supported: Kiln checks readiness with `ready` (a kiln.toml \
                     recipe: ready = \"tcp:PORT\" or \"http:PORT/PATH\")",
            )),
            other => {
                return Err(refuse(
                    line,
                    format!(
                        "{other} is not supported (Kiln reads FROM, ARG, RUN, COPY, ADD, ENV, \
                         WORKDIR, USER, EXPOSE, CMD, ENTRYPOINT; LABEL, MAINTAINER and VOLUME are \
                         skipped)"
                    ),
                ))
            }
        };
        steps.push(Step { line, instruction });
    }
    if !from_seen {
        return Err(refuse(1, "no FROM: a Dockerfile starts from an image"));
    }
    Ok(steps)
}

/// The instructions' lines: comments and blank lines dropped, `\` continuations joined, each
/// with the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_none()) {
            continue;
        }
        let (body, more) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let entry = cur.get_or_insert_with(|| (i + 1, String::new()));
        if !entry.1.is_empty() && !body.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body.trim());
        if !more {
            if let Some(done) = cur.take() {
                if !done.1.is_empty() {
                    out.push(done);
                }
            }
        }
    }
    if let Some(done) = cur.filter(|c| !c.1.is_empty()) {
        out.push(done);
    }
    out
}

/// The exec (JSON array) form, when `rest` is one.
fn exec_form(rest: &str) -> Result<Option<Vec<String>>, String> {
    if !rest.starts_with('[') {
        return Ok(None);
    }
    serde_json::from_str::<Vec<String>>(rest)
        .map(Some)
        .map_err(|e| format!("`{rest}` is not a JSON array of strings ({e})"))
}

/// `$NAME` and `${NAME}` replaced by their values; `\$` is a dollar.
fn expand_vars(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        out.push_str(&read_var(&mut chars, vars)?);
    }
    Ok(out)
}

/// The value of the variable named after a `$` (the `$` already read): `NAME` or `{NAME}`; a
/// `$` followed by neither stays a `$`.
fn read_var(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    {
        let name: String = if chars.peek() == Some(&'{') {
            chars.next();
            let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
            if !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{inner}}}`: only plain ${{NAME}} is expanded (no :- or other modifiers)"
                ));
            }
            inner
        } else {
            let mut n = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    n.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if n.is_empty() {
                return Ok("$".into());
            }
            n
        };
        vars.get(&name).cloned().ok_or_else(|| {
            format!(
                "${name} has no value here (set it with ARG {name}=VALUE or ENV before this line)"
            )
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a variable name"))
    }
}

/// A value with one pair of surrounding quotes taken off.
fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// `ENV K=V K2="a b"` or the old `ENV K some value`, variables expanded (not in `'…'`).
fn env_pairs(rest: &str, vars: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("ENV {rest}: expected KEY=VALUE"))?;
        return Ok(vec![(k.to_string(), expand_vars(v.trim(), vars)?)]);
    }
    let mut pairs = Vec::new();
    for word in shell_words(rest, vars)? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("ENV `{word}`: expected KEY=VALUE"))?;
        pairs.push((k.to_string(), v.to_string()));
    }
    Ok(pairs)
}

/// Words split at unquoted whitespace, quotes removed (`"…"` with `\` escapes, `'…'` literal),
/// `$NAME` and `${NAME}` expanded outside `'…'`.
fn shell_words(s: &str, vars: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        Some('$') => cur.push_str(&read_var(&mut chars, vars)?),
                        Some(x) => cur.push(x),
                        None => return Err(format!("`{s}`: a \" is not closed")),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("`{s}`: a ' is not closed")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '$' => {
                in_word = true;
                cur.push_str(&read_var(&mut chars, vars)?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// `p` joined to `dir` when relative, normalised (no `.`/`..`).
fn absolute(dir: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        PathBuf::from(p)
    } else {
        Path::new(dir).join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    let mut s = out.display().to_string();
    if p.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// A source's path inside the build context, refusing what leaves it.
fn context_path(s: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("`{s}` leaves the build context"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{s}`: sources are paths in the build context (the Dockerfile's folder)"
                ))
            }
        }
    }
    Ok(out)
}

/// The Dockerfile `target` stands for: the file itself, or the one in the folder `target` when
/// that folder has no kiln.toml.
pub fn find(target: &Path) -> Option<PathBuf> {
    if target.is_file() {
        let name = target.file_name()?.to_string_lossy().into_owned();
        let named = NAMES
            .iter()
            .any(|n| name == *n || name.ends_with(&format!(".{n}")));
        return named.then(|| target.to_path_buf());
    }
    if !target.is_dir() || target.join("kiln.toml").exists() {
        return None;
    }
    NAMES.iter().map(|n| target.join(n)).find(|p| p.is_file())
}

/// The image config after the Dockerfile's changes to `base`'s.
pub fn apply(base: &ImageConfig, steps: &[Step]) -> ImageConfig {
    let mut c = base.clone();
    let mut cmd_set = false;
    for s in steps {
        match &s.instruction {
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    c.env
                        .retain(|e| e.split_once('=').map(|x| x.0) != Some(k.as_str()));
                    c.env.push(format!("{k}={v}"));
                }
            }
            Instruction::Workdir(d) => c.working_dir = Some(d.clone()),
            Instruction::User(u) => c.user = Some(u.clone()),
            Instruction::Expose(ports) => {
                for p in ports {
                    if !c.exposed_ports.contains(p) {
                        c.exposed_ports.push(p.clone());
                    }
                }
                c.exposed_ports.sort();
            }
            Instruction::Cmd(argv) => {
                c.cmd = argv.clone();
                cmd_set = true;
            }
            Instruction::Entrypoint(argv) => {
                c.entrypoint = argv.clone();
                // As Docker: a new ENTRYPOINT drops the base image's CMD.
                if !cmd_set {
                    c.cmd.clear();
                }
            }
            _ => {}
        }
    }
    c
}

/// The in-root hook for the `RUN` steps (and the folders `WORKDIR` makes), or `None` when the
/// file has neither.
pub fn run_script(steps: &[Step], file_name: &str) -> Option<String> {
    if !steps
        .iter()
        .any(|s| matches!(s.instruction, Instruction::Run(_) | Instruction::Workdir(_)))
    {
        return None;
    }
    let mut out = format!(
        "# made by kiln from {file_name}: its RUN steps in order, inside the root (no network)\n"
    );
    let mut dir = "/".to_string();
    for s in steps {
        match &s.instruction {
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    out.push_str(&format!("export {k}={}\n", sh_quote(v)));
                }
            }
            Instruction::Arg(k, v) => out.push_str(&format!("export {k}={}\n", sh_quote(v))),
            Instruction::Workdir(d) => {
                out.push_str(&format!("mkdir -p {}\n", sh_quote(d)));
                dir = d.clone();
            }
            Instruction::Run(cmd) => {
                out.push_str(&format!(
                    "# {file_name}:{}\n(cd {} && /bin/sh -c {}) || {{ echo \"kiln: {file_name}:{}: RUN failed ($?)\" >&2; exit 1; }}\n",
                    s.line,
                    sh_quote(&dir),
                    sh_quote(cmd),
                    s.line
                ));
            }
            _ => {}
        }
    }
    Some(out)
}

/// The build context's `.dockerignore`: patterns (`*`, `?`, `[…]`, `**`) of paths relative to
/// the context that COPY leaves out, `!PATTERN` taking one back; the last pattern that matches
/// a path or one of its folders decides.
#[derive(Debug, Default)]
pub struct Ignore(Vec<(bool, kiln_rootfs::index::Glob)>);

impl Ignore {
    /// The patterns of `context/.dockerignore` (none when there is no such file); a bad pattern
    /// is refused with its line.
    pub fn read(context: &Path) -> Result<Ignore, Refusal> {
        let Ok(text) = std::fs::read_to_string(context.join(".dockerignore")) else {
            return Ok(Ignore::default());
        };
        let mut out = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat.trim_start_matches('/').trim_end_matches('/');
            let pat = if pat.is_empty() || pat == "." {
                "**"
            } else {
                pat
            };
            let g = kiln_rootfs::index::Glob::new(pat).map_err(|e| {
                refuse(
                    i + 1,
                    format!(".dockerignore: `{line}` is not a pattern ({})", e.msg),
                )
            })?;
            out.push((keep, g));
        }
        Ok(Ignore(out))
    }

    /// Whether `rel` (relative to the context) is left out.
    pub fn ignores(&self, rel: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut out = false;
        for (keep, g) in &self.0 {
            if rel
                .ancestors()
                .any(|a| !a.as_os_str().is_empty() && g.matches_path_with(a, opts))
            {
                out = !keep;
            }
        }
        out
    }
}

/// Copy the context's `sources` to `dest` under `files` (the recipe's overlay), as Docker's
/// COPY: a folder's contents go into `dest`; several sources, or a `dest` ending in `/`, go
/// into that folder. What `ignore` names is left out.
fn copy_into(
    context: &Path,
    sources: &[String],
    dest: &str,
    files: &Path,
    ignore: &Ignore,
) -> Result<(), std::io::Error> {
    let into_dir = dest.ends_with('/') || sources.len() > 1;
    let dest_rel = dest.trim_start_matches('/');
    for s in sources {
        let rel = context_path(s).map_err(std::io::Error::other)?;
        let src = context.join(&rel);
        let meta = std::fs::symlink_metadata(&src)?;
        let target = if meta.is_dir() || !into_dir {
            files.join(dest_rel)
        } else {
            files
                .join(dest_rel)
                .join(rel.file_name().unwrap_or(rel.as_os_str()))
        };
        copy_tree(&src, &target, &rel, ignore)?;
    }
    Ok(())
}

/// Copy a file, symlink or folder (recursively) to `to`, modes kept; `rel` is `from` relative
/// to the context, for `ignore`.
fn copy_tree(from: &Path, to: &Path, rel: &Path, ignore: &Ignore) -> Result<(), std::io::Error> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        // An ignored folder is still walked: `!PATTERN` may take back a file inside it (its
        // folders are then made as they are needed).
        if !ignore.ignores(rel) {
            std::fs::create_dir_all(to)?;
            std::fs::set_permissions(to, meta.permissions())?;
        }
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let name = e.file_name();
            copy_tree(&e.path(), &to.join(&name), &rel.join(&name), ignore)?;
        }
        return Ok(());
    }
    if ignore.ignores(rel) {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// The recipe `target` stands for when it names a Dockerfile ([`find`]): made in the cache by
/// [`recipe_for`]; `None` when it does not.
pub fn recipe_of(target: &Path, cache_root: &Path) -> Result<Option<PathBuf>, BuildError> {
    match find(target) {
        Some(file) => recipe_for(&file, cache_root).map(Some),
        None => Ok(None),
    }
}

/// A recipe folder made from the Dockerfile `file` (its base image pulled for its config), in
/// the cache; made again only when the file, its build context or the image change.
pub fn recipe_for(file: &Path, cache_root: &Path) -> Result<PathBuf, BuildError> {
    let text = std::fs::read_to_string(file).map_err(crate::io(file))?;
    let bad = |r: Refusal| BuildError::Dockerfile {
        file: file.to_path_buf(),
        line: r.line,
        message: r.message,
    };
    let steps = parse(&text).map_err(bad)?;
    let context = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (from_line, reference) = steps
        .iter()
        .find_map(|s| match &s.instruction {
            Instruction::From(r) => Some((s.line, r.clone())),
            _ => None,
        })
        .ok_or_else(|| bad(refuse(1, "no FROM")))?;
    let src: Source = reference.parse().map_err(|e: kiln_oci::OciError| {
        bad(refuse(
            from_line,
            format!("FROM {reference}: {e} (a registry image is HOST[:PORT]/REPO[:TAG]; also oci:DIR[:TAG], docker-archive:FILE)"),
        ))
    })?;
    let pulled = kiln_oci::pull(
        &src,
        &pull_options(cache_root, insecure_for(&reference)),
        &|_, _, _| {},
    )?;
    let from = crate::oci::pinned(&src, &reference, &pulled.manifest_digest);
    let name = crate::oci::name_for(
        &std::fs::canonicalize(&context)
            .unwrap_or(context.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dockerfile".into()),
    );
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(text.as_bytes());
        h.update(pulled.manifest_digest.as_bytes());
        h.update(crate::oci::tree_digest(&context).as_bytes());
        hex::encode(&h.finalize()[..6])
    };
    let dir = cache_root.join(CACHE_DIR).join(format!("{name}-{key}"));
    if dir.join("kiln.toml").is_file() {
        return Ok(dir);
    }
    let config = apply(&pulled.config, &steps);
    let (toml, rc) = recipe_text(&name, &from, &config).map_err(|e| {
        bad(refuse(
            from_line,
            format!("{e}: give the Dockerfile a CMD or an ENTRYPOINT"),
        ))
    })?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let toml = toml.replacen(
        "# made by kiln from the OCI image",
        &format!("# made by kiln from {} on the OCI image", file.display()),
        1,
    );
    let ignore = Ignore::read(&context).map_err(|r| BuildError::Dockerfile {
        file: context.join(".dockerignore"),
        line: r.line,
        message: r.message,
    })?;
    crate::oci::write_recipe(&dir, &toml, &rc, |t| {
        for s in &steps {
            if let Instruction::Copy { sources, dest } = &s.instruction {
                copy_into(&context, sources, dest, &t.join("files"), &ignore)
                    .map_err(|e| bad(refuse(s.line, format!("COPY {}: {e}", sources.join(" ")))))?;
            }
        }
        if let Some(script) = run_script(&steps, &file_name) {
            let hook = t.join(RUN_HOOK);
            if let Some(p) = hook.parent() {
                std::fs::create_dir_all(p).map_err(crate::io(p))?;
            }
            std::fs::write(&hook, script).map_err(crate::io(&hook))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(text: &str) -> Vec<Instruction> {
        parse(text)
            .expect("parses")
            .into_iter()
            .map(|s| s.instruction)
            .collect()
    }

    #[test]
    fn instructions_parse_with_continuations_comments_and_variables() {
        let text = "# syntax=docker/dockerfile:1\nARG V=1.2\nFROM reg:5000/app:$V AS build\n\
                    ENV A=1 B=\"two words\" \\\n    C='lit $A'\n\
                    RUN echo $A \\\n  && echo done\n\
                    WORKDIR /srv\nWORKDIR data\nCOPY [\"a b\", \"c\", \"./\"]\n\
                    EXPOSE 80 53/udp\nUSER www:www\nLABEL x=y\n\
                    ENTRYPOINT [\"/bin/app\"]\nCMD --serve\n";
        assert_eq!(
            steps(text),
            vec![
                Instruction::Arg("V".into(), "1.2".into()),
                Instruction::From("reg:5000/app:1.2".into()),
                Instruction::Env(vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two words".into()),
                    ("C".into(), "lit $A".into()),
                ]),
                Instruction::Run("echo $A && echo done".into()),
                Instruction::Workdir("/srv".into()),
                Instruction::Workdir("/srv/data".into()),
                Instruction::Copy {
                    sources: vec!["a b".into(), "c".into()],
                    dest: "/srv/data/".into()
                },
                Instruction::Expose(vec![(80, "tcp".into()), (53, "udp".into())]),
                Instruction::User("www:www".into()),
                Instruction::Entrypoint(vec!["/bin/app".into()]),
                Instruction::Cmd(vec!["/bin/sh".into(), "-c".into(), "--serve".into()]),
            ]
        );
    }

    #[test]
    fn what_kiln_cannot_do_is_refused_with_its_line() {
        for (text, line, says) in [
            ("FROM a/b\nFROM c/d\n", 2, "multi-stage"),
            ("FROM a/b\nCOPY --from=x /a /b\n", 2, "--from=x"),
            ("FROM a/b\nCOPY --chown=1:1 a /b\n", 2, "--chown"),
            ("FROM a/b\nADD https://x/y /y\n", 2, "downloaded"),
            ("FROM a/b\nADD app.tar.gz /\n", 2, "unpack"),
            ("FROM a/b\nCOPY ../x /x\n", 2, "leaves the build context"),
            ("FROM a/b\nCOPY /etc/passwd /x\n", 2, "build context"),
            ("FROM a/b\nCOPY *.html /www/\n", 2, "wildcards"),
            ("FROM a/b\n\nHEALTHCHECK CMD true\n", 3, "readiness"),
            (
                "FROM a/b\nSHELL [\"/bin/bash\"]\n",
                2,
                "SHELL is not supported",
            ),
            ("FROM scratch\n", 1, "kiln.toml"),
            ("ARG V\nFROM a/b:$V\n", 1, "no default"),
            ("FROM a/b:$NOPE\n", 1, "$NOPE has no value"),
            ("FROM a/b\nENV X=${Y:-z}\n", 2, "only plain"),
            ("FROM a/b\nEXPOSE 80/sctp\n", 2, "EXPOSE 80/sctp"),
            ("FROM a/b\nCMD [\"unclosed\"\n", 2, "JSON array"),
            ("RUN true\nFROM a/b\n", 1, "before FROM"),
            ("# only a comment\n", 1, "no FROM"),
            ("FROM a/b\nRUN\n", 2, "needs arguments"),
            ("FROM --platform=linux/arm64 a/b\n", 1, "linux/amd64"),
        ] {
            let r = parse(text).expect_err(text);
            assert_eq!(r.line, line, "{text}: {}", r.message);
            assert!(r.message.contains(says), "{text}: {}", r.message);
        }
    }

    #[test]
    fn the_config_changes_as_docker_changes_it() {
        let base = ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: vec!["PATH=/bin".into(), "A=old".into()],
            exposed_ports: vec![(80, "tcp".into())],
            ..ImageConfig::default()
        };
        let s = parse("FROM a/b\nENV A=new\nEXPOSE 443\nWORKDIR /w\n").expect("parse");
        let c = apply(&base, &s);
        assert_eq!(c.env, ["PATH=/bin", "A=new"]);
        assert_eq!(
            c.cmd, base.cmd,
            "the base's CMD stays without an ENTRYPOINT"
        );
        assert_eq!(c.exposed_ports, [(80, "tcp".into()), (443, "tcp".into())]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        let s = parse("FROM a/b\nENTRYPOINT [\"/app\"]\n").expect("parse");
        assert!(
            apply(&base, &s).cmd.is_empty(),
            "a new ENTRYPOINT drops CMD"
        );
        let s = parse("FROM a/b\nCMD [\"x\"]\nENTRYPOINT [\"/app\"]\n").expect("parse");
        assert_eq!(
            apply(&base, &s).cmd,
            ["x"],
            "unless the file sets CMD itself"
        );
    }

    #[test]
    fn run_steps_keep_their_order_environment_and_folder() {
        let s = parse(
            "ARG V=1\nFROM a/b\nRUN echo one\nENV K='a b'\nWORKDIR /w\nRUN [\"echo\", \"$K\"]\n",
        )
        .expect("parse");
        let script = run_script(&s, "Dockerfile").expect("a script");
        // The exec form is not expanded (as Docker): `$K` reaches the shell quoted.
        let want = [
            "export V='1'",
            "(cd '/' && /bin/sh -c 'echo one')",
            "export K='a b'",
            "mkdir -p '/w'",
            "(cd '/w' && /bin/sh -c ''\\''echo'\\'' '\\''$K'\\''')",
        ];
        let mut at = 0;
        for w in want {
            let found = script[at..]
                .find(w)
                .unwrap_or_else(|| panic!("{w} not after {at}:\n{script}"));
            at += found + w.len();
        }
        assert!(script.contains("Dockerfile:3: RUN failed"), "{script}");
        assert!(run_script(&parse("FROM a/b\nCMD x\n").expect("p"), "D").is_none());
    }

    #[test]
    fn copy_follows_dockers_rules_for_folders() {
        let d = tempfile::tempdir().expect("tmp");
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(ctx.join("site/css")).expect("mkdir");
        std::fs::write(ctx.join("site/index.html"), "i").expect("w");
        std::fs::write(ctx.join("site/css/a.css"), "c").expect("w");
        std::fs::write(ctx.join("app.conf"), "conf").expect("w");
        let files = d.path().join("files");
        let none = Ignore::default();
        copy_into(&ctx, &["site".into()], "/www", &files, &none).expect("dir");
        copy_into(&ctx, &["app.conf".into()], "/etc/app/", &files, &none).expect("into dir");
        copy_into(
            &ctx,
            &["app.conf".into()],
            "/etc/renamed.conf",
            &files,
            &none,
        )
        .expect("file");
        copy_into(
            &ctx,
            &["app.conf".into(), "site/index.html".into()],
            "/both",
            &files,
            &none,
        )
        .expect("several");
        std::fs::create_dir_all(ctx.join("site/private")).expect("mkdir");
        std::fs::write(ctx.join("site/private/no.html"), "n").expect("w");
        std::fs::write(ctx.join("site/private/yes.html"), "y").expect("w");
        std::fs::write(
            ctx.join(".dockerignore"),
            "site/private\n!site/private/yes.html\n",
        )
        .expect("w");
        let ignore = Ignore::read(&ctx).expect("read");
        copy_into(&ctx, &["site".into()], "/ign", &files, &ignore).expect("ignored");
        assert!(files.join("ign/private/yes.html").is_file());
        assert!(!files.join("ign/private/no.html").exists());
        assert!(files.join("ign/index.html").is_file());
        for (p, want) in [
            ("www/index.html", "i"),
            ("www/css/a.css", "c"),
            ("etc/app/app.conf", "conf"),
            ("etc/renamed.conf", "conf"),
            ("both/app.conf", "conf"),
            ("both/index.html", "i"),
        ] {
            assert_eq!(
                std::fs::read_to_string(files.join(p)).expect(p),
                want,
                "{p}"
            );
        }
    }

    #[test]
    fn dockerignore_leaves_out_what_it_names_and_takes_back_what_it_negates() {
        let d = tempfile::tempdir().expect("tmp");
        let ctx = d.path();
        std::fs::write(
            ctx.join(".dockerignore"),
            "# build leftovers\n.git\n**/*.log\nsite/private\n!site/private/keep.html\n/Dockerfile\n",
        )
        .expect("w");
        let i = Ignore::read(ctx).expect("read");
        for (p, out) in [
            (".git", true),
            (".git/config", true),
            ("site/a.log", true),
            ("a.log", true),
            ("site/private/x.html", true),
            ("site/private/keep.html", false),
            ("site/index.html", false),
            ("Dockerfile", true),
            ("sub/Dockerfile", false),
        ] {
            assert_eq!(i.ignores(Path::new(p)), out, "{p}");
        }
        std::fs::write(ctx.join(".dockerignore"), "ok\n[\n").expect("w");
        let r = Ignore::read(ctx).expect_err("bad pattern");
        assert_eq!(r.line, 2, "{}", r.message);
        assert!(!Ignore::default().ignores(Path::new("anything")));
    }

    #[test]
    fn a_folder_with_a_recipe_is_not_a_dockerfile() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("Containerfile"), "FROM a/b\n").expect("w");
        assert_eq!(find(d.path()), Some(d.path().join("Containerfile")));
        assert_eq!(
            find(&d.path().join("Containerfile")),
            Some(d.path().join("Containerfile"))
        );
        std::fs::write(d.path().join("web.Dockerfile"), "FROM a/b\n").expect("w");
        assert!(find(&d.path().join("web.Dockerfile")).is_some());
        std::fs::write(d.path().join("kiln.toml"), "name = \"x\"\n").expect("w");
        assert_eq!(find(d.path()), None);
        assert_eq!(find(&d.path().join("kiln.toml")), None);
    }
}
