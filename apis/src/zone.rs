//! Zone: a failure domain (a data center or a room), the top of the zone → cluster → host tree.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AdminState, Conditions};

/// A Zone groups clusters, storage and networks that share a failure domain.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Zone",
    status = "ZoneStatus",
    shortname = "zn",
    shortname = "zone",
    category = "strata",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.adminState"}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSpec {
    /// Free-form text shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// `Disabled` stops new VMs from being placed anywhere in the zone.
    #[serde(default)]
    pub admin_state: AdminState,
}

/// Observed state of a Zone.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` summarises the zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
