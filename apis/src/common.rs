//! Small types several kinds share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether an infrastructure object takes new work. Disabling keeps what already runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new VMs, volumes or addresses.
    #[default]
    Enabled,
    /// Keeps what it has, takes nothing new.
    Disabled,
}

/// What deleting an object does to the resources behind it (ZStack's deletion policy).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Destroy the resources at once.
    Direct,
    /// Keep them recoverable for the expunge period in GlobalConfig, then destroy them.
    #[default]
    Delay,
    /// Never destroy them; an operator expunges them by hand.
    Never,
}

/// An inclusive range of TCP or UDP ports.
#[derive(kube::KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = crate::cel::ordered_range("ports"))]
pub struct PortRange {
    /// First port.
    #[schemars(range(min = 1, max = 65535))]
    pub start: u16,
    /// Last port (inclusive); equal to `start` for a single port.
    #[schemars(range(min = 1, max = 65535))]
    pub end: u16,
}

/// A NIC of a VirtualMachine in the same namespace, for EIPs and port forwarding.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNicRef {
    /// Name of the VirtualMachine.
    #[schemars(length(min = 1, max = 253))]
    pub virtual_machine: String,
    /// The L3Network of the NIC; the VM's default NIC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3_network: Option<String>,
}

/// How far a long operation (an image download, a volume being provisioned, a migration, a
/// host drain) has come, for progress bars and `kubectl get -o wide`. Written by whoever does
/// the work; absent when nothing long is under way.
#[derive(kube::KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Share of the work done, 0 to 100.
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
    /// The step under way, such as `Downloading`, `Verifying`, `CopyingMemory` or
    /// `MigratingVMs`.
    #[schemars(length(max = 63))]
    pub step: String,
    /// Human-readable detail, e.g. `512Mi of 2Gi` or `12 of 30 VMs moved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}
