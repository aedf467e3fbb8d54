//! The endpoints nodes route by, computed from the picture: where each app
//! has Ready replicas on live nodes, the extra hosts apps claim, and the
//! apps that may sleep. Published after every change (coalesced), tagged
//! by a counter, with the change from the previous publication kept for
//! watchers a little behind.
//!
//! Work follows change: a publication recomputes only the apps touched
//! since the last one (their replicas, hosts and `[scale]`); the whole
//! document is recomputed only when what every app depends on changed (a
//! node's readiness or address, a rebuild, the end of the warm-up). The
//! document is serialised only when a watcher asks for it whole.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use skiff_sdk::api::{App, Endpoint, Endpoints, ReplicaState};
use skiff_sdk::delta::EndpointsDelta;
use tokio_util::sync::CancellationToken;

use super::{Informer, Leases, Picture};

/// How many publications' changes are kept for watchers a little behind
/// (a watcher further behind gets the whole document).
pub const ENDPOINT_DELTAS: usize = 64;

/// How long endpoint changes are gathered before they are published: a
/// burst of writes is one recomputation and one answer per watcher.
const PUBLISH_COALESCE: Duration = Duration::from_millis(20);

/// One publication of the endpoints of every app, serialised at most once
/// for every watcher that asks for it whole.
#[derive(Debug)]
pub struct Published {
    /// Entity tag: this controller's instance and publication number.
    pub tag: String,
    /// The document, changed in place by later publications: a body taken
    /// late may be newer than its tag, which is harmless (a watcher that
    /// then asks for the change since this tag applies it again, and
    /// applying a change twice is applying it once).
    doc: Arc<RwLock<Endpoints>>,
    body: OnceLock<bytes::Bytes>,
}

impl Published {
    /// JSON of the document, serialised on first use.
    pub fn body(&self) -> bytes::Bytes {
        self.body
            .get_or_init(|| {
                let doc = self.doc.read().unwrap_or_else(|e| e.into_inner());
                bytes::Bytes::from(serde_json::to_vec(&*doc).unwrap_or_default())
            })
            .clone()
    }
}

/// What the next publication recomputes.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// These apps.
    pub apps: HashSet<String>,
    /// Everything.
    pub all: bool,
}

/// Ready replicas on live nodes, grouped by app. Just after this controller
/// starts it has not heard from any node yet, so for one grace period it
/// trusts the last recorded replica states rather than publish nothing.
pub(super) fn of(picture: &Picture, leases: &Leases) -> Endpoints {
    let mut endpoints = Endpoints::default();
    for app in picture.apps.values() {
        for host in &app.spec.hosts {
            // First come, first served: the API refuses a host that another
            // app already claims, so clashes only come from older data.
            endpoints
                .hosts
                .entry(skiff_sdk::api::normalize_host(host).into_owned())
                .or_insert_with(|| app.name.clone());
        }
        // Every app is listed, those without a Ready replica with none, so
        // a node tells an app that is starting (503) from no app at all.
        endpoints
            .apps
            .insert(app.name.clone(), app_endpoints(picture, leases, &app.name));
        if let Some(timeout) = activation_timeout(app) {
            endpoints.activatable.insert(app.name.clone(), timeout);
        }
    }
    endpoints
}

fn activation_timeout(app: &App) -> Option<u64> {
    app.spec
        .scale
        .filter(|s| s.min == 0)
        .map(|s| s.activation_timeout_ms)
}

