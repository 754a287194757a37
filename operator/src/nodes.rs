//! The node watcher: the master learns each chunkserver node's failure
//! domains (from its labels) and whether it is in maintenance (cordoned or
//! not ready).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tessera_master::Master;
use tessera_master::state::NodeInfo;
use tracing::warn;

use crate::topology::{LabelKeys, NodeState, node_state, topology_of};

/// Feeds the master what the cluster says of each node: failure domains from
/// its labels, and maintenance while it is cordoned or not ready.
pub async fn watch(nodes: Api<Node>, master: Arc<Master>) {
    let keys = LabelKeys::default();
    let mut events = watcher(nodes, watcher::Config::default()).applied_objects().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(node) => {
                let name = node.name_any();
                let topology = topology_of(&name, node.labels(), &keys);
                let maintenance = node_state(&node) != NodeState::Ready;
                master.set_node(&name, NodeInfo { topology, maintenance });
            }
            Err(e) => warn!(error = %e, "watching nodes"),
        }
    }
}
