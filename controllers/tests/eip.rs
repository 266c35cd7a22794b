//! Eips in one process (API server, controllers, a simulated agent): the Eip controller takes
//! the VIP from the Public L3Network like a VM address (an IpAddress it owns), reports the bound
//! NIC's guest address and host, and releases the VIP with the Eip.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use strata_apis::{
    condition::READY, Cluster, ClusterSpec, Eip, EipSpec, Host, HostCapacity, Image, ImageSpec,
    InstanceOffering, InstanceOfferingSpec, IpAddress, IpRange, L2Network, L2NetworkSpec,
    L3Category, L3Network, L3NetworkSpec, RunStrategy, VirtualMachine, VirtualMachineInstance,
    VirtualMachineSpec, VmNic, VmNicRef, VmPhase, Zone, ZoneSpec,
};
use strata_controllers::ControllerOptions;
use strata_node_agent::{Agent, AgentConfig, SimDriver};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

const NS: &str = "it-eip";
const DEADLINE: Duration = Duration::from_secs(60);

struct Plane {
    client: Client,
    _drivers: Vec<Arc<SimDriver>>,
    tasks: Vec<JoinHandle<()>>,
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

fn capacity(cpu: i64, memory: &str) -> HostCapacity {
    HostCapacity {
        cpu,
        memory: Quantity(memory.into()),
    }
}

async fn start(hosts: &[&str], heartbeat: Duration) -> Plane {
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
    let url = format!("http://127.0.0.1:{port}").parse().expect("url");
    let client = Client::try_from(kube::Config::new(url)).expect("client");
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
        let cap = capacity(4, "4Gi");
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
        _drivers: drivers,
        tasks,
        _stop_server: stop_server,
        _data: data,
    }
}

/// Polls `check` until it returns a value, failing with a dump of every VM at the deadline.
async fn wait_for<T, F, Fut>(client: &Client, what: &str, mut check: F) -> T
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

async fn create<K>(api: &Api<K>, object: K) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
}

async fn inventory(client: &Client) {
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

async fn wait_phase(client: &Client, name: &str, phase: VmPhase) -> VirtualMachine {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(client, &format!("{name} to be {phase:?}"), || async {
        let vm = vms.get_opt(name).await.ok()??;
        (vm.status.as_ref()?.phase == phase).then_some(vm)
    })
    .await
}

fn vm(name: &str, groups: &[&str]) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "tiny".into(),
            nics: vec![VmNic {
                l3_network: "net-1".into(),
                security_groups: groups.iter().map(|g| g.to_string()).collect(),
                ..VmNic::default()
            }],
            run_strategy: RunStrategy::Always,
            ..VirtualMachineSpec::default()
        },
    )
}

/// Waits until Eip `name` reports the Ready reason `reason`.
async fn wait_eip(client: &Client, name: &str, reason: &str) -> Eip {
    let eips: Api<Eip> = Api::namespaced(client.clone(), NS);
    wait_for(client, &format!("Eip {name} to be {reason}"), || async {
        let eip = eips.get_opt(name).await.ok()??;
        let status = eip.status.as_ref()?;
        let ready = status.conditions.iter().find(|c| c.type_ == READY)?;
        (ready.reason == reason).then_some(eip)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eip_takes_a_public_vip_reports_its_nic_and_releases_the_vip() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let public = L3NetworkSpec {
        l2_network: "l2-1".into(),
        category: L3Category::Public,
        cidr: "203.0.113.0/24".into(),
        gateway: "203.0.113.1".into(),
        ip_ranges: vec![IpRange {
            start: "203.0.113.10".into(),
            end: "203.0.113.20".into(),
        }],
        ..L3NetworkSpec::default()
    };
    create(
        &Api::all(client.clone()),
        L3Network::new("public-1", public),
    )
    .await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let eips: Api<Eip> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-1", &[])).await;
    let running = wait_phase(&client, "vm-1", VmPhase::Running).await;
    let status = running.status.expect("status");

    let spec = |l3: &str, vip: Option<&str>, vm: Option<&str>| EipSpec {
        l3_network: l3.into(),
        vip: vip.map(Into::into),
        vm_nic: vm.map(|vm| VmNicRef {
            virtual_machine: vm.into(),
            l3_network: None,
        }),
    };
    create(
        &eips,
        Eip::new("eip-1", spec("public-1", None, Some("vm-1"))),
    )
    .await;
    create(
        &eips,
        Eip::new("eip-static", spec("public-1", Some("203.0.113.15"), None)),
    )
    .await;
    create(&eips, Eip::new("eip-private", spec("net-1", None, None))).await;

    // Bound: a VIP from the public ranges, the NIC's address and host.
    let eip = wait_eip(&client, "eip-1", "Bound").await;
    let got = eip.status.expect("status");
    let vip: std::net::Ipv4Addr = got.vip.expect("a vip").parse().expect("IPv4");
    let octets = vip.octets();
    assert!(
        octets[..3] == [203, 0, 113] && (10..=20).contains(&octets[3]),
        "{vip}"
    );
    assert_eq!(got.guest_ip.as_deref(), Some(status.nics[0].ip.as_str()));
    assert_eq!(got.host, status.host);
    let ips: Api<IpAddress> = Api::all(client.clone());
    let held = ips
        .get(&IpAddress::object_name("public-1", vip))
        .await
        .expect("the VIP is an IpAddress");
    assert_eq!(held.spec.owner, format!("{NS}/eip-1"));

    // The VM's instance carries the Eip, with the Public network as the host builds it.
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    let carried = wait_for(&client, "vm-1's instance to carry its Eip", || async {
        vmis.get_opt("vm-1")
            .await
            .ok()??
            .spec
            .nics
            .first()?
            .eip
            .clone()
    })
    .await;
    assert_eq!(carried.name, "eip-1");
    assert_eq!(carried.vip, vip.to_string());
    assert_eq!(carried.l3_network, "public-1");
    assert_eq!(carried.prefix_length, 24);
    assert_eq!(carried.gateway.as_deref(), Some("203.0.113.1"));
    assert_eq!(carried.l2.name, "l2-1");

    // Unbound with a static VIP; on a network that is not Public, refused.
    let eip = wait_eip(&client, "eip-static", "Unbound").await;
    assert_eq!(
        eip.status.and_then(|s| s.vip).as_deref(),
        Some("203.0.113.15")
    );
    let eip = wait_eip(&client, "eip-private", "L3NetworkNotPublic").await;
    assert_eq!(eip.status.and_then(|s| s.vip), None);

    // Deleting the Eip releases its VIP.
    eips.delete("eip-1", &DeleteParams::default())
        .await
        .expect("delete eip-1");
    let name = IpAddress::object_name("public-1", vip);
    wait_for(&client, "eip-1's VIP to be released", || async {
        let gone = ips.get_opt(&name).await.ok()?.is_none();
        let eip_gone = eips.get_opt("eip-1").await.ok()?.is_none();
        (gone && eip_gone).then_some(())
    })
    .await;
    wait_for(&client, "vm-1's instance to lose its Eip", || async {
        let vmi = vmis.get_opt("vm-1").await.ok()??;
        vmi.spec.nics.first()?.eip.is_none().then_some(())
    })
    .await;
}
