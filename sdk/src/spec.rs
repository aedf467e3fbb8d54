//! The rules an [`AppSpec`] must follow beyond its types, defined once:
//! the API answers a broken one with 422 naming the field, and a
//! `skiff.toml` with the file, line and key the field comes from.

use crate::api::{AppSpec, normalize_host, validate_name};
use crate::capability::{MAX_OUTBOUND_HOSTS, OutboundRules, validate_file_path};

/// Most replicas one app may ask for; a typo of `30000` should not flood
/// the scheduler.
pub const MAX_REPLICAS: u32 = 1000;
/// Most static files one app may mount.
pub const MAX_FILES: usize = 256;

/// A spec field that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The field as the API names it: `quota.fuel`, `hosts[0]`, `env.KEY`,
    /// `allowed_outbound_hosts[2]`, `files.PATH`, `health.path`, ...
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn broken(field: impl Into<String>, message: impl Into<String>) -> Result<(), SpecError> {
    Err(SpecError {
        field: field.into(),
        message: message.into(),
    })
}

impl AppSpec {
    /// Checks every rule the types do not express; the first broken one is
    /// named. Which artifacts exist is not checked here (the controller
    /// knows).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.replicas > MAX_REPLICAS {
            return broken("replicas", format!("at most {MAX_REPLICAS} replicas"));
        }
        if let Some(source) = &self.source {
            match crate::oci::OciRef::parse(source) {
                Err(e) => return broken("source", e.0),
                Ok(r) if r.digest.is_none() || !source.starts_with("oci://") => {
                    return broken(
                        "source",
                        "an oci:// reference pinned to its manifest digest (@sha256:…)",
                    );
                }
                Ok(_) => {}
            }
        }
        if let Err(e) = self.quota.validate() {
            return broken(format!("quota.{}", e.field), e.reason);
        }
        if let Some(scale) = &self.scale
            && let Err((field, message)) = scale.validate()
        {
            return broken(format!("scale.{field}"), message);
        }
        if self.kind == crate::api::AppKind::Worker {
            let http_only = [
                ("hosts", !self.hosts.is_empty()),
                ("health", self.health.is_some()),
                ("scale", self.scale.is_some()),
            ];
            if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
                return broken(
                    *field,
                    format!("a worker serves no HTTP: it has no {field}"),
                );
            }
        } else if !self.args.is_empty() {
            return broken("args", "only a worker takes arguments (kind = \"worker\")");
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return broken(
                format!("args[{i}]"),
                "an argument may not contain a NUL character",
            );
        }
        if self.placement.every_node && self.scale.is_some() {
            return broken(
                "placement.every_node",
                "an app on every node has one replica per node; it cannot also scale on demand ([scale])",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let host = normalize_host(host);
            let ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    validate_name(label).is_ok() || label.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                return broken(format!("hosts[{i}]"), format!("{host:?} is not a DNS name"));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return broken(format!("env.{key}"), "not a valid variable name");
            }
            if value.contains('\0') {
                // An environment entry ends at its first NUL: the guest
                // would silently see a shorter value.
                return broken(
                    format!("env.{key}"),
                    "a value may not contain a NUL character",
                );
            }
        }
        if let Some(health) = &self.health {
            if !health.path.starts_with('/') {
                return broken(
                    "health.path",
                    format!("{:?} must start with /", health.path),
                );
            }
            if health.interval_ms == 0 || health.failure_threshold == 0 {
                return broken("health", "interval_ms and failure_threshold must be > 0");
            }
        }
        if self.allowed_outbound_hosts.len() > MAX_OUTBOUND_HOSTS {
            return broken(
                "allowed_outbound_hosts",
                format!("at most {MAX_OUTBOUND_HOSTS} entries"),
            );
        }
        if let Err((i, e)) = OutboundRules::parse(&self.allowed_outbound_hosts) {
            return broken(format!("allowed_outbound_hosts[{i}]"), e.to_string());
        }
        if self.files.len() > MAX_FILES {
            return broken("files", format!("at most {MAX_FILES} files"));
        }
        for path in self.files.keys() {
            if let Err(reason) = validate_file_path(path) {
                return broken(format!("files.{path}"), format!("{path:?} {reason}"));
            }
            // A file and a directory of the same name cannot both exist.
            if self.files.keys().any(|other| {
                other.starts_with(path.as_str()) && other.as_bytes().get(path.len()) == Some(&b'/')
            }) {
                return broken(
                    format!("files.{path}"),
                    format!("{path:?} is both a file and a directory"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> AppSpec {
        let mut value = serde_json::json!({ "artifact": crate::Digest::of(b"a") });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(spec(serde_json::json!({})).validate(), Ok(()));
        for (extra, field) in [
            (serde_json::json!({ "replicas": 1001 }), "replicas"),
            (
                serde_json::json!({ "quota": { "concurrency": 0 } }),
                "quota.concurrency",
            ),
            (
                serde_json::json!({ "hosts": ["ok.example", "bad host"] }),
                "hosts[1]",
            ),
            (serde_json::json!({ "env": { "A=B": "x" } }), "env.A=B"),
            (serde_json::json!({ "env": { "A": "x\u{0}y" } }), "env.A"),
            (
                serde_json::json!({ "health": { "path": "healthz" } }),
                "health.path",
            ),
            (
                serde_json::json!({ "allowed_outbound_hosts": ["nope"] }),
                "allowed_outbound_hosts[0]",
            ),
            (
                serde_json::json!({ "files": { "a": crate::Digest::of(b"f"), "a/b": crate::Digest::of(b"g") } }),
                "files.a",
            ),
        ] {
            let error = spec(extra.clone()).validate().unwrap_err();
            assert_eq!(error.field, field, "{extra}: {error}");
        }
    }
}