/// One app's Ready replicas on live nodes, by node. A retiring replica
/// leaves the endpoints first, so no node sends it new requests by the
/// time it is removed.
fn app_endpoints(picture: &Picture, leases: &Leases, app: &str) -> Vec<Endpoint> {
    let warming_up = leases.warming_up();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for r in picture
        .replicas_of(app)
        .filter(|r| r.state == ReplicaState::Ready && r.retiring_since.is_none())
    {
        *counts.entry(r.node.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(node, replicas)| {
            let live = warming_up || leases.is_ready(node);
            let address = picture.nodes.get(node).filter(|_| live)?.ingress.clone();
            Some(Endpoint {
                node: node.to_owned(),
                address,
                replicas,
            })
        })
        .collect()
}

/// What changed for the `apps` touched since `last` was published.
fn delta_of(
    picture: &Picture,
    leases: &Leases,
    last: &Endpoints,
    apps: &HashSet<String>,
) -> EndpointsDelta {
    let mut delta = EndpointsDelta::default();
    for name in apps {
        let app = picture.apps.get(name);
        // Hosts: those it claimed before and no longer does go; those it
        // claims now and nobody holds come.
        let claims: HashSet<String> = app
            .map(|a| {
                a.spec
                    .hosts
                    .iter()
                    .map(|h| skiff_sdk::api::normalize_host(h).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (host, holder) in &last.hosts {
            if holder == name && !claims.contains(host) {
                delta.removed_hosts.push(host.clone());
            }
        }
        for host in claims {
            if !last.hosts.contains_key(&host) {
                delta.hosts.insert(host, name.clone());
            }
        }
        let Some(app) = app else {
            if last.apps.contains_key(name) {
                delta.removed_apps.push(name.clone());
            }
            if last.activatable.contains_key(name) {
                delta.removed_activatable.push(name.clone());
            }
            continue;
        };
        let entry = app_endpoints(picture, leases, name);
        if last.apps.get(name) != Some(&entry) {
            delta.apps.insert(name.clone(), entry);
        }
        match activation_timeout(app) {
            Some(t) if last.activatable.get(name) != Some(&t) => {
                delta.activatable.insert(name.clone(), t);
            }
            None if last.activatable.contains_key(name) => {
                delta.removed_activatable.push(name.clone());
            }
            _ => {}
        }
    }
    delta
}

impl Informer {
    /// Notes what the next publication must recompute.
    pub(super) fn touch_endpoints(&self, apps: impl IntoIterator<Item = String>, all: bool) {
        let mut touched = self
            .endpoints_touched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        touched.all |= all;
        if !touched.all {
            touched.apps.extend(apps);
        }
    }

    /// What changed in the endpoints since the publication tagged `seen`,
    /// when it is one of the last [`ENDPOINT_DELTAS`]; `None` otherwise (or
    /// when nothing changed since).
    pub fn endpoints_since(&self, seen: &str) -> Option<EndpointsDelta> {
        let deltas = self
            .endpoint_deltas
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let from = deltas.iter().position(|(tag, _)| tag == seen)?;
        let mut folded = EndpointsDelta::default();
        for (_, delta) in deltas.iter().skip(from) {
            folded.then((**delta).clone());
        }
        Some(folded)
    }

    /// Publishes the endpoints after every change to the picture
    /// (coalesced), waking the endpoint watchers only when they differ.
    pub(super) async fn publish_endpoints(&self, shutdown: &CancellationToken) {
        let mut version = self.version();
        // The document as last published (`None` before the first).
        let doc: Arc<RwLock<Endpoints>> = Arc::default();
        let mut published_once = false;
        let mut warming_up = true;
        // Tags are unique to this run of this controller: a tag another
        // controller (or an earlier run) gave is answered whole.
        let instance = {
            use rand::RngCore as _;
            format!("{:08x}", rand::rng().next_u32())
        };
        let mut publications = 0u64;
        loop {
            // Nothing is published before the first rebuild: an empty
            // picture is not an empty cluster.
            let at = *version.borrow_and_update();
            if at == 0 {
                tokio::select! {
                    changed = version.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            let started = std::time::Instant::now();
            let touched = std::mem::take(
                &mut *self
                    .endpoints_touched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            // The end of the warm-up changes which nodes count as live.
            let warm_ended = warming_up && !self.leases.warming_up();
            warming_up = self.leases.warming_up();
            let delta = if published_once && !touched.all && !warm_ended {
                let last = doc.read().unwrap_or_else(|e| e.into_inner());
                Some(delta_of(&self.read(), &self.leases, &last, &touched.apps))
            } else {
                let full = of(&self.read(), &self.leases);
                let last = doc.read().unwrap_or_else(|e| e.into_inner());
                Some(EndpointsDelta::between(&last, &full))
            };
            // The first publication is the whole document, changed or not;
            // the document becomes the new one by applying the change.
            if let Some(delta) = delta.filter(|d| !d.is_empty() || !published_once) {
                doc.write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(delta.clone());
                publications += 1;
                let tag = format!("\"{instance}-{publications}\"");
                let mut current = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
                let before = current.as_ref().map(|p| p.tag.clone());
                *current = Some(Arc::new(Published {
                    tag,
                    doc: doc.clone(),
                    body: OnceLock::new(),
                }));
                if let Some(before) = before {
                    let mut deltas = self
                        .endpoint_deltas
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    deltas.push_back((before, Arc::new(delta)));
                    while deltas.len() > ENDPOINT_DELTAS {
                        deltas.pop_front();
                    }
                }
                drop(current);
                published_once = true;
                self.endpoints_changed.send_modify(|n| *n += 1);
            }
            self.published.send_replace(at);
            // At most one publication per PUBLISH_COALESCE, and never more
            // than a fifth of a core on it: a change after a quiet spell is
            // published at once, a burst in few steps. In a hurry (a
            // request waits on a wake-up), at most half a core.
            let took = started.elapsed();
            let pause = PUBLISH_COALESCE.max(took * 4);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = async {
                    self.hurry.notified().await;
                    tokio::time::sleep(took).await;
                } => {}
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}
