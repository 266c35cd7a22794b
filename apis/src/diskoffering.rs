//! DiskOffering: a named size for data volumes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::cel;

/// A DiskOffering is a volume size users pick by name instead of writing a size.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "DiskOffering",
    shortname = "do",
    category = "strata",
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DiskOfferingSpec {
    /// Size of volumes made from this offering, e.g. `20Gi`.
    #[x_kube(validation = cel::positive_quantity("size"))]
    pub size: Quantity,
    /// Free-form text shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}
