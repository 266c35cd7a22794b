//! The controllers survive SIGKILL at any point. 1,000 VMs are created by 100 concurrent
//! clients against the in-process API server with 50 simulated hosts, while the controllers
//! run as their own process (`strata controllers`) and are killed with SIGKILL at random
//! moments (the seed is printed) and started again. Afterwards every VM must be Running, no
//! host over its capacity, and no IP, MAC, root volume or instance duplicated or left over.
//!
//! Memory is what binds: 22 VMs fit a host, 1,100 the 50 hosts, so the scheduler runs close
//! to full while it keeps losing its in-memory state. The simulated hypervisors are roomier
//! than their hosts report, so they run whatever is placed and the check is the scheduler's.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{
    api::{ListParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use rand::{Rng, SeedableRng};
use strata_apis::{
    quantity, Cluster, ClusterSpec, GlobalConfig, GlobalConfigSpec, HostCapacity, Image, ImageSpec,
    InstanceOffering, InstanceOfferingSpec, IpAddress, IpRange, L2Network, L2NetworkSpec,
    L3Network, L3NetworkSpec, PrimaryStorage, PrimaryStorageSpec, VirtualMachine,
    VirtualMachineInstance, VirtualMachineSpec, VmNic, VmPhase, Volume, Zone, ZoneSpec,
};
use strata_node_agent::{Agent, AgentConfig, SimDriver};
use tokio::{process::Child, sync::oneshot, task::JoinHandle};

const NS: &str = "crash";
const HOSTS: usize = 50;
const VMS: usize = 1000;
const CLIENTS: usize = 100;
const KILLS: usize = 4;
const HOST_MEMORY: &str = "5632Mi";
const VM_MEMORY: &str = "256Mi";
/// Generous for a debug build on two busy cores; the test reports how long it took.
const DEADLINE: Duration = Duration::from_secs(600);

/// The API server and the simulated hosts, in this process.
struct Plane {
    client: Client,
    drivers: Vec<Arc<SimDriver>>,
    kubeconfig: PathBuf,
    tasks: Vec<JoinHandle<()>>,
    _stop_server: oneshot::Sender<()>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn start(dir: &Path) -> Plane {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop_server, stopped) = oneshot::channel::<()>();
    let opts = strata_apiserver::ServeOptions {
        data_dir: dir.join("store"),
        store: strata_apiserver::StoreConfig::Embedded,
        bearer_token: None,
        crds: strata_apis::crds(),
    };
    let mut tasks = vec![tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        strata_apiserver::serve(opts, listener, shutdown)
            .await
            .expect("api server serves");
    })];
    let client = Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
    let reported = HostCapacity {
        cpu: 64,
        memory: Quantity(HOST_MEMORY.into()),
    };
    let roomy = HostCapacity {
        cpu: 1024,
        memory: Quantity("1Ti".into()),
    };
    let mut drivers = Vec::new();
    for i in 0..HOSTS {
        let driver = Arc::new(SimDriver::new(&roomy).expect("capacity"));
        drivers.push(driver.clone());
        let config = AgentConfig::new(format!("h{i:02}"), "c1", reported.clone());
        let agent = Agent::new(client.clone(), config, driver);
        tasks.push(tokio::spawn(async move {
            agent.run().await.expect("agent runs");
        }));
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
             clusters: [{{name: t, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: t, user: {{}}}}]\n\
             contexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n"
        ),
    )
    .expect("write kubeconfig");
    Plane {
        client,
        drivers,
        kubeconfig,
        tasks,
        _stop_server: stop_server,
    }
}

/// When the controllers are killed: so long after the first create, or once so many VMs run.
#[derive(Clone, Copy, Debug)]
enum Kill {
    After(Duration),
    Running(usize),
}

impl Kill {
    fn due(self, began: Instant, running: usize) -> bool {
        match self {
            Kill::After(after) => began.elapsed() >= after,
            Kill::Running(share) => running >= share,
        }
    }
}

