//! Image: a template for root volumes.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An Image is a disk template (qcow2 or raw) that root volumes are cloned from.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Image",
    status = "ImageStatus",
    shortname = "img",
    category = "strata",
    printcolumn = r#"{"name":"Format","type":"string","jsonPath":".spec.format"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Where the image is fetched from (`file://` or `http://`).
    pub url: String,
    /// Disk format: `qcow2` or `raw`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Expected checksum, as `sha256:<hex>`; verified after download when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

fn default_format() -> String {
    "qcow2".to_string()
}

/// Observed state of an Image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
