//! Strata's vocabulary: the resource kinds served by the API server, the constants shared by
//! controllers and agents (finalizers, condition types, label keys), and pure validation helpers.
//!
//! Nothing here does I/O. Doc comments on the types become the `kubectl explain` text and the
//! CRD schema descriptions, so write them for users.

pub mod cluster;
pub mod condition;
pub mod host;
pub mod image;
pub mod ipaddress;
pub mod l3network;
pub mod offering;
pub mod quantity;
pub mod vm;
pub mod vmi;
pub mod zone;

pub use cluster::{Cluster, ClusterSpec};
pub use host::{Host, HostCapacity, HostSpec, HostStatus};
pub use image::{Image, ImageSpec};
pub use ipaddress::{IpAddress, IpAddressSpec};
pub use l3network::{IpRange, L3Network, L3NetworkSpec, L3NetworkStatus};
pub use offering::{InstanceOffering, InstanceOfferingSpec};
pub use vm::{
    RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus, VmNic, VmNicStatus,
    VmPhase,
};
pub use vmi::{
    VirtualMachineInstance, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VmiNic,
    VmiPhase,
};
pub use zone::{Zone, ZoneSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Strata kind.
pub const GROUP: &str = "strata.io";
/// The one served (and stored) version of every Strata kind.
pub const VERSION: &str = "v1alpha1";
/// The namespace that holds the control plane's own objects (host leases).
pub const SYSTEM_NAMESPACE: &str = "strata-system";

/// Every Strata CRD, in the order they are written to `manifests/crds/`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Zone::crd(),
        Cluster::crd(),
        Host::crd(),
        Image::crd(),
        InstanceOffering::crd(),
        L3Network::crd(),
        IpAddress::crd(),
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
    ]
}

/// Status fields every Strata kind reports, so `kubectl wait`, kstatus (Flux) and Argo CD health
/// checks can tell whether the controller has seen the latest spec.
pub type Conditions = Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;
