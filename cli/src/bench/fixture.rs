//! The objects a run needs, as the JSON a user would apply: zones, clusters, an image, an
//! instance offering, L3 networks with room for every VM, and the VMs themselves. JSON rather
//! than the typed kinds, so the payload is exactly what goes over the wire and the bench keeps
//! measuring the same request when the Rust types gain fields.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::up::SimHost;

use super::Error;

/// Name of the InstanceOffering and Image every bench VM uses.
const OFFERING: &str = "bench-small";
const IMAGE: &str = "bench-tiny";
/// The broadcast domain every bench L3 network sits on.
const L2_NETWORK: &str = "bench-l2";
/// Addresses one L3 network hands out (10.N.0.10 – 10.N.255.250).
const IPS_PER_NETWORK: usize = 65_000;

/// A Strata kind, for the dynamic API.
pub fn kind(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: strata_apis::GROUP.into(),
        version: strata_apis::VERSION.into(),
        api_version: format!("{}/{}", strata_apis::GROUP, strata_apis::VERSION),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn vm_kind() -> ApiResource {
    kind("VirtualMachine", "virtualmachines")
}

pub fn host_kind() -> ApiResource {
    kind("Host", "hosts")
}

/// The layout of the simulated fleet: hosts round-robin over clusters, clusters over zones.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Topology {
    pub zones: usize,
    pub clusters: usize,
    pub hosts: usize,
}

impl Topology {
    pub fn zone(&self, cluster: usize) -> String {
        format!("zone-{}", cluster % self.zones.max(1))
    }

    pub fn cluster(&self, host: usize) -> String {
        format!("cluster-{}", host % self.clusters.max(1))
    }

    pub fn sim_hosts(&self) -> Vec<SimHost> {
        (0..self.hosts)
            .map(|i| SimHost {
                name: format!("host-{i}"),
                cluster: self.cluster(i),
            })
            .collect()
    }
}

/// How many L3 networks `vms` VMs need.
pub fn networks_for(vms: usize) -> usize {
    vms.div_ceil(IPS_PER_NETWORK).max(1)
}

/// Creates the zones, clusters, image, offering and `networks` L3 networks.
pub async fn install(client: &Client, topology: Topology, networks: usize) -> Result<(), Error> {
    for z in 0..topology.zones.max(1) {
        create(
            client,
            &kind("Zone", "zones"),
            None,
            &format!("zone-{z}"),
            json!({ "description": "strata bench" }),
        )
        .await?;
    }
    for c in 0..topology.clusters.max(1) {
        create(
            client,
            &kind("Cluster", "clusters"),
            None,
            &format!("cluster-{c}"),
            json!({ "zone": topology.zone(c), "hypervisorType": "KVM", "l2Networks": [L2_NETWORK] }),
        )
        .await?;
    }
    create(
        client,
        &kind("Image", "images"),
        None,
        IMAGE,
        json!({ "url": "file:///var/lib/strata/images/tiny.qcow2", "format": "qcow2" }),
    )
    .await?;
    create(
        client,
        &kind("InstanceOffering", "instanceofferings"),
        None,
        OFFERING,
        json!({ "cpu": 1, "memory": "1Gi" }),
    )
    .await?;
    create(
        client,
        &kind("L2Network", "l2networks"),
        None,
        L2_NETWORK,
        json!({ "zone": topology.zone(0), "type": "NoVlan", "physicalInterface": "eth0" }),
    )
    .await?;
    for n in 0..networks {
        let octet = 64 + n;
        create(
            client,
            &kind("L3Network", "l3networks"),
            None,
            &network(n),
            json!({
                "l2Network": L2_NETWORK,
                "cidr": format!("10.{octet}.0.0/16"),
                "gateway": format!("10.{octet}.0.1"),
                "ipRanges": [{ "start": format!("10.{octet}.0.10"), "end": format!("10.{octet}.255.250") }],
            }),
        )
        .await?;
    }
    Ok(())
}

fn network(n: usize) -> String {
    format!("bench-net-{n}")
}

/// The `i`th VM of a run: one NIC, so one IP, on a network with room for it.
pub fn vm(namespace: &str, name: &str, i: usize, networks: usize) -> DynamicObject {
    let mut vm = DynamicObject::new(name, &vm_kind()).within(namespace);
    vm.data = json!({ "spec": {
        "instanceOffering": OFFERING,
        "image": IMAGE,
        "nics": [{ "l3Network": network(i % networks.max(1)) }],
    }});
    vm
}

/// Creates namespace `name`.
pub async fn namespace(client: &Client, name: &str) -> Result<(), Error> {
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map(drop)
        .map_err(|source| Error::Api {
            action: format!("create namespace {name}"),
            source,
        })
}

async fn create(
    client: &Client,
    ar: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    spec: Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let mut object = DynamicObject::new(name, ar);
    object.data = json!({ "spec": spec });
    api.create(&PostParams::default(), &object)
        .await
        .map(drop)
        .map_err(|source| Error::Api {
            action: format!("create {} {name}", ar.kind),
            source,
        })
}

/// The phase a VM reports, if any.
pub fn phase(object: &DynamicObject) -> Option<&str> {
    object.data.pointer("/status/phase").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_spread_over_clusters_and_clusters_over_zones() {
        let t = Topology {
            zones: 2,
            clusters: 4,
            hosts: 8,
        };
        let hosts = t.sim_hosts();
        assert_eq!(hosts.len(), 8);
        assert_eq!(hosts[5].cluster, "cluster-1");
        assert_eq!(t.zone(3), "zone-1");
    }

    #[test]
    fn enough_networks_for_every_vm() {
        assert_eq!(networks_for(0), 1);
        assert_eq!(networks_for(10_000), 1);
        assert_eq!(networks_for(100_000), 2);
    }
}
