//! Eips in one process (API server, controllers, a simulated agent): the Eip controller takes
//! the VIP from the Public L3Network like a VM address (an IpAddress it owns), reports the bound
//! NIC's guest address and host, and releases the VIP with the Eip.

use std::time::Duration;

use kube::{api::DeleteParams, Api, Client};
use strata_apis::{
    condition::READY, Eip, EipSpec, IpAddress, IpRange, L3Category, L3Network, L3NetworkSpec,
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineSpec, VmNic, VmNicRef,
    VmPhase,
};

mod common;

use common::*;

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
