//! VirtualMachine: the user's desired VM.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions, DeletionPolicy};

/// A VirtualMachine is what a user asks for: a size, an image and networks. The VM controller
/// places it on a host, allocates its addresses and volumes and creates the
/// VirtualMachineInstance that the host's agent runs; `status` follows what the agent reports.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    status = "VirtualMachineStatus",
    shortname = "vm",
    shortname = "vms",
    category = "strata",
    category = "all",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".status.host"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.nics[0].ip"}"#,
    printcolumn = r#"{"name":"CPU","type":"integer","jsonPath":".status.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".status.memory"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Offering","type":"string","priority":1,"jsonPath":".spec.instanceOffering"}"#,
    printcolumn = r#"{"name":"Image","type":"string","priority":1,"jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"MAC","type":"string","priority":1,"jsonPath":".status.nics[0].mac"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    selectable = ".status.phase",
    selectable = ".status.host",
    selectable = ".spec.image"
)]
#[x_kube(
    validation = Rule::new("has(self.instanceOffering) || (has(self.cpu) && has(self.memory))").message("set instanceOffering, or both cpu and memory").field_path(".instanceOffering"),
    validation = Rule::new("!has(self.instanceOffering) || (!has(self.cpu) && !has(self.memory))").message("instanceOffering and cpu/memory are mutually exclusive").field_path(".instanceOffering"),
    validation = Rule::new("!has(self.nics) || self.nics.filter(n, has(n.default) && n.default).size() <= 1").message("at most one NIC can be the default").field_path(".nics")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Name of the InstanceOffering that sizes this VM; or set `cpu` and `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub instance_offering: Option<String>,
    /// Virtual CPUs, when no instanceOffering is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 512))]
    pub cpu: Option<i64>,
    /// Memory, when no instanceOffering is named, e.g. `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = cel::positive_quantity("memory"))]
    pub memory: Option<Quantity>,
    /// Name of the Image the root volume is cloned from.
    #[schemars(length(min = 1, max = 253))]
    pub image: String,
    /// Size of the root volume; the image's virtual size when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = cel::positive_quantity("rootDiskSize"))]
    pub root_disk_size: Option<Quantity>,
    /// Data Volumes (same namespace) attached to the VM, in guest order. This list is the one
    /// place an attachment is declared: adding a name attaches the volume (live, if the VM
    /// runs), removing it detaches it. A volume another VM holds is refused (`VolumesReady`
    /// False, reason `VolumeInUse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 24))]
    pub data_volumes: Vec<String>,
    /// Network interfaces, in guest order. Each gets a MAC and an address from its L3 network.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub nics: Vec<VmNic>,
    /// Where the VM may be placed; anywhere that fits when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Whether the VM should run.
    #[serde(default)]
    pub run_strategy: RunStrategy,
    /// What happens when the VM's host fails.
    #[serde(default)]
    pub ha_policy: HaPolicy,
    /// What deleting the VirtualMachine does to its root volume and addresses; GlobalConfig's
    /// `vm.deletionPolicy` when unset. `Direct` releases them with the VM. `Delay` keeps them
    /// in the recycle bin (the root Volume in phase `Recycled`, holding the addresses) for
    /// GlobalConfig's `vm.expungePeriodSeconds`: creating a VM of the same name in the same
    /// namespace, or annotating the root Volume `strata.io/recover`, recovers the VM with its
    /// disk, IPs and MACs; deleting the Volume expunges it at once. `Never` keeps them until
    /// the Volume is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Cloud-init user data, served by the metadata service of the VM's L3 networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub user_data: Option<String>,
    /// SSH public keys installed for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ssh_keys: Vec<String>,
    /// Devices the firmware tries, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub boot_order: Vec<BootDevice>,
    /// An `iso` Image attached as the VM's CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cdrom: Option<String>,
    /// Pauses the running VM's vCPUs, keeping its memory and its host (ZStack's pause);
    /// setting it back to false resumes the VM where it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Any new value asks for one reboot of the running VM, the way `kubectl rollout restart`
    /// stamps a time on a Deployment (the dashboard writes the current time). The value the
    /// host carried out last shows in the instance's `status.rebootRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub reboot_request: Option<String>,
}

