//! PortForwarding: ports of a public VIP forwarded to a VM NIC.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions, PortRange, VmNicRef};

/// A PortForwarding rule sends a range of ports of a VIP on a Public L3Network to the same
/// number of ports on a VM NIC (DNAT), optionally only from `allowedCidr`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "PortForwarding",
    namespaced,
    status = "PortForwardingStatus",
    shortname = "pf",
    category = "strata",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".status.vip"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"External","type":"integer","jsonPath":".spec.externalPorts.start"}"#,
    printcolumn = r#"{"name":"Internal","type":"integer","jsonPath":".spec.internalPorts.start"}"#,
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".spec.vmNic.virtualMachine"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.vmNic.virtualMachine"
)]
#[x_kube(
    validation = Rule::new("self.externalPorts.end - self.externalPorts.start == self.internalPorts.end - self.internalPorts.start").message("externalPorts and internalPorts must span the same number of ports").field_path(".internalPorts")
)]
#[serde(rename_all = "camelCase")]
pub struct PortForwardingSpec {
    /// The Public L3Network the VIP comes from.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("l3Network"))]
    pub l3_network: String,
    /// A specific VIP; the next free address of the network when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("vip"), validation = cel::immutable("vip"))]
    pub vip: Option<String>,
    /// TCP or UDP.
    pub protocol: ForwardedProtocol,
    /// Ports on the VIP.
    pub external_ports: PortRange,
    /// Ports on the NIC, as many as `externalPorts`.
    pub internal_ports: PortRange,
    /// The NIC traffic is forwarded to; nothing is forwarded when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_nic: Option<VmNicRef>,
    /// Only sources in this CIDR are forwarded; any source when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18))]
    #[x_kube(validation = cel::cidr4("allowedCidr"))]
    pub allowed_cidr: Option<String>,
}

/// Protocols port forwarding applies to.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum ForwardedProtocol {
    #[default]
    TCP,
    UDP,
}

/// Observed state of a PortForwarding rule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortForwardingStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The allocated VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// The private address of the target NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    /// The Host the NAT rules are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `Ready` is True once the forwarding is in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
