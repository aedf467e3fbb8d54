//! Running a `wasi:cli/run` component to completion (a job's run): one
//! fresh instance under the run's quota — `fuel` for the whole run, the
//! wall-clock `timeout` (epoch deadline plus an outer timer, as for
//! requests), `memory` per instance and drawn from the node's budget —
//! with the run's argv and environment, and its stdout/stderr kept in a
//! buffer of its own (read as the logs of the run id).
//!
//! How a run ends ([`CommandEnd`]): `run` returning `ok` or the guest
//! exiting with status 0 is success; `run` returning `err` is exit 1
//! (WASI 0.2's `exit` carries only success or failure); a guest that calls
//! `exit-with-code` gets its own code. Quota breaks are classified as for
//! requests, from the trap code and the limiter's record.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use skiff_sdk::api::reason;
use skiff_sdk::{Digest, Quota, error_chain};
use tokio::sync::OnceCell;
use wasmtime::Store;
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::host::{Capabilities, HostState};
use crate::logs::{DEFAULT_LOG_LINES, LogBuffer};
use crate::quota::{Limiter, Outcome, classify};
use crate::{FUEL_YIELD_INTERVAL, Runtime, RuntimeError};

/// How many finished runs' output a node keeps readable.
const KEPT_RUN_LOGS: usize = 256;
/// How many command components stay loaded (pre-linked) when no run uses
/// them: a schedule's next run starts without linking again.
const KEPT_COMMANDS: usize = 64;
const FUEL_MESSAGE: &str = "the run used up its CPU (fuel) quota";
const MEMORY_MESSAGE: &str = "the run asked for more memory than its quota";
const TIMEOUT_MESSAGE: &str = "the run outlived its time quota";
/// Longest failure message reported.
const MAX_MESSAGE: usize = 1024;

type Loaded = Arc<OnceCell<Result<CommandPre<HostState>, String>>>;

/// The runtime's command components and the output of recent runs.
#[derive(Default)]
pub(crate) struct Commands {
    loaded: Mutex<VecDeque<(Digest, Loaded)>>,
    logs: Mutex<VecDeque<Arc<LogBuffer>>>,
}

impl Commands {
    fn cell(&self, digest: Digest) -> Loaded {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = loaded.iter().position(|(d, _)| *d == digest) {
            // Most recently used last.
            let entry = loaded.remove(i);
            if let Some(entry) = entry {
                loaded.push_back(entry);
            }
        } else {
            loaded.push_back((digest, Arc::default()));
            while loaded.len() > KEPT_COMMANDS {
                loaded.pop_front();
            }
        }
        loaded
            .back()
            .map(|(_, cell)| cell.clone())
            .unwrap_or_default()
    }

    fn buffer(&self, id: &str) -> Arc<LogBuffer> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = logs.iter().find(|l| l.app() == id) {
            return found.clone();
        }
        let buffer = Arc::new(LogBuffer::new(id, DEFAULT_LOG_LINES));
        logs.push_back(buffer.clone());
        while logs.len() > KEPT_RUN_LOGS {
            logs.pop_front();
        }
        buffer
    }

    pub(crate) fn logs_of(&self, id: &str) -> Option<Arc<LogBuffer>> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter().find(|l| l.app() == id).cloned()
    }
}

/// One run to carry out.
#[derive(Clone, Debug)]
pub struct CommandRun {
    /// Run id: names its output buffer.
    pub id: String,
    /// `argv[0]` (the job's name).
    pub program: String,
    /// The component (stored in the cache).
    pub digest: Digest,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The guest's environment.
    pub env: Vec<(String, String)>,
    /// Limits of the whole run.
    pub quota: Quota,
    /// What it may reach.
    pub capabilities: Capabilities,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEnd {
    /// The guest's exit status, when it exited (0: success).
    pub exit_code: Option<i32>,
    /// Why it failed (see [`skiff_sdk::api::reason`]); `None`: success.
    pub reason: Option<String>,
    /// Details for humans.
    pub message: Option<String>,
}

impl CommandEnd {
    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.reason.is_none()
    }

    fn failed(reason: &str, message: impl Into<String>) -> Self {
        Self {
            exit_code: None,
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
        }
    }

    fn exited(code: i32) -> Self {
        Self {
            exit_code: Some(code),
            reason: (code != 0).then(|| reason::exit(code)),
            message: None,
        }
    }
}

