//! Eip: a public address NATed to a VM NIC.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions, VmNicRef};

/// An Eip (elastic IP) is a VIP taken from a Public L3Network and bound one-to-one (DNAT and
/// SNAT) to a VM NIC, on the VM's host. Unbound, it keeps its address.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Eip",
    namespaced,
    status = "EipStatus",
    shortname = "eip",
    category = "strata",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".status.vip"}"#,
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".spec.vmNic.virtualMachine"}"#,
    printcolumn = r#"{"name":"Guest IP","type":"string","jsonPath":".status.guestIp"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.vmNic.virtualMachine"
)]
#[serde(rename_all = "camelCase")]
pub struct EipSpec {
    /// The Public L3Network the VIP comes from.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("l3Network"))]
    pub l3_network: String,
    /// A specific VIP; the next free address of the network when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("vip"), validation = cel::immutable("vip"))]
    pub vip: Option<String>,
    /// The NIC the VIP is bound to; unbound when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_nic: Option<VmNicRef>,
}

/// Observed state of an Eip.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EipStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The allocated VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// The private address of the bound NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    /// The Host the NAT rules are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `Ready` is True once traffic to the VIP reaches the NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