/// `strata controllers` as a child process, its output appended to `log`.
fn controllers(kubeconfig: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the controllers' log");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["controllers", "--kubeconfig"])
        .arg(kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("start strata controllers")
}

async fn create<K>(api: &Api<K>, object: K)
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()));
}

async fn inventory(client: &Client) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    create(&Api::all(client.clone()), ns).await;
    let mut config = GlobalConfigSpec::default();
    config.host.reserved_memory = Quantity("0".into());
    create(
        &Api::all(client.clone()),
        GlobalConfig::new("default", config),
    )
    .await;
    create(
        &Api::all(client.clone()),
        Zone::new("z1", ZoneSpec::default()),
    )
    .await;
    let storage = PrimaryStorageSpec {
        zone: "z1".into(),
        url: "/var/lib/strata/volumes".into(),
        ..PrimaryStorageSpec::default()
    };
    create(
        &Api::all(client.clone()),
        PrimaryStorage::new("ps1", storage),
    )
    .await;
    let cluster = ClusterSpec {
        zone: "z1".into(),
        l2_networks: vec!["l2".into()],
        primary_storages: vec!["ps1".into()],
        ..ClusterSpec::default()
    };
    create(&Api::all(client.clone()), Cluster::new("c1", cluster)).await;
    let offering = InstanceOfferingSpec {
        cpu: 1,
        memory: Quantity(VM_MEMORY.into()),
        ..InstanceOfferingSpec::default()
    };
    create(
        &Api::all(client.clone()),
        InstanceOffering::new("small", offering),
    )
    .await;
    let image = ImageSpec {
        url: "file:///images/tiny.qcow2".into(),
        ..ImageSpec::default()
    };
    create(&Api::all(client.clone()), Image::new("tiny", image)).await;
    let l2 = L2NetworkSpec {
        zone: "z1".into(),
        physical_interface: Some("eth1".into()),
        ..L2NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L2Network::new("l2", l2)).await;
    let l3 = L3NetworkSpec {
        l2_network: "l2".into(),
        cidr: "10.20.0.0/20".into(),
        gateway: "10.20.0.1".into(),
        ip_ranges: vec![IpRange {
            start: "10.20.0.10".into(),
            end: "10.20.15.250".into(),
        }],
        ..L3NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L3Network::new("net", l3)).await;
}

fn vm(i: usize) -> VirtualMachine {
    VirtualMachine::new(
        &format!("vm-{i:04}"),
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "tiny".into(),
            nics: vec![VmNic {
                l3_network: "net".into(),
                ..VmNic::default()
            }],
            ..VirtualMachineSpec::default()
        },
    )
}

