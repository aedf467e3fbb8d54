//! The endpoints nodes route by, computed from the picture: where each app
//! has Ready replicas on live nodes, and the extra hosts apps claim.

use std::collections::BTreeMap;

use skiff_sdk::api::{Endpoint, Endpoints, ReplicaState};

use super::{Leases, Picture};

/// Ready replicas on live nodes, grouped by app. Just after this controller
/// starts it has not heard from any node yet, so for one grace period it
/// trusts the last recorded replica states rather than publish nothing.
pub(super) fn of(picture: &Picture, leases: &Leases) -> Endpoints {
    let warming_up = leases.warming_up();
    let live: BTreeMap<&str, &str> = picture
        .nodes
        .values()
        .filter(|n| warming_up || leases.is_ready(&n.name))
        .map(|n| (n.name.as_str(), n.ingress.as_str()))
        .collect();
    let mut counts: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    // A retiring replica leaves the endpoints first, so no node sends it
    // new requests by the time it is removed.
    for r in picture
        .replicas
        .values()
        .filter(|r| r.state == ReplicaState::Ready && r.retiring_since.is_none())
    {
        if live.contains_key(r.node.as_str()) {
            *counts.entry((r.app.as_str(), r.node.as_str())).or_default() += 1;
        }
    }
    let mut hosts = BTreeMap::new();
    let mut activatable = BTreeMap::new();
    // Every app is listed, those without a Ready replica with none, so a
    // node tells an app that is starting (503) from no app at all (404).
    let mut apps: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for app in picture.apps.values() {
        for host in &app.spec.hosts {
            // First come, first served: the API refuses a host that another
            // app already claims, so clashes only come from older data.
            hosts
                .entry(skiff_sdk::api::normalize_host(host).into_owned())
                .or_insert_with(|| app.name.clone());
        }
        apps.insert(app.name.clone(), Vec::new());
        if let Some(scale) = app.spec.scale.filter(|s| s.min == 0) {
            activatable.insert(app.name.clone(), scale.activation_timeout_ms);
        }
    }
    for ((app, node), replicas) in counts {
        apps.entry(app.to_owned()).or_default().push(Endpoint {
            node: node.to_owned(),
            address: live[node].to_owned(),
            replicas,
        });
    }
    Endpoints {
        apps,
        hosts,
        activatable,
    }
}
