//! Cluster: a set of hosts of one hypervisor type inside a zone.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, AdminState, Conditions};

/// A Cluster is a set of homogeneous hosts in one zone. L2 networks and primary storage are
/// attached per cluster: a VM can only run on a host whose cluster reaches its networks and
/// its volumes' storage.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Cluster",
    status = "ClusterStatus",
    shortname = "cl",
    category = "strata",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Hypervisor","type":"string","jsonPath":".spec.hypervisorType"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.adminState"}"#,
    printcolumn = r#"{"name":"Hosts","type":"integer","jsonPath":".status.hostCount"}"#,
    printcolumn = r#"{"name":"CPU Ratio","type":"number","priority":1,"jsonPath":".spec.cpuOvercommitRatio"}"#,
    printcolumn = r#"{"name":"Memory Ratio","type":"number","priority":1,"jsonPath":".spec.memoryOvercommitRatio"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.zone"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Name of the Zone this cluster belongs to.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("zone"))]
    pub zone: String,
    /// Hypervisor of every host in the cluster.
    #[serde(default)]
    pub hypervisor_type: HypervisorType,
    /// `Disabled` stops new VMs from being placed on the cluster's hosts.
    #[serde(default)]
    pub admin_state: AdminState,
    /// How many vCPUs may be placed per logical CPU of a host. Unset: GlobalConfig's ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub cpu_overcommit_ratio: Option<f64>,
    /// How much memory may be placed per byte of a host's memory. Unset: GlobalConfig's ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub memory_overcommit_ratio: Option<f64>,
    /// L2Networks every host of the cluster is wired to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub l2_networks: Vec<String>,
    /// PrimaryStorages every host of the cluster can reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub primary_storages: Vec<String>,
}

/// The hypervisor a cluster's hosts run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum HypervisorType {
    /// QEMU/KVM driven through libvirt (TCG where there is no hardware virtualisation).
    #[default]
    KVM,
}

/// Observed state of a Cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hosts in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_count: Option<i64>,
    /// `Ready` summarises the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
