//! `skiff new NAME`: a buildable Rust app (wasi:http via `wstd`) with its
//! `skiff.toml`, ready for `skiff deploy`.

use std::path::PathBuf;

use clap::Args;

use crate::Failure;

/// The `wstd` version the template pins (the one the examples build with).
const WSTD_VERSION: &str = "0.6.8";

#[derive(Debug, Args)]
pub struct NewArgs {
    /// App name (a DNS label: it is reached at `<name>.<domain>`).
    pub name: String,
    /// Directory to create (default: `./<name>`).
    #[arg(long)]
    pub path: Option<PathBuf>,
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
wstd = "={WSTD_VERSION}"

# A workspace of its own: building here never joins an enclosing workspace.
[workspace]

# Small components compile and load faster.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#
    )
}

fn main_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a Skiff app. Every request runs in a fresh instance under the
//! quota in skiff.toml; `println!` output shows in `skiff logs {name}`.

use wstd::http::{{Body, Error, Request, Response, StatusCode}};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {{
    println!("{{}} {{}}", request.method(), request.uri().path());
    match request.uri().path() {{
        "/" => {{
            let version = std::env::var("VERSION").unwrap_or_else(|_| "dev".to_owned());
            Ok(Response::new(format!("Hello from {name}! version={{version}}\n").into()))
        }}
        "/healthz" => Ok(Response::new("ok\n".into())),
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body("not found\n".into())?),
    }}
}}
"#
    )
}

fn skiff_toml(name: &str) -> String {
    format!(
        r#"# Reference: the skiff.toml section of Skiff's README.
manifest_version = 1
name = "{name}"
replicas = 1

[component]
source = "target/wasm32-wasip2/release/{name}.wasm"
build = "cargo build --release --target wasm32-wasip2"

[resources]
memory = "16Mi"
fuel = "100M"
timeout = "5s"
concurrency = 8

[env]
VERSION = "0.1.0"

[health]
path = "/healthz"
"#
    )
}

pub fn run(args: &NewArgs) -> anyhow::Result<()> {
    skiff_sdk::api::validate_name(&args.name).map_err(|e| {
        Failure::Usage(format!(
            "{e}\n  hint: app names are DNS labels, e.g. my-app"
        ))
    })?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::Usage(format!(
            "{} already exists and is not empty\n  hint: pick another name or --path",
            dir.display()
        ))
        .into());
    }
    let files = [
        ("Cargo.toml", cargo_toml(&args.name)),
        ("src/main.rs", main_rs(&args.name)),
        ("skiff.toml", skiff_toml(&args.name)),
        (".gitignore", "/target\n*.skiff\n".to_owned()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::Usage(format!("writing {}: {e}", path.display())))?;
    }
    eprintln!(
        "created {name} in {dir}\n  next: skiff deploy {dir}   (needs `rustup target add wasm32-wasip2`)",
        name = args.name,
        dir = dir.display()
    );
    Ok(())
}
