//! Volume: a virtual disk on a primary storage.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions, DeletionPolicy};

/// Finalizer the Volume controller holds until no host has the volume's disk attached.
pub const VOLUME_FINALIZER: &str = "strata.io/volume-cleanup";

/// A Volume is a virtual disk. A `Root` volume is cloned from an image and boots its VM (the VM
/// controller creates it, owned by the VM); a `Data` volume is blank, sized directly or by a
/// DiskOffering, and attached to the VM whose `spec.dataVolumes` lists it (at most one VM at a
/// time: `status.virtualMachine` says which). On local storage a data volume is created on the
/// host of the first VM it is attached to, and stays on that host.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Volume",
    namespaced,
    status = "VolumeStatus",
    shortname = "vol",
    category = "strata",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".status.virtualMachine"}"#,
    printcolumn = r#"{"name":"Storage","type":"string","priority":1,"jsonPath":".status.primaryStorage"}"#,
    printcolumn = r#"{"name":"Host","type":"string","priority":1,"jsonPath":".status.host"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".status.virtualMachine",
    selectable = ".status.host",
    selectable = ".status.phase"
)]
#[x_kube(
    validation = Rule::new("self.type != 'Root' || has(self.image)").message("image is required for a Root volume").field_path(".image"),
    validation = Rule::new("self.type != 'Data' || has(self.size) || has(self.diskOffering)").message("a Data volume needs size or diskOffering").field_path(".size"),
    validation = Rule::new("!has(self.size) || !has(self.diskOffering)").message("size and diskOffering are mutually exclusive").field_path(".size")
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// `Root` (boots a VM, cloned from `image`) or `Data`.
    #[serde(rename = "type")]
    #[x_kube(validation = cel::immutable("type"))]
    pub volume_type: VolumeType,
    /// Size of the disk; for a Root volume, at least the image's virtual size. It can grow
    /// (live, on a running VM), never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = cel::positive_quantity("size"))]
    pub size: Option<Quantity>,
    /// DiskOffering that sizes the volume, instead of `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub disk_offering: Option<String>,
    /// Image a Root volume is cloned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("image"))]
    pub image: Option<String>,
    /// PrimaryStorage to create the volume on; chosen with the VM's host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub primary_storage: Option<String>,
    /// Delete this data volume when the VirtualMachine it is attached to is deleted; by
    /// default it is detached and kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_with_virtual_machine: bool,
    /// What deleting the Volume does to its disk.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What a volume is for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VolumeType {
    /// Boots a VM; cloned from an image.
    Root,
    /// Extra storage for a VM.
    #[default]
    Data,
}

/// Where a volume is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VolumePhase {
    /// Being allocated on its primary storage.
    #[default]
    Creating,
    /// Exists, attached to nothing.
    Ready,
    /// Attached to its VM.
    Attached,
    /// Being detached from its VM.
    Detaching,
    /// Being deleted.
    Deleting,
    /// A root volume kept after its VM was deleted under the `Delay` or `Never` deletion
    /// policy, holding the VM's addresses until the VM is recovered or the volume expunged.
    Recycled,
}

/// Observed state of a Volume.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the volume is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VolumePhase>,
    /// The disk's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Bytes the disk actually takes on its storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<Quantity>,
    /// The PrimaryStorage the disk is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_storage: Option<String>,
    /// The Host holding the disk, for LocalStorage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The VirtualMachine (same namespace) the volume is attached to, being attached to or
    /// being detached from. The first VM whose `spec.dataVolumes` lists the volume gets it;
    /// others are refused (their `VolumesReady` condition says `VolumeInUse`) until it is
    /// detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<String>,
    /// Guest device name while attached, e.g. `vdb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Path (or URL) of the disk on its storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How far creating (cloning, allocating) the disk has come, while it is `Creating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::Progress>,
    /// `Ready` is True while the disk is usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
