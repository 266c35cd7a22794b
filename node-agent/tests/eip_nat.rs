//! EIPs on a real kernel: a NIC's resolved Eip (`VmiNic.eip`) makes the agent build the public
//! L2's bridge and program the private L3 namespace's NAT for the VIP; without the Eip the NAT goes.
//! The host is a namespace the test creates (the driver's `host_netns`).

use std::sync::Arc;

use strata_apis::{
    L2NetworkType, VirtualMachineInstance, VirtualMachineInstanceSpec, VmiEip, VmiL2Network, VmiNic,
};
use strata_network::{names, DriverConfig};
use strata_node_agent::network::{HostNetwork, NetworkConfig};

mod common;

use common::{sh, Cleanup};

fn vmi(eip: Option<VmiEip>) -> Arc<VirtualMachineInstance> {
    let mut v = VirtualMachineInstance::new(
        "a",
        VirtualMachineInstanceSpec {
            host: "h1".into(),
            nics: vec![VmiNic {
                l3_network: "eip-l3".into(),
                ip: "10.62.0.11".into(),
                prefix_length: 24,
                gateway: "10.62.0.1".into(),
                mac: "52:54:00:62:00:11".into(),
                l2: VmiL2Network {
                    name: "eip-l2".into(),
                    network_type: L2NetworkType::NoVlan,
                    physical_interface: Some("phys0".into()),
                    ..Default::default()
                },
                eip,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    v.metadata.namespace = Some("default".into());
    v.metadata.uid = Some("uid-a".into());
    Arc::new(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eip_programs_the_nat_of_its_l3_and_goes_with_it() {
    let tag = format!("tei{}", std::process::id());
    let host = format!("{tag}-h");
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let cleanup = Cleanup(vec![host.clone()], dir);
    sh(&["ip", "netns", "add", &host]).unwrap();
    for (a, b) in [("phys0", "phys1"), ("pub0", "pub1")] {
        sh(&[
            "ip", "-n", &host, "link", "add", a, "type", "veth", "peer", "name", b,
        ])
        .unwrap();
    }
    let net = HostNetwork::new(NetworkConfig {
        driver: DriverConfig {
            host_netns: Some(host.clone()),
            scope: host.clone(),
            state_dir: cleanup.1.clone(),
        },
        ..Default::default()
    });
    let eip = VmiEip {
        name: "e1".into(),
        vip: "203.0.113.7".into(),
        l3_network: "eip-public".into(),
        prefix_length: 24,
        gateway: Some("203.0.113.1".into()),
        l2: VmiL2Network {
            name: "eip-pub".into(),
            network_type: L2NetworkType::NoVlan,
            physical_interface: Some("pub0".into()),
            ..Default::default()
        },
    };
    let synced = net.sync(&[vmi(Some(eip))]).await;
    assert!(
        synced.want.problems.is_empty(),
        "{:?}",
        synced.want.problems
    );
    assert_eq!(synced.ready_l3, ["eip-l3"]);
    let inv = net.driver().inventory().unwrap();
    assert!(inv.bridges.contains(&names::bridge("eip-pub")), "{inv:?}");
    let l3ns = net.driver().l3_netns("eip-l3");
    let nat = |what: &str| {
        sh(&[
            "ip", "netns", "exec", &l3ns, "nft", "list", "table", "ip", what,
        ])
    };
    let rules = nat(names::NAT_TABLE).unwrap();
    assert!(
        rules.contains("203.0.113.7") && rules.contains("10.62.0.11"),
        "{rules}"
    );
    let veth = names::public_veth("eip-l3", &names::bridge("eip-pub"));
    assert!(sh(&["ip", "-n", &host, "link", "show", &veth]).is_ok());

    // Without the Eip: the NAT and its veth go, the public bridge too.
    net.sync(&[vmi(None)]).await;
    assert!(nat(names::NAT_TABLE).is_err(), "the NAT table is gone");
    assert!(sh(&["ip", "-n", &host, "link", "show", &veth]).is_err());
    let inv = net.driver().inventory().unwrap();
    assert!(!inv.bridges.contains(&names::bridge("eip-pub")), "{inv:?}");

    net.sync(&[]).await;
}
