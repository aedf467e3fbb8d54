//! `skiff.toml`, the app manifest: what the app is called, how its
//! component is built, and how it runs. Schema version 1:
//!
//! ```toml
//! manifest_version = 1          # required; this parser reads version 1
//! name = "hello"                # DNS label; the app is reached at hello.<domain>
//! replicas = 2                  # default 1
//!
//! [component]
//! source = "target/wasm32-wasip2/release/hello.wasm"   # relative to this file
//! build = "cargo build --release --target wasm32-wasip2"  # optional; run in this directory
//! files = ["static/index.html"]  # optional; packaged with the bundle
//!
//! [http]
//! hosts = ["hello.example.com"]  # optional extra hosts besides <name>.<domain>
//!
//! [resources]                    # every key optional; defaults as in `Quota`
//! memory = "64Mi"                # per instance: bytes, or Ki/Mi/Gi/Ti, k/M/G/T
//! fuel = "1G"                    # CPU per request: a count, k/M/G suffixes
//! timeout = "5s"                 # per request: ms, s, m, h
//! concurrency = 16               # instances at once per replica
//! reserve = "8Mi"                # reserved per replica for scheduling (default: memory, at most 16Mi)
//!
//! [scale]                        # optional: replicas follow demand (then `replicas` is the initial count)
//! min = 0                        # 0: sleeps when idle, woken by its next request
//! max = 20
//! target_concurrency = 10        # in-flight requests per replica (or target_rps = 100)
//! window = "60s"                 # stable window; bursts use a tenth of it
//! scale_down_delay = "30s"
//! idle = "5m"                    # without requests this long, go to zero (min = 0)
//! activation_timeout = "10s"     # how long a request is held while the app wakes
//!
//! [placement]
//! node_selector = { zone = "a" }
//! spread = true                  # across nodes and zones (default)
//!
//! [update]
//! max_surge = 1                  # or "25%"
//! max_unavailable = 0
//! progress_deadline = "60s"      # a rollout not done by then has failed
//! auto_rollback = true           # …and returns to the last good revision
//!
//! [env]
//! VERSION = "1.0.0"
//!
//! [health]
//! path = "/healthz"
//! interval = "1s"
//! failure_threshold = 3
//!
//! [capabilities]                 # denied unless granted; see skiff_sdk::capability
//! allowed_outbound_hosts = ["https://api.example.com", "https://*.example.org:8443"]
//!
//! [dependencies]                 # imported interfaces the host does not provide
//! "example:greeting/greeter" = { path = "../greeter/greeter.wasm" }   # or oci = "oci://…"
//! ```
//!
//! A `[job]` table makes it a job instead of an app: a `wasi:cli/run`
//! component (a plain `fn main` built for `wasm32-wasip2`) run to
//! completion, with `[resources]` as the budget of each whole run:
//!
//! ```toml
//! [job]
//! args = ["--from", "10"]        # after the program name
//! completions = 3                # successful runs that complete it (default 1)
//! parallelism = 2                # runs at once (default 1)
//! retries = 3                    # failed runs tolerated (default 3)
//! backoff = "1s"                 # first retry delay, doubling (max 5m)
//! keep_runs = 20                 # finished runs kept once the job is done
//! keep_finished = "1h"           # the finished job and its runs are deleted after this long
//! schedule = "*/5 * * * *"       # optional: run at these times (cron; a 6th, leading field is seconds)
//! timezone = "Europe/Paris"      # default UTC
//! concurrency_policy = "forbid"  # allow (default) | forbid | replace, while the last firing's job runs
//! starting_deadline = "30s"      # a firing later than this (controller away) is skipped
//! keep_succeeded = 3             # finished jobs of the schedule kept
//! keep_failed = 1
//! ```
//!
//! A `[worker]` table makes the app a worker: each replica runs a
//! `wasi:cli/run` component continuously, restarted (with a growing
//! back-off while it keeps failing) when it exits:
//!
//! ```toml
//! [worker]
//! args = ["--queue", "jobs"]
//! ```
//!
//! The `[component] files` are the app's static files: the guest reads them
//! read-only at `/<path>`, and nothing else of the node's file system.
//!
//! Unknown keys are errors, and every error names the file, the line and
//! the key: `skiff.toml:7: resources.memory: "64Mb" is not a quantity (…);
//! did you mean "64Mi"?`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::api::{
    AppKind, AppSpec, HealthCheck, IntOrPercent, JobSpec, Placement, UpdateStrategy,
    default_failure_threshold, default_health_interval_ms, validate_name,
};
use crate::scale::ScaleSpec;
use crate::{Digest, Quota, quantity};

