//! The node agent: the per-host daemon that runs the VirtualMachineInstances assigned to its host.
//!
//! It is deliberately simple (ZStack: "keep the agents as simple as possible"). It registers its
//! Host, renews the host's Lease, and makes the hypervisor match the instances whose `spec.host`
//! names it, reporting what it observes. It never chooses a host, an address or a size: those
//! arrive fully resolved in the instance's spec.

mod agent;
mod conditions;
mod driver;
mod error;
mod fencing;
mod instance;
mod libvirt;
pub mod metrics;
mod migration;
pub mod network;
mod sim;
mod volume;

pub use agent::{Agent, AgentConfig, DEFAULT_HEARTBEAT_INTERVAL};
pub use driver::{
    AttachedDisk, DataDisk, Domain, DomainNic, DriverError, Hypervisor, MigrationTarget, Observed,
};
pub use error::Error;
pub use libvirt::{host_capacity, libvirt_answers, LibvirtConfig, LibvirtDriver};
pub use metrics::Metrics;
pub use sim::SimDriver;
