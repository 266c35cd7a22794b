//! HA and fencing on simulated hosts: the agent of h1 reaches the API server through a TCP
//! proxy, and cutting the proxy is a network partition. The agent fences itself (powers off
//! its VMs), the controllers see h1 Disconnected, restart its HA VMs on shared storage on
//! h2/h3 and leave the others Unknown; the agent restarted later destroys what was placed
//! elsewhere meanwhile, and a VM deleted while h1 was gone. At no sample does a VM run on two
//! hosts.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    vm::HaPolicy, GlobalConfig, GlobalConfigSpec, Host, HostState, VirtualMachine, VmPhase,
};
use strata_node_agent::{Agent, AgentConfig, SimDriver};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

mod common;

use common::*;

/// Short leases so the test takes seconds: 4 s.
const HEARTBEAT: Duration = Duration::from_secs(1);
const HA_VMS: usize = 6;
const OTHER_VMS: usize = 4;

/// A TCP proxy to `upstream`; sending `true` on the returned sender drops every connection
/// and refuses new ones until `false`.
async fn proxy(upstream: SocketAddr) -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (cut, cuts) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cuts = cuts.clone();
            if *cuts.borrow() {
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cuts.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (format!("http://{address}"), cut)
}

fn agent(url: &str, driver: Arc<SimDriver>) -> tokio::task::JoinHandle<()> {
    let client = Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
    let config = AgentConfig {
        heartbeat_interval: HEARTBEAT,
        ..AgentConfig::new("h1", "cluster-1", capacity(8, "8Gi"))
    };
    let agent = Agent::new(client, config, driver);
    tokio::spawn(async move {
        agent.run().await.expect("agent runs");
    })
}

async fn set_admin(client: &Client, host: &str, state: &str) {
    Api::<Host>::all(client.clone())
        .patch(
            host,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "adminState": state } })),
        )
        .await
        .expect("admin state");
}