async fn running(vms: &Api<VirtualMachine>) -> usize {
    vms.list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .filter(|vm| vm.status.as_ref().map(|s| s.phase) == Some(VmPhase::Running))
                .count()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_vms_converge_through_sigkilled_controllers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = start(dir.path()).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let log = dir.path().join("controllers.log");
    let mut child = controllers(&plane.kubeconfig, &log);

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // One kill while the creates pour in, the others once a random share of the VMs runs (so
    // each lands in the middle of placing, addressing and starting the rest), each followed
    // by a random pause before the restart.
    let mut kills: Vec<Kill> = vec![Kill::After(Duration::from_millis(
        rng.random_range(200..3000),
    ))];
    // One share in each of KILLS - 1 equal bands between 10 % and 90 %, so every restarted
    // controller has made progress before the next kill.
    let band = VMS * 8 / 10 / (KILLS - 1);
    let shares: Vec<usize> = (0..KILLS - 1)
        .map(|k| VMS / 10 + k * band + rng.random_range(0..band))
        .collect();
    kills.extend(shares.into_iter().map(Kill::Running));
    let pauses: Vec<Duration> = (0..KILLS)
        .map(|_| Duration::from_millis(rng.random_range(0..800)))
        .collect();

    let began = Instant::now();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let creating = {
        let vms = vms.clone();
        tokio::spawn(async move {
            stream::iter(0..VMS)
                .for_each_concurrent(CLIENTS, |i| {
                    let vms = vms.clone();
                    async move { create(&vms, vm(i)).await }
                })
                .await;
            eprintln!("{VMS} VMs created in {:.1}s", began.elapsed().as_secs_f64());
        })
    };
    let mut reported = Instant::now();
    let mut next = kills.into_iter().zip(pauses).peekable();
    loop {
        let count = running(&vms).await;
        if count == VMS && next.peek().is_none() {
            break;
        }
        if let Some((kill, pause)) = next.next_if(|(kill, _)| kill.due(began, count)) {
            child.start_kill().expect("SIGKILL the controllers");
            let status = child.wait().await.expect("reap the controllers");
            eprintln!(
                "killed the controllers ({kill:?}) at {:.1}s ({status}), {count} VMs Running",
                began.elapsed().as_secs_f64()
            );
            tokio::time::sleep(pause).await;
            child = controllers(&plane.kubeconfig, &log);
        }
        if reported.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{count} VMs Running at {:.0}s",
                began.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if began.elapsed() > DEADLINE {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(40).collect();
            panic!("only {count} of {VMS} VMs Running after {DEADLINE:?}; controllers' log (newest first): {tail:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    creating.await.expect("every create succeeds");
    eprintln!(
        "all {VMS} VMs Running {:.1}s after the first create, through {KILLS} SIGKILLs",
        began.elapsed().as_secs_f64()
    );
    check_converged(&plane).await;
    let _ = child.start_kill();
}

/// No host over capacity; every IP, MAC, root volume, instance and domain once.
async fn check_converged(plane: &Plane) {
    let client = &plane.client;
    let all_vms = Api::<VirtualMachine>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list VMs")
        .items;
    let vmis = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list instances")
        .items;
    assert_eq!(vmis.len(), VMS, "one instance per VM");
    let per_vm: BTreeMap<String, &VirtualMachineInstance> =
        vmis.iter().map(|vmi| (vmi.name_any(), vmi)).collect();

    let mut used: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ips, mut macs) = (BTreeSet::new(), BTreeSet::new());
    for vm in &all_vms {
        let status = vm.status.as_ref().expect("status");
        let host = status.host.clone().expect("placed");
        let vmi = per_vm.get(&vm.name_any()).expect("its instance");
        assert_eq!(
            vmi.spec.host,
            host,
            "{} runs where it is placed",
            vm.name_any()
        );
        *used.entry(host).or_default() +=
            quantity::parse_quantity(&vmi.spec.memory).expect("memory");
        let nic = status.nics.first().expect("a NIC");
        assert!(ips.insert(nic.ip.clone()), "IP {} given twice", nic.ip);
        assert!(macs.insert(nic.mac.clone()), "MAC {} given twice", nic.mac);
    }
    let capacity = quantity::parse_quantity(&Quantity(HOST_MEMORY.into())).expect("capacity");
    for (host, bytes) in &used {
        assert!(
            *bytes <= capacity,
            "host {host} over capacity: {bytes} > {capacity}"
        );
    }

    let addresses = Api::<IpAddress>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list addresses")
        .items;
    assert_eq!(addresses.len(), VMS, "no address left over");
    let volumes = Api::<Volume>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list volumes")
        .items;
    assert_eq!(volumes.len(), VMS, "one root volume per VM, none left over");
    let uids: BTreeMap<String, String> = all_vms
        .iter()
        .map(|vm| (vm.name_any(), vm.uid().unwrap_or_default()))
        .collect();
    for volume in &volumes {
        let owner = volume.owner_references().first().expect("owned");
        assert_eq!(
            Some(&owner.uid),
            uids.get(&owner.name),
            "{}",
            volume.name_any()
        );
    }

    let mut domains: BTreeMap<String, usize> = BTreeMap::new();
    for (i, driver) in plane.drivers.iter().enumerate() {
        for domain in driver.running() {
            if let Some(other) = domains.insert(domain.clone(), i) {
                panic!("{domain} runs on h{other:02} and h{i:02}");
            }
        }
    }
    assert_eq!(domains.len(), VMS, "every VM runs exactly once");
}
