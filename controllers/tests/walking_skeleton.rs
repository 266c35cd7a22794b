//! The walking skeleton end to end in one process: the API server, the controllers and two
//! agents with simulated hypervisors. VMs are created through the API and the test waits on
//! the status the controllers report.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{LABEL_L3_NETWORK, READY},
    Cluster, Host, HostState, IpAddress, IpRange, L2Network, L2NetworkSpec, L3Network,
    L3NetworkSpec, PowerState, RunStrategy, VirtualMachine, VirtualMachineInstance,
    VirtualMachineSpec, VmNic, VmPhase, VmiPhase,
};

mod common;

use common::*;

fn vm(name: &str, offering: &str, l3: &str) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some(offering.into()),
            image: "tiny".into(),
            nics: vec![VmNic {
                l3_network: l3.into(),
                ..VmNic::default()
            }],
            run_strategy: RunStrategy::Always,
            ..VirtualMachineSpec::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_are_placed_addressed_run_and_cleaned_up() {
    let plane = start(&["host-a", "host-b"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);

    // Five 1-cpu/1Gi VMs on two 4-cpu/4Gi hosts: they fit, spread over both.
    let names: Vec<String> = (0..5).map(|i| format!("vm-{i}")).collect();
    for name in &names {
        create(&vms, vm(name, "small", "net-1")).await;
    }
    create(&vms, vm("vm-huge", "huge", "net-1")).await;
    create(&vms, vm("vm-lost", "small", "no-such-net")).await;

    let mut ips = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for name in &names {
        let running = wait_phase(&client, name, VmPhase::Running).await;
        let status = running.status.expect("status");
        hosts.insert(status.host.expect("a host"));
        let nic = status.nics.first().expect("one NIC");
        let ip: Ipv4Addr = nic.ip.parse().expect("an IPv4 address");
        assert!(
            (Ipv4Addr::new(10, 10, 0, 10)..=Ipv4Addr::new(10, 10, 0, 250)).contains(&ip),
            "{ip} is outside the range"
        );
        let [a, b, c, d] = ip.octets();
        let tail = format!(":{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        assert!(nic.mac.ends_with(&tail), "{} carries {ip}", nic.mac);
        assert!(ips.insert(ip), "{ip} was handed out twice");
        let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .expect("the instance exists");
        assert_eq!(vmi.spec.nics[0].ip, ip.to_string());
        assert_eq!(vmi.spec.nics[0].gateway, "10.10.0.1");
        assert_eq!(vmi.spec.nics[0].prefix_length, 24);
        assert_eq!(vmi.spec.nics[0].l2.name, "l2-1");
        assert_eq!(
            vmi.spec.nics[0].l2.physical_interface.as_deref(),
            Some("eth1")
        );
        assert_eq!(vmi.spec.power_state, PowerState::Running);
    }
    assert_eq!(hosts.len(), 2, "VMs spread over both hosts: {hosts:?}");
    let domains: usize = plane.drivers.iter().map(|d| d.domains().len()).sum();
    assert_eq!(domains, 5);

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    wait_for(&client, "events for vm-2", || async {
        let reasons: BTreeSet<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("vm-2"))
            .filter_map(|e| e.reason)
            .collect();
        ["Scheduled", "IPAllocated", "Started"]
            .iter()
            .all(|r| reasons.contains(*r))
            .then_some(())
    })
    .await;

    let message = wait_pending_with(&client, "vm-huge", "Unschedulable").await;
    assert_eq!(message, "0/2 hosts are available: 2 insufficient memory");
    let message = wait_pending_with(&client, "vm-lost", "L3NetworkNotFound").await;
    assert!(message.contains("no-such-net"), "{message}");

    let l3s: Api<L3Network> = Api::all(client.clone());
    wait_for(&client, "net-1 to count 5 used addresses", || async {
        let status = l3s.get("net-1").await.ok()?.status?;
        (status.used_ips == Some(5) && status.total_ips == Some(241)).then_some(())
    })
    .await;
    let host_api: Api<Host> = Api::all(client.clone());
    wait_for(&client, "hosts to report their allocation", || async {
        let mut count = 0;
        for host in ["host-a", "host-b"] {
            let status = host_api.get(host).await.ok()?.status?;
            if status.state != Some(HostState::Connected) {
                return None;
            }
            count += status.vm_count?;
        }
        (count == 5).then_some(())
    })
    .await;

    // Halting a VM removes its instance but keeps its address.
    let halt = json!({ "spec": { "runStrategy": "Halted" } });
    vms.patch("vm-1", &PatchParams::default(), &Patch::Merge(halt))
        .await
        .expect("halt vm-1");
    let stopped = wait_phase(&client, "vm-1", VmPhase::Stopped).await;
    assert_eq!(stopped.status.expect("status").nics.len(), 1);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    assert!(vmis.get_opt("vm-1").await.expect("get").is_none());

    // Deleting a VM destroys its instance and releases its address.
    let doomed = vms.get("vm-0").await.expect("vm-0");
    let uid = doomed.uid().expect("uid");
    vms.delete("vm-0", &DeleteParams::default())
        .await
        .expect("delete vm-0");
    wait_for(&client, "vm-0 to be gone", || async {
        vms.get_opt("vm-0").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(vmis.get_opt("vm-0").await.expect("get").is_none());
    let owned = Api::<IpAddress>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{LABEL_L3_NETWORK}=net-1")))
        .await
        .expect("list addresses");
    assert!(
        owned.items.iter().all(|ip| ip.spec.owner_uid != uid),
        "vm-0's address was not released"
    );
    assert!(plane
        .drivers
        .iter()
        .all(|d| !d.domains().contains(&format!("{NS}.vm-0"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_turns_disconnected_and_its_vms_unknown() {
    // A 250 ms heartbeat gives a 1 s lease.
    let plane = start(&["host-x"], Duration::from_millis(250)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-x", "small", "net-1")).await;
    wait_phase(&client, "vm-x", VmPhase::Running).await;

    // The agent is the last task: stopping it stops the heartbeats, and nothing else changes.
    plane.tasks.last().expect("the agent").abort();
    let hosts: Api<Host> = Api::all(client.clone());
    wait_for(&client, "host-x to be Disconnected", || async {
        let status = hosts.get("host-x").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == READY)?;
        (status.state == Some(HostState::Disconnected) && ready.reason == "HeartbeatExpired")
            .then_some(())
    })
    .await;
    let unknown = wait_phase(&client, "vm-x", VmPhase::Unknown).await;
    assert_eq!(ready_reason(&unknown).0, "HostDisconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_strategy_decides_whether_a_vm_stopped_behind_strata_runs_again() {
    let plane = start(&["host-r"], Duration::from_millis(500)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    let mut manual = vm("vm-manual", "small", "net-1");
    manual.spec.run_strategy = RunStrategy::Manual;
    create(&vms, vm("vm-always", "small", "net-1")).await;
    create(&vms, manual).await;
    wait_phase(&client, "vm-always", VmPhase::Running).await;
    wait_phase(&client, "vm-manual", VmPhase::Running).await;
    let first_run = vmis.get("vm-always").await.expect("instance").uid();

    let driver = &plane.drivers[0];
    driver.stop_behind_the_agents_back(&format!("{NS}.vm-always"));
    driver.stop_behind_the_agents_back(&format!("{NS}.vm-manual"));

    // Always: a new instance (a new run) is started on the same host.
    wait_for(
        &client,
        "vm-always to run again in a new instance",
        || async {
            let vmi = vmis.get_opt("vm-always").await.ok()??;
            let running = vmi.status.as_ref()?.phase == VmiPhase::Running;
            (running && vmi.uid() != first_run).then_some(())
        },
    )
    .await;
    wait_phase(&client, "vm-always", VmPhase::Running).await;
    assert_eq!(
        driver.boots(&format!("{NS}.vm-always")),
        1,
        "a fresh domain"
    );

    // Manual: it stays stopped, and says why.
    let stopped = wait_phase(&client, "vm-manual", VmPhase::Stopped).await;
    assert_eq!(ready_reason(&stopped).0, "InstanceStopped");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("events");
    let restarting: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Restarting"))
        .map(|e| e.regarding.as_ref().and_then(|r| r.name.clone()))
        .collect();
    assert_eq!(restarting, [Some("vm-always".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reboot_request_reboots_a_running_vm_once() {
    let plane = start(&["host-b"], Duration::from_millis(500)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    // A request present at creation is satisfied by the first boot.
    let mut fresh = vm("vm-b", "small", "net-1");
    fresh.spec.reboot_request = Some("at-create".into());
    create(&vms, fresh).await;
    wait_phase(&client, "vm-b", VmPhase::Running).await;
    let domain = format!("{NS}.vm-b");
    let carried_out = |request: &'static str| {
        let vmis = vmis.clone();
        async move {
            let status = vmis.get("vm-b").await.ok()?.status?;
            (status.reboot_request.as_deref() == Some(request)).then_some(())
        }
    };
    wait_for(&client, "the creation-time request to be recorded", || {
        carried_out("at-create")
    })
    .await;
    assert_eq!(plane.drivers[0].boots(&domain), 1);

    vms.patch(
        "vm-b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"rebootRequest": "r1"}})),
    )
    .await
    .expect("ask for a reboot");
    wait_for(&client, "the reboot to be carried out", || {
        carried_out("r1")
    })
    .await;
    wait_phase(&client, "vm-b", VmPhase::Running).await;
    assert_eq!(plane.drivers[0].boots(&domain), 2, "exactly one reboot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_vm_keeps_its_domain_and_resumes_without_a_boot() {
    let plane = start(&["host-p"], Duration::from_millis(500)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-p", "small", "net-1")).await;
    wait_phase(&client, "vm-p", VmPhase::Running).await;
    let pause = |paused: bool| {
        let vms = vms.clone();
        async move {
            vms.patch(
                "vm-p",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"paused": paused}})),
            )
            .await
            .expect("patch spec.paused");
        }
    };
    pause(true).await;
    let paused = wait_phase(&client, "vm-p", VmPhase::Paused).await;
    assert_eq!(ready_reason(&paused).0, "Paused");
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
        .get("vm-p")
        .await
        .expect("instance");
    assert_eq!(vmi.spec.power_state, PowerState::Paused);
    pause(false).await;
    wait_phase(&client, "vm-p", VmPhase::Running).await;
    assert_eq!(
        plane.drivers[0].boots(&format!("{NS}.vm-p")),
        1,
        "resumed, not rebooted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_networks_get_distinct_vnis_and_their_vms_run() {
    use strata_apis::{vxlanpool::VniRange, L2NetworkType, VxlanPool, VxlanPoolSpec};
    let plane = start(&["host-v"], Duration::from_millis(500)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let l2s: Api<L2Network> = Api::all(client.clone());
    let vxlan = |name: &str| {
        L2Network::new(
            name,
            L2NetworkSpec {
                zone: "zone-1".into(),
                network_type: L2NetworkType::Vxlan,
                vxlan_pool: Some("pool-1".into()),
                ..L2NetworkSpec::default()
            },
        )
    };
    // The VM's network exists before its pool: the VM waits, then runs once a VNI is given.
    create(&l2s, vxlan("vx-a")).await;
    create(&l2s, vxlan("vx-b")).await;
    let net = L3NetworkSpec {
        l2_network: "vx-a".into(),
        cidr: "10.30.0.0/24".into(),
        gateway: "10.30.0.1".into(),
        ip_ranges: vec![IpRange {
            start: "10.30.0.10".into(),
            end: "10.30.0.20".into(),
        }],
        ..L3NetworkSpec::default()
    };
    create(&Api::all(client.clone()), L3Network::new("net-vx", net)).await;
    Api::<Cluster>::all(client.clone())
        .patch(
            "cluster-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"l2Networks": ["l2-1", "vx-a"]}})),
        )
        .await
        .expect("attach the VXLAN network");
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-vx", "small", "net-vx")).await;
    wait_pending_with(&client, "vm-vx", "L2NetworkNotReady").await;

    let pool = VxlanPoolSpec {
        zone: "zone-1".into(),
        vni_range: VniRange {
            start: 5000,
            end: 5001,
        },
        vtep_cidr: "192.168.100.0/24".into(),
        port: 4789,
    };
    create(&Api::all(client.clone()), VxlanPool::new("pool-1", pool)).await;
    let vnis = wait_for(&client, "both networks to have a VNI", || async {
        let a = l2s.get("vx-a").await.ok()?.status?.vni?;
        let b = l2s.get("vx-b").await.ok()?.status?.vni?;
        Some([a, b])
    })
    .await;
    let mut sorted = vnis;
    sorted.sort_unstable();
    assert_eq!(sorted, [5000, 5001], "distinct VNIs from the pool's range");

    // The pool is now full: a third network waits with a reason.
    create(&l2s, vxlan("vx-c")).await;
    wait_for(&client, "vx-c to report an exhausted pool", || async {
        let status = l2s.get("vx-c").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == READY)?;
        (ready.reason == "VniExhausted").then_some(())
    })
    .await;

    wait_phase(&client, "vm-vx", VmPhase::Running).await;
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
        .get("vm-vx")
        .await
        .expect("instance");
    assert_eq!(vmi.spec.nics[0].l2.vni, Some(vnis[0]));

    // Tunnel endpoints: the hosts of the clusters the network is attached to.
    Api::<Host>::all(client.clone())
        .patch(
            "host-v",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"managementAddress": "192.168.100.11"}})),
        )
        .await
        .expect("give the host an address");
    wait_for(&client, "vx-a to list host-v as its VTEP", || async {
        let vteps = l2s.get("vx-a").await.ok()?.status?.vteps;
        (vteps == ["192.168.100.11"]).then_some(())
    })
    .await;
    let unattached = l2s
        .get("vx-b")
        .await
        .expect("vx-b")
        .status
        .unwrap_or_default();
    assert!(
        unattached.vteps.is_empty(),
        "no cluster has vx-b: {:?}",
        unattached.vteps
    );
}
