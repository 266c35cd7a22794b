//! Host: a hypervisor server, registered by its node agent.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Conditions;

/// A Host is one hypervisor server in a cluster. Its node agent creates it on first start,
/// reports its capacity in status and renews a Lease named after it in `strata-system`;
/// the host controller turns it Ready while that lease is fresh.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Host",
    status = "HostStatus",
    shortname = "hv",
    category = "strata",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"CPU","type":"integer","jsonPath":".status.capacity.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".status.capacity.memory"}"#,
    printcolumn = r#"{"name":"VMs","type":"integer","jsonPath":".status.vmCount"}"#,
    printcolumn = r#"{"name":"Allocated CPU","type":"integer","priority":1,"jsonPath":".status.allocated.cpu"}"#,
    printcolumn = r#"{"name":"Allocated Memory","type":"string","priority":1,"jsonPath":".status.allocated.memory"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    /// Name of the Cluster this host belongs to.
    pub cluster: String,
    /// Address the control plane and other hosts use to reach this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_ip: Option<String>,
    /// Administrative state: `Enabled` hosts take new VMs, `Disabled` hosts keep what they run.
    #[serde(default = "default_admin_state")]
    pub admin_state: String,
}

fn default_admin_state() -> String {
    "Enabled".to_string()
}

/// CPU and memory of a host.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostCapacity {
    /// Logical CPUs.
    pub cpu: i64,
    /// Memory, as a quantity such as `256Gi`.
    pub memory: Quantity,
}

/// Observed state of a Host. The agent writes `capacity` and `agentVersion`; the host controller
/// writes everything else.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Connected` while the agent's lease is fresh, `Disconnected` once it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What the hypervisor offers, as reported by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<HostCapacity>,
    /// What the VMs placed on this host have reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<HostCapacity>,
    /// Number of VMs placed on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_count: Option<i64>,
    /// Hypervisor driver the agent runs (`sim` or `libvirt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `Ready` is True while the agent heartbeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
