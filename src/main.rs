//! `skiff`: one binary for every role. This file parses arguments and wires
//! the library crates together; it has no logic of its own.

mod client;
mod commands;
mod compose;
mod controller;
mod deploy;
mod flags;
mod jobs;
mod new;
mod node;
mod oci;
mod serve;
mod up;

use clap::{Parser, Subcommand};
use skiff_sdk::ClientError;

/// Skiff: a lightweight WebAssembly orchestrator.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a controller and a node (or --nodes N) in one process: the local cluster.
    Up(up::UpArgs),
    /// Serve one wasi:http component standalone, like `wasmtime serve`.
    Serve(serve::ServeArgs),
    /// Run the controller: the HTTP API, state store, scheduler and reconciler.
    Controller(controller::ControllerArgs),
    /// Run a node: join a controller, run its replicas, route requests.
    Node(node::NodeArgs),
    /// Create a new Rust app (wasi:http, with its skiff.toml) in ./NAME.
    New(new::NewArgs),
    /// Build the app in DIR (run its build command) and check the component.
    Build(deploy::BuildArgs),
    /// Build, then write a deterministic bundle: manifest, component, files.
    Package(deploy::PackageArgs),
    /// Build, upload and apply the app in DIR, then follow its rollout.
    Deploy {
        #[command(flatten)]
        args: deploy::DeployArgs,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Build the app in DIR (or take a bundle) and publish it to an OCI
    /// registry: REGISTRY/REPO:TAG. Prints the pushed digest.
    Push(oci::PushArgs),
    /// Credentials the controller (and the nodes that need them) pull from
    /// a registry with.
    Registry {
        #[command(subcommand)]
        command: oci::RegistryCommand,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// List apps.
    Apps {
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Show an app: revision, replicas per node, conditions, recent events.
    App {
        /// App name.
        name: String,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Set an app's replica count.
    Scale {
        /// App name.
        name: String,
        /// Replicas.
        replicas: u32,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Revision history and rollback.
    Rollout {
        #[command(subcommand)]
        command: commands::Rollout,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Guest output (stdout/stderr) of an app, from every node running it.
    Logs {
        /// App name (or, with --run, job name).
        name: String,
        /// Keep following new lines.
        #[arg(short, long)]
        follow: bool,
        /// A job's run (its id `<job>.<n>`, or `n`): that run's output.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Delete an app.
    Delete {
        /// App name.
        name: String,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// List nodes.
    Nodes {
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Stop placing replicas on a node.
    Cordon {
        /// Node name.
        node: String,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Allow placing replicas on a node again.
    Uncordon {
        /// Node name.
        node: String,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Move a node's replicas elsewhere and keep it cordoned.
    Drain {
        /// Node name.
        node: String,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Recent events.
    Events {
        #[command(flatten)]
        args: commands::EventsArgs,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Run a command component once on the cluster, stream its output,
    /// and exit with its exit status.
    Run {
        #[command(flatten)]
        args: jobs::RunArgs,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// List jobs.
    Jobs {
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Show a job and its runs.
    Job {
        /// Job name.
        name: String,
        #[command(flatten)]
        connect: client::Connect,
    },
}

/// A failure the CLI explains in one line (plus a hint) and reports with
/// its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input: a manifest, a flag, a missing file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The build failed or its output is not a wasi:http component (exit 3).
    #[error("{0}")]
    Build(String),
    /// The controller could not be reached (exit 4).
    #[error("{0}")]
    Unreachable(String),
    /// The token was rejected (exit 5).
    #[error("{0}")]
    Auth(String),
    /// The app or node does not exist (exit 6).
    #[error("{0}")]
    NotFound(String),
    /// The controller refused the request (exit 7).
    #[error("{0}")]
    Rejected(String),
    /// A rollout failed or timed out (exit 8).
    #[error("{0}")]
    Rollout(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Build(_) => 3,
            Failure::Unreachable(_) => 4,
            Failure::Auth(_) => 5,
            Failure::NotFound(_) => 6,
            Failure::Rejected(_) => 7,
            Failure::Rollout(_) => 8,
        }
    }

    /// The CLI's reading of an API client error.
    fn from_client(e: &ClientError) -> Option<Self> {
        if e.is_unreachable() {
            return Some(Failure::Unreachable(format!(
                "{e}\n  hint: is the controller running? Start one with `skiff up`, or pass --controller / set SKIFF_CONTROLLER"
            )));
        }
        let message = match e {
            ClientError::Api { body, .. } => match &body.error.field {
                Some(field) => format!("{} ({field})", body.error.message),
                None => body.error.message.clone(),
            },
            other => other.to_string(),
        };
        Some(match e.status()?.as_u16() {
            401 | 403 => Failure::Auth(format!(
                "the controller refused the token: {message}\n  hint: use the admin token (skiff-data/admin.token), via --token or SKIFF_TOKEN"
            )),
            404 => Failure::NotFound(message),
            400..=499 => Failure::Rejected(message),
            _ => return None,
        })
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// This machine's hostname (for default identities).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".to_owned())
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    use commands as c;
    match command {
        Command::Up(args) => up::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Controller(args) => controller::run(args).await,
        Command::Node(args) => node::run(args).await,
        Command::New(args) => new::run(&args),
        Command::Build(args) => deploy::build(&args.dir, false).map(drop),
        Command::Package(args) => deploy::package(&args),
        Command::Deploy { args, connect } => deploy::deploy(&connect, &args).await,
        Command::Apps { connect } => c::apps(&connect).await,
        Command::App { name, connect } => c::app(&connect, &name).await,
        Command::Scale {
            name,
            replicas,
            connect,
        } => c::scale(&connect, &name, replicas).await,
        Command::Rollout { command, connect } => c::rollout(&connect, &command).await,
        Command::Logs {
            name,
            follow,
            run: Some(run),
            connect,
        } => jobs::run_logs(&connect, &name, &run, follow).await,
        Command::Logs {
            name,
            follow,
            run: None,
            connect,
        } => c::logs(&connect, &name, follow).await,
        Command::Delete { name, connect } => c::delete(&connect, &name).await,
        Command::Nodes { connect } => c::nodes(&connect).await,
        Command::Cordon { node, connect } => c::node_action(&connect, &node, "cordon").await,
        Command::Uncordon { node, connect } => c::node_action(&connect, &node, "uncordon").await,
        Command::Drain { node, connect } => c::node_action(&connect, &node, "drain").await,
        Command::Events { args, connect } => c::events(&connect, &args).await,
        Command::Run { args, connect } => jobs::run(&connect, &args).await,
        Command::Push(args) => oci::push(&args).await,
        Command::Registry { command, connect } => oci::registry_command(&connect, command).await,
        Command::Jobs { connect } => jobs::jobs(&connect).await,
        Command::Job { name, connect } => jobs::job(&connect, &name).await,
    }
}

/// Caps glibc's malloc arenas at two (as `MALLOC_ARENA_MAX=2` would). By
/// default glibc gives contending threads up to eight arenas per core, and
/// memory freed in one stays with it: with tokio's workers, the blocking
/// pool and a thread per SQLite connection, a controller or node serving
/// 10,000 apps kept a tenth to a fifth of its RSS in idle arenas
/// (`cargo bench --bench fleet`: node 95 → 78 MiB, controller 97–100 → 93
/// MiB). Small edge machines are what Skiff is for.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter. It is called first
    // thing in main, before any other thread exists or allocates.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    // Server roles log at info; user commands only say what goes wrong.
    let server = matches!(
        cli.command,
        Command::Up(_) | Command::Serve(_) | Command::Controller(_) | Command::Node(_)
    );
    if server || std::env::var_os("SKIFF_LOG").is_some() {
        init_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `skiff logs | head`: the reader has what it wanted.
        Err(e) if e.is::<commands::StdoutClosed>() => std::process::ExitCode::SUCCESS,
        // `skiff run`: the guest's own status.
        Err(e) if e.is::<jobs::GuestExit>() => {
            std::process::ExitCode::from(e.downcast_ref::<jobs::GuestExit>().map_or(1, |g| g.0))
        }
        Err(e) => {
            let failure = e
                .downcast_ref::<ClientError>()
                .and_then(Failure::from_client);
            match failure.as_ref().or_else(|| e.downcast_ref::<Failure>()) {
                Some(f) => {
                    eprintln!("error: {f}");
                    std::process::ExitCode::from(f.exit_code())
                }
                None => {
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
