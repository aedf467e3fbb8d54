//! `skiff build` and `skiff deploy`: from an app directory with a
//! `skiff.toml` to replicas serving it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use skiff_sdk::api::{EventKind, ReplicaState};
use skiff_sdk::bundle::{BUNDLE_EXTENSION, Bundle};
use skiff_sdk::component::Interface;
use skiff_sdk::manifest::Manifest;
use skiff_sdk::quantity;

use crate::Failure;
use crate::client::Connect;

/// `skiff build [DIR]`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The app's directory (holding `skiff.toml`), or the manifest itself.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// `skiff package [DIR]`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The app's directory (holding `skiff.toml`), or the manifest itself.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the bundle (default: `<name>.skiff` here).
    #[arg(short = 'O', long = "out")]
    pub out: Option<PathBuf>,
    /// Use the component as it is; do not run the build command.
    #[arg(long)]
    pub no_build: bool,
}

/// `skiff deploy [DIR | BUNDLE.skiff]`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app's directory (holding `skiff.toml`), the manifest itself, or
    /// a bundle made by `skiff package`.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Use the component as it is; do not run the build command.
    #[arg(long)]
    pub no_build: bool,
    /// Return once applied, without following the rollout.
    #[arg(long)]
    pub no_wait: bool,
    /// Apply even if the new revision widens the app's capabilities (new
    /// outbound hosts or files); without it such a deploy stops and shows
    /// the difference.
    #[arg(long)]
    pub approve_capabilities: bool,
    /// How long to follow the rollout before giving up, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = quantity::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub insecure: crate::oci::InsecureRegistries,
}

/// A built, checked component.
pub struct Built {
    pub manifest: Manifest,
    pub manifest_file: PathBuf,
    /// The manifest's text, as written.
    pub manifest_text: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// The declared static files by relative (and guest) path.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

fn load(dir: &Path) -> anyhow::Result<(PathBuf, Manifest)> {
    Manifest::load(dir).map_err(|e| Failure::Usage(e.to_string()).into())
}

/// Runs the build command (unless `skip`) and checks the output is a
/// `wasi:http` component, or for a job (`[job]`) a command.
pub fn build(dir: &Path, skip: bool) -> anyhow::Result<Built> {
    let (file, manifest) = load(dir)?;
    let kind = Kind::of(&manifest);
    build_as(file, manifest, skip, kind)
}

/// What a component must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Serves HTTP (exports `wasi:http/incoming-handler`).
    Http,
    /// A command run to completion (exports `wasi:cli/run`).
    Command,
}

impl Kind {
    /// A job's or a worker's manifest describes a command; any other an
    /// HTTP app.
    pub fn of(manifest: &Manifest) -> Self {
        if manifest.job.is_some() || manifest.worker.is_some() {
            Kind::Command
        } else {
            Kind::Http
        }
    }
}

/// [`build`] with the manifest loaded, checking for `kind`.
pub fn build_as(
    file: PathBuf,
    manifest: Manifest,
    skip: bool,
    kind: Kind,
) -> anyhow::Result<Built> {
    let root = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    if let (Some(command), false) = (&manifest.component.build, skip) {
        eprintln!("building {}: {command}", manifest.name);
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&root)
            .status()
            .with_context(|| format!("running the build command {command:?}"))?;
        if !status.success() {
            return Err(Failure::Build(format!(
                "{}: the build command failed ({status}): {command}\n  hint: run it yourself in {} to see why",
                file.display(),
                root.display()
            ))
            .into());
        }
    }
    let path = root.join(&manifest.component.source);
    let bytes = std::fs::read(&path).map_err(|e| {
        Failure::Build(format!(
            "{}: component.source {}: {e}\n  hint: build it first (set component.build in the manifest, or run the build yourself)",
            file.display(),
            path.display()
        ))
    })?;
    let bytes = if manifest.dependencies.is_empty() {
        bytes
    } else {
        let composed = crate::compose::compose(&file, &manifest, bytes)?;
        eprintln!(
            "composed {} with {}",
            manifest.name,
            manifest
                .dependencies
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        composed
    };
    let imports = check_component(&path, &bytes, kind)?;
    eprintln!(
        "built {}: {}, {} component; imports {}",
        path.display(),
        crate::commands::human_bytes(bytes.len() as u64),
        match kind {
            Kind::Http => "wasi:http",
            Kind::Command => "command (wasi:cli/run)",
        },
        imports.join(", ")
    );
    let files = Bundle::read_files(&file, &manifest).map_err(|e| {
        Failure::Usage(format!(
            "{}: component.files: {}",
            file.display(),
            skiff_sdk::error_chain(&e)
        ))
    })?;
    let manifest_text = std::fs::read_to_string(&file)
        .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    Ok(Built {
        manifest,
        manifest_text,
        manifest_file: file,
        path,
        bytes,
        files,
    })
}

