//! Test helpers: a store per backend (SQLite always; PostgreSQL when
//! `SKIFF_TEST_POSTGRES_URL` is set, each test in a database of its own),
//! an in-process API server on 127.0.0.1:0, and a small HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/poll.rs"]
mod poll;
#[allow(unused_imports)] // not every test crate waits
pub use poll::poll;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use skiff_controller::api::{ApiConfig, AppState};
use skiff_controller::store::{SqlStore, Store, StoreOptions};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// A store on one backend, cleaned up by [`TestStore::finish`].
pub struct TestStore {
    pub backend: &'static str,
    pub store: SqlStore,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestStore {
    /// The SQLite database file (`None` on PostgreSQL).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("skiff.db"))
    }

    /// Drops the test's PostgreSQL database (best effort).
    pub async fn finish(self) {
        self.store.close().await;
        if let Some((admin_url, db)) = self.pg
            && let Ok(mut conn) = sqlx::AnyConnection::connect(&admin_url).await
        {
            // FORCE: do not wait for sessions of a server task still closing.
            let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
            let _ = sqlx::query(&drop).execute(&mut conn).await;
        }
    }
}

/// The PostgreSQL URL for tests, or a loud note that those tests are skipped.
/// Under CI (`CI` set) a missing URL is a failure: the suite must run on both.
pub fn postgres_url() -> Option<String> {
    match std::env::var("SKIFF_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the store tests on PostgreSQL too: set SKIFF_TEST_POSTGRES_URL"
            );
            eprintln!(
                "!!! PostgreSQL backend SKIPPED: set SKIFF_TEST_POSTGRES_URL=postgres://... to run it !!!"
            );
            None
        }
    }
}

/// One store per available backend, with `options`.
pub async fn stores_with(options: StoreOptions) -> Vec<TestStore> {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("skiff.db").display());
    let sqlite = SqlStore::connect(&url, options.clone()).await.unwrap();
    let mut out = vec![TestStore {
        backend: "sqlite",
        store: sqlite,
        _dir: Some(dir),
        pg: None,
    }];
    if let Some(admin_url) = postgres_url() {
        static N: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "skiff_t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::AnyConnection::connect(&admin_url)
            .await
            .expect("connecting to PostgreSQL");
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{db}");
        let store = SqlStore::connect(&url, options).await.unwrap();
        out.push(TestStore {
            backend: "postgres",
            store,
            _dir: None,
            pg: Some((admin_url, db)),
        });
    }
    out
}

/// One store per available backend, with default options.
pub async fn stores() -> Vec<TestStore> {
    stores_with(StoreOptions::default()).await
}

/// An API server in this process over a store, with known tokens.
pub struct TestApi {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub state: AppState,
    pub admin: String,
    pub join: String,
    shutdown: CancellationToken,
}

impl TestApi {
    pub async fn start(store: SqlStore, config: ApiConfig) -> Self {
        Self::start_with_limits(store, config, skiff_sdk::serve::Limits::default()).await
    }

    /// [`Self::start`] with the server's client limits.
    pub async fn start_with_limits(
        store: SqlStore,
        config: ApiConfig,
        limits: skiff_sdk::serve::Limits,
    ) -> Self {
        let store: Arc<dyn Store> = Arc::new(store);
        let dir = tempfile::tempdir().unwrap();
        let files = skiff_controller::auth::bootstrap_tokens(store.as_ref(), dir.path())
            .await
            .unwrap();
        assert!(files.created);
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().trim().to_owned();
        let (admin, join) = (read(&files.admin), read(&files.join));
        let (_tx, rx) = tokio::sync::watch::channel(true);
        let shutdown = CancellationToken::new();
        let leases = skiff_controller::informer::Leases::new(config.node_grace);
        let informer = skiff_controller::informer::Informer::new(store.clone(), leases.clone());
        informer.rebuild_now().await.unwrap();
        tokio::spawn(
            informer
                .clone()
                .run(std::time::Duration::from_secs(30), shutdown.clone()),
        );
        tokio::spawn(
            informer
                .detector()
                .clone()
                .run(leases.clone(), shutdown.clone()),
        );
        tokio::spawn(leases.run(store.clone(), "test".into(), shutdown.clone()));
        let state = AppState::new(store.clone(), informer, config, rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(skiff_controller::serve(
            listener,
            state.clone(),
            limits,
            shutdown.clone(),
        ));
        Self {
            addr,
            store,
            state,
            admin,
            join,
            shutdown,
        }
    }

    /// A request with an optional bearer token and a body of `content_type`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> Reply {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Bytes)>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "controller");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header("content-type", content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// JSON call with the admin token.
    pub async fn admin_json(&self, method: Method, path: &str, body: serde_json::Value) -> Reply {
        self.call(
            method,
            path,
            Some(&self.admin.clone()),
            Some(("application/json", Bytes::from(body.to_string()))),
        )
        .await
    }

    /// GET with the admin token.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.admin.clone()), None)
            .await
    }
}

impl Drop for TestApi {
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
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts an error response with `status` and `code`.
    pub fn expect_error(&self, status: StatusCode, code: &str) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body
    }
}

/// A small valid component (an empty one).
pub fn component() -> Vec<u8> {
    wat::parse_str("(component)").unwrap()
}
