//! Strata's hypervisor and storage driver for one host: libvirt/QEMU domains and a local
//! primary-storage directory.
//!
//! The node agent decides nothing here; it hands over a fully resolved [`DomainSpec`] and asks
//! for a power state. Everything is idempotent so a reconcile can repeat any step after a crash.
//!
//! - [`spec`]: the domain in Strata's terms, host feature detection (KVM or TCG), XML building.
//! - [`xml`]: the libvirt documents as typed structs (quick-xml + serde).
//! - [`Libvirt`]: define, start, graceful stop, reboot, pause, resume, undefine, disks, snapshots,
//!   live migration to another host's libvirtd ([`MigrateTo`]).
//! - [`events`]: libvirt lifecycle events as a stream, so changes behind Strata's back are seen.
//! - [`Storage`]: image cache, qcow2 root overlays, data volumes, resize.
//! - [`daemon`]: starts virtlogd and libvirtd on hosts without systemd.

pub mod daemon;
pub mod disk_snapshot;
mod error;
pub mod events;
mod libvirt;
mod migration;
pub mod spec;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xml;

pub use error::Error;
pub use events::{DomainEvent, EventKind};
pub use libvirt::{DomainInfo, Libvirt, PowerState, SnapshotInfo};
pub use migration::MigrateTo;
pub use spec::{disk_target, Accel, Boot, Disk, DiskFormat, DomainSpec, HostFeatures, Nic, Owner};
pub use storage::{info as volume_info, CachedImage, ImageSnapshot, Storage, VolumeInfo};

/// The URI of the host's system libvirtd.
pub const SYSTEM_URI: &str = "qemu:///system";
