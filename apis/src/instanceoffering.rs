//! InstanceOffering: the CPU and memory size of a VM.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An InstanceOffering is a VM size: how many vCPUs and how much memory a VM gets.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "InstanceOffering",
    shortname = "io",
    category = "strata",
    printcolumn = r#"{"name":"CPU","type":"integer","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceOfferingSpec {
    /// Number of virtual CPUs.
    #[schemars(range(min = 1, max = 512))]
    pub cpu: i64,
    /// Memory, as a quantity such as `512Mi` or `4Gi`.
    pub memory: Quantity,
}
