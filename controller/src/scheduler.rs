//! The scheduler: where a new replica goes. Pure functions over plain data
//! (no store, no clock), so every rule is unit-tested and benchmarked alone.
//!
//! **Filter**: the node is Ready and not cordoned; its labels match the
//! app's node selector; its free memory (capacity minus the reservations of
//! the replicas it already has) is at least the replica's reservation,
//! `quota.memory_bytes × quota.concurrency`.
//!
//! **Score** (lower wins, ties broken by node name so placement is
//! deterministic): with spreading on (the default), fewest replicas of the
//! app on the node, then fewest in the node's `zone` label; then the least
//! allocated node after placement, as a fraction of its capacity. A
//! preferred node (where requests for a waking app wait) wins whenever it
//! passes the filter.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The label whose value names a node's failure domain.
pub const ZONE_LABEL: &str = "zone";

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSlot {
    /// Name.
    pub name: String,
    /// Labels, matched against node selectors.
    pub labels: BTreeMap<String, String>,
    /// Heartbeating within the grace period.
    pub ready: bool,
    /// No new replicas (cordoned or draining).
    pub cordoned: bool,
    /// Memory offered to replicas, in bytes.
    pub capacity: u64,
    /// Memory reserved by the replicas already on it, in bytes.
    pub allocated: u64,
}

impl NodeSlot {
    fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// What a new replica needs.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The app (spreading counts its replicas).
    pub app: &'a str,
    /// Memory to reserve: memory limit × concurrency.
    pub reservation: u64,
    /// Labels the node must carry.
    pub selector: &'a BTreeMap<String, String>,
    /// Spread the app's replicas across nodes and zones.
    pub spread: bool,
    /// A node to choose whenever it fits (the node that holds requests for
    /// a waking app), before any score.
    pub prefer: Option<&'a str>,
}

/// Why no node fits, counted by the first filter each node failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unschedulable {
    /// Nodes considered.
    pub nodes: usize,
    /// Not heartbeating.
    pub not_ready: usize,
    /// Cordoned or draining.
    pub cordoned: usize,
    /// Labels do not match the selector.
    pub selector_mismatch: usize,
    /// Not enough free memory.
    pub insufficient_memory: usize,
}

impl fmt::Display for Unschedulable {
    /// E.g. `0/3 nodes fit: 2 insufficient memory, 1 selector mismatch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes fit", self.nodes)?;
        if self.nodes == 0 {
            return f.write_str(": no nodes registered");
        }
        let parts = [
            (self.insufficient_memory, "insufficient memory"),
            (self.selector_mismatch, "selector mismatch"),
            (self.not_ready, "not ready"),
            (self.cordoned, "cordoned"),
        ];
        let mut sep = ": ";
        for (n, what) in parts {
            if n > 0 {
                write!(f, "{sep}{n} {what}")?;
                sep = ", ";
            }
        }
        Ok(())
    }
}

/// One app's replicas per node (by index) and per zone: the spreading input.
#[derive(Clone, Debug, Default)]
struct AppSpread {
    per_node: Vec<u32>,
    per_zone: HashMap<String, u32>,
}

