//! GlobalConfig: the control plane's tunables, one cluster-wide object.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Conditions, DeletionPolicy};

/// The name of the one GlobalConfig object.
pub const GLOBAL_CONFIG_NAME: &str = "default";

/// GlobalConfig holds the defaults ZStack keeps in its global configuration: deletion
/// policies and expunge periods, overcommit ratios, host heartbeat timeout and maintenance
/// policy, live migration limits, HA restart delay. There is one
/// object, named `default`; controllers watch it, so a change takes effect without a restart.
/// Clusters can override the overcommit ratios.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "GlobalConfig",
    status = "GlobalConfigStatus",
    shortname = "gc",
    category = "strata",
    validation = Rule::new("self.metadata.name == 'default'").message("GlobalConfig is a singleton: metadata.name must be default"),
    printcolumn = r#"{"name":"CPU Ratio","type":"number","jsonPath":".spec.allocation.cpuOvercommitRatio"}"#,
    printcolumn = r#"{"name":"Memory Ratio","type":"number","jsonPath":".spec.allocation.memoryOvercommitRatio"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"integer","jsonPath":".spec.host.heartbeatTimeoutSeconds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalConfigSpec {
    /// VM deletion.
    #[serde(default)]
    pub vm: VmConfig,
    /// Volume deletion.
    #[serde(default)]
    pub volume: RecycleConfig,
    /// Image deletion.
    #[serde(default)]
    pub image: RecycleConfig,
    /// Host heartbeats and reservations.
    #[serde(default)]
    pub host: HostConfig,
    /// Overcommit for placement.
    #[serde(default)]
    pub allocation: AllocationConfig,
    /// Live migration limits.
    #[serde(default)]
    pub migration: MigrationConfig,
    /// What happens to VMs when their host fails.
    #[serde(default)]
    pub ha: HaConfig,
}

/// How many live migrations may run at once (KubeVirt's defaults: 5 per cluster, 2 outbound
/// per node; migrations beyond the limits wait in `Pending`), and how long one may take.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationConfig {
    /// Migrations running at once out of the hosts of one cluster.
    #[serde(default = "per_cluster")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallel_migrations_per_cluster: i32,
    /// Migrations running at once out of one host.
    #[serde(default = "outbound_per_host")]
    #[schemars(range(min = 1, max = 100))]
    pub parallel_outbound_migrations_per_host: i32,
    /// Seconds a migration may take per GiB of guest memory (at least one GiB counted), from
    /// the hand-over to the source host until the domain runs on the target; past that the
    /// source host aborts the copy and the VM keeps running there (KubeVirt's
    /// `completionTimeoutPerGiB`, default 150).
    #[serde(
        default = "completion_timeout_per_gib",
        rename = "completionTimeoutPerGiB"
    )]
    #[schemars(range(min = 1, max = 86400))]
    pub completion_timeout_per_gib: i32,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            parallel_migrations_per_cluster: per_cluster(),
            parallel_outbound_migrations_per_host: outbound_per_host(),
            completion_timeout_per_gib: completion_timeout_per_gib(),
        }
    }
}

fn per_cluster() -> i32 {
    5
}

fn outbound_per_host() -> i32 {
    2
}

fn completion_timeout_per_gib() -> i32 {
    150
}

/// High availability: restarting VMs of failed hosts elsewhere.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HaConfig {
    /// How long a host stays Disconnected before its VMs with `haPolicy: Restart` (and volumes
    /// on shared storage) are restarted on other hosts. Agents fence themselves (stop their
    /// VMs) once they have not renewed their lease for its duration, so this margin after the
    /// lease expired is what keeps a VM from running twice.
    #[serde(default = "restart_after")]
    #[schemars(range(min = 0, max = 3600))]
    pub restart_after_seconds: i32,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            restart_after_seconds: restart_after(),
        }
    }
}

fn restart_after() -> i32 {
    30
}

