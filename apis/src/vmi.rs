//! VirtualMachineInstance: a VM fully resolved for one host.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Conditions;

/// A VirtualMachineInstance is the runtime form of a VirtualMachine: written by the VM controller
/// with every decision made (host, size, image, addresses), and run by the agent of `spec.host`.
/// Agents select their instances with the field selector `spec.host=<host>`. Users do not
/// create these; deleting one makes the VM controller create it again.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    shortname = "vmi",
    category = "strata",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.nics[0].ip"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.host"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// The Host whose agent runs this instance.
    pub host: String,
    /// Virtual CPUs.
    pub cpu: i64,
    /// Memory.
    pub memory: Quantity,
    /// Image name.
    pub image: String,
    /// Where the image is fetched from.
    pub image_url: String,
    /// NICs with their resolved addresses, in guest order.
    #[serde(default)]
    pub nics: Vec<VmiNic>,
}

/// A resolved network interface.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiNic {
    /// The L3Network.
    pub l3_network: String,
    /// The IPv4 address.
    pub ip: String,
    /// Prefix length of the subnet.
    pub prefix_length: u8,
    /// The gateway.
    pub gateway: String,
    /// The MAC address.
    pub mac: String,
}

/// What the agent observes of an instance.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VmiPhase {
    /// Not yet picked up by the agent.
    #[default]
    Pending,
    /// The agent is creating it on the hypervisor.
    Starting,
    /// The hypervisor runs it.
    Running,
    /// It exists on the hypervisor but does not run.
    Stopped,
    /// The hypervisor failed to run it; see the Ready condition.
    Failed,
}

/// Observed state of a VirtualMachineInstance, written by the agent.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the hypervisor reports.
    #[serde(default)]
    pub phase: VmiPhase,
    /// `Ready` is True while the instance runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