/// The manifest version this parser reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "skiff.toml";

/// A parsed `skiff.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version; must be [`MANIFEST_VERSION`].
    pub manifest_version: u32,
    /// App name.
    pub name: String,
    /// Desired replicas.
    #[serde(default = "one")]
    pub replicas: u32,
    /// The component and how to build it.
    pub component: ComponentSection,
    /// Routing.
    #[serde(default)]
    pub http: HttpSection,
    /// Quota.
    #[serde(default)]
    pub resources: Resources,
    /// Autoscaling.
    #[serde(default)]
    pub scale: Option<ScaleSection>,
    /// Where replicas may run.
    #[serde(default)]
    pub placement: Placement,
    /// How updates roll out.
    #[serde(default)]
    pub update: UpdateSection,
    /// Environment variables of the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Health check.
    #[serde(default)]
    pub health: Option<HealthSection>,
    /// What the guest may reach beyond computing.
    #[serde(default)]
    pub capabilities: CapabilitiesSection,
    /// This is a job, not an app: a `wasi:cli/run` component run to
    /// completion (see [`Manifest::to_job_spec`]).
    #[serde(default)]
    pub job: Option<JobSection>,
    /// This app is a worker: a `wasi:cli/run` component each replica runs
    /// continuously, restarted when it exits.
    #[serde(default)]
    pub worker: Option<WorkerSection>,
    /// Components composed into this one, by the interface each provides.
    #[serde(default)]
    pub dependencies: BTreeMap<String, Dependency>,
}

/// `[worker]`: a command each replica runs continuously. Without
/// `resources.fuel` and `resources.timeout` an instance may run a day on
/// ten trillion fuel (the most a quota allows) before it is restarted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `[job]`: a command component run to completion. `[resources]` apply
/// to each run as a whole (`fuel` and `timeout` are the run's budget);
/// `[placement]`, `[env]` and `[capabilities]` as for apps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Successful runs that complete the job (default 1).
    #[serde(default)]
    pub completions: Option<u32>,
    /// Most runs at once (default 1).
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// Failed runs tolerated before the job fails.
    #[serde(default)]
    pub retries: Option<u32>,
    /// First retry delay (milliseconds), doubling with each failure.
    #[serde(default, deserialize_with = "millis")]
    pub backoff: Option<u64>,
    /// Finished runs kept once the job has finished.
    #[serde(default)]
    pub keep_runs: Option<u32>,
    /// How long a finished job (and its runs) is kept (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub keep_finished: Option<u64>,
    /// Run at these times (cron syntax, optional seconds field) instead of
    /// once.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The schedule's time zone (IANA name; default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `allow`, `forbid` or `replace` a firing while the last one's job is
    /// active.
    #[serde(default)]
    pub concurrency_policy: Option<crate::api::ConcurrencyPolicy>,
    /// Skip a firing later than this (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub starting_deadline: Option<u64>,
    /// Finished jobs of the schedule kept that completed.
    #[serde(default)]
    pub keep_succeeded: Option<u32>,
    /// Finished jobs of the schedule kept that failed.
    #[serde(default)]
    pub keep_failed: Option<u32>,
}

/// `[capabilities]`: grants, denied by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesSection {
    /// Outbound destinations, e.g. `https://api.example.com`.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
}

fn one() -> u32 {
    1
}

/// `[component]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSection {
    /// The built component, relative to the manifest's directory.
    pub source: PathBuf,
    /// Shell command that builds it, run in the manifest's directory.
    #[serde(default)]
    pub build: Option<String>,
    /// Static files packaged with the bundle, relative paths.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `[http]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Extra hosts the app answers to.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `[resources]`: quantities as people write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Max linear memory per instance.
    #[serde(default, deserialize_with = "bytes")]
    pub memory: Option<u64>,
    /// Fuel per request.
    #[serde(default, deserialize_with = "count")]
    pub fuel: Option<u64>,
    /// Wall-clock limit per request, in milliseconds.
    #[serde(default, deserialize_with = "millis")]
    pub timeout: Option<u64>,
    /// Instances at once per replica.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Memory reserved per replica for scheduling.
    #[serde(default, deserialize_with = "bytes")]
    pub reserve: Option<u64>,
}

