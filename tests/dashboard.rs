//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (ChromeDriver, through `fantoccini`) against a real `skiff up` with the
//! hello app deployed. Sign-in (a wrong token refused), the overview, a
//! scale done in the CLI appearing without a reload, a scale and a refused
//! scale done on the page, a rollout's progress, a rollback, cordon and
//! uncordon, the events filter, unknown pages, a revoked token and an
//! unreachable API. Screenshots of each page are saved under
//! `target/dashboard-screenshots/` as test artefacts.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`); skipped without them outside
//! CI, a failure in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::root;
use fantoccini::{Client, ClientBuilder, Locator};

const DEADLINE: Duration = Duration::from_secs(30);

/// A ChromeDriver process on a free loopback port.
struct Driver {
    _child: common::KillOnDrop,
    url: String,
}

/// Starts ChromeDriver, or `None` (outside CI) when it is not installed.
async fn driver() -> Option<Driver> {
    let path = common::required_program("chromedriver", "chromium and chromium-driver")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        _child: common::KillOnDrop(child),
        url: format!("http://127.0.0.1:{port}"),
    };
    common::poll(DEADLINE, "chromedriver accepting connections", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop)
    })
    .await;
    Some(driver)
}

/// A headless Chromium session, with a fresh profile in `profile`.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let chromium =
        common::on_path("chromium").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1360,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("starting a Chromium session through chromedriver")
}

/// The text of the element `css`, once it exists.
async fn text(page: &Client, css: &str) -> String {
    common::poll(DEADLINE, &format!("element {css}"), || async {
        page.find(Locator::Css(css)).await?.text().await
    })
    .await
}

/// Waits until the text of `css` satisfies `ok`, without reloading.
async fn wait_text(page: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    common::poll(DEADLINE, what, || async {
        let text = match page.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if ok(&text) {
            return Ok(text);
        }
        // The page's banner says why, when it knows.
        let banner = match page.find(Locator::Css("#banner")).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Err(format!("{text:?} (banner: {banner:?})"))
    })
    .await
}

async fn click(page: &Client, css: &str) {
    common::poll(DEADLINE, &format!("click {css}"), || async {
        page.find(Locator::Css(css)).await?.click().await
    })
    .await;
}