/// Checks `bytes` is a valid component of `kind`; returns its imports.
pub(crate) fn check_component(
    path: &Path,
    bytes: &[u8],
    kind: Kind,
) -> anyhow::Result<Vec<String>> {
    skiff_sdk::component::validate_component(bytes)
        .map_err(|why| Failure::Build(format!("{}: {why}", path.display())))?;
    crate::compose::check_imports(path, bytes)?;
    let interface = Interface::of(bytes);
    let exports = || {
        if interface.exports.is_empty() {
            "nothing".to_owned()
        } else {
            interface.exports.join(", ")
        }
    };
    if kind == Kind::Command {
        if interface.serves_http() {
            return Err(Failure::Build(format!(
                "{}: an HTTP component (it exports wasi:http/incoming-handler), not a command\n  hint: a job runs a component that exports wasi:cli/run (a plain `fn main` built for wasm32-wasip2); deploy an HTTP component without [job]",
                path.display()
            ))
            .into());
        }
        if !interface
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:cli/run"))
        {
            return Err(Failure::Build(format!(
                "{}: a component, but not a command: it exports {}\n  hint: a job runs a component that exports wasi:cli/run (a plain `fn main` built for wasm32-wasip2)",
                path.display(),
                exports()
            ))
            .into());
        }
        return Ok(interface.imports);
    }
    if !interface.serves_http() {
        return Err(Failure::Build(format!(
            "{}: a component, but not a wasi:http one: it exports {}\n  hint: an HTTP app exports wasi:http/incoming-handler (e.g. #[wstd::http_server])",
            path.display(),
            if interface.exports.is_empty() { "nothing".to_owned() } else { interface.exports.join(", ") }
        ))
        .into());
    }
    Ok(interface.imports)
}

/// `skiff package`: build, then write the deterministic bundle.
pub fn package(args: &PackageArgs) -> anyhow::Result<()> {
    let built = build(&args.dir, args.no_build)?;
    let bundle = Bundle::collect(&built.manifest_file, &built.manifest)
        .map_err(|e| Failure::Build(skiff_sdk::error_chain(&e)))?;
    let bytes = bundle
        .to_bytes()
        .map_err(|e| Failure::Build(e.to_string()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.{BUNDLE_EXTENSION}", built.manifest.name)));
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let digest = skiff_sdk::Digest::of(&bytes);
    eprintln!(
        "packaged {}: {} ({} static file(s))",
        out.display(),
        crate::commands::human_bytes(bytes.len() as u64),
        bundle.files.len()
    );
    println!(
        "{}",
        serde_json::json!({ "bundle": out, "digest": digest.to_string(), "size": bytes.len() })
    );
    Ok(())
}

/// The manifest and component of a bundle file, checked as `kind` (as
/// its manifest says: `None`).
pub fn unbundle(path: &Path, kind: Option<Kind>) -> anyhow::Result<Built> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let bundle = Bundle::from_bytes(&bytes)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let manifest_file = PathBuf::from(format!("{}!skiff.toml", path.display()));
    let manifest = Manifest::parse(&manifest_file, &bundle.manifest)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let component = PathBuf::from(format!("{}!component.wasm", path.display()));
    let kind = kind.unwrap_or_else(|| Kind::of(&manifest));
    check_component(&component, &bundle.component, kind)?;
    Ok(Built {
        manifest,
        manifest_text: bundle.manifest,
        manifest_file,
        path: component,
        bytes: bundle.component,
        files: bundle.files,
    })
}

/// A progress bar on stderr when it is a terminal; otherwise nothing (the
/// lines around it say what happened).
fn progress_bar() -> skiff_sdk::client::Progress {
    use std::io::{IsTerminal as _, Write as _};
    if !std::io::stderr().is_terminal() {
        return Box::new(|_, _| {});
    }
    Box::new(|sent, total| {
        const WIDTH: u64 = 30;
        let filled = (sent * WIDTH).checked_div(total).unwrap_or(WIDTH);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let percent = (sent * 100).checked_div(total).unwrap_or(100);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r  [{bar}] {percent:>3}% {} / {}",
            crate::commands::human_bytes(sent),
            crate::commands::human_bytes(total)
        );
        if sent >= total {
            let _ = writeln!(err);
        }
    })
}

