//! How CLI commands find and talk to the controller: flags, then the
//! environment, then the files `skiff up` / `skiff controller` write in the
//! data directory (so commands run from the same directory just work).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use skiff_sdk::Client;

/// File in the data directory naming the controller's API URL.
pub const CONTROLLER_FILE: &str = "controller.json";
/// The controller URL when nothing says otherwise.
const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";

/// Records where the controller listens, for the CLI.
pub fn write_controller_file(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let path = data_dir.join(CONTROLLER_FILE);
    let body = serde_json::json!({ "url": format!("http://{addr}") }).to_string();
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// Where the controller is and who we are.
#[derive(Debug, Args)]
pub struct Connect {
    /// Controller API URL (default: from `<data-dir>/controller.json`, else
    /// http://127.0.0.1:7070).
    #[arg(long, env = "SKIFF_CONTROLLER", global = true)]
    pub controller: Option<String>,
    /// Admin token (default: `<data-dir>/admin.token`).
    #[arg(long, env = "SKIFF_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory written by `skiff up` / `skiff controller`.
    #[arg(
        long = "data-dir",
        env = "SKIFF_DATA_DIR",
        default_value = "skiff-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

impl Connect {
    /// The controller URL to use.
    pub fn url(&self) -> String {
        if let Some(url) = &self.controller {
            return url.clone();
        }
        std::fs::read_to_string(self.data_dir.join(CONTROLLER_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["url"].as_str().map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_CONTROLLER.to_owned())
    }

    /// An authenticated client.
    pub fn client(&self) -> anyhow::Result<Client> {
        let token = match &self.token {
            Some(token) => token.clone(),
            None => {
                let file = self.data_dir.join("admin.token");
                std::fs::read_to_string(&file).map_err(|_| {
                    anyhow::Error::new(crate::Failure::Usage(format!(
                        "no admin token: {} does not exist\n  hint: pass --token, set SKIFF_TOKEN, or run from the directory where `skiff up` runs",
                        file.display()
                    )))
                })?
            }
        };
        let url = self.url();
        let client = Client::new(&url).map_err(|e| {
            anyhow::Error::new(crate::Failure::Usage(format!(
                "{e}\n  hint: --controller takes http://HOST:PORT"
            )))
        })?;
        Ok(client.with_token(&token))
    }
}
