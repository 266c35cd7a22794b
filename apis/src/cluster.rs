//! Cluster: a set of hosts of one hypervisor type inside a zone.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Cluster is a set of homogeneous hosts in one zone; L2 networks and primary storage are
/// attached per cluster.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Cluster",
    status = "ClusterStatus",
    shortname = "cl",
    category = "strata",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Hypervisor","type":"string","jsonPath":".spec.hypervisorType"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Name of the Zone this cluster belongs to.
    pub zone: String,
    /// Hypervisor of every host in the cluster. Only `KVM` is supported.
    #[serde(default = "default_hypervisor")]
    pub hypervisor_type: String,
}

fn default_hypervisor() -> String {
    "KVM".to_string()
}

/// Observed state of a Cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