/// Picks the node for one replica: the index into `nodes` of the best
/// candidate, or why none fits. `per_node[i]` and `per_zone(zone)` are the
/// app's current replicas on node `i` and in a zone.
pub fn place(
    request: &Request<'_>,
    nodes: &[NodeSlot],
    per_node: &[u32],
    per_zone: impl Fn(&str) -> u32,
) -> Result<usize, Unschedulable> {
    let mut why = Unschedulable {
        nodes: nodes.len(),
        ..Unschedulable::default()
    };
    // (node spread, zone spread, allocation after placement in parts per
    // million of capacity, name) — compared lexicographically.
    let mut best: Option<(u32, u32, u64, &str, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        if !node.ready {
            why.not_ready += 1;
            continue;
        }
        if node.cordoned {
            why.cordoned += 1;
            continue;
        }
        if !request
            .selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            why.selector_mismatch += 1;
            continue;
        }
        let free = node.capacity.saturating_sub(node.allocated);
        if free < request.reservation {
            why.insufficient_memory += 1;
            continue;
        }
        if request.prefer == Some(node.name.as_str()) {
            return Ok(i);
        }
        let (node_spread, zone_spread) = if request.spread {
            (
                per_node.get(i).copied().unwrap_or(0),
                node.zone().map(&per_zone).unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let used = u128::from(node.allocated + request.reservation) * 1_000_000
            / u128::from(node.capacity.max(1));
        let key = (
            node_spread,
            zone_spread,
            u64::try_from(used).unwrap_or(u64::MAX),
            node.name.as_str(),
            i,
        );
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|b| b.4).ok_or(why)
}

/// A scheduling pass: the cluster as the scheduler sees it, updated as
/// replicas are placed or released so that one pass can place many.
#[derive(Clone, Debug)]
pub struct Scheduler {
    nodes: Vec<NodeSlot>,
    index: HashMap<String, usize>,
    apps: HashMap<String, AppSpread>,
}

impl Scheduler {
    /// A pass over these nodes (their `allocated` already counts the
    /// replicas they have; call [`Scheduler::count`] for each of those so
    /// spreading knows of them).
    pub fn new(nodes: Vec<NodeSlot>) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Self {
            nodes,
            index,
            apps: HashMap::new(),
        }
    }

    /// The nodes, with their current allocation.
    pub fn nodes(&self) -> &[NodeSlot] {
        &self.nodes
    }

    /// Records an existing replica of `app` on `node` for spreading.
    pub fn count(&mut self, app: &str, node: &str) {
        self.adjust(app, node, 0, true);
    }

    /// Places one replica and records it; returns the node's name.
    pub fn place(&mut self, request: &Request<'_>) -> Result<String, Unschedulable> {
        let i = match self.apps.get(request.app) {
            Some(spread) => place(request, &self.nodes, &spread.per_node, |zone| {
                spread.per_zone.get(zone).copied().unwrap_or(0)
            }),
            None => place(request, &self.nodes, &[], |_| 0),
        }?;
        let name = self.nodes[i].name.clone();
        self.adjust(request.app, &name, request.reservation, true);
        Ok(name)
    }

    /// Places one replica on `node` itself, if it passes the filter, and
    /// records it (every-node placement).
    pub fn place_on(&mut self, request: &Request<'_>, node: &str) -> Result<String, Unschedulable> {
        let Some(&i) = self.index.get(node) else {
            return Err(Unschedulable::default());
        };
        place(request, &self.nodes[i..=i], &[], |_| 0)?;
        self.adjust(request.app, node, request.reservation, true);
        Ok(node.to_owned())
    }

    /// Forgets a replica of `app` on `node` that reserved `reservation`.
    pub fn release(&mut self, app: &str, node: &str, reservation: u64) {
        self.adjust(app, node, reservation, false);
    }

    fn adjust(&mut self, app: &str, node: &str, reservation: u64, add: bool) {
        let Some(&i) = self.index.get(node) else {
            return;
        };
        let count = self.nodes.len();
        let slot = &mut self.nodes[i];
        let step = |n: &mut u32| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        slot.allocated = if add {
            slot.allocated.saturating_add(reservation)
        } else {
            slot.allocated.saturating_sub(reservation)
        };
        if !self.apps.contains_key(app) {
            self.apps.insert(
                app.to_owned(),
                AppSpread {
                    per_node: vec![0; count],
                    per_zone: HashMap::new(),
                },
            );
        }
        let Some(spread) = self.apps.get_mut(app) else {
            return;
        };
        step(&mut spread.per_node[i]);
        if let Some(zone) = slot.zone() {
            step(spread.per_zone.entry(zone.to_owned()).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], capacity: u64) -> NodeSlot {
        NodeSlot {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ready: true,
            cordoned: false,
            capacity,
            allocated: 0,
        }
    }

    fn request<'a>(selector: &'a BTreeMap<String, String>, reservation: u64) -> Request<'a> {
        Request {
            app: "web",
            reservation,
            selector,
            spread: true,
            prefer: None,
        }
    }

    #[test]
    fn a_preferred_node_wins_when_it_fits() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(vec![node("a", &[], 1000), node("b", &[], 1000)]);
        s.count("web", "b");
        let r = Request {
            prefer: Some("b"),
            ..request(&none, 100)
        };
        assert_eq!(s.place(&r).unwrap(), "b", "preferred despite spreading");
        let too_big = Request {
            prefer: Some("b"),
            ..request(&none, 950)
        };
        assert_eq!(s.place(&too_big).unwrap(), "a", "not when it does not fit");
    }

    #[test]
    fn filters_and_explains_why_nothing_fits() {
        let mut nodes = vec![
            node("a", &[("disk", "ssd")], 100),
            node("b", &[("disk", "ssd")], 100),
            node("c", &[("disk", "hdd")], 1000),
            node("d", &[("disk", "ssd")], 1000),
            node("e", &[("disk", "ssd")], 1000),
        ];
        nodes[3].ready = false;
        nodes[4].cordoned = true;
        let selector = [("disk".to_owned(), "ssd".to_owned())].into();
        let err = place(&request(&selector, 500), &nodes, &[], |_| 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/5 nodes fit: 2 insufficient memory, 1 selector mismatch, 1 not ready, 1 cordoned"
        );
        assert_eq!(
            Unschedulable::default().to_string(),
            "0/0 nodes fit: no nodes registered"
        );
        // Exactly fitting is fitting.
        assert_eq!(place(&request(&selector, 100), &nodes, &[], |_| 0), Ok(0));
    }

    #[test]
    fn spreads_across_nodes_then_zones_then_least_allocated() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(vec![
            node("a", &[("zone", "z1")], 1000),
            node("b", &[("zone", "z1")], 1000),
            node("c", &[("zone", "z2")], 1000),
        ]);
        // One per node first, z2 before the second z1 node.
        let first: Vec<String> = (0..3)
            .map(|_| s.place(&request(&none, 100)).unwrap())
            .collect();
        assert_eq!(first, ["a", "c", "b"]);
        // Then round again: zone z2 has 1, z1 has 2 -> c next.
        assert_eq!(s.place(&request(&none, 100)).unwrap(), "c");
        // Another app is spread independently but still by allocation:
        // a and b have 100, c has 200.
        let other = Request {
            app: "api",
            ..request(&none, 100)
        };
        assert_eq!(s.place(&other).unwrap(), "a");
        // Releasing frees capacity and spreading slots.
        s.release("web", "c", 100);
        s.release("web", "c", 100);
        assert_eq!(s.nodes()[2].allocated, 0);
        assert_eq!(s.place(&request(&none, 100)).unwrap(), "c");
    }

    #[test]
    fn without_spreading_packs_by_allocation_only() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(vec![node("a", &[], 1000), node("b", &[], 4000)]);
        let r = Request {
            spread: false,
            ..request(&none, 500)
        };
        // b stays least allocated (as a fraction) for four placements.
        let placed: Vec<String> = (0..5).map(|_| s.place(&r).unwrap()).collect();
        assert_eq!(placed, ["b", "b", "b", "a", "b"]);
        // Full nodes are filtered out.
        let big = Request {
            reservation: 3000,
            ..r
        };
        assert_eq!(
            s.place(&big).unwrap_err().to_string(),
            "0/2 nodes fit: 2 insufficient memory"
        );
    }

    #[test]
    fn existing_replicas_count_for_spreading() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(vec![node("a", &[], 1000), node("b", &[], 1000)]);
        s.count("web", "a");
        assert_eq!(s.place(&request(&none, 0)).unwrap(), "b");
        s.count("web", "ghost"); // unknown nodes are ignored
    }
}