/// `skiff deploy`: build, upload, apply, follow. From `oci://…`, the
/// controller takes the component and files from the registry itself
/// (pinned to the manifest digest the tag names now); only a job is pulled
/// and uploaded here.
pub async fn deploy(connect: &Connect, args: &DeployArgs) -> anyhow::Result<()> {
    if let Some(reference) = args.dir.to_str().filter(|d| d.starts_with("oci://")) {
        let image = crate::oci::open(reference, &args.insecure.hosts).await?;
        eprintln!("resolved {}", image.pinned);
        let pinned = image.pinned.to_string();
        if image.manifest.job.is_none() {
            let client = connect.client()?;
            let spec = image
                .manifest
                .to_spec(skiff_sdk::Digest::of(b""), BTreeMap::new());
            let name = image.manifest.name.clone();
            return apply_and_follow(&client, args, &name, &spec, Some(&pinned)).await;
        }
        let built = image.pull(None).await?;
        return upload_and_apply(connect, args, built, Some(pinned)).await;
    }
    let built = if args.dir.extension().is_some_and(|e| e == BUNDLE_EXTENSION) {
        unbundle(&args.dir, None)?
    } else {
        build(&args.dir, args.no_build)?
    };
    upload_and_apply(connect, args, built, None).await
}

/// Uploads what was built, then applies it (an app: and follows its
/// rollout).
async fn upload_and_apply(
    connect: &Connect,
    args: &DeployArgs,
    built: Built,
    source: Option<String>,
) -> anyhow::Result<()> {
    let client = connect.client()?;
    let name = built.manifest.name.clone();
    eprintln!(
        "uploading {} ({}) to {}",
        built.path.display(),
        crate::commands::human_bytes(built.bytes.len() as u64),
        connect.url()
    );
    let artifact = client
        .upload_artifact_with_progress(bytes::Bytes::from(built.bytes), progress_bar())
        .await?;
    let mut files = BTreeMap::new();
    for (path, bytes) in built.files {
        let uploaded = client.upload_file(bytes::Bytes::from(bytes)).await?;
        files.insert(path.to_string_lossy().into_owned(), uploaded.digest);
    }
    if built.manifest.job.is_some() {
        let spec = built.manifest.to_job_spec(artifact.digest);
        let job = client.apply_job(&name, &spec).await?;
        eprintln!(
            "applied job {name}: {} completion(s), {} at once, artifact {}\n  follow it with `skiff job {name}`",
            job.spec.completions, job.spec.parallelism, artifact.digest
        );
        println!(
            "{}",
            serde_json::json!({ "job": name, "version": job.version })
        );
        return Ok(());
    }
    let mut spec = built.manifest.to_spec(artifact.digest, files);
    spec.source = source;
    apply_and_follow(&client, args, &name, &spec, None).await
}