impl Runtime {
    /// The pre-linked command of a stored component (compiled once).
    async fn command(self: &Arc<Self>, digest: Digest) -> Result<CommandPre<HostState>, String> {
        let cell = self.commands.cell(digest);
        cell.get_or_init(|| async {
            let this = self.clone();
            let component = tokio::task::spawn_blocking(move || this.cache.load(&digest))
                .await
                .map_err(|_| RuntimeError::LoadInterrupted(digest))
                .and_then(|r| r)
                .map_err(|e| error_chain(&e))?;
            self.linker
                .instantiate_pre(&component)
                .and_then(CommandPre::new)
                .map_err(|e| {
                    format!("the component cannot run as a command here (it must export wasi:cli/run and import only WASI): {e:#}")
                })
        })
        .await
        .clone()
    }

    /// Runs a command to completion under its quota; `started` is called
    /// (with the time, Unix ms) once the instance exists and its `run` is
    /// about to be called. Never fails: every problem is a [`CommandEnd`].
    pub async fn run_command(
        self: &Arc<Self>,
        run: CommandRun,
        started: impl FnOnce(i64) + Send,
    ) -> CommandEnd {
        if !self.cache.contains(&run.digest) {
            return CommandEnd::failed(
                reason::START,
                format!("component {} is not stored here", run.digest),
            );
        }
        let pre = match self.command(run.digest).await {
            Ok(pre) => pre,
            Err(why) => return CommandEnd::failed(reason::START, why),
        };
        let quota = run.quota;
        let expected = quota.reservation_bytes().min(quota.memory_bytes);
        if !self.budget.admit(expected, self.config.queue_timeout).await {
            return CommandEnd::failed(
                reason::NODE_MEMORY,
                "this node had no memory left for the run",
            );
        }
        let logs = self.commands.buffer(&run.id);
        let program: Arc<str> = run.program.as_str().into();
        let mut argv = Vec::with_capacity(run.args.len() + 1);
        argv.push(run.program.clone());
        argv.extend(run.args.iter().cloned());
        let limiter = Limiter::with_budget(quota.memory_bytes, self.budget.clone(), expected);
        let state = HostState::new(
            &program,
            &argv,
            &run.env,
            &run.capabilities,
            &logs,
            &Arc::new(AtomicU64::new(0)),
            limiter,
        );
        let mut store = match state {
            Ok(state) => Store::new(&self.engine, state),
            Err(e) => return CommandEnd::failed(reason::START, format!("{e:#}")),
        };
        store.limiter(|state| &mut state.limiter);
        let tick = self.config.engine.epoch_tick.as_millis().max(1) as u64;
        store.set_epoch_deadline(quota.timeout_ms.div_ceil(tick) + 1);
        store.epoch_deadline_trap();
        let fuel = store
            .set_fuel(quota.fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)));
        if let Err(e) = fuel {
            return CommandEnd::failed(reason::START, format!("{e:#}"));
        }
        let result = tokio::time::timeout(quota.timeout(), async {
            let command = pre.instantiate_async(&mut store).await?;
            started(now_ms());
            command.wasi_cli_run().call_run(&mut store).await
        })
        .await;
        let memory_denied = store.data().limiter.denied();
        drop(store);
        let end = match result {
            Ok(Ok(Ok(()))) => CommandEnd::exited(0),
            Ok(Ok(Err(()))) => CommandEnd::exited(1),
            Ok(Err(error)) => match error.downcast_ref::<I32Exit>() {
                Some(exit) if !memory_denied => CommandEnd::exited(exit.0),
                _ => match classify(&error, memory_denied) {
                    Outcome::Fuel => CommandEnd::failed(reason::FUEL, FUEL_MESSAGE),
                    Outcome::Memory => CommandEnd::failed(reason::MEMORY, MEMORY_MESSAGE),
                    Outcome::Timeout => CommandEnd::failed(reason::TIMEOUT, TIMEOUT_MESSAGE),
                    // The trap itself, not the backtrace before it.
                    _ => {
                        CommandEnd::failed(reason::TRAP, truncate(&error.root_cause().to_string()))
                    }
                },
            },
            Err(_elapsed) => CommandEnd::failed(reason::TIMEOUT, TIMEOUT_MESSAGE),
        };
        if let Some(why) = &end.reason {
            logs.note(&format!("run {} failed: {why}", run.id));
        }
        end
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
