//! VxlanPool: the VNIs and VTEP addresses VXLAN L2 networks are built from.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions};

/// A VxlanPool hands out VNIs to `Vxlan` L2Networks. Each host's VTEP is its address inside
/// `vtepCidr`; peers are pushed to every host's forwarding table by the control plane.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VxlanPool",
    status = "VxlanPoolStatus",
    shortname = "vxp",
    category = "strata",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"First VNI","type":"integer","jsonPath":".spec.vniRange.start"}"#,
    printcolumn = r#"{"name":"Last VNI","type":"integer","jsonPath":".spec.vniRange.end"}"#,
    printcolumn = r#"{"name":"VTEP CIDR","type":"string","jsonPath":".spec.vtepCidr"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.usedVnis"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VxlanPoolSpec {
    /// Name of the Zone the pool serves.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// The VNIs networks are given.
    pub vni_range: VniRange,
    /// The subnet hosts' VTEP addresses are in, e.g. `192.168.100.0/24`.
    #[schemars(length(max = 18))]
    #[x_kube(validation = cel::cidr4("vtepCidr"), validation = cel::immutable("vtepCidr"))]
    pub vtep_cidr: String,
    /// UDP port of the VXLAN tunnels.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

fn default_vxlan_port() -> u16 {
    4789
}

/// An inclusive range of VXLAN network identifiers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = cel::ordered_range("vniRange"))]
pub struct VniRange {
    /// First VNI.
    #[schemars(range(min = 1, max = 16777214))]
    pub start: i32,
    /// Last VNI (inclusive).
    #[schemars(range(min = 1, max = 16777214))]
    pub end: i32,
}

/// Observed state of a VxlanPool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VxlanPoolStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// VNIs given to networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_vnis: Option<i64>,
    /// `Ready` summarises the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