/// `[scale]`: durations as people write them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSection {
    /// Fewest replicas.
    #[serde(default)]
    pub min: Option<u32>,
    /// Most replicas.
    #[serde(default)]
    pub max: Option<u32>,
    /// In-flight requests per replica.
    #[serde(default)]
    pub target_concurrency: Option<u32>,
    /// Requests per second per replica.
    #[serde(default)]
    pub target_rps: Option<u32>,
    /// Stable window (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub window: Option<u64>,
    /// Scale-down delay (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub scale_down_delay: Option<u64>,
    /// Idle time before sleeping (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub idle: Option<u64>,
    /// Longest hold of a request while waking (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub activation_timeout: Option<u64>,
}

impl ScaleSection {
    fn to_spec(self) -> ScaleSpec {
        let d = ScaleSpec::default();
        ScaleSpec {
            min: self.min.unwrap_or(d.min),
            max: self.max.unwrap_or(d.max),
            target_concurrency: self.target_concurrency,
            target_rps: self.target_rps,
            window_ms: self.window.unwrap_or(d.window_ms),
            scale_down_delay_ms: self.scale_down_delay.unwrap_or(d.scale_down_delay_ms),
            idle_ms: self.idle.unwrap_or(d.idle_ms),
            activation_timeout_ms: self.activation_timeout.unwrap_or(d.activation_timeout_ms),
        }
    }
}

/// `[update]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSection {
    /// Extra replicas allowed during an update.
    #[serde(default)]
    pub max_surge: Option<IntOrPercent>,
    /// Missing replicas allowed during an update.
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
    /// A rollout not finished within this long has failed (milliseconds).
    #[serde(default, deserialize_with = "millis")]
    pub progress_deadline: Option<u64>,
    /// Roll a failed rollout back automatically (default true).
    #[serde(default)]
    pub auto_rollback: Option<bool>,
}

/// `[health]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Path requested with GET; any 2xx is healthy.
    pub path: String,
    /// Time between checks, in milliseconds.
    #[serde(default, deserialize_with = "millis")]
    pub interval: Option<u64>,
    /// Consecutive failures before unhealthy.
    #[serde(default)]
    pub failure_threshold: Option<u32>,
}

/// A quantity given as a string (`"64Mi"`) or a plain integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

