//! VirtualMachine: the user's desired VM.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Conditions;

/// A VirtualMachine is what a user asks for: a size, an image and networks. The VM controller
/// places it on a host, allocates its addresses and creates the VirtualMachineInstance that the
/// host's agent runs; `status` follows what the agent reports.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    status = "VirtualMachineStatus",
    shortname = "vm",
    shortname = "vms",
    category = "strata",
    category = "all",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".status.host"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.nics[0].ip"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Offering","type":"string","priority":1,"jsonPath":".spec.instanceOffering"}"#,
    printcolumn = r#"{"name":"Image","type":"string","priority":1,"jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"MAC","type":"string","priority":1,"jsonPath":".status.nics[0].mac"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    selectable = ".status.phase",
    selectable = ".status.host"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Name of the InstanceOffering that sizes this VM.
    pub instance_offering: String,
    /// Name of the Image the root volume is cloned from.
    pub image: String,
    /// Network interfaces, in guest order. Each gets a MAC and an address from its L3 network.
    #[serde(default)]
    pub nics: Vec<VmNic>,
    /// `Always` keeps the VM running; `Halted` keeps it stopped.
    #[serde(default)]
    pub run_strategy: RunStrategy,
    /// Pins the VM to this Host when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Whether the VM should be running.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum RunStrategy {
    /// Run the VM, and start it again whenever it stops.
    #[default]
    Always,
    /// Keep the VM stopped.
    Halted,
}

/// A network interface of a VM.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNic {
    /// Name of the L3Network the NIC is on.
    pub l3_network: String,
}

/// Lifecycle phase of a VM, using ZStack's state names plus Pending for "not placed yet".
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VmPhase {
    /// Waiting for a host or for its references to resolve; see the Ready condition.
    #[default]
    Pending,
    /// Placed on a host, which is starting it.
    Starting,
    /// The hypervisor runs it.
    Running,
    /// Being stopped.
    Stopping,
    /// Not running, by request.
    Stopped,
    /// Being destroyed after deletion.
    Destroying,
    /// Its host stopped reporting; its real state is not known.
    Unknown,
    /// The host failed to run it; see the Ready condition.
    Error,
}

/// Observed state of a VirtualMachine.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: VmPhase,
    /// The Host the VM is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Addresses given to each NIC, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<VmNicStatus>,
    /// `Scheduled` and `Ready`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// Addresses of one NIC.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNicStatus {
    /// The L3Network the address comes from.
    pub l3_network: String,
    /// The IPv4 address.
    pub ip: String,
    /// The MAC address.
    pub mac: String,
}
