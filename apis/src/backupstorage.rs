//! BackupStorage: the image store images are downloaded to and root volumes cloned from.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, AdminState, Conditions};

/// A BackupStorage is an image store: a directory (`file:///...`) or an HTTP location that
/// holds images and snapshots outside any primary storage. It serves the zones it lists.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "BackupStorage",
    status = "BackupStorageStatus",
    shortname = "bs",
    category = "strata",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Total","type":"string","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageSpec {
    /// `file:///dir` on the management node, or an `http://`/`https://` base URL.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^(file:///|https?://).+')").message("url must start with file:///, http:// or https://"),
        validation = cel::immutable("url")
    )]
    pub url: String,
    /// Zones whose hosts fetch images from this store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub zones: Vec<String>,
    /// `Disabled` stores take no new images.
    #[serde(default)]
    pub admin_state: AdminState,
}

/// Observed state of a BackupStorage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Size of the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Quantity>,
    /// Free space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Quantity>,
    /// `Ready` is True while the store answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
