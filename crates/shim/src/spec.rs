//! The parts of a bundle's OCI runtime spec (`config.json`) a Kiln microVM takes: the
//! process (args, env, cwd, user), the memory limit, and Kiln's own annotations
//! (`org.kiln.ports`: host-port forwards, `org.kiln.cpus`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The annotation that publishes guest ports on the host: `HOST:GUEST[,HOST:GUEST...]`, as
/// `kiln run -p` takes them.
pub const PORTS_ANNOTATION: &str = "org.kiln.ports";
/// The annotation that sets the VM's virtual CPUs.
pub const CPUS_ANNOTATION: &str = "org.kiln.cpus";

/// A bundle's spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// config.json is not a runtime spec.
    #[error("{}: not an OCI runtime spec: {error}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        error: serde_json::Error,
    },
    /// A value Kiln cannot use.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
struct RawSpec {
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    linux: Option<RawLinux>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawProcess {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    user: Option<RawUser>,
}

#[derive(Debug, Default, Deserialize)]
struct RawUser {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

#[derive(Debug, Default, Deserialize)]
struct RawLinux {
    #[serde(default)]
    resources: Option<RawResources>,
}

#[derive(Debug, Default, Deserialize)]
struct RawResources {
    #[serde(default)]
    memory: Option<RawMemory>,
}

#[derive(Debug, Default, Deserialize)]
struct RawMemory {
    #[serde(default)]
    limit: Option<i64>,
}

/// What the VM is made of, from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The service.
    pub process: kiln_bake::oci::Process,
    /// Guest memory in MiB: the spec's memory limit, else 128.
    pub memory: u32,
    /// Virtual CPUs (`org.kiln.cpus`).
    pub cpus: Option<u32>,
    /// Port forwards (`org.kiln.ports`), as `kiln run -p` takes them.
    pub ports: Vec<String>,
}

/// The default guest memory (MiB), as for an OCI image run with `kiln run`.
pub const DEFAULT_MEMORY: u32 = 128;

impl ContainerSpec {
    /// Read `BUNDLE/config.json`.
    pub fn load(bundle: &Path) -> Result<ContainerSpec, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|error| SpecError::Io {
            path: path.clone(),
            error,
        })?;
        ContainerSpec::parse(&text).map_err(|e| match e {
            SpecError::Parse { error, .. } => SpecError::Parse { path, error },
            e => e,
        })
    }

    /// Parse a runtime spec's text.
    pub fn parse(text: &str) -> Result<ContainerSpec, SpecError> {
        let raw: RawSpec = serde_json::from_str(text).map_err(|error| SpecError::Parse {
            path: PathBuf::from("config.json"),
            error,
        })?;
        let p = raw.process.unwrap_or_default();
        if p.args.is_empty() {
            return Err(SpecError::Invalid(
                "the spec's process has no args: nothing to run".into(),
            ));
        }
        let memory = raw
            .linux
            .and_then(|l| l.resources)
            .and_then(|r| r.memory)
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .map(|l| ((l / (1024 * 1024)) as u32).max(64))
            .unwrap_or(DEFAULT_MEMORY);
        let cpus = match raw.annotations.get(CPUS_ANNOTATION) {
            Some(c) => Some(c.trim().parse::<u32>().map_err(|_| {
                SpecError::Invalid(format!("{CPUS_ANNOTATION}: `{c}` is not a number"))
            })?),
            None => None,
        };
        let ports = raw
            .annotations
            .get(PORTS_ANNOTATION)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ContainerSpec {
            process: kiln_bake::oci::Process {
                args: p.args,
                env: p.env,
                cwd: p.cwd,
                user: p.user.map(|u| (u.uid, u.gid)),
            },
            memory,
            cpus,
            ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_spec_gives_the_process_memory_and_ports() {
        let s = ContainerSpec::parse(
            r#"{"ociVersion":"1.0.2","process":{"args":["/bin/sh","-c","echo hi"],
            "env":["PATH=/bin"],"cwd":"/www","user":{"uid":33,"gid":34}},
            "linux":{"resources":{"memory":{"limit":268435456}}},
            "annotations":{"org.kiln.ports":"8080:80, 8443:443","org.kiln.cpus":"2"}}"#,
        )
        .expect("parses");
        assert_eq!(s.process.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.process.cwd, "/www");
        assert_eq!(s.process.user, Some((33, 34)));
        assert_eq!(s.memory, 256);
        assert_eq!(s.cpus, Some(2));
        assert_eq!(s.ports, ["8080:80", "8443:443"]);
    }

    #[test]
    fn defaults_and_refusals() {
        let s = ContainerSpec::parse(r#"{"process":{"args":["/x"]}}"#).expect("parses");
        assert_eq!(s.memory, DEFAULT_MEMORY);
        assert!(s.ports.is_empty());
        let e = ContainerSpec::parse(r#"{"process":{"args":[]}}"#).expect_err("refused");
        assert!(e.to_string().contains("nothing to run"), "{e}");
        let e = ContainerSpec::parse(
            r#"{"process":{"args":["/x"]},"annotations":{"org.kiln.cpus":"a"}}"#,
        )
        .expect_err("refused");
        assert!(e.to_string().contains("org.kiln.cpus"), "{e}");
    }
}
