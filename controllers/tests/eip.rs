//! Eips and PortForwardings in one process (API server, controllers, a simulated agent): their
//! controller takes the VIP from the Public L3Network like a VM address (an IpAddress the object
//! owns), reports the bound NIC's guest address and host, turns Ready once the host's agent
//! reports the NAT programmed, and releases the VIP with the object.

use std::time::Duration;

use kube::{api::DeleteParams, Api, Client};
use strata_apis::{
    condition::READY, Eip, EipSpec, ForwardedProtocol, IpAddress, IpRange, L3Category, L3Network,
    L3NetworkSpec, PortForwarding, PortForwardingSpec, PortRange, RunStrategy, VirtualMachine,
    VirtualMachineInstance, VirtualMachineSpec, VmNic, VmNicRef, VmPhase,
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

/// The inventory, with the Public L3Network `public-1` (203.0.113.10-20).
async fn public_network(client: &Client) {
    inventory(client).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eip_takes_a_public_vip_reports_its_nic_and_releases_the_vip() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    public_network(&client).await;
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

    // Bound to a VIP from the public ranges, the NIC's address and host; Ready once the (simulated)
    // agent reports the NAT programmed.
    let eip = wait_eip(&client, "eip-1", "Programmed").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forwarding_takes_a_vip_is_programmed_by_the_host_and_releases_the_vip() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    public_network(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let pfs: Api<PortForwarding> = Api::namespaced(client.clone(), NS);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-1", &[])).await;
    let running = wait_phase(&client, "vm-1", VmPhase::Running).await;
    let vm_status = running.status.expect("status");
    let spec = |vip: Option<&str>, external: u16, internal: u16| PortForwardingSpec {
        l3_network: "public-1".into(),
        vip: vip.map(Into::into),
        protocol: ForwardedProtocol::TCP,
        external_ports: PortRange {
            start: external,
            end: external + 1,
        },
        internal_ports: PortRange {
            start: internal,
            end: internal + 1,
        },
        vm_nic: Some(VmNicRef {
            virtual_machine: "vm-1".into(),
            l3_network: None,
        }),
        allowed_cidr: Some("198.51.100.0/24".into()),
    };
    create(&pfs, PortForwarding::new("web", spec(None, 8080, 80))).await;
    create(
        &pfs,
        PortForwarding::new("ssh", spec(Some("203.0.113.18"), 2222, 22)),
    )
    .await;

    // Each takes a VIP, is bound to vm-1's NIC on its host and is programmed there.
    let ready = |name: &'static str| {
        let pfs = pfs.clone();
        async move {
            let pf = pfs.get_opt(name).await.ok()??;
            let status = pf.status.clone()?;
            let ready = status.conditions.iter().find(|c| c.type_ == READY)?;
            (ready.status == "True" && ready.reason == "Programmed").then_some(status)
        }
    };
    let web = wait_for(&client, "PortForwarding web to be Ready", || ready("web")).await;
    let ssh = wait_for(&client, "PortForwarding ssh to be Ready", || ready("ssh")).await;
    assert_eq!(ssh.vip.as_deref(), Some("203.0.113.18"));
    let vip = web.vip.clone().expect("a VIP");
    assert!(
        vip.starts_with("203.0.113.") && vip != "203.0.113.18",
        "{vip}"
    );
    assert_eq!(web.guest_ip.as_deref(), Some(vm_status.nics[0].ip.as_str()));
    assert_eq!(web.host, vm_status.host);
    let ips: Api<IpAddress> = Api::all(client.clone());
    let ip_name = IpAddress::object_name("public-1", vip.parse().expect("IPv4"));
    assert_eq!(
        ips.get(&ip_name)
            .await
            .expect("the VIP is an IpAddress")
            .spec
            .owner,
        format!("{NS}/web")
    );

    // The instance carries both rules on the NIC, by name, and reports them programmed.
    let vmi = vmis.get("vm-1").await.expect("vm-1's instance");
    let carried = &vmi.spec.nics[0].port_forwardings;
    let names: Vec<&str> = carried.iter().map(|pf| pf.public.name.as_str()).collect();
    assert_eq!(names, ["ssh", "web"]);
    let web_rule = &carried[1];
    assert_eq!(web_rule.public.vip, vip);
    assert_eq!(web_rule.public.l3_network, "public-1");
    assert_eq!(web_rule.public.l2.name, "l2-1");
    assert_eq!(
        (web_rule.external_ports.start, web_rule.internal_ports.end),
        (8080, 81)
    );
    assert_eq!(web_rule.allowed_cidr.as_deref(), Some("198.51.100.0/24"));
    let reported: Vec<String> = vmi
        .status
        .expect("status")
        .nat
        .iter()
        .map(|n| format!("{}/{}={}", n.kind, n.name, n.vip))
        .collect();
    assert_eq!(
        reported,
        [
            "PortForwarding/ssh=203.0.113.18".to_string(),
            format!("PortForwarding/web={vip}")
        ]
    );

    // Deleting one releases its VIP and takes it off the instance; the other stays.
    pfs.delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    wait_for(&client, "web's VIP and rule to go", || async {
        let released = ips.get_opt(&ip_name).await.ok()?.is_none();
        let vmi = vmis.get_opt("vm-1").await.ok()??;
        let rules: Vec<String> = vmi.spec.nics[0]
            .port_forwardings
            .iter()
            .map(|pf| pf.public.name.clone())
            .collect();
        let reported = vmi.status?.nat.len();
        (released && rules == ["ssh"] && reported == 1).then_some(())
    })
    .await;
}
