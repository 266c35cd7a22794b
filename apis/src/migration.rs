//! VirtualMachineMigration: a request to move a running VM to another host.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Conditions;

/// A VirtualMachineMigration asks for a live migration of a running VM (same namespace), to
/// `targetHost` or to a host the scheduler picks. Like a Job, it runs once: its spec cannot
/// change, and it stays as a record after it finishes.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VirtualMachineMigration",
    namespaced,
    status = "VirtualMachineMigrationStatus",
    shortname = "vmim",
    category = "strata",
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".spec.virtualMachine"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.sourceHost"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetHost"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.progress.percent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.virtualMachine",
    selectable = ".status.phase"
)]
#[x_kube(validation = crate::cel::immutable("spec"))]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationSpec {
    /// The VirtualMachine to move.
    #[schemars(length(min = 1, max = 253))]
    pub virtual_machine: String,
    /// The Host to move it to; chosen by the scheduler when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_host: Option<String>,
}

/// Where a migration is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Accepted; not started.
    #[default]
    Pending,
    /// Choosing the target host.
    Scheduling,
    /// Target chosen; preparing it.
    Scheduled,
    /// Memory is being copied.
    Running,
    /// The VM runs on the target host.
    Succeeded,
    /// The VM still runs on the source host; see the conditions.
    Failed,
}

/// Observed state of a VirtualMachineMigration.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the migration is.
    #[serde(default)]
    pub phase: MigrationPhase,
    /// The Host the VM ran on when the migration started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// The Host the VM is moving to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_host: Option<String>,
    /// When copying started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How far the move has come: target preparation, then memory copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::Progress>,
    /// `Ready` is True once the migration has succeeded; its reason says why one failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// The part of an instance a live migration adds, written by the migration controller: the
/// source host's agent moves the running domain to `targetHost`. The instance's `host` stays
/// the source until the source's agent reports the move complete; then the VM controller
/// changes `host` and removes this section in one write, so no moment has two hosts owning
/// the instance.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiMigration {
    /// The VirtualMachineMigration (same namespace) asking for the move.
    pub migration: String,
    /// The Host the domain moves to.
    pub target_host: String,
    /// The target Host's `managementAddress`: where the source reaches its hypervisor and
    /// sends the memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_address: Option<String>,
    /// When the source host gives up: a move not finished by then (the target not ready, or
    /// the copy still running) is aborted and the domain keeps running on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
}

/// The target side of a live migration, as the target host's agent reports it in the
/// instance's status: it has built what the domain needs there (networks, security groups,
/// access to the volumes), so the source may start the copy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiMigrationTarget {
    /// The VirtualMachineMigration the target prepared for.
    pub migration: String,
    /// The Host that prepared.
    pub host: String,
}

/// Where the source host's agent is with a live migration.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VmiMigrationPhase {
    /// Memory is being copied; the domain still runs on the source.
    #[default]
    Running,
    /// The domain runs on the target and is gone from the source.
    Completed,
    /// The move failed; the domain still runs on the source.
    Failed,
}

/// A live migration as the source host's agent reports it in the instance's status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiMigrationStatus {
    /// The VirtualMachineMigration this reports on.
    pub migration: String,
    /// Where the move is.
    #[serde(default)]
    pub phase: VmiMigrationPhase,
    /// Share of the memory copied, 0 to 100.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
    /// Why the move failed, as a CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the hypervisor said about a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
