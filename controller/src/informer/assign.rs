//! A node's assignments from the picture: the whole set, or only what
//! changed since an earlier answer (whose contents the API remembers per
//! node), so one change among 10,000 replicas is one entry on the wire.

use std::collections::BTreeMap;

use skiff_sdk::api::{Assignment, Assignments};

use super::Informer;

/// What a node was last sent: per replica id, its app, revision and the
/// app's replica count (the only part of an assignment that changes).
pub type Sent = BTreeMap<String, (String, u64, u32)>;

impl Informer {
    /// The node's assignments version, `None` if the picture does not know
    /// the node.
    pub fn assign_version(&self, node: &str) -> Option<u64> {
        self.read().assign_versions.get(node).copied()
    }

    /// The node's assignments as the picture holds them: relative to
    /// `base` (what the node holds) when given, else the whole set; and
    /// what the node holds after it. `None` when the picture lacks a spec
    /// or the node (the caller then reads the store).
    pub fn assignments(&self, node: &str, base: Option<&Sent>) -> Option<(Assignments, Sent)> {
        let picture = self.read();
        let version = *picture.assign_versions.get(node)?;
        let mut now = Sent::new();
        let mut replicas = Vec::new();
        for r in picture.replicas_on(node) {
            // As the store answers: replicas of apps that exist.
            let Some(app) = picture.apps.get(&r.app) else {
                continue;
            };
            let key = (r.app.clone(), r.revision, app.spec.replicas);
            if base.is_none_or(|b| b.get(&r.id) != Some(&key)) {
                let spec = picture.specs.get(&(r.app.clone(), r.revision))?;
                let mut spec = (**spec).clone();
                spec.replicas = app.spec.replicas;
                replicas.push(Assignment {
                    id: r.id.clone(),
                    app: r.app.clone(),
                    revision: r.revision,
                    spec,
                });
            }
            now.insert(r.id.clone(), key);
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        let removed = base
            .map(|b| {
                b.keys()
                    .filter(|id| !now.contains_key(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Some((
            Assignments {
                version,
                replicas,
                removed,
                delta: base.is_some(),
            },
            now,
        ))
    }
}

/// `whole` (a whole set, read from the store) relative to `base` when
/// given, and what the node holds after it.
pub fn delta(whole: Assignments, base: Option<&Sent>) -> (Assignments, Sent) {
    let now: Sent = whole
        .replicas
        .iter()
        .map(|a| (a.id.clone(), (a.app.clone(), a.revision, a.spec.replicas)))
        .collect();
    let Some(base) = base else {
        return (whole, now);
    };
    let removed = base
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    let replicas = whole
        .replicas
        .into_iter()
        .filter(|a| base.get(&a.id) != now.get(&a.id))
        .collect();
    (
        Assignments {
            version: whole.version,
            replicas,
            removed,
            delta: true,
        },
        now,
    )
}
