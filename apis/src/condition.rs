//! Condition types, reasons and finalizer names shared by controllers and agents.

/// The summary condition every Strata object carries.
pub const READY: &str = "Ready";
/// Set on a VirtualMachine once a host has been chosen.
pub const SCHEDULED: &str = "Scheduled";
/// Set on a VirtualMachine once its root and data volumes exist on the chosen host's storage.
pub const VOLUMES_READY: &str = "VolumesReady";
/// Set on a VirtualMachine once every NIC has its address, MAC and security group rules.
pub const NETWORK_READY: &str = "NetworkReady";

/// Reason of an instance's Ready condition when its domain stopped without Strata asking
/// (`virsh destroy`, a guest power-off); the VM's run strategy decides whether it runs again.
pub const STOPPED_OUTSIDE: &str = "StoppedOutsideStrata";
/// Reason of an instance's Ready condition when its guest crashed.
pub const CRASHED: &str = "Crashed";

/// Reason of an instance's Ready condition while its domain's vCPUs are paused.
pub const PAUSED: &str = "Paused";

/// Finalizer the VM controller holds until the VM's instance is gone and its IPs are released.
pub const VM_FINALIZER: &str = "strata.io/vm-cleanup";
/// Finalizer the node agent holds until the hypervisor has destroyed the instance.
pub const VMI_FINALIZER: &str = "strata.io/host-agent";
/// Finalizer the agent of a data Volume's host holds until it deleted the disk.
pub const HOST_DISK_FINALIZER: &str = "strata.io/host-disk";

/// Label on IpAddress objects naming the L3 network they belong to.
pub const LABEL_L3_NETWORK: &str = "strata.io/l3-network";

/// On a recycled root Volume: the name of the VirtualMachine (same namespace) it was kept for.
pub const LABEL_RECYCLED_FROM: &str = "strata.io/recycled-from";
/// On a recycled root Volume: the deleted VM's spec (JSON), from which it can be recovered.
pub const ANNOTATION_RECYCLED_SPEC: &str = "strata.io/recycled-spec";
/// On a recycled root Volume: when it is expunged (RFC 3339); absent under `Never`.
pub const ANNOTATION_EXPUNGE_AT: &str = "strata.io/expunge-at";
/// Set (to any value) on a recycled root Volume to recreate its VM, stopped, from the kept spec.
pub const ANNOTATION_RECOVER: &str = "strata.io/recover";
