//! A node's assignments from the picture: the whole set, or only what
//! changed since an earlier answer (whose contents the API remembers per
//! node), so one change among 10,000 replicas is one entry on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// `base` (what the node holds, updated in place when not shared) when
    /// given, else the whole set; and what the node holds after it. `None`
    /// when the picture lacks a spec or the node (the caller then reads the
    /// store).
    ///
    /// With a base, nothing is allocated for the replicas that did not
    /// change: one change among 10,000 replicas costs a walk, not a copy.
    pub fn assignments(
        &self,
        node: &str,
        base: Option<Arc<Sent>>,
    ) -> Option<(Assignments, Arc<Sent>)> {
        let picture = self.read();
        let version = *picture.assign_versions.get(node)?;
        let delta = base.is_some();
        let mut sent = base.unwrap_or_default();
        let held = Arc::make_mut(&mut sent);
        let mut replicas = Vec::new();
        let mut present = 0;
        for r in picture.replicas_on(node) {
            // As the store answers: replicas of apps that exist.
            let Some(app) = picture.apps.get(&r.app) else {
                continue;
            };
            present += 1;
            let count = app.spec.replicas;
            let same = held.get(&r.id).is_some_and(|(a, revision, replicas)| {
                *a == r.app && *revision == r.revision && *replicas == count
            });
            if same {
                continue;
            }
            let spec = picture.specs.get(&(r.app.clone(), r.revision))?;
            let mut spec = (**spec).clone();
            spec.replicas = count;
            replicas.push(Assignment {
                id: r.id.clone(),
                app: r.app.clone(),
                revision: r.revision,
                spec: Arc::new(spec),
            });
            held.insert(r.id.clone(), (r.app.clone(), r.revision, count));
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        // Every replica here is held now; anything more held is gone.
        let mut removed = Vec::new();
        if held.len() != present {
            held.retain(|id, _| {
                let here = picture
                    .replicas
                    .get(id)
                    .is_some_and(|r| r.node == node && picture.apps.contains_key(&r.app));
                if !here {
                    removed.push(id.clone());
                }
                here
            });
        }
        Some((
            Assignments {
                version,
                replicas,
                removed: if delta { removed } else { Vec::new() },
                delta,
            },
            sent,
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
