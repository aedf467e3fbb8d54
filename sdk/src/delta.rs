//! Changes to the endpoints document, so that a node watching them receives
//! what changed since the version it holds rather than every app of the
//! cluster on every change ([`EndpointsDelta`], `GET
//! /v1/endpoints?delta=true`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{Endpoint, Endpoints};

/// Response header of `GET /v1/endpoints?delta=true` saying the body is an
/// [`EndpointsDelta`] (`delta`) rather than the whole document (`full`).
pub const ENDPOINTS_KIND_HEADER: &str = "skiff-endpoints";

/// What changed in the endpoints between two versions: entries to set and
/// keys to remove, for each of the document's maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointsDelta {
    /// Apps whose endpoints are now these (added or changed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, Vec<Endpoint>>,
    /// Apps no longer in the document.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_apps: Vec<String>,
    /// Extra hosts now reaching these apps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// Extra hosts no longer claimed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_hosts: Vec<String>,
    /// Apps that may sleep, with their activation timeout.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub activatable: BTreeMap<String, u64>,
    /// Apps that may no longer sleep (or are gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_activatable: Vec<String>,
}

/// Sets and removals of one map, from `old` to `new`.
fn diff_map<V: Clone + PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> (BTreeMap<String, V>, Vec<String>) {
    let set = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (set, removed)
}

/// Folds a later change of one map into an earlier one.
fn merge_map<V>(
    set: &mut BTreeMap<String, V>,
    removed: &mut Vec<String>,
    later_set: BTreeMap<String, V>,
    later_removed: Vec<String>,
) {
    for key in later_removed {
        set.remove(&key);
        if !removed.contains(&key) {
            removed.push(key);
        }
    }
    for (key, value) in later_set {
        removed.retain(|k| k != &key);
        set.insert(key, value);
    }
}

fn apply_map<V>(map: &mut BTreeMap<String, V>, set: BTreeMap<String, V>, removed: &[String]) {
    for key in removed {
        map.remove(key);
    }
    map.extend(set);
}

impl EndpointsDelta {
    /// What changed from `old` to `new`.
    pub fn between(old: &Endpoints, new: &Endpoints) -> Self {
        let (apps, removed_apps) = diff_map(&old.apps, &new.apps);
        let (hosts, removed_hosts) = diff_map(&old.hosts, &new.hosts);
        let (activatable, removed_activatable) = diff_map(&old.activatable, &new.activatable);
        Self {
            apps,
            removed_apps,
            hosts,
            removed_hosts,
            activatable,
            removed_activatable,
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Folds `later` (the change after this one) into this one.
    pub fn then(&mut self, later: EndpointsDelta) {
        merge_map(
            &mut self.apps,
            &mut self.removed_apps,
            later.apps,
            later.removed_apps,
        );
        merge_map(
            &mut self.hosts,
            &mut self.removed_hosts,
            later.hosts,
            later.removed_hosts,
        );
        merge_map(
            &mut self.activatable,
            &mut self.removed_activatable,
            later.activatable,
            later.removed_activatable,
        );
    }
}

impl Endpoints {
    /// Applies a change to this document.
    pub fn apply(&mut self, delta: EndpointsDelta) {
        apply_map(&mut self.apps, delta.apps, &delta.removed_apps);
        apply_map(&mut self.hosts, delta.hosts, &delta.removed_hosts);
        apply_map(
            &mut self.activatable,
            delta.activatable,
            &delta.removed_activatable,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(apps: &[(&str, &[&str])], hosts: &[(&str, &str)], sleepy: &[&str]) -> Endpoints {
        Endpoints {
            apps: apps
                .iter()
                .map(|(app, nodes)| {
                    let list = nodes
                        .iter()
                        .map(|n| Endpoint {
                            node: (*n).into(),
                            address: format!("{n}:80"),
                            replicas: 1,
                        })
                        .collect();
                    ((*app).into(), list)
                })
                .collect(),
            hosts: hosts
                .iter()
                .map(|(h, a)| ((*h).into(), (*a).into()))
                .collect(),
            activatable: sleepy.iter().map(|a| ((*a).into(), 10_000)).collect(),
        }
    }

    #[test]
    fn deltas_applied_in_turn_or_folded_give_the_new_document() {
        let v1 = doc(&[("a", &["n1"]), ("b", &[])], &[("a.example", "a")], &["b"]);
        let v2 = doc(&[("a", &["n1", "n2"]), ("b", &["n1"])], &[], &["b"]);
        let v3 = doc(&[("b", &[]), ("c", &["n2"])], &[("c.example", "c")], &[]);
        let (d12, d23) = (
            EndpointsDelta::between(&v1, &v2),
            EndpointsDelta::between(&v2, &v3),
        );
        assert_eq!(d12.removed_hosts, ["a.example"]);
        assert!(EndpointsDelta::between(&v2, &v2).is_empty());

        let mut stepwise = v1.clone();
        stepwise.apply(d12.clone());
        assert_eq!(stepwise, v2);
        stepwise.apply(d23.clone());
        assert_eq!(stepwise, v3);

        let mut folded = d12;
        folded.then(d23);
        let mut at_once = v1;
        at_once.apply(folded.clone());
        assert_eq!(at_once, v3);
        // A key set and then removed is only removed; removed then set,
        // only set.
        assert!(folded.removed_apps.contains(&"a".to_owned()));
        assert!(!folded.apps.contains_key("a"));
    }
}
