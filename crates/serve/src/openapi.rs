//! The OpenAPI 3.1 description served at `/api/openapi.json`. Written by hand; the tests check
//! that it describes exactly the routes of [`super::api::routes`] and every error code.

use super::error::CODES;
use serde_json::{json, Value};

fn err(codes: &[&str]) -> Value {
    json!({
        "description": format!("error; code one of: {}", codes.join(", ")),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true,
           "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}})
}

fn vm_ref() -> Value {
    json!({"$ref": "#/components/schemas/Vm"})
}

/// The document.
pub fn document() -> Value {
    let codes: Vec<Value> = CODES
        .iter()
        .map(|(c, s, d)| json!({"code": c, "status": s, "description": d}))
        .collect();
    let vm_op = |summary: &str, extra: &[&str]| {
        let mut errs = vec!["vm_not_found", "lifecycle_failed"];
        errs.extend_from_slice(extra);
        json!({"post": {
            "summary": summary,
            "parameters": [name_param()],
            "responses": {"200": ok("the VM afterwards (state `stopped` once forgotten)", vm_ref()),
                          "404": err(&["vm_not_found"]), "409": err(&errs[2..]), "500": err(&["lifecycle_failed"])}
        }})
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage Kiln microVMs. Every request needs `Authorization: Bearer TOKEN` (or the page's login cookie). Errors are JSON with a stable code.",
            "x-error-codes": codes,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/vms": {
                "get": {"summary": "List VMs with state, uptime, resources and CPU/memory use",
                        "responses": {"200": ok("the VMs, sorted by name", json!({"type": "array", "items": vm_ref()})),
                                      "401": err(&["missing_token", "bad_token"])}},
                "post": {"summary": "Create and boot a VM from a recipe or image (returns at once; state `starting` until ready)",
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRequest"}}}},
                         "responses": {"202": ok("accepted; follow /api/events or GET the VM until `running` or `failed`", vm_ref()),
                                       "400": err(&["bad_body", "invalid_request", "unsupported"]),
                                       "404": err(&["recipe_not_found", "image_not_found"]),
                                       "409": err(&["name_taken", "port_in_use"]),
                                       "413": err(&["body_too_large"])}}
            },
            "/api/vms/{name}": {
                "get": {"summary": "One VM", "parameters": [name_param()],
                        "responses": {"200": ok("the VM", vm_ref()), "404": err(&["vm_not_found"])}},
                "delete": {"summary": "Remove a VM that is not running (its record, sockets and console log)",
                           "parameters": [name_param()],
                           "responses": {"204": {"description": "removed"}, "404": err(&["vm_not_found"]),
                                         "409": err(&["vm_running", "vm_busy"])}}
            },
            "/api/vms/{name}/start": {"post": {
                "summary": "Boot a stopped or failed VM again with the same settings",
                "parameters": [name_param()],
                "responses": {"202": ok("accepted; state `starting`", vm_ref()), "404": err(&["vm_not_found"]),
                              "409": err(&["vm_running", "vm_busy", "port_in_use"])}}},
            "/api/vms/{name}/stop": vm_op("Stop gracefully: the guest powers off, then QMP quit, then a kill", &["vm_not_running"]),
            "/api/vms/{name}/kill": vm_op("Kill the VM at once", &["vm_not_running"]),
            "/api/vms/{name}/logs": {"get": {
                "summary": "The VM's console log",
                "parameters": [name_param(), {"name": "bytes", "in": "query", "required": false,
                               "description": "at most this many bytes from the end (default 65536, max 4 MiB)",
                               "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": ok("the log", json!({"type": "object", "required": ["name", "log"], "properties": {
                                 "name": {"type": "string"}, "log": {"type": "string"},
                                 "error": {"type": ["string", "null"], "description": "why a failed VM failed"}}})),
                              "404": err(&["vm_not_found"])}}},
            "/api/vms/{name}/console": {"get": {
                "summary": "The serial console as a WebSocket: binary frames out (console bytes), text or binary frames in (keystrokes). Several viewers may attach at once; each first receives recent output.",
                "parameters": [name_param()],
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": err(&["bad_body"]), "404": err(&["vm_not_found"]), "409": err(&["vm_not_running"])}}},
            "/api/vms/{name}/exec": {"post": {
                "summary": "Run a command in a running VM to its end (no terminal): its output and exit code. The command is looked up in the guest's PATH and gets rc's environment; one that is not there exits 127 with a message on stderr.",
                "parameters": [name_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExecRequest"}}}},
                "responses": {"200": ok("how it ended", json!({"$ref": "#/components/schemas/ExecResult"})),
                              "400": err(&["bad_body", "invalid_request"]), "404": err(&["vm_not_found"]),
                              "409": err(&["vm_not_running"]), "413": err(&["body_too_large"]),
                              "500": err(&["lifecycle_failed"])}}},
            "/api/events": {"get": {
                "summary": "Server-sent events: a `vms` event carrying the whole VM table (as GET /api/vms) at once, on every change and every 2 s while VMs run (for the usage figures)",
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}},
            "/api/recipes": {"get": {"summary": "Recipes a VM can be created from",
                "responses": {"200": ok("recipes", json!({"type": "array", "items": {"$ref": "#/components/schemas/Recipe"}}))}}},
            "/api/images": {"get": {"summary": "Built images a VM can be created from",
                "responses": {"200": ok("images", json!({"type": "array", "items": {"$ref": "#/components/schemas/Image"}}))}}},
            "/api/host": {"get": {"summary": "Host facts: accelerator and why, QEMU version, memory",
                "responses": {"200": ok("the host", json!({"$ref": "#/components/schemas/Host"}))}}},
            "/api/openapi.json": {"get": {"summary": "This document",
                "responses": {"200": ok("OpenAPI 3.1", json!({"type": "object"}))}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "the token printed at first start and stored (0600) in the state folder's serve.token, or --token-file"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": CODES.iter().map(|c| c.0).collect::<Vec<_>>()},
                        "message": {"type": "string"}}}}},
                "Vm": {"type": "object", "required": ["name", "state"], "properties": {
                    "name": {"type": "string"},
                    "state": {"type": "string", "description": "starting, running, exited, failed, stopped (after stop, once the lifecycle forgot it), or another state the lifecycle reports"},
                    "pid": {"type": ["integer", "null"]},
                    "uptime_s": {"type": "integer"},
                    "cpus": {"type": "integer"},
                    "memory": {"type": "integer", "description": "MiB"},
                    "ports": {"type": "array", "items": {"type": "string"}},
                    "image": {"type": "string"},
                    "accel": {"type": "string"},
                    "cpu_percent": {"type": ["number", "null"], "description": "of one host core, over the last sample"},
                    "rss_mib": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]},
                    "foreground": {"type": "boolean", "description": "run by a `kiln run` in the foreground: listed and stoppable, no console here"},
                    "restarts": {"type": "integer", "description": "times the restart policy restarted it"},
                    "restart": {"type": "string", "description": "its restart policy"}}},
                "CreateRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "recipe": {"type": "string", "description": "a name from /api/recipes (exactly one of recipe, image)"},
                    "image": {"type": "string", "description": "a name from /api/images"},
                    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "description": "default: the recipe's name"},
                    "cpus": {"type": "integer", "minimum": 1, "maximum": 64},
                    "memory": {"type": "integer", "minimum": 16, "maximum": 65536, "description": "MiB"},
                    "ports": {"type": "array", "items": {"type": "string"}, "description": "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]; empty: the recipe's"},
                    "share": {"type": "string", "description": "HOSTDIR:GUESTPATH[:ro] (an absolute host folder)"},
                    "share_fs": {"type": "string", "enum": ["9p", "virtiofs"]},
                    "drive": {"type": "string", "description": "a second drive, PATH[:ro] (an absolute host path)"},
                    "vports": {"type": ["integer", "array"], "items": {"type": "string"}, "description": "virtio-console ports: a count or names"},
                    "serial_tcp": {"type": "string", "description": "serial console over TCP too: PORT or ADDR:PORT"},
                    "network": {"type": "string", "description": "user, none, bridge:BRIDGE, tap:TAPIF (the last two need root)"},
                    "nets": {"type": "array", "items": {"type": "string"}, "description": "Kiln nets to join (`kiln net create` them first): a NIC on each, peers by name"},
                    "readonly_root": {"type": "boolean"},
                    "no_lock": {"type": "boolean"},
                    "restart": {"type": "string", "enum": ["no", "on-failure", "always"]},
                    "append": {"type": "string", "description": "extra kernel arguments"},
                    "accel": {"type": "string", "enum": ["auto", "kvm", "tcg"]},
                    "from": {"type": "string", "description": "start from a template or snapshot folder (an absolute host path)"},
                    "cold": {"type": "boolean", "description": "boot cold even when the image has a fresh template"},
                    "ready_timeout": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "seconds to wait for readiness (default: the recipe's)"}}},
                "ExecRequest": {"type": "object", "additionalProperties": false, "required": ["argv"], "properties": {
                    "argv": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "the command and its arguments"},
                    "stdin": {"type": "string", "description": "its whole input (default: none)"},
                    "env": {"type": "array", "items": {"type": "string"}, "description": "KEY=VALUE settings on top of rc's environment"},
                    "cwd": {"type": "string", "description": "the working folder in the guest (default /)"},
                    "timeout": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "seconds before it is killed (default 60)"}}},
                "ExecResult": {"type": "object", "required": ["stdout", "stderr", "exit_code", "timed_out", "truncated"], "properties": {
                    "stdout": {"type": "string", "description": "its output (as UTF-8, invalid bytes replaced; at most 1 MiB)"},
                    "stderr": {"type": "string", "description": "its error output (and kiln-init's message, e.g. `kiln exec: nosuch: command not found`)"},
                    "exit_code": {"type": ["integer", "null"], "description": "its exit code; 128 + the signal if killed; null if it timed out"},
                    "signal": {"type": ["integer", "null"], "description": "the signal that killed it"},
                    "timed_out": {"type": "boolean", "description": "it ran past the timeout and was killed"},
                    "truncated": {"type": "boolean", "description": "output beyond 1 MiB per stream was dropped"}}},
                "Recipe": {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "dir": {"type": "string"}}},
                "Image": {"type": "object", "properties": {"name": {"type": "string"}, "recipe": {"type": "string"},
                    "description": {"type": "string"}, "dir": {"type": "string"}, "initramfs_size": {"type": "integer"}}},
                "Host": {"type": "object", "properties": {
                    "kiln_version": {"type": "string"}, "accel": {"type": "string"}, "accel_reason": {"type": "string"},
                    "kvm_device": {"type": "boolean"}, "qemu": {"type": ["string", "null"]}, "qemu_version": {"type": ["string", "null"]},
                    "cpus": {"type": "integer"}, "memory_total_mib": {"type": ["integer", "null"]},
                    "memory_available_mib": {"type": ["integer", "null"]}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        let routes = super::super::api::routes();
        for (method, path, _) in &routes {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not described"))
                [method.as_str().to_lowercase()];
            assert!(op.is_object(), "{method} {path} is not described");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
        for (path, ops) in paths {
            for method in ops.as_object().expect("ops").keys() {
                assert!(
                    routes
                        .iter()
                        .any(|(m, p, _)| p == path && m.as_str().eq_ignore_ascii_case(method)),
                    "{method} {path} is described but not served"
                );
            }
        }
    }

    #[test]
    fn every_error_code_in_the_document_is_real() {
        let text = document().to_string();
        for word in text.split(|c: char| !(c.is_ascii_lowercase() || c == '_')) {
            if word.contains('_')
                && (word.starts_with("vm_")
                    || word.ends_with("_token")
                    || word.ends_with("_not_found")
                    || word.ends_with("_taken")
                    || word.ends_with("_in_use"))
            {
                assert!(
                    CODES.iter().any(|c| c.0 == word),
                    "{word} is not an error code"
                );
            }
        }
    }

    #[test]
    fn the_create_request_lists_every_vm_setting() {
        use clap::Args;
        let doc = document();
        let props: std::collections::BTreeSet<String> = doc["components"]["schemas"]
            ["CreateRequest"]["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        let cmd = kiln_fleet::VmConfig::augment_args(clap::Command::new("t"));
        let mut want: std::collections::BTreeSet<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        want.extend(["recipe".to_string(), "image".to_string()]);
        assert_eq!(props, want);
    }
}