async fn type_into(page: &Client, css: &str, value: &str) {
    let input = common::poll(DEADLINE, &format!("input {css}"), || async {
        page.find(Locator::Css(css)).await
    })
    .await;
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// Clicks `css`, then the confirmation dialog's Confirm.
async fn confirm(page: &Client, css: &str) {
    click(page, css).await;
    click(page, "#confirm-ok").await;
}

async fn screenshot(page: &Client, name: &str) {
    let dir = root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = page.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// `skiff <args>` in `dir`, which must succeed; its stdout.
fn skiff(dir: &Path, args: &[&str]) -> String {
    let mut command = common::skiff_command(dir);
    command.args(args);
    let (code, out, err) = common::outcome(command);
    assert_eq!(code, 0, "skiff {args:?}: {err}");
    out
}

fn app_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&skiff(dir, &["app", "hello", "-o", "json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_manages_what_the_cli_does() {
    let Some(driver) = driver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    common::examples_dir();
    let mut up = common::skiff_up(work);
    let ui = up.ready["dashboard"].as_str().unwrap().to_owned();
    let token = std::fs::read_to_string(work.join(up.ready["admin_token_file"].as_str().unwrap()))
        .unwrap()
        .trim()
        .to_owned();
    let v1 = common::hello_manifest(work, "1.0.0");
    skiff(work, &["deploy", v1.to_str().unwrap()]);

    let profile = tempfile::tempdir().unwrap();
    let page = browser(&driver, profile.path()).await;

    // Sign-in: a wrong token is refused, the right one opens the overview.
    page.goto(&ui).await.unwrap();
    type_into(&page, "#token", "not-the-token").await;
    click(&page, "#sign-in").await;
    let refused = text(&page, "#signin-error").await;
    assert!(refused.contains("refused"), "{refused}");
    type_into(&page, "#token", &token).await;
    click(&page, "#sign-in").await;
    wait_text(
        &page,
        "tr[data-app=hello] td.ready",
        "hello 1/1 on the overview",
        |t| t == "1/1",
    )
    .await;
    wait_text(&page, "tr[data-node=local]", "the local node Ready", |t| {
        t.contains("Ready")
    })
    .await;
    assert_eq!(text(&page, "#count-apps").await, "1");
    assert_eq!(text(&page, "#count-nodes-ready").await, "1");
    screenshot(&page, "overview").await;

    // A scale done in the CLI appears without a reload.
    skiff(work, &["scale", "hello", "2"]);
    wait_text(
        &page,
        "tr[data-app=hello] td.ready",
        "hello 2/2 on the overview",
        |t| t == "2/2",
    )
    .await;

    // The app page: a scale done on the page is carried out.
    page.goto(&format!("{ui}/apps/hello")).await.unwrap();
    wait_text(&page, "#app-ready", "2/2 on the app page", |t| t == "2/2").await;
    type_into(&page, "#scale-input", "3").await;
    confirm(&page, "#scale-button").await;
    wait_text(&page, "#app-ready", "3/3 after the page's scale", |t| {
        t == "3/3"
    })
    .await;
    assert_eq!(app_json(work)["app"]["spec"]["replicas"], 3);

    // An action the API refuses shows its message and field, and changes nothing.
    type_into(&page, "#scale-input", "5000").await;
    confirm(&page, "#scale-button").await;
    let error = wait_text(&page, "#confirm-error", "the API's refusal", |t| {
        !t.is_empty()
    })
    .await;
    assert!(error.contains("replicas"), "{error}");
    click(&page, "#confirm-cancel").await;
    assert_eq!(app_json(work)["app"]["spec"]["replicas"], 3);

    // A rollout shows its progress, then completes.
    let v2 = common::hello_manifest(work, "2.0.0");
    skiff(work, &["deploy", v2.to_str().unwrap()]);
    wait_text(
        &page,
        "#rollout-summary",
        "rollout to revision 2 complete",
        |t| t.contains("revision 2: complete"),
    )
    .await;
    wait_text(&page, "tr[data-revision='2']", "revision 2 current", |t| {
        t.contains("current")
    })
    .await;
    wait_text(&page, "#logs-state", "the app's logs followed", |t| {
        t == "(following)"
    })
    .await;
    screenshot(&page, "app").await;

    // A rollout whose new replica cannot be placed (it would reserve more
    // memory than the node has) stays in progress: the page shows old → new
    // and what still serves.
    let stuck = common::hello_manifest(work, "stuck");
    let manifest = std::fs::read_to_string(stuck.join("skiff.toml"))
        .unwrap()
        .replace("memory = \"16Mi\"", "memory = \"2Gi\"\nreserve = \"2Gi\"");
    std::fs::write(stuck.join("skiff.toml"), manifest).unwrap();
    skiff(work, &["deploy", "--no-wait", stuck.to_str().unwrap()]);
    let progress = wait_text(
        &page,
        "#rollout-summary",
        "rollout 2 → 3 in progress",
        |t| t.contains("2 → 3") && t.contains("1 old still serving"),
    )
    .await;
    assert!(progress.contains("0/1 new ready"), "{progress}");
    screenshot(&page, "rollout").await;

    // Roll back to revision 1 from the page.
    confirm(&page, "button[data-rollback='1']").await;
    common::poll(DEADLINE, "rolled back to version 1.0.0", || async {
        let app = app_json(work);
        if app["app"]["spec"]["env"]["VERSION"] == "1.0.0" {
            Ok(())
        } else {
            Err(app)
        }
    })
    .await;

    // The node page: cordon, then uncordon.
    page.goto(&format!("{ui}/nodes/local")).await.unwrap();
    wait_text(&page, "#node-state", "local Ready", |t| t.contains("Ready")).await;
    wait_text(&page, "#node-replicas", "hello's replicas on local", |t| {
        t.contains("hello")
    })
    .await;
    confirm(&page, "#cordon-node").await;
    wait_text(&page, "#node-state", "local cordoned", |t| {
        t.contains("cordoned")
    })
    .await;
    let nodes = skiff(work, &["nodes"]);
    assert!(nodes.contains("Ready,Cordoned"), "{nodes}");
    screenshot(&page, "node").await;
    confirm(&page, "#uncordon-node").await;
    wait_text(&page, "#node-state", "local uncordoned", |t| {
        !t.contains("cordoned")
    })
    .await;

    // An app that logs: its lines followed live, its traffic charted from
    // the node's metrics.
    let echo = work.join("echo");
    std::fs::create_dir_all(&echo).unwrap();
    std::fs::write(
        echo.join("skiff.toml"),
        format!(
            "manifest_version = 1\nname = \"echo\"\n[component]\nsource = {:?}\n",
            common::example_path("echo").display().to_string()
        ),
    )
    .unwrap();
    skiff(work, &["deploy", echo.to_str().unwrap()]);
    let ingress = up.ingress();
    page.goto(&format!("{ui}/apps/echo")).await.unwrap();
    common::poll(DEADLINE, "echo's requests charted and logged", || async {
        for _ in 0..10 {
            common::send(
                ingress,
                "echo.localhost",
                http::Method::GET,
                "/charted",
                bytes::Bytes::new(),
            )
            .await;
        }
        let rps = page
            .find(Locator::Css("#chart-rps-now"))
            .await
            .map_err(|e| e.to_string())?;
        let rps = rps.text().await.map_err(|e| e.to_string())?;
        let logs = page
            .find(Locator::Css("#logs"))
            .await
            .map_err(|e| e.to_string())?;
        let logs = logs.text().await.map_err(|e| e.to_string())?;
        let points = page
            .execute(
                "const p = document.querySelector('#chart-rps polyline'); \
                 return p ? p.getAttribute('points').split(' ').length : 0",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let charted = rps.ends_with("/s") && !rps.starts_with("0.0") && points.as_u64() >= Some(3);
        if charted && logs.contains("echo: GET /charted") {
            Ok(())
        } else {
            Err(format!("rps {rps:?}, logs {logs:?}"))
        }
    })
    .await;
    let latency = text(&page, "#chart-latency-now").await;
    assert!(latency.ends_with(" ms"), "{latency}");
    screenshot(&page, "app-traffic").await;

    // Events, filtered by kind.
    page.goto(&format!("{ui}/events")).await.unwrap();
    wait_text(&page, "#events-table", "events listed", |t| {
        t.contains("AppCreated")
    })
    .await;
    type_into(&page, "#filter-kind", "AppScaled").await;
    let shown = wait_text(&page, "#events-table", "only AppScaled events", |t| {
        t.contains("AppScaled") && !t.contains("AppCreated")
    })
    .await;
    assert!(shown.contains("hello"), "{shown}");
    screenshot(&page, "events").await;

    // Unknown app and node: a page saying so, with HTTP 404.
    page.goto(&format!("{ui}/apps/nope")).await.unwrap();
    let missing = text(&page, "#not-found h1").await;
    assert!(
        missing.contains("nope") && missing.contains("not found"),
        "{missing}"
    );
    let addr = up.addr();
    for path in ["/ui/apps/nope", "/ui/nodes/nope", "/ui/nowhere"] {
        let reply = common::send(
            addr,
            "localhost",
            http::Method::GET,
            path,
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::NOT_FOUND, "{path}");
    }

    // A revoked (here: replaced) token: a clear banner, and sign-in again.
    page.goto(&ui).await.unwrap();
    page.execute("sessionStorage.setItem('skiff.token', 'revoked')", vec![])
        .await
        .unwrap();
    page.refresh().await.unwrap();
    wait_text(&page, "#banner", "the refused-token banner", |t| {
        t.contains("refused the token")
    })
    .await;
    text(&page, "#token").await;

    // The API unreachable: a banner while the page retries.
    type_into(&page, "#token", &token).await;
    click(&page, "#sign-in").await;
    wait_text(
        &page,
        "tr[data-app=hello] td.ready",
        "hello on the overview again",
        |t| !t.is_empty(),
    )
    .await;
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    wait_text(&page, "#banner", "the unreachable banner", |t| {
        t.contains("unreachable")
    })
    .await;
    screenshot(&page, "unreachable").await;

    page.close().await.unwrap();
    drop(driver);
}
