//! VirtualMachineInstance: a VM fully resolved for one host.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    securitygroup::{Protocol, RuleAction},
    Conditions, DirectBoot, L2NetworkType, PortRange,
};

/// A VirtualMachineInstance is the runtime form of a VirtualMachine: written by the VM controller
/// with every decision made (host, size, image, addresses), and run by the agent of `spec.host`.
/// Agents select their instances with the field selector `spec.host=<host>`. Users do not
/// create these; deleting one makes the VM controller create it again.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    shortname = "vmi",
    category = "strata",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.nics[0].ip"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.host",
    selectable = ".spec.migration.targetHost"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// The Host whose agent runs this instance.
    pub host: String,
    /// Virtual CPUs.
    pub cpu: i64,
    /// Memory.
    pub memory: Quantity,
    /// Image name.
    pub image: String,
    /// Where the image is fetched from.
    pub image_url: String,
    /// The image's `sha256:<hex>` checksum; the agent refuses a download that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_checksum: Option<String>,
    /// Set when the image boots a kernel directly instead of from its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_boot: Option<DirectBoot>,
    /// The VM's disks, the root volume first: what the host creates (a root overlay on the
    /// image, empty data volumes), attaches (live, while the domain runs) and grows. A disk
    /// that leaves the list is detached, not deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmiDisk>,
    /// The power state the agent drives the domain to.
    #[serde(default)]
    pub power_state: PowerState,
    /// The VM's `spec.rebootRequest`: the agent reboots the running domain once for each new
    /// value and records it in `status.rebootRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_request: Option<String>,
    /// The VM's user data, served to it by the metadata service of its L3 networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// NICs with their resolved addresses, in guest order.
    #[serde(default)]
    pub nics: Vec<VmiNic>,
    /// Set while a live migration moves the running domain to another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::VmiMigration>,
}

/// A disk of an instance, as the VM controller resolved it from a Volume.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiDisk {
    /// The Volume (same namespace).
    pub name: String,
    /// `Root` or `Data`.
    #[serde(rename = "type")]
    pub volume_type: crate::VolumeType,
    /// Guest device name, e.g. `vda`; kept for as long as the disk stays attached.
    pub device: String,
    /// Serial number the guest sees (`/dev/disk/by-id/virtio-<serial>`), at most 20 bytes.
    pub serial: String,
    /// Size of the disk; for the root disk, the image's own size when unset. The host grows
    /// a smaller disk to it, never shrinks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// The VolumeSnapshots the disk holds: the host takes those it lacks and deletes the
    /// others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// A revert to carry out once: the host reverts the disk to `snapshot` for each new
    /// `request` and records it in the disk's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<VmiRevert>,
}

/// A revert of a disk to one of its snapshots, asked by a VolumeRestore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiRevert {
    /// The VolumeSnapshot.
    pub snapshot: String,
    /// The VolumeRestore's uid: each new value is one revert.
    pub request: String,
}

/// A disk as the host reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiDiskStatus {
    /// The Volume.
    pub name: String,
    /// Guest device name.
    pub device: String,
    /// The disk's size as the hypervisor sees it.
    pub size: Quantity,
    /// Where the disk lives on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The snapshots the disk holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// The last revert request the host carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<String>,
}

/// The power state of a domain, as the VM controller wants it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum PowerState {
    /// Running.
    #[default]
    Running,
    /// Shut off but still defined, so a stopped VM keeps its volumes on the host's storage.
    Stopped,
    /// Running, with its vCPUs paused and its memory kept.
    Paused,
}

/// A resolved network interface.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiNic {
    /// The L3Network.
    pub l3_network: String,
    /// The IPv4 address.
    pub ip: String,
    /// Prefix length of the subnet.
    pub prefix_length: u8,
    /// The gateway.
    pub gateway: String,
    /// The MAC address.
    pub mac: String,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domain handed out by DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// The L2 network the L3 network lives on, as the host must build it.
    #[serde(default)]
    pub l2: VmiL2Network,
    /// The firewall of the NIC, resolved from the VM NIC's `securityGroups`; unset when the NIC
    /// is in no SecurityGroup (all traffic passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<VmiNicSecurity>,
    /// The Eip bound to the NIC, once it has a VIP: the host NATs the VIP one-to-one to the
    /// NIC's address, through the Public L3 network's bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip: Option<VmiEip>,
    /// The PortForwardings to the NIC that have a VIP, by name: the host DNATs their ports of
    /// the VIP to the NIC, through the Public L3 network's bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwardings: Vec<VmiPortForwarding>,
}