/// The hosts whose simulated hypervisor runs each VM, failing if one runs on two.
fn runners(drivers: &[(&str, Arc<SimDriver>)]) -> std::collections::BTreeMap<String, String> {
    let mut seen = std::collections::BTreeMap::new();
    for (host, driver) in drivers {
        for domain in driver.running() {
            if let Some(other) = seen.insert(domain.clone(), host.to_string()) {
                panic!("{domain} runs on {other} and {host} at once");
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_vms_restart_elsewhere_and_the_fenced_host_runs_nothing_twice() {
    let plane = start_sized(&["h2", "h3"], HEARTBEAT, capacity(8, "8Gi")).await;
    let client = plane.client.clone();
    shared_inventory(&client).await;
    let mut config = GlobalConfigSpec::default();
    config.ha.restart_after_seconds = 2;
    create(
        &Api::all(client.clone()),
        GlobalConfig::new("default", config),
    )
    .await;

    let upstream: SocketAddr = plane
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let (url, cut) = proxy(upstream).await;
    let h1 = Arc::new(SimDriver::new(&capacity(8, "8Gi")).expect("capacity"));
    let first = agent(&url, h1.clone());
    let hosts: Api<Host> = Api::all(client.clone());
    for host in ["h1", "h2", "h3"] {
        wait_for(&client, &format!("{host} to connect"), || async {
            let status = hosts.get_opt(host).await.ok()??.status?;
            (status.state == Some(HostState::Connected)).then_some(())
        })
        .await;
    }
    let drivers = [
        ("h1", h1.clone()),
        ("h2", plane.drivers[0].clone()),
        ("h3", plane.drivers[1].clone()),
    ];

    // Every VM starts on h1.
    set_admin(&client, "h2", "Disabled").await;
    set_admin(&client, "h3", "Disabled").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let ha: Vec<String> = (0..HA_VMS).map(|i| format!("ha-{i}")).collect();
    let other: Vec<String> = (0..OTHER_VMS).map(|i| format!("plain-{i}")).collect();
    for name in &ha {
        let mut vm = tiny_vm(name);
        vm.spec.ha_policy = HaPolicy::Restart;
        create(&vms, vm).await;
    }
    for name in &other {
        create(&vms, tiny_vm(name)).await;
    }
    for name in ha.iter().chain(&other) {
        let vm = wait_phase(&client, name, VmPhase::Running).await;
        assert_eq!(vm.status.and_then(|s| s.host).as_deref(), Some("h1"));
    }
    set_admin(&client, "h2", "Enabled").await;
    set_admin(&client, "h3", "Enabled").await;

    // The partition.
    let partitioned = Instant::now();
    cut.send_replace(true);
    // When h1 was first seen Disconnected, and first seen running nothing.
    let marks = std::sync::Mutex::new((None, None));
    let restarted = wait_for(&client, "every HA VM to run on h2 or h3", || async {
        let running = runners(&drivers);
        let h1_state = hosts.get("h1").await.ok()?.status?.state;
        {
            let mut marks = marks.lock().expect("marks");
            if marks.0.is_none() && h1_state == Some(HostState::Disconnected) {
                marks.0 = Some(partitioned.elapsed());
            }
            if marks.1.is_none() && h1.running().is_empty() {
                marks.1 = Some(partitioned.elapsed());
            }
        }
        let list = vms.list(&ListParams::default()).await.ok()?;
        let moved = list
            .items
            .iter()
            .filter(|vm| ha.contains(&vm.name_any()))
            .all(|vm| {
                let status = vm.status.as_ref();
                let host = status.and_then(|s| s.host.as_deref());
                status.map(|s| s.phase) == Some(VmPhase::Running)
                    && host.is_some_and(|h| h != "h1")
                    && running
                        .get(&format!("{NS}.{}", vm.name_any()))
                        .map(String::as_str)
                        == host
            });
        moved.then(|| partitioned.elapsed())
    })
    .await;
    let (detected, fenced) = *marks.lock().expect("marks");
    let detected = detected.expect("h1 was seen Disconnected");
    let fenced = fenced.expect("h1 fenced itself");
    eprintln!(
        "partition → h1 fenced {fenced:?}, Disconnected {detected:?}, {HA_VMS} HA VMs Running \
         elsewhere {restarted:?}"
    );
    assert!(restarted < Duration::from_secs(60), "{restarted:?}");
    assert!(
        fenced < detected,
        "fenced before the host was seen Disconnected"
    );
    for name in &other {
        wait_phase(&client, name, VmPhase::Unknown).await;
    }
    assert!(h1.running().is_empty(), "h1's VMs are powered off");

    // Deleting a VM of the dead host does not wait for its agent.
    let (deleted, other) = other.split_first().expect("plain VMs");
    vms.delete(deleted, &DeleteParams::default())
        .await
        .expect("delete a VM of h1");
    wait_for(&client, &format!("{deleted} to be gone"), || async {
        vms.get_opt(deleted).await.ok()?.is_none().then_some(())
    })
    .await;

    // The agent is killed, and a new one starts once the network is back.
    first.abort();
    cut.send_replace(false);
    let second = agent(&url, h1.clone());
    let plain: BTreeSet<String> = other.iter().map(|n| format!("{NS}.{n}")).collect();
    wait_for(
        &client,
        "h1 to keep only the VMs still placed on it",
        || async {
            let running = runners(&drivers);
            let on_h1: BTreeSet<String> = h1.domains().into_iter().collect();
            let back = other
                .iter()
                .all(|n| running.get(&format!("{NS}.{n}")).map(String::as_str) == Some("h1"));
            (on_h1 == plain && back).then_some(())
        },
    )
    .await;
    for name in ha.iter().chain(other) {
        let vm = wait_phase(&client, name, VmPhase::Running).await;
        let host = vm.status.and_then(|s| s.host).expect("placed");
        let running = runners(&drivers);
        assert_eq!(running.get(&format!("{NS}.{name}")), Some(&host), "{name}");
        assert_eq!(ha.contains(name), host != "h1", "{name} on {host}");
    }
    second.abort();
}
