//! The in-process control plane the controllers' integration tests run against: the real API
//! server on a temporary embedded store, the controllers, and agents on simulated hypervisors,
//! plus the inventory (zone, cluster, storage, offerings, image, networks) most tests need.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{
    api::{ListParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use strata_apis::{
    condition::READY, Cluster, ClusterSpec, Host, HostCapacity, Image, ImageSpec, InstanceOffering,
    InstanceOfferingSpec, IpRange, L2Network, L2NetworkSpec, L3Network, L3NetworkSpec,
    VirtualMachine, VmPhase, Zone, ZoneSpec,
};
use strata_controllers::ControllerOptions;
use strata_node_agent::{Agent, AgentConfig, SimDriver};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

/// Every test file starts its own API server, so they can share one namespace name.
pub const NS: &str = "it";
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Plane {
    pub client: Client,
    /// The API server's address, for agents that reach it some other way (a proxy).
    pub url: String,
    pub drivers: Vec<Arc<SimDriver>>,
    pub tasks: Vec<JoinHandle<()>>,
    _stop_server: oneshot::Sender<()>,
    _data: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn capacity(cpu: i64, memory: &str) -> HostCapacity {
    HostCapacity {
        cpu,
        memory: Quantity(memory.into()),
    }
}

pub async fn start(hosts: &[&str], heartbeat: Duration) -> Plane {
    start_sized(hosts, heartbeat, capacity(4, "4Gi")).await
}

/// Like [`start`], with hosts of capacity `cap`.
pub async fn start_sized(hosts: &[&str], heartbeat: Duration, cap: HostCapacity) -> Plane {
    let data = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let opts = strata_apiserver::ServeOptions {
        data_dir: data.path().to_path_buf(),
        store: strata_apiserver::StoreConfig::Embedded,
        bearer_token: None,
        crds: strata_apis::crds(),
    };
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = strata_apiserver::serve(opts, listener, shutdown).await {
            panic!("api server failed: {error}");
        }
    });
    let address = format!("http://127.0.0.1:{port}");
    let client =
        Client::try_from(kube::Config::new(address.parse().expect("url"))).expect("client");
    wait_for(&client, "the API server to serve CRDs", || async {
        Api::<VirtualMachine>::all(client.clone())
            .list(&ListParams::default())
            .await
            .ok()
    })
    .await;

    let mut tasks = vec![server];
    let controllers = client.clone();
    tasks.push(tokio::spawn(async move {
        strata_controllers::run(controllers, ControllerOptions::default())
            .await
            .expect("controllers run");
    }));
    let mut drivers = Vec::new();
    for host in hosts {
        let cap = cap.clone();
        let driver = Arc::new(SimDriver::new(&cap).expect("capacity"));
        drivers.push(driver.clone());
        let config = AgentConfig {
            heartbeat_interval: heartbeat,
            ..AgentConfig::new(*host, "cluster-1", cap)
        };
        let agent = Agent::new(client.clone(), config, driver);
        tasks.push(tokio::spawn(async move {
            agent.run().await.expect("agent runs");
        }));
    }
    Plane {
        client,
        url: address,
        drivers,
        tasks,
        _stop_server: stop_server,
        _data: data,
    }
}

/// Polls `check` until it returns a value, failing with a dump of every VM at the deadline.
pub async fn wait_for<T, F, Fut>(client: &Client, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            let vms = Api::<VirtualMachine>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .map(|vm| (vm.name_any(), vm.status))
                        .collect::<Vec<_>>()
                });
            let hosts = Api::<Host>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .map(|h| (h.name_any(), h.status))
                        .collect::<Vec<_>>()
                });
            panic!("timed out waiting for {what}\nVMs: {vms:#?}\nHosts: {hosts:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn create<K>(api: &Api<K>, object: K) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
}