/// A VIP as the host programs it: an Eip's, or (inside [`VmiPortForwarding`]) a
/// PortForwarding's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiEip {
    /// Name of the Eip or PortForwarding.
    pub name: String,
    /// The public address.
    pub vip: String,
    /// The Public L3Network the VIP is on.
    pub l3_network: String,
    /// Prefix length of the public subnet.
    pub prefix_length: u8,
    /// The public subnet's gateway, the default route of NATed traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The L2 network the Public L3 network lives on, as the host must build it.
    #[serde(default)]
    pub l2: VmiL2Network,
}

/// A PortForwarding as the host programs it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiPortForwarding {
    /// The rule's name, VIP and Public network.
    #[serde(flatten)]
    pub public: VmiEip,
    /// TCP or UDP.
    pub protocol: crate::ForwardedProtocol,
    /// Ports on the VIP.
    pub external_ports: PortRange,
    /// Ports on the NIC, as many as `externalPorts`.
    pub internal_ports: PortRange,
    /// Only sources in this CIDR are forwarded; any source when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cidr: Option<String>,
}

/// NAT the host has programmed for an instance: one of its NICs' Eips or PortForwardings.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct VmiNatStatus {
    /// `Eip` or `PortForwarding`.
    pub kind: String,
    /// Name of the Eip or PortForwarding.
    pub name: String,
    /// The VIP its rules translate.
    pub vip: String,
}

/// The union of a NIC's SecurityGroups, as the host's firewall applies it. Replies to allowed
/// traffic always pass; ARP and DHCP replies are always let in.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiNicSecurity {
    /// The SecurityGroups the rules come from, in the VM NIC's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Rules for traffic into the NIC, by ascending priority; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_rules: Vec<VmiSecurityRule>,
    /// Rules for traffic out of the NIC, by ascending priority; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_rules: Vec<VmiSecurityRule>,
    /// Incoming traffic no rule matches: `Accept` if any of the groups accepts it, else `Drop`.
    #[serde(default)]
    pub default_ingress_policy: RuleAction,
    /// Outgoing traffic no rule matches: `Accept` if any of the groups accepts it, else `Drop`.
    #[serde(default)]
    pub default_egress_policy: RuleAction,
}

/// One resolved firewall rule. A SecurityGroup rule with a `remoteGroup` becomes one rule per
/// address of the member NICs of that group (`/32` CIDRs), and none while it has no members.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiSecurityRule {
    /// IP protocol the rule matches.
    pub protocol: Protocol,
    /// Destination ports, for TCP and UDP; all ports when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// The peer's IPv4 CIDR (the source for ingress, the destination for egress); any peer
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Lower numbers are evaluated first.
    pub priority: i32,
    /// What happens to matching traffic.
    pub action: RuleAction,
}

/// A resolved L2 network: what a host needs to build its bridge.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiL2Network {
    /// Name of the L2Network.
    #[serde(default)]
    pub name: String,
    /// How the broadcast domain is built.
    #[serde(default, rename = "type")]
    pub network_type: L2NetworkType,
    /// The host interface under the bridge, for `NoVlan` and `Vlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_interface: Option<String>,
    /// The 802.1Q id, for `Vlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<i32>,
    /// The VXLAN network identifier, for `Vxlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<i32>,
    /// MTU of the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
}

/// What the agent observes of an instance.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum VmiPhase {
    /// Not yet picked up by the agent.
    #[default]
    Pending,
    /// The agent is creating it on the hypervisor.
    Starting,
    /// The hypervisor runs it.
    Running,
    /// It exists on the hypervisor but does not run.
    Stopped,
    /// The hypervisor failed to run it; see the Ready condition.
    Failed,
}

/// Observed state of a VirtualMachineInstance, written by the agent.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the hypervisor reports.
    #[serde(default)]
    pub phase: VmiPhase,
    /// The last lines of the serial console (at most 20 lines and 2 KiB), refreshed every few
    /// seconds while the domain runs, for consoles and dashboards; the whole log stays on the
    /// host. Empty for drivers that keep no console log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_tail: Option<String>,
    /// The disks attached to the domain, as the host sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmiDiskStatus>,
    /// The last `spec.rebootRequest` the agent carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_request: Option<String>,
    /// The live migration of `spec.migration`, as the source host's agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::VmiMigrationStatus>,
    /// The target host's agent's side of `spec.migration`: set once that host is ready to
    /// receive the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_target: Option<crate::VmiMigrationTarget>,
    /// The Eips and PortForwardings of the NICs whose NAT the host has programmed (a simulated
    /// host, which has no network, reports them all); their controllers turn them Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<VmiNatStatus>,
    /// `Ready` is True while the instance runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
