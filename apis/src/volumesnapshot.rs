//! VolumeSnapshot: a point-in-time copy of a volume; VolumeRestore: reverting a volume to one.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions};

/// A VolumeSnapshot is a point-in-time copy of a Volume in the same namespace, kept inside the
/// volume's disk on its primary storage (a qcow2 internal snapshot), taken by the host of the
/// VM the volume is attached to; a volume can be reverted to it with a VolumeRestore.
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
    /// The volume's size when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// The Host holding the snapshot, for LocalStorage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The PrimaryStorage holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_storage: Option<String>,
    /// `Ready` is True once the snapshot is usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// A VolumeRestore reverts a Volume (same namespace) to one of its VolumeSnapshots, the way
/// KubeVirt's VirtualMachineRestore does for a VM: it runs once (its spec cannot change) and
/// stays as a record. The volume must be attached to a VM whose host holds the snapshot; a
/// running guest sees its disk change under it, so stop the VM first unless it is a scratch
/// disk.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VolumeRestore",
    namespaced,
    status = "VolumeRestoreStatus",
    shortname = "vrs",
    category = "strata",
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".spec.snapshot"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.volume"
)]
#[x_kube(validation = crate::cel::immutable("spec"))]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreSpec {
    /// The Volume to revert.
    #[schemars(length(min = 1, max = 253))]
    pub volume: String,
    /// The VolumeSnapshot (of that volume) to revert it to.
    #[schemars(length(min = 1, max = 253))]
    pub snapshot: String,
}

/// Where a restore is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum RestorePhase {
    /// Waiting for the volume's host to revert it.
    #[default]
    InProgress,
    /// The volume holds the snapshot's content.
    Succeeded,
    /// It cannot be done; see the Ready condition.
    Failed,
}

/// Observed state of a VolumeRestore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the restore is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// `Ready` is True once the volume is reverted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