/// Whether the VM should be running (KubeVirt's run strategies).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum RunStrategy {
    /// Run the VM, and start it again whenever it stops.
    #[default]
    Always,
    /// Keep the VM stopped.
    Halted,
    /// Start and stop only on explicit request; never restarted by the controller.
    Manual,
    /// Restart the VM when it fails, not when the guest shuts itself down.
    RerunOnFailure,
}

/// What happens to a VM when its host fails.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum HaPolicy {
    /// Leave it `Unknown` until the host returns.
    #[default]
    None,
    /// Once the host is fenced, start the VM on another host.
    Restart,
}

/// A firmware boot device.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum BootDevice {
    /// The root volume.
    HardDisk,
    /// The CD-ROM.
    CdRom,
    /// PXE on the default NIC.
    Network,
}

/// Where a VM may be placed. More specific constraints must agree with broader ones.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Only hosts in this Zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub zone: Option<String>,
    /// Only hosts in this Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster: Option<String>,
    /// Only this Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
}

/// A network interface of a VM.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNic {
    /// Name of the L3Network the NIC is on.
    #[schemars(length(min = 1, max = 253))]
    pub l3_network: String,
    /// A static address from the network's ranges; the next free one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("ip"))]
    pub ip: Option<String>,
    /// SecurityGroups (same namespace) whose rules apply to the NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub security_groups: Vec<String>,
    /// Whether the NIC carries the default route; the first NIC when none says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// Lifecycle phase of a VM, with ZStack's state names.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VmPhase {
    /// Accepted, not placed yet (waiting for a host or for its references); see the conditions.
    #[default]
    Created,
    /// Placed on a host, which is starting it.
    Starting,
    /// The hypervisor runs it.
    Running,
    /// Being stopped.
    Stopping,
    /// Not running, by request.
    Stopped,
    /// Being rebooted.
    Rebooting,
    /// Being paused.
    Pausing,
    /// Paused in memory.
    Paused,
    /// Being resumed.
    Resuming,
    /// Moving to another host.
    Migrating,
    /// Being destroyed after deletion.
    Destroying,
    /// Destroyed, recoverable until expunged (deletion policy Delay).
    Destroyed,
    /// Its disks are being removed for good.
    Expunging,
    /// Its host stopped reporting; its real state is not known.
    Unknown,
    /// The guest crashed.
    Crashed,
    /// The host failed to run it; see the Ready condition.
    Error,
}

/// Observed state of a VirtualMachine.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: VmPhase,
    /// The Host the VM is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Virtual CPUs the VM was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i64>,
    /// Memory the VM was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Addresses given to each NIC, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<VmNicStatus>,
    /// The VM's volumes, root first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VmVolumeStatus>,
    /// Where the graphical console is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<Console>,
    /// `Scheduled`, `VolumesReady`, `NetworkReady` and `Ready`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// Addresses of one NIC.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNicStatus {
    /// The L3Network the address comes from.
    pub l3_network: String,
    /// The IPv4 address.
    pub ip: String,
    /// The MAC address.
    pub mac: String,
}

/// One volume of a VM.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmVolumeStatus {
    /// The Volume.
    pub name: String,
    /// `Root` or `Data`.
    #[serde(rename = "type")]
    pub volume_type: crate::VolumeType,
    /// Guest device name, e.g. `vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The PrimaryStorage the volume is on; for the root volume, chosen with the host and
    /// recorded in the same write, so a restarted controller never chooses again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_storage: Option<String>,
}

/// A console endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Console {
    /// `vnc` or `spice`.
    pub protocol: String,
    /// Host address the console listens on.
    pub address: String,
    /// TCP port.
    pub port: i32,
}
