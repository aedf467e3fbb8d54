//! A real OCI registry for tests and benchmarks: Debian's `docker-registry`
//! (the CNCF distribution registry) on a free loopback port.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::send;

/// A registry process on a free loopback port, storing in a temp dir.
pub struct Registry {
    _child: super::KillOnDrop,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

/// A registry; with `htpasswd`, one that asks for basic auth.
pub async fn registry(htpasswd: Option<&str>) -> Option<Registry> {
    let program = super::required_program("docker-registry", "docker-registry")?;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{}",
            dir.path().join("data").display(),
            match htpasswd {
                Some(_) => format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ),
                None => String::new(),
            }
        ),
    )
    .unwrap();
    if let Some(line) = htpasswd {
        std::fs::write(dir.path().join("htpasswd"), format!("{line}\n")).unwrap();
    }
    let child = Command::new(program)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        _child: super::KillOnDrop(child),
        addr,
        dir,
    };
    super::poll(
        Duration::from_secs(30),
        "the registry answering /v2/",
        || async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => {
                    let reply = send(addr, "localhost", Method::GET, "/v2/", Bytes::new()).await;
                    // 401 when it asks for auth: up all the same.
                    if reply.status == StatusCode::OK || reply.status == StatusCode::UNAUTHORIZED {
                        Ok(())
                    } else {
                        Err(reply.status.to_string())
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    Some(registry)
}

/// Pushes `layers` (media type, bytes) as an image with the Wasm config.
pub async fn push_raw(
    registry: std::net::SocketAddr,
    tag: &str,
    layers: &[(&str, &[u8], Option<&str>)],
) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let layers: Vec<ImageLayer> = layers
        .iter()
        .map(|(media, bytes, title)| {
            ImageLayer::new(
                bytes.to_vec(),
                (*media).to_owned(),
                title.map(|t| {
                    std::collections::BTreeMap::from([(
                        skiff_sdk::oci::TITLE.to_owned(),
                        t.to_owned(),
                    )])
                }),
            )
        })
        .collect();
    let config = Config::new(b"{}".to_vec(), skiff_sdk::oci::WASM_CONFIG.to_owned(), None);
    let reference: oci_client::Reference = format!("{registry}/{tag}").parse().unwrap();
    client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
}