/// What a host's drain does with VMs that cannot be live-migrated (volumes on local storage)
/// or whose migration failed (ZStack's `StopVmOnMigrationFailure`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum MaintenancePolicy {
    /// Stop them (`runStrategy: Halted`, with an Event); the host empties.
    #[default]
    StopVms,
    /// Leave them running and report them in the host's `Drained` condition; the operator
    /// moves or stops them.
    Refuse,
}

/// How deleted VMs are kept.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmConfig {
    /// Deletion policy of VMs that do not set one. `Direct` unless set: `kubectl delete` and
    /// GitOps pruning are expected to free what they delete, so the recycle bin is opt-in, as
    /// OpenStack Nova's soft delete is (ZStack defaults to `Delay`).
    #[serde(default = "direct")]
    pub deletion_policy: DeletionPolicy,
    /// How long a `Delay`-deleted VM stays recoverable.
    #[serde(default = "week")]
    #[schemars(range(min = 0))]
    pub expunge_period_seconds: i64,
    /// Whether destroying a VM also deletes its data volumes.
    #[serde(default)]
    pub delete_data_volumes_on_destroy: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            deletion_policy: direct(),
            expunge_period_seconds: week(),
            delete_data_volumes_on_destroy: false,
        }
    }
}

fn direct() -> DeletionPolicy {
    DeletionPolicy::Direct
}

fn week() -> i64 {
    7 * 24 * 3600
}

/// How deleted volumes or images are kept.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecycleConfig {
    /// Deletion policy of objects that do not set one.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How long a `Delay`-deleted object stays recoverable.
    #[serde(default = "three_days")]
    #[schemars(range(min = 0))]
    pub expunge_period_seconds: i64,
}

impl Default for RecycleConfig {
    fn default() -> Self {
        Self {
            deletion_policy: DeletionPolicy::Delay,
            expunge_period_seconds: three_days(),
        }
    }
}

fn three_days() -> i64 {
    3 * 24 * 3600
}

/// Host liveness and reservations.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostConfig {
    /// A host whose agent has not renewed its lease for this long is Disconnected.
    #[serde(default = "heartbeat_timeout")]
    #[schemars(range(min = 5, max = 3600))]
    pub heartbeat_timeout_seconds: i32,
    /// CPUs kept back on every host that does not set `spec.reserved`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 64))]
    pub reserved_cpu: i64,
    /// Memory kept back on every host that does not set `spec.reserved`.
    #[serde(default = "reserved_memory")]
    #[x_kube(validation = Rule::new("isQuantity(string(self))").message("reservedMemory must be a quantity"))]
    pub reserved_memory: Quantity,
    /// What entering Maintenance does with VMs that cannot be live-migrated.
    #[serde(default)]
    pub maintenance_policy: MaintenancePolicy,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_seconds: heartbeat_timeout(),
            reserved_cpu: 0,
            reserved_memory: reserved_memory(),
            maintenance_policy: MaintenancePolicy::default(),
        }
    }
}

fn heartbeat_timeout() -> i32 {
    30
}

fn reserved_memory() -> Quantity {
    Quantity("1Gi".into())
}

/// Overcommit ratios used for clusters that do not set their own.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllocationConfig {
    /// vCPUs placed per logical CPU.
    #[serde(default = "cpu_ratio")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub cpu_overcommit_ratio: f64,
    /// Bytes of VM memory placed per byte of host memory.
    #[serde(default = "memory_ratio")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub memory_overcommit_ratio: f64,
}

impl Default for AllocationConfig {
    fn default() -> Self {
        Self {
            cpu_overcommit_ratio: cpu_ratio(),
            memory_overcommit_ratio: memory_ratio(),
        }
    }
}

fn cpu_ratio() -> f64 {
    10.0
}

fn memory_ratio() -> f64 {
    1.0
}

/// Observed state of the GlobalConfig.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalConfigStatus {
    /// The metadata.generation the controllers have applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True once the controllers use this generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