/// Applies `spec` (with its component taken from `image` when given),
/// then follows the rollout unless told not to.
async fn apply_and_follow(
    client: &skiff_sdk::Client,
    args: &DeployArgs,
    name: &str,
    spec: &skiff_sdk::api::AppSpec,
    image: Option<&str>,
) -> anyhow::Result<()> {
    let seen = latest_event(client, name).await;
    let applied = match image {
        Some(reference) => {
            client
                .apply_app_image(name, spec, reference, args.approve_capabilities)
                .await
        }
        None if args.approve_capabilities => client.apply_app_approved(name, spec).await,
        None => client.apply_app(name, spec).await,
    };
    let app = match applied {
        Err(skiff_sdk::ClientError::Api { body, .. })
            if body.error.code == "capabilities_not_approved" =>
        {
            let diff = body.error.capabilities.map(|d| *d).unwrap_or_default();
            return Err(Failure::Rejected(format!(
                "{name}: this revision widens what the app may reach:\n{diff}  review it, then run again with --approve-capabilities"
            ))
            .into());
        }
        other => other?,
    };
    if let Some(diff) = &app.capability_changes {
        eprint!("capabilities changed (approved):\n{diff}");
    }
    eprintln!(
        "applied {name}: revision {}, {} replica(s), artifact {}",
        app.revision, app.spec.replicas, app.spec.artifact
    );
    if args.no_wait {
        return Ok(());
    }
    follow_rollout(client, name, seen, args.timeout).await
}

/// Prints the app's events from `seen` on until every replica runs the
/// current revision and is Ready (Ok), one of them Failed, or `timeout`
/// passes (a rollout failure, exit 8).
pub async fn follow_rollout(
    client: &skiff_sdk::Client,
    name: &str,
    mut seen: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = name.to_owned();
    let start = Instant::now();
    let mut rolled_back: Option<String> = None;
    loop {
        for e in client.events(Some(&name), seen, 1000).await? {
            eprintln!("  {:<18} {}", e.kind, e.message);
            if e.kind == EventKind::RolloutFailed {
                rolled_back = Some(e.message.clone());
            }
            seen = e.id;
        }
        let app = client.app(&name).await?;
        let replicas = client.replicas(&name).await?;
        let current: Vec<_> = replicas
            .iter()
            .filter(|r| r.revision == app.revision)
            .collect();
        // With automatic rollback the controller returns to the last good
        // revision by itself: keep following until that is done.
        let will_roll_back = app.spec.strategy.auto_rollback && app.status.good_revision.is_some();
        if let Some(failed) = current
            .iter()
            .find(|r| r.state == ReplicaState::Failed)
            .filter(|_| !will_roll_back)
        {
            return Err(Failure::Rollout(format!(
                "{name}: replica {} on {} failed: {}\n  hint: `skiff app {name}` shows every replica; `skiff rollout undo {name}` returns to the previous revision",
                failed.id,
                failed.node,
                failed.reason.as_deref().unwrap_or("no reason given")
            ))
            .into());
        }
        let ready = current
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count();
        if ready as u32 >= app.spec.replicas && replicas.len() == current.len() {
            if let Some(why) = rolled_back {
                return Err(Failure::Rollout(format!(
                    "{name}: the rollout failed and was rolled back: {why}; now at revision {} ({ready} ready)\n  hint: `skiff app {name}` and `skiff events --app {name}` show what happened",
                    app.revision
                ))
                .into());
            }
            eprintln!(
                "{name} is ready: {ready}/{} replicas at revision {} ({:.1} s)",
                app.spec.replicas,
                app.revision,
                start.elapsed().as_secs_f64()
            );
            println!(
                "{}",
                serde_json::json!({ "app": name, "revision": app.revision, "ready": ready })
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            let why = app
                .status
                .conditions
                .iter()
                .filter(|c| !c.status)
                .map(|c| c.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Failure::Rollout(format!(
                "{name}: not ready after {:?} ({ready}/{} ready){}",
                timeout,
                app.spec.replicas,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the app's newest event (0 if none or unreadable).
pub async fn latest_event(client: &skiff_sdk::Client, name: &str) -> u64 {
    let mut since = 0;
    while let Ok(page) = client.events(Some(name), since, 1000).await {
        match page.last() {
            Some(last) if page.len() == 1000 => since = last.id,
            Some(last) => return last.id,
            None => break,
        }
    }
    since
}
