//! Failure domains and health from Kubernetes Nodes.
//!
//! On Kubernetes a chunkserver registers with its node's name only; the
//! operator knows the node's labels, so the region, zone and rack come from
//! here (label keys configurable, with the well-known defaults). A cordoned
//! or NotReady node is the maintenance signal seed 001 asks for: its stripes
//! count as unavailable, and the repair grace decides when to rebuild them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use tessera_core::placement::Topology;

/// Node labels that name each failure-domain level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelKeys {
    pub region: String,
    pub zone: String,
    pub rack: String,
}

impl Default for LabelKeys {
    fn default() -> Self {
        Self {
            region: "topology.kubernetes.io/region".into(),
            zone: "topology.kubernetes.io/zone".into(),
            rack: tessera_api::keys::RACK_LABEL.into(),
        }
    }
}

/// Domain name used when a node lacks the label of a level. Nodes without
/// zone labels thus share one zone, which placement treats as one domain:
/// safe (it never overestimates spread), and `tessera status` shows it.
pub const UNLABELED: &str = "unlabeled";

/// The failure domains of a node.
pub fn topology_of(name: &str, labels: &BTreeMap<String, String>, keys: &LabelKeys) -> Topology {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| UNLABELED.into());
    Topology { region: get(&keys.region), zone: get(&keys.zone), rack: get(&keys.rack), node: name.to_string() }
}

/// Whether a node's chunkserver can be counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Ready,
    /// Unschedulable: drained for maintenance, probably coming back.
    Cordoned,
    /// The kubelet stopped reporting, or reports the node not ready.
    NotReady,
}

pub fn node_state(node: &Node) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        NodeState::NotReady
    } else if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        NodeState::Cordoned
    } else {
        NodeState::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn domains_come_from_the_configured_labels() {
        let l = labels(&[
            ("topology.kubernetes.io/region", "eu"),
            ("topology.kubernetes.io/zone", "eu-1a"),
            (tessera_api::keys::RACK_LABEL, "r12"),
            ("example.com/row", "row3"),
        ]);
        let t = topology_of("n7", &l, &LabelKeys::default());
        assert_eq!(t, Topology { region: "eu".into(), zone: "eu-1a".into(), rack: "r12".into(), node: "n7".into() });
        let keys = LabelKeys { rack: "example.com/row".into(), ..Default::default() };
        assert_eq!(topology_of("n7", &l, &keys).rack, "row3");
    }

    #[test]
    fn missing_labels_share_one_unlabeled_domain() {
        let t = topology_of("n1", &labels(&[("topology.kubernetes.io/zone", "")]), &LabelKeys::default());
        assert_eq!((t.region.as_str(), t.zone.as_str(), t.rack.as_str()), (UNLABELED, UNLABELED, UNLABELED));
    }

    fn node(ready: Option<&str>, unschedulable: bool) -> Node {
        Node {
            spec: Some(NodeSpec { unschedulable: Some(unschedulable), ..Default::default() }),
            status: Some(NodeStatus {
                conditions: ready
                    .map(|s| vec![NodeCondition { type_: "Ready".into(), status: s.into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cordoned_and_not_ready_nodes_are_told_apart() {
        assert_eq!(node_state(&node(Some("True"), false)), NodeState::Ready);
        assert_eq!(node_state(&node(Some("True"), true)), NodeState::Cordoned);
        assert_eq!(node_state(&node(Some("Unknown"), false)), NodeState::NotReady);
        assert_eq!(node_state(&node(Some("False"), true)), NodeState::NotReady);
        assert_eq!(node_state(&node(None, false)), NodeState::NotReady);
    }
}
