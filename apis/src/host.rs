//! Host: a hypervisor server, registered by its node agent.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions};

/// Host condition: True once a `Maintenance` host runs no VM; its reason says what holds the
/// drain up otherwise.
pub const DRAINED: &str = "Drained";

/// A Host is one hypervisor server in a cluster. Its node agent creates it on first start,
/// reports its capacity in status and renews a Lease named after it in `strata-system`;
/// the host controller turns it Connected while that lease is fresh. What the operator wants
/// (`spec.adminState`) is kept apart from what is observed (`status.state`), as in ZStack.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Host",
    status = "HostStatus",
    shortname = "host",
    shortname = "hv",
    category = "strata",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.adminState"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"CPU Used","type":"integer","jsonPath":".status.allocated.cpu"}"#,
    printcolumn = r#"{"name":"CPU Total","type":"integer","jsonPath":".status.capacity.cpu"}"#,
    printcolumn = r#"{"name":"Memory Used","type":"string","jsonPath":".status.allocated.memory"}"#,
    printcolumn = r#"{"name":"Memory Total","type":"string","jsonPath":".status.capacity.memory"}"#,
    printcolumn = r#"{"name":"VMs","type":"integer","priority":1,"jsonPath":".status.vmCount"}"#,
    printcolumn = r#"{"name":"Address","type":"string","priority":1,"jsonPath":".spec.managementAddress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.cluster",
    selectable = ".status.state"
)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    /// Name of the Cluster this host belongs to.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("cluster"))]
    pub cluster: String,
    /// IPv4 address the control plane and other hosts (VXLAN peers) use to reach this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("managementAddress"))]
    pub management_address: Option<String>,
    /// What the operator wants of the host: `Enabled` hosts take new VMs, `Disabled` hosts keep
    /// what they run, `Maintenance` hosts are emptied (VMs migrated or stopped).
    #[serde(default)]
    pub admin_state: HostAdminState,
    /// CPU and memory kept back for the hypervisor itself; never given to VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<HostCapacity>,
}

/// What the operator wants of a host.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum HostAdminState {
    /// Takes new VMs.
    #[default]
    Enabled,
    /// Keeps its VMs, takes no new ones.
    Disabled,
    /// Takes no new VMs and is emptied, so it can be serviced.
    Maintenance,
}

/// Whether the control plane hears from a host's agent.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum HostState {
    /// Registered; no heartbeat seen yet.
    #[default]
    Connecting,
    /// The agent's lease is fresh.
    Connected,
    /// The agent's lease has expired; the VMs on the host are in an unknown state.
    Disconnected,
}

/// CPU and memory of a host.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostCapacity {
    /// Logical CPUs.
    #[schemars(range(min = 0))]
    pub cpu: i64,
    /// Memory, as a quantity such as `256Gi`.
    pub memory: Quantity,
}

/// Observed state of a Host. The agent writes `capacity` and `driver`; the host controller
/// writes everything else.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Connected` while the agent's lease is fresh, `Disconnected` once it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HostState>,
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
    /// How far emptying the host has come while its admin state is `Maintenance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::Progress>,
    /// How many VMs the host ran when its drain began; the progress counts against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_total: Option<i64>,
    /// `Ready` is True while the agent heartbeats; `Drained` says how a Maintenance drain
    /// goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
