//! L2Network: a broadcast domain, realised on each host as a Linux bridge.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions};

/// An L2Network is a broadcast domain in a zone. On every host of the clusters it is attached
/// to (`Cluster.spec.l2Networks`) it becomes a bridge: on the physical interface itself
/// (`NoVlan`), on a VLAN sub-interface of it (`Vlan`), or on a VXLAN device whose VNI comes
/// from a VxlanPool (`Vxlan`).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "L2Network",
    status = "L2NetworkStatus",
    shortname = "l2",
    category = "strata",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.physicalInterface"}"#,
    printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".spec.vlanId"}"#,
    printcolumn = r#"{"name":"VNI","type":"integer","jsonPath":".status.vni"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.zone",
    selectable = ".spec.type"
)]
#[x_kube(
    validation = Rule::new("self.type != 'Vlan' || has(self.vlanId)").message("vlanId is required when type is Vlan").field_path(".vlanId"),
    validation = Rule::new("self.type == 'Vlan' || !has(self.vlanId)").message("vlanId is only allowed when type is Vlan").field_path(".vlanId"),
    validation = Rule::new("self.type != 'Vxlan' || has(self.vxlanPool)").message("vxlanPool is required when type is Vxlan").field_path(".vxlanPool"),
    validation = Rule::new("self.type == 'Vxlan' || (!has(self.vxlanPool) && !has(self.vni))").message("vxlanPool and vni are only allowed when type is Vxlan").field_path(".vxlanPool"),
    validation = Rule::new("self.type == 'Vxlan' || has(self.physicalInterface)").message("physicalInterface is required when type is NoVlan or Vlan").field_path(".physicalInterface")
)]
#[serde(rename_all = "camelCase")]
pub struct L2NetworkSpec {
    /// Name of the Zone the network is in.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("zone"))]
    pub zone: String,
    /// How the broadcast domain is built.
    #[serde(rename = "type")]
    #[x_kube(validation = cel::immutable("type"))]
    pub network_type: L2NetworkType,
    /// The host interface the bridge (or its VLAN sub-interface) sits on, e.g. `eth1`. Not
    /// used by `Vxlan`, which rides on the VTEP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub physical_interface: Option<String>,
    /// 802.1Q VLAN id, for `Vlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    #[x_kube(validation = cel::immutable("vlanId"))]
    pub vlan_id: Option<i32>,
    /// The VxlanPool the VNI is taken from, for `Vxlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub vxlan_pool: Option<String>,
    /// A specific VNI from the pool, for `Vxlan`; the next free one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16777214))]
    #[x_kube(validation = cel::immutable("vni"))]
    pub vni: Option<i32>,
    /// MTU of the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: Option<i32>,
}

/// How an L2 network is built.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum L2NetworkType {
    /// A bridge on the physical interface, untagged.
    #[default]
    NoVlan,
    /// A bridge on an 802.1Q sub-interface of the physical interface.
    Vlan,
    /// A bridge on a VXLAN device; VTEPs from the pool's CIDR.
    Vxlan,
}

/// Observed state of an L2Network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L2NetworkStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The VNI allocated from the pool, for `Vxlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<i32>,
    /// The VXLAN tunnel endpoints, for `Vxlan`: the management addresses of the hosts of every
    /// cluster the network is attached to. Each host's agent tunnels to all the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vteps: Vec<String>,
    /// `Ready` is True once every attached host has the bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
