//! PrimaryStorage: where volumes live while VMs use them.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, AdminState, Conditions};

/// A PrimaryStorage holds the volumes of running VMs. It belongs to a zone and is attached to
/// clusters (`Cluster.spec.primaryStorages`). `LocalStorage` is a directory on every host of
/// those clusters (a volume then pins its VM to one host); `NFS` and `SharedMountPoint` are
/// shared by all of them.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "PrimaryStorage",
    status = "PrimaryStorageStatus",
    shortname = "ps",
    category = "strata",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Total","type":"string","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.zone",
    selectable = ".spec.type"
)]
#[x_kube(
    validation = Rule::new("self.type != 'NFS' || self.url.matches('^nfs://[^/]+/.+')").message("url of NFS storage must look like nfs://server/export").field_path(".url"),
    validation = Rule::new("self.type == 'NFS' || self.url.matches('^/.+')").message("url of LocalStorage and SharedMountPoint storage must be an absolute path").field_path(".url")
)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryStorageSpec {
    /// Name of the Zone the storage is in.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("zone"))]
    pub zone: String,
    /// How volumes are stored.
    #[serde(rename = "type")]
    #[x_kube(validation = cel::immutable("type"))]
    pub storage_type: PrimaryStorageType,
    /// `nfs://server/export` for NFS, else the directory on each host (e.g. `/var/lib/strata/ps`).
    #[schemars(length(min = 2, max = 2048))]
    #[x_kube(validation = cel::immutable("url"))]
    pub url: String,
    /// Where NFS storage is mounted on each host; defaults to a path derived from the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024))]
    pub mount_path: Option<String>,
    /// `Disabled` storage takes no new volumes.
    #[serde(default)]
    pub admin_state: AdminState,
}

/// How a primary storage stores volumes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum PrimaryStorageType {
    /// A directory on each host; volumes are local to one host.
    #[default]
    LocalStorage,
    /// An NFS export mounted on every host.
    NFS,
    /// A shared file system already mounted at the same path on every host.
    SharedMountPoint,
}

/// Capacity of a primary storage on one host (LocalStorage only).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStorageCapacity {
    /// The Host.
    pub host: String,
    /// Size of the storage on that host.
    pub total: Quantity,
    /// Free space on that host.
    pub available: Quantity,
}

/// Observed state of a PrimaryStorage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryStorageStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Size of the storage (summed over hosts for LocalStorage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Quantity>,
    /// Free space (summed over hosts for LocalStorage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Quantity>,
    /// Per-host capacity, for LocalStorage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStorageCapacity>,
    /// `Ready` is True while the hosts can reach the storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
