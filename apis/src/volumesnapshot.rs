//! VolumeSnapshot: a point-in-time copy of a volume.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions};

/// A VolumeSnapshot is a point-in-time copy of a Volume in the same namespace, kept on the
/// volume's primary storage; a volume can be reverted to it or an image made from it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    shortname = "vs",
    shortname = "snap",
    category = "strata",
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.volume"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// The Volume (same namespace) to snapshot.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("volume"))]
    pub volume: String,
    /// Free-form text shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// Where a snapshot is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum SnapshotPhase {
    /// Being taken.
    #[default]
    Creating,
    /// Taken; usable.
    Ready,
    /// Taking it failed; see the Ready condition.
    Failed,
    /// Being deleted.
    Deleting,
}

/// Observed state of a VolumeSnapshot.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the snapshot is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// Bytes the snapshot takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// The PrimaryStorage holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_storage: Option<String>,
    /// `Ready` is True once the snapshot is usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