pub async fn inventory(client: &Client) {
    create(
        &Api::all(client.clone()),
        Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                labels: Some([("strata.io/test".to_string(), "integration".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
    )
    .await;
    create(
        &Api::all(client.clone()),
        Zone::new("zone-1", ZoneSpec::default()),
    )
    .await;
    // The scheduler places VMs only where the cluster reaches their L2 and has storage.
    let storage = strata_apis::PrimaryStorageSpec {
        zone: "zone-1".into(),
        url: "/var/lib/strata/volumes".into(),
        ..strata_apis::PrimaryStorageSpec::default()
    };
    create(
        &Api::all(client.clone()),
        strata_apis::PrimaryStorage::new("ps-1", storage),
    )
    .await;
    let cluster = ClusterSpec {
        zone: "zone-1".into(),
        l2_networks: vec!["l2-1".into()],
        primary_storages: vec!["ps-1".into()],
        ..ClusterSpec::default()
    };
    create(
        &Api::all(client.clone()),
        Cluster::new("cluster-1", cluster),
    )
    .await;
    let offerings: Api<InstanceOffering> = Api::all(client.clone());
    for (name, memory) in [("small", "1Gi"), ("huge", "64Gi")] {
        let spec = InstanceOfferingSpec {
            cpu: 1,
            memory: Quantity(memory.into()),
            ..InstanceOfferingSpec::default()
        };
        create(&offerings, InstanceOffering::new(name, spec)).await;
    }
    let image = ImageSpec {
        url: "file:///images/tiny.qcow2".into(),
        ..ImageSpec::default()
    };
    create(&Api::all(client.clone()), Image::new("tiny", image)).await;
    let l2 = L2NetworkSpec {
        zone: "zone-1".into(),
        physical_interface: Some("eth1".into()),
        ..L2NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L2Network::new("l2-1", l2)).await;
    let net = L3NetworkSpec {
        l2_network: "l2-1".into(),
        cidr: "10.10.0.0/24".into(),
        gateway: "10.10.0.1".into(),
        ip_ranges: vec![IpRange {
            start: "10.10.0.10".into(),
            end: "10.10.0.250".into(),
        }],
        ..L3NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L3Network::new("net-1", net)).await;
}

pub async fn wait_phase(client: &Client, name: &str, phase: VmPhase) -> VirtualMachine {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(client, &format!("{name} to be {phase:?}"), || async {
        let vm = vms.get_opt(name).await.ok()??;
        (vm.status.as_ref()?.phase == phase).then_some(vm)
    })
    .await
}

pub fn ready_reason(vm: &VirtualMachine) -> (String, String) {
    vm.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

pub async fn wait_pending_with(client: &Client, name: &str, reason: &str) -> String {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(
        client,
        &format!("{name} to be Created with {reason}"),
        || async {
            let vm = vms.get_opt(name).await.ok()??;
            let (got, message) = ready_reason(&vm);
            (vm.status.as_ref()?.phase == VmPhase::Created && got == reason).then_some(message)
        },
    )
    .await
}

/// The inventory, with the cluster's volumes on NFS (shared: VMs may move) and a 64Mi offering
/// so that dozens of VMs fit on one simulated host.
pub async fn shared_inventory(client: &Client) {
    inventory(client).await;
    let nfs = strata_apis::PrimaryStorageSpec {
        zone: "zone-1".into(),
        url: "nfs://10.0.0.5/export".into(),
        storage_type: strata_apis::PrimaryStorageType::NFS,
        ..strata_apis::PrimaryStorageSpec::default()
    };
    create(
        &Api::all(client.clone()),
        strata_apis::PrimaryStorage::new("nfs-1", nfs),
    )
    .await;
    Api::<Cluster>::all(client.clone())
        .patch(
            "cluster-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({ "spec": { "primaryStorages": ["nfs-1"] } }),
            ),
        )
        .await
        .expect("cluster on NFS");
    let tiny = InstanceOfferingSpec {
        cpu: 1,
        memory: Quantity("64Mi".into()),
        ..InstanceOfferingSpec::default()
    };
    create(
        &Api::all(client.clone()),
        InstanceOffering::new("tiny", tiny),
    )
    .await;
}

/// A VM of the `tiny` offering on net-1 (see [`shared_inventory`]).
pub fn tiny_vm(name: &str) -> VirtualMachine {
    VirtualMachine::new(
        name,
        strata_apis::VirtualMachineSpec {
            instance_offering: Some("tiny".into()),
            image: "tiny".into(),
            nics: vec![strata_apis::VmNic {
                l3_network: "net-1".into(),
                ..strata_apis::VmNic::default()
            }],
            run_strategy: strata_apis::RunStrategy::Always,
            ..strata_apis::VirtualMachineSpec::default()
        },
    )
}
