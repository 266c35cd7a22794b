//! InstanceOffering: the CPU and memory size of a VM.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cel;

/// An InstanceOffering is a VM size: how many vCPUs and how much memory a VM gets, and how
/// the scheduler chooses among the hosts that fit.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "InstanceOffering",
    shortname = "io",
    category = "strata",
    printcolumn = r#"{"name":"CPU","type":"integer","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"Allocator","type":"string","jsonPath":".spec.allocatorStrategy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceOfferingSpec {
    /// Number of virtual CPUs.
    #[schemars(range(min = 1, max = 512))]
    pub cpu: i64,
    /// Memory, as a quantity such as `512Mi` or `4Gi`.
    #[x_kube(validation = cel::positive_quantity("memory"))]
    pub memory: Quantity,
    /// How the scheduler picks among the hosts that fit.
    #[serde(default)]
    pub allocator_strategy: AllocatorStrategy,
}

/// How the scheduler picks among the hosts that fit a VM (ZStack's host allocator strategies).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum AllocatorStrategy {
    /// The host left with the most free memory, spreading load.
    #[default]
    Spread,
    /// The host left with the least free memory, packing VMs onto few hosts.
    Pack,
    /// The host running the fewest VMs.
    LeastVmPreferred,
    /// The host the VM last ran on, if it still fits.
    LastHostPreferred,
}
