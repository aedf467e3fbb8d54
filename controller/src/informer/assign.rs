//! A node's assignments from the picture: the whole set, or only what
//! changed since an earlier answer (whose contents the API remembers per
//! node), so one change among 10,000 replicas is one entry on the wire.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use skiff_sdk::api::{Assignment, Assignments};

use super::Informer;

/// What a node was last sent: per replica id, its app, revision and the
/// app's replica count (the only part of an assignment that changes).
pub type Sent = BTreeMap<String, (String, u64, u32)>;

/// Which replicas changed on each node, by picture version: what lets an
/// answer relative to an earlier one look at the changes since, instead of
/// walking every replica of the node (10,000 of them for one change made
/// each apply cost a walk).
#[derive(Debug, Default)]
pub struct ChangeLog {
    by_node: HashMap<String, NodeLog>,
    /// Nothing before this version is logged (the picture was rebuilt).
    start: u64,
}

#[derive(Debug, Default)]
struct NodeLog {
    entries: VecDeque<(u64, String)>,
    /// Entries up to this version may have been dropped.
    floor: u64,
}

/// Changes kept per node; an answer relative to an older one walks the
/// node's replicas instead.
const LOG_PER_NODE: usize = 4_096;

impl ChangeLog {
    /// Replica `id` on `node` changed (came, went, or its app did) at
    /// `version`.
    pub(super) fn record(&mut self, node: &str, version: u64, id: &str) {
        let log = self.by_node.entry(node.to_owned()).or_default();
        log.entries.push_back((version, id.to_owned()));
        if log.entries.len() > LOG_PER_NODE
            && let Some((dropped, _)) = log.entries.pop_front()
        {
            log.floor = dropped;
        }
    }

    /// Forgets everything: the picture was rebuilt at `version`.
    pub(super) fn reset(&mut self, version: u64) {
        self.by_node.clear();
        self.start = version;
    }

    /// The replicas of `node` that changed after `since` (perhaps twice),
    /// or `None` when the log does not reach back that far.
    fn since(&self, node: &str, since: u64) -> Option<Vec<&str>> {
        if since < self.start {
            return None;
        }
        let Some(log) = self.by_node.get(node) else {
            return Some(Vec::new());
        };
        (since >= log.floor).then(|| {
            log.entries
                .iter()
                .rev()
                .take_while(|(v, _)| *v > since)
                .map(|(_, id)| id.as_str())
                .collect()
        })
    }
}

impl Informer {
    /// The node's assignments version, `None` if the picture does not know
    /// the node.
    pub fn assign_version(&self, node: &str) -> Option<u64> {
        self.read().assign_versions.get(node).copied()
    }

    /// The node's assignments as the picture holds them: relative to
    /// `base` (what the node holds, as answered at a picture version;
    /// updated in place when not shared) when given, else the whole set;
    /// what the node holds after it; and the picture version it was read
    /// at. `None` when the picture lacks a spec or the node (the caller then
    /// reads the store).
    ///
    /// With a base, only the replicas that changed since its version are
    /// looked at: one change among 10,000 replicas costs one.
    pub fn assignments(
        &self,
        node: &str,
        base: Option<(u64, Arc<Sent>)>,
    ) -> Option<(Assignments, Arc<Sent>, u64)> {
        let picture = self.read();
        let version = *picture.assign_versions.get(node)?;
        let delta = base.is_some();
        let changed = base
            .as_ref()
            .and_then(|(since, _)| picture.log.since(node, *since));
        let mut sent = base.map(|(_, sent)| sent).unwrap_or_default();
        let held = Arc::make_mut(&mut sent);
        let mut replicas = Vec::new();
        let mut removed = Vec::new();
        let here = |id: &str| {
            picture
                .replicas
                .get(id)
                .filter(|r| r.node == node)
                .filter(|r| picture.apps.contains_key(&r.app))
        };
        let mut update = |r: &Arc<skiff_sdk::api::Replica>, held: &mut Sent| {
            let count = picture.apps.get(&r.app)?.spec.replicas;
            let same = held.get(&r.id).is_some_and(|(a, revision, replicas)| {
                *a == r.app && *revision == r.revision && *replicas == count
            });
            if !same {
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
            Some(())
        };
        match changed {
            Some(ids) => {
                let ids: HashSet<&str> = ids.into_iter().collect();
                for id in ids {
                    match here(id) {
                        Some(r) => update(r, held)?,
                        None => {
                            if held.remove(id).is_some() {
                                removed.push(id.to_owned());
                            }
                        }
                    }
                }
            }
            None => {
                let mut present = 0;
                for r in picture.replicas_on(node) {
                    // As the store answers: replicas of apps that exist.
                    if !picture.apps.contains_key(&r.app) {
                        continue;
                    }
                    present += 1;
                    update(r, held)?;
                }
                // Every replica here is held now; anything more held is gone.
                if held.len() != present {
                    held.retain(|id, _| {
                        let kept = here(id).is_some();
                        if !kept {
                            removed.push(id.clone());
                        }
                        kept
                    });
                }
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        removed.sort();
        Some((
            Assignments {
                version,
                replicas,
                removed: if delta { removed } else { Vec::new() },
                delta,
            },
            sent,
            picture.version,
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
