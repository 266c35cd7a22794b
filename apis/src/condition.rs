//! Condition types, reasons and finalizer names shared by controllers and agents.

/// The summary condition every Strata object carries.
pub const READY: &str = "Ready";
/// Set on a VirtualMachine once a host has been chosen.
pub const SCHEDULED: &str = "Scheduled";

/// Finalizer the VM controller holds until the VM's instance is gone and its IPs are released.
pub const VM_FINALIZER: &str = "strata.io/vm-cleanup";
/// Finalizer the node agent holds until the hypervisor has destroyed the instance.
pub const VMI_FINALIZER: &str = "strata.io/host-agent";

/// Label on IpAddress objects naming the L3 network they belong to.
pub const LABEL_L3_NETWORK: &str = "strata.io/l3-network";
