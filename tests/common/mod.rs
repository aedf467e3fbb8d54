//! Helpers shared by the integration tests: the example guests, an
//! in-process node on loopback, a minimal HTTP client, and a `skiff` process
//! wrapper that reads the readiness line and prints logs on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use skiff_runtime::{Deployment, Runtime, RuntimeConfig};
use skiff_sdk::Quota;

pub mod cluster;
pub mod poll;
pub mod raw;
pub mod registry;
#[allow(unused_imports)] // not every test crate waits
pub use poll::{eventually, poll};
use tokio_util::sync::CancellationToken;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the example guests once per test process (cargo makes concurrent
/// builds from several test processes wait for each other) and returns the
/// directory holding `<name>.wasm`.
pub fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root().join("examples/Cargo.toml"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("running cargo to build the examples");
        assert!(
            output.status.success(),
            "building the examples failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        root().join("examples/target/wasm32-wasip2/release")
    })
}

/// The path of an example component.
pub fn example_path(name: &str) -> PathBuf {
    examples_dir().join(format!("{name}.wasm"))
}

/// A copy of the hello manifest in `dir` with `VERSION` set and the
/// component path made absolute.
pub fn hello_manifest(dir: &Path, version: &str) -> std::path::PathBuf {
    let app = dir.join(format!("hello-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    let source = example_path("hello");
    let manifest = std::fs::read_to_string(root().join("examples/hello/skiff.toml"))
        .unwrap()
        .replace(
            "../target/wasm32-wasip2/release/hello.wasm",
            source.to_str().unwrap(),
        )
        .replace("VERSION = \"1.0.0\"", &format!("VERSION = \"{version}\""))
        .lines()
        .filter(|l| !l.starts_with("build ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(app.join("skiff.toml"), manifest).unwrap();
    app
}

/// The component with a custom section appended: valid, the same
/// behaviour, a new digest.
pub fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"skiff-variant";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut out = component.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(size).unwrap());
    out.push(u8::try_from(name.len()).unwrap());
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// The interface the greet example imports and greeter provides.
pub const GREETER: &str = "example:greeting/greeter";

/// greet's manifest in `dir/name`, its component path absolute and its
/// `[dependencies]` replaced by `dependencies` (TOML lines).
pub fn greet_manifest(dir: &Path, name: &str, dependencies: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    let text = std::fs::read_to_string(root().join("examples/greet/skiff.toml")).unwrap();
    let (head, _) = text.split_once("[dependencies]").unwrap();
    let (_, tail) = text.split_once("[resources]").unwrap();
    let manifest = format!("{head}[dependencies]\n{dependencies}\n\n[resources]{tail}")
        .replace(
            "../target/wasm32-wasip2/release/greet.wasm",
            example_path("greet").to_str().unwrap(),
        )
        .lines()
        .filter(|l| !l.starts_with("build ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(app.join("skiff.toml"), manifest).unwrap();
    app
}

/// `"example:greeting/greeter" = { path = "<the example named>" }`.
pub fn provided_by(example: &str) -> String {
    format!(
        "\"{GREETER}\" = {{ path = {:?} }}",
        example_path(example).to_str().unwrap()
    )
}

/// [`hello_manifest`] with a health check that always fails (a path
/// hello answers 404, checked every 100 ms): its rollout never completes.
pub fn hello_manifest_unhealthy(dir: &Path, version: &str) -> std::path::PathBuf {
    let app = hello_manifest(dir, version);
    let manifest = std::fs::read_to_string(app.join("skiff.toml"))
        .unwrap()
        .replace(
            "path = \"/healthz\"",
            "path = \"/nope\"\ninterval = \"100ms\"",
        );
    std::fs::write(app.join("skiff.toml"), manifest).unwrap();
    app
}

/// A helper program a test needs (`package` is the Debian package that
/// `.ci/run` installs): its path, or `None` outside CI when it is missing
/// (the test is skipped, loudly). Under CI its absence is a failure.
pub fn required_program(program: &str, package: &str) -> Option<PathBuf> {
    let found = on_path(program);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {package} (see .ci/run)"
        );
        eprintln!("{program} is not installed ({package}): skipping this test");
    }
    found
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` as found on the `PATH`, if it is installed.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// `skiff` run as a user would in `dir`: none of this process's controller,
/// token, data directory or registry credentials, nor cargo's target
/// directory or flags (build commands run cargo for the examples).
pub fn skiff_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command.current_dir(dir);
    for var in [
        "SKIFF_CONTROLLER",
        "SKIFF_TOKEN",
        "SKIFF_DATA_DIR",
        "SKIFF_REGISTRY_USERNAME",
        "SKIFF_REGISTRY_PASSWORD",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs `command` to its end: (exit code, stdout, stderr).
pub fn outcome(mut command: Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `skiff up` in `dir` on free loopback ports, one node declaring 1 GiB.
pub fn skiff_up(dir: &Path) -> SkiffProcess {
    let mut up = Command::new(env!("CARGO_BIN_EXE_skiff"));
    up.args([
        "up",
        "--listen",
        "127.0.0.1:0",
        "--ingress",
        "127.0.0.1:0",
        "--memory",
        "1Gi",
    ])
    .current_dir(dir);
    SkiffProcess::spawn(up)
}

/// The bytes of an example component.
pub fn example(name: &str) -> Vec<u8> {
    let path = example_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A compile cache shared by all tests of this checkout, so each component
/// is compiled once rather than once per test process.
pub fn shared_cache_dir() -> PathBuf {
    root().join("target").join("skiff-test-cache")
}

/// A runtime and its ingress, in this process, on 127.0.0.1:0.
pub struct TestNode {
    pub runtime: Arc<Runtime>,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestNode {
    /// Starts a node with `config` tweaks applied to the test defaults.
    pub async fn start(tweak: impl FnOnce(&mut RuntimeConfig)) -> Self {
        Self::start_with_limits(tweak, skiff_runtime::ingress::Limits::default()).await
    }

    /// [`Self::start`] with the ingress's client limits.
    pub async fn start_with_limits(
        tweak: impl FnOnce(&mut RuntimeConfig),
        limits: skiff_runtime::ingress::Limits,
    ) -> Self {
        let mut config = RuntimeConfig::new(shared_cache_dir());
        config.engine.max_instances = 200;
        tweak(&mut config);
        let runtime = Runtime::new(config).expect("runtime starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(skiff_runtime::ingress::run(
            listener,
            runtime.clone(),
            limits,
            shutdown.clone(),
        ));
        Self {
            runtime,
            addr,
            shutdown,
            server: Some(server),
        }
    }

    /// Deploys example `example` as app `name` with `quota`, and warms it.
    pub async fn deploy(&self, name: &str, example_name: &str, quota: Quota) {
        let digest = self
            .runtime
            .store_component(&example(example_name))
            .unwrap();
        self.runtime
            .deploy(Deployment {
                name: name.to_owned(),
                digest,
                quota,
                env: vec![],
                capabilities: Default::default(),
            })
            .unwrap();
        self.runtime.warm(name).await.unwrap();
    }

    /// Sends a request for app `app`.
    pub async fn send(&self, app: &str, method: Method, path: &str, body: &[u8]) -> Reply {
        send(
            self.addr,
            &format!("{app}.localhost"),
            method,
            path,
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// `GET path` on app `app`.
    pub async fn get(&self, app: &str, path: &str) -> Reply {
        self.send(app, Method::GET, path, b"").await
    }

    /// Stops accepting, drains, and waits for the server to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get("x-skiff-reason")
            .and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// One request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, host: &str, method: Method, path: &str, body: Bytes) -> Reply {
    let mut client = Client::connect(addr).await;
    client.send(host, method, path, body).await
}

/// `GET path` on a new connection from the local address `from` (another
/// client to the server; any of 127.0.0.0/8 reaches a loopback server).
pub async fn get_from(from: &str, addr: SocketAddr, host: &str, path: &str) -> Reply {
    let stream = raw::connect_from(from, addr).await;
    let mut client = Client::over(stream).await;
    client.send(host, Method::GET, path, Bytes::new()).await
}

/// An HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::over(tokio::net::TcpStream::connect(addr).await.unwrap()).await
    }

    pub async fn over(stream: tokio::net::TcpStream) -> Self {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    pub async fn send(&mut self, host: &str, method: Method, path: &str, body: Bytes) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(body))
            .unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A `skiff` process. Its stdout's first line is the JSON readiness line;
/// stderr is collected and printed when the process is dropped (killed).
pub struct SkiffProcess {
    pub child: Child,
    pub ready: serde_json::Value,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl SkiffProcess {
    /// Starts `skiff <args>` and waits (up to 60 s) for its readiness line.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
        command.args(args);
        Self::spawn(command)
    }

    /// Runs `command` (which must run skiff) and waits for its readiness line.
    pub fn spawn(mut command: Command) -> Self {
        let args = format!("{command:?}");
        let mut child = command
            .env("SKIFF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning skiff");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("readiness line {line:?}: {e}")),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "skiff {args:?} never became ready ({other:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Self {
            child,
            ready,
            stderr,
        }
    }

    /// The address from the readiness line.
    /// The ingress of the first node of a `skiff up`.
    pub fn ingress(&self) -> SocketAddr {
        self.ready["nodes"][0]["ingress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.ready["listening"].as_str().unwrap().parse().unwrap()
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for SkiffProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- skiff stderr ----\n{}", self.stderr.lock().unwrap());
        }
    }
}
