//! Strata's vocabulary: the resource kinds served by the API server, the constants shared by
//! controllers and agents (finalizers, condition types, label keys), and pure validation helpers.
//!
//! Nothing here does I/O. Doc comments on the types become the `kubectl explain` text and the
//! CRD schema descriptions, so write them for users. Validation the API server can do is in
//! the schema: OpenAPI constraints (ranges, lengths, enums) and CEL rules
//! (`x-kubernetes-validations`, built with [`cel`]) for parsing, cross-field and immutability
//! checks. What needs other objects (a static IP inside its network's ranges) is the
//! controllers' job.

pub mod backupstorage;
pub mod cel;
pub mod cluster;
pub mod common;
pub mod condition;
pub mod diskoffering;
pub mod eip;
pub mod globalconfig;
pub mod host;
pub mod image;
pub mod instanceoffering;
pub mod ipaddress;
pub mod l2network;
pub mod l3network;
pub mod migration;
pub mod portforwarding;
pub mod primarystorage;
pub mod quantity;
pub mod securitygroup;
pub mod vm;
pub mod vmi;
pub mod volume;
pub mod volumesnapshot;
pub mod vxlanpool;
pub mod zone;

pub use backupstorage::{BackupStorage, BackupStorageSpec, BackupStorageStatus};
pub use cluster::{Cluster, ClusterSpec, ClusterStatus, HypervisorType};
pub use common::{AdminState, DeletionPolicy, PortRange, Progress, VmNicRef};
pub use diskoffering::{DiskOffering, DiskOfferingSpec};
pub use eip::{Eip, EipSpec, EipStatus};
pub use globalconfig::{GlobalConfig, GlobalConfigSpec, GlobalConfigStatus, MaintenancePolicy};
pub use host::{Host, HostAdminState, HostCapacity, HostSpec, HostState, HostStatus};
pub use image::{DirectBoot, Image, ImageFormat, ImageSpec, ImageStatus};
pub use instanceoffering::{AllocatorStrategy, InstanceOffering, InstanceOfferingSpec};
pub use ipaddress::{IpAddress, IpAddressSpec};
pub use l2network::{L2Network, L2NetworkSpec, L2NetworkStatus, L2NetworkType};
pub use l3network::{IpRange, L3Category, L3Network, L3NetworkSpec, L3NetworkStatus};
pub use migration::{
    MigrationPhase, VirtualMachineMigration, VirtualMachineMigrationSpec,
    VirtualMachineMigrationStatus, VmiMigration, VmiMigrationPhase, VmiMigrationStatus,
    VmiMigrationTarget,
};
pub use portforwarding::{
    ForwardedProtocol, PortForwarding, PortForwardingSpec, PortForwardingStatus,
};
pub use primarystorage::{
    PrimaryStorage, PrimaryStorageSpec, PrimaryStorageStatus, PrimaryStorageType,
};
pub use securitygroup::{SecurityGroup, SecurityGroupRule, SecurityGroupSpec};
pub use vm::{
    Placement, RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus, VmNic,
    VmNicStatus, VmPhase, VmVolumeStatus,
};
pub use vmi::{
    PowerState, VirtualMachineInstance, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus,
    VmiDisk, VmiDiskStatus, VmiEip, VmiL2Network, VmiNatStatus, VmiNic, VmiNicSecurity, VmiPhase,
    VmiPortForwarding, VmiRevert, VmiSecurityRule,
};
pub use volume::{Volume, VolumePhase, VolumeSpec, VolumeStatus, VolumeType};
pub use volumesnapshot::{
    RestorePhase, SnapshotPhase, VolumeRestore, VolumeRestoreSpec, VolumeRestoreStatus,
    VolumeSnapshot, VolumeSnapshotSpec, VolumeSnapshotStatus,
};
pub use vxlanpool::{VxlanPool, VxlanPoolSpec, VxlanPoolStatus};
pub use zone::{Zone, ZoneSpec, ZoneStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Strata kind.
pub const GROUP: &str = "strata.io";
/// The one served (and stored) version of every Strata kind.
pub const VERSION: &str = "v1alpha1";
/// The namespace that holds the control plane's own objects (host leases).
pub const SYSTEM_NAMESPACE: &str = "strata-system";

/// Every Strata CRD, infrastructure first, in the order they are written to `manifests/crds/`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        GlobalConfig::crd(),
        Zone::crd(),
        Cluster::crd(),
        Host::crd(),
        PrimaryStorage::crd(),
        BackupStorage::crd(),
        Image::crd(),
        DiskOffering::crd(),
        InstanceOffering::crd(),
        VxlanPool::crd(),
        L2Network::crd(),
        L3Network::crd(),
        IpAddress::crd(),
        SecurityGroup::crd(),
        Eip::crd(),
        PortForwarding::crd(),
        Volume::crd(),
        VolumeSnapshot::crd(),
        VolumeRestore::crd(),
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineMigration::crd(),
    ]
}

/// Status fields every Strata kind reports, so `kubectl wait`, kstatus (Flux) and Argo CD health
/// checks can tell whether the controller has seen the latest spec.
pub type Conditions = Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;
