//! `skiff`: one binary for every role. This file parses arguments and wires
//! the library crates together; it has no logic of its own.

mod controller;
mod node;
mod serve;

use clap::{Parser, Subcommand};

/// Skiff: a lightweight WebAssembly orchestrator.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one wasi:http component standalone, like `wasmtime serve`.
    Serve(serve::ServeArgs),
    /// Run the controller: the HTTP API, state store, scheduler and reconciler.
    Controller(controller::ControllerArgs),
    /// Run a node: join a controller, run its replicas, route requests.
    Node(node::NodeArgs),
}

/// This machine's hostname (for default identities).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".to_owned())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Controller(args) => controller::run(args).await,
            Command::Node(args) => node::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