fn quantity<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, quantity::QuantityError>,
    from_int: impl Fn(u64) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    let raw = Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a quantity: a string such as \"64Mi\" or an integer")
    })?;
    match raw {
        Raw::Int(n) => from_int(n).map(Some).map_err(serde::de::Error::custom),
        Raw::Text(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    quantity(d, quantity::parse_bytes, Ok)
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    quantity(d, quantity::parse_count, Ok)
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    quantity(
        d,
        |s| quantity::parse_duration(s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        |n| Err(format!("{n} has no unit; write \"{n}s\" or \"{n}ms\"")),
    )
}

/// Why a manifest could not be used: where, which key, what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, when known (e.g. `resources.memory`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Manifest {
    /// Reads and validates `path`: a `*.toml` file, or a directory holding
    /// `skiff.toml`.
    pub fn load(path: &Path) -> Result<(PathBuf, Manifest), ManifestError> {
        let file = if path.extension().is_some_and(|e| e == "toml") && !path.is_dir() {
            path.to_path_buf()
        } else {
            path.join(MANIFEST_FILE)
        };
        let text = std::fs::read_to_string(&file).map_err(|e| ManifestError {
            file: file.clone(),
            line: None,
            key: None,
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "not found: an app directory holds a skiff.toml (see examples/hello/skiff.toml)"
                    .to_owned()
            } else {
                e.to_string()
            },
        })?;
        let manifest = Self::parse(&file, &text)?;
        Ok((file, manifest))
    }

    /// Parses and validates manifest text; `file` is used in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let error = |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| {
            ManifestError {
                file: file.to_path_buf(),
                line: span.map(|s| line_of(text, s.start)),
                key,
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| error(e.span(), None, e.message().trim().to_owned()))?;
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = (path != "." && !path.is_empty()).then_some(path);
            error(inner.span(), key, inner.message().trim().to_owned())
        })?;
        manifest.validate(text, &error)?;
        Ok(manifest)
    }

    fn validate(
        &self,
        text: &str,
        error: &impl Fn(Option<std::ops::Range<usize>>, Option<String>, String) -> ManifestError,
    ) -> Result<(), ManifestError> {
        // Semantic errors point at the key's line (found textually: the
        // document already parsed, so the first `key =` is the one).
        let at = |key: &str, message: String| {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let span = find_key(text, leaf).map(|i| i..i);
            error(span, Some(key.to_owned()), message)
        };
        if self.manifest_version != MANIFEST_VERSION {
            return Err(at(
                "manifest_version",
                format!(
                    "version {} is not supported; this skiff reads version {MANIFEST_VERSION}",
                    self.manifest_version
                ),
            ));
        }
        validate_name(&self.name).map_err(|e| at("name", e.to_string()))?;
        if self.component.source.as_os_str().is_empty() {
            return Err(at(
                "component.source",
                "must name the built .wasm file".into(),
            ));
        }
        for file in &self.component.files {
            let path = file.to_string_lossy();
            if let Err(reason) = crate::capability::validate_file_path(&path) {
                return Err(at(
                    "component.files",
                    format!("{path:?} {reason} (a relative path inside the app's directory)"),
                ));
            }
        }
        for (interface, dependency) in &self.dependencies {
            if let Some(problem) = dependency.problem(interface) {
                let span = text.find(&format!("\"{interface}\"")).map(|i| i..i);
                return Err(error(
                    span,
                    Some(format!("dependencies.\"{interface}\"")),
                    problem,
                ));
            }
        }
        if self.job.is_some() && self.worker.is_some() {
            let span = text.find("[worker]").map(|i| i..i);
            return Err(error(
                span,
                Some("worker".into()),
                "a manifest is a job ([job]) or a worker ([worker]), not both".into(),
            ));
        }
        if self.job.is_some() {
            // An app's sections mean nothing to a job: refused rather
            // than silently ignored.
            let app_only = [
                ("http", !self.http.hosts.is_empty()),
                ("scale", self.scale.is_some()),
                ("health", self.health.is_some()),
                ("update", self.update != UpdateSection::default()),
                ("component.files", !self.component.files.is_empty()),
                ("replicas", find_key(text, "replicas").is_some()),
            ];
            if let Some((key, _)) = app_only.iter().find(|(_, set)| *set) {
                let span = find_key(text, key.rsplit('.').next().unwrap_or(key))
                    .or_else(|| text.find(&format!("[{key}]")))
                    .map(|i| i..i);
                return Err(error(
                    span,
                    Some((*key).to_owned()),
                    format!(
                        "a job has no {key} (that is for HTTP apps); remove it or the [job] table"
                    ),
                ));
            }
            let spec = self.to_job_spec(Digest::of(b""));
            if let Err(e) = spec.validate() {
                let key = match e.field.as_str() {
                    "completions" | "parallelism" | "retries" | "keep_runs" => {
                        format!("job.{}", e.field)
                    }
                    "backoff_ms" => "job.backoff".to_owned(),
                    "schedule.cron" => "job.schedule".to_owned(),
                    "schedule.timezone" => "job.timezone".to_owned(),
                    f if f.starts_with("args") => format!("job.{f}"),
                    _ => self.key_of(&e.field).0,
                };
                let span = find_key(text, key.rsplit('.').next().unwrap_or(&key)).map(|i| i..i);
                return Err(error(span, Some(key), e.message));
            }
            return Ok(());
        }
        // The rules every spec follows (the API applies the same), named
        // by the key of this file they come from.
        let spec = self.to_spec(Digest::of(b""), BTreeMap::new());
        if let Err(e) = spec.validate() {
            let (key, value) = self.key_of(&e.field);
            let span = match value {
                Some(value) => find_value(text, value).map(|s| s..s),
                None => find_key(text, key.rsplit('.').next().unwrap_or(&key))
                    .or_else(|| text.find(&format!("[{key}]")))
                    .map(|i| i..i),
            };
            return Err(error(span, Some(key), e.message));
        }
        Ok(())
    }

    /// The key of this file a spec field comes from, and the value to
    /// point at when it is one entry of a list.
    fn key_of<'a>(&'a self, field: &str) -> (String, Option<&'a str>) {
        let entry = |list: &'a [String], rest: &str| {
            rest.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| list.get(i))
                .map(String::as_str)
        };
        if let Some(quota) = field.strip_prefix("quota.") {
            (format!("resources.{}", resource_key(quota)), None)
        } else if let Some(scale) = field.strip_prefix("scale.") {
            (
                format!("scale.{}", scale.strip_suffix("_ms").unwrap_or(scale)),
                None,
            )
        } else if let Some(rest) = field.strip_prefix("allowed_outbound_hosts") {
            (
                format!("capabilities.allowed_outbound_hosts{rest}"),
                entry(&self.capabilities.allowed_outbound_hosts, rest),
            )
        } else if let Some(rest) = field.strip_prefix("hosts") {
            ("http.hosts".to_owned(), entry(&self.http.hosts, rest))
        } else {
            (field.to_owned(), None)
        }
    }

    /// The quota the resources describe (defaults for what is not given).
    pub fn quota(&self) -> Quota {
        let d = Quota::default();
        Quota {
            memory_bytes: self.resources.memory.unwrap_or(d.memory_bytes),
            fuel: self.resources.fuel.unwrap_or(d.fuel),
            timeout_ms: self.resources.timeout.unwrap_or(d.timeout_ms),
            concurrency: self.resources.concurrency.unwrap_or(d.concurrency),
            reserve_bytes: self.resources.reserve,
        }
    }

    /// The job spec to apply when this manifest has a `[job]` table (the
    /// defaults otherwise), running the component `artifact`.
    pub fn to_job_spec(&self, artifact: Digest) -> JobSpec {
        let job = self.job.clone().unwrap_or_default();
        let d = JobSpec::new(artifact);
        let mut quota = self.quota();
        quota.concurrency = 1;
        JobSpec {
            args: job.args,
            env: self.env.clone(),
            quota,
            completions: job.completions.unwrap_or(d.completions),
            parallelism: job.parallelism.unwrap_or(d.parallelism),
            retries: job.retries.unwrap_or(d.retries),
            backoff_ms: job.backoff.unwrap_or(d.backoff_ms),
            keep_runs: job.keep_runs.unwrap_or(d.keep_runs),
            keep_finished_ms: job.keep_finished,
            schedule: job.schedule.map(|cron| {
                let s = crate::api::Schedule::new(cron);
                crate::api::Schedule {
                    timezone: job.timezone,
                    concurrency_policy: job.concurrency_policy.unwrap_or_default(),
                    starting_deadline_ms: job.starting_deadline,
                    keep_succeeded: job.keep_succeeded.unwrap_or(s.keep_succeeded),
                    keep_failed: job.keep_failed.unwrap_or(s.keep_failed),
                    ..s
                }
            }),
            allowed_outbound_hosts: self.capabilities.allowed_outbound_hosts.clone(),
            placement: self.placement.clone(),
            ..d
        }
    }

    /// The app spec to apply, running the component `artifact`, with the
    /// static files uploaded as `files` (guest path to digest).
    pub fn to_spec(&self, artifact: Digest, files: BTreeMap<String, Digest>) -> AppSpec {
        let strategy = UpdateStrategy::default();
        let scale = self.scale.map(ScaleSection::to_spec);
        let mut quota = self.quota();
        let (kind, args) = match &self.worker {
            Some(worker) => {
                // A worker's instance lives on: its run is its life.
                quota.fuel = self.resources.fuel.unwrap_or(crate::quota::MAX_FUEL);
                quota.timeout_ms = self
                    .resources
                    .timeout
                    .unwrap_or(crate::quota::MAX_TIMEOUT_MS);
                // One instance per replica.
                quota.concurrency = 1;
                (AppKind::Worker, worker.args.clone())
            }
            None => (AppKind::Http, Vec::new()),
        };
        AppSpec {
            kind,
            args,
            source: None,
            artifact,
            replicas: scale.map_or(self.replicas, |s| s.clamp(self.replicas)),
            scale,
            quota,
            hosts: self.http.hosts.clone(),
            env: self.env.clone(),
            allowed_outbound_hosts: self.capabilities.allowed_outbound_hosts.clone(),
            files,
            placement: self.placement.clone(),
            strategy: UpdateStrategy {
                max_surge: self.update.max_surge.unwrap_or(strategy.max_surge),
                max_unavailable: self
                    .update
                    .max_unavailable
                    .unwrap_or(strategy.max_unavailable),
                progress_deadline_ms: self
                    .update
                    .progress_deadline
                    .unwrap_or(strategy.progress_deadline_ms),
                auto_rollback: self.update.auto_rollback.unwrap_or(strategy.auto_rollback),
            },
            health: self.health.as_ref().map(|h| HealthCheck {
                path: h.path.clone(),
                interval_ms: h.interval.unwrap_or_else(default_health_interval_ms),
                failure_threshold: h
                    .failure_threshold
                    .unwrap_or_else(default_failure_threshold),
            }),
        }
    }
}

/// The manifest key of a quota field.
fn resource_key(field: &str) -> &str {
    match field {
        "memory_bytes" => "memory",
        "timeout_ms" => "timeout",
        "reserve_bytes" => "reserve",
        other => other,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Byte offset of the first quoted occurrence of `value`.
fn find_value(text: &str, value: &str) -> Option<usize> {
    text.find(&format!("{value:?}"))
}

/// Byte offset of the first line that assigns `key`.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

mod dependencies;
pub use dependencies::{Dependency, is_interface_name};

#[cfg(test)]
mod tests;
