//! Security groups on a real kernel: the agent turns a NIC's resolved security groups
//! (`VmiNic.security`) into the driver's nftables table for its tap, traffic follows the rules,
//! a rule change replaces the table, and the table goes with the instance. The host is a namespace
//! the test creates (the driver's `host_netns`); guests are namespaces whose veth plays the tap.

use std::sync::Arc;

use strata_apis::{
    securitygroup::{Protocol, RuleAction},
    L2NetworkType, PortRange, VirtualMachineInstance, VirtualMachineInstanceSpec, VmiL2Network,
    VmiNic, VmiNicSecurity, VmiSecurityRule,
};
use strata_network::{names, DriverConfig};
use strata_node_agent::network::{self, HostNetwork, NetworkConfig};

mod common;

use common::{sh, Cleanup};

fn vmi(
    name: &str,
    ip: &str,
    mac: &str,
    security: Option<VmiNicSecurity>,
) -> VirtualMachineInstance {
    let mut v = VirtualMachineInstance::new(
        name,
        VirtualMachineInstanceSpec {
            host: "h1".into(),
            nics: vec![VmiNic {
                l3_network: "sg-l3".into(),
                ip: ip.into(),
                prefix_length: 24,
                gateway: "10.61.0.1".into(),
                mac: mac.into(),
                l2: VmiL2Network {
                    name: "sg-l2".into(),
                    network_type: L2NetworkType::NoVlan,
                    physical_interface: Some("phys0".into()),
                    ..Default::default()
                },
                security,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    v.metadata.namespace = Some("default".into());
    v.metadata.uid = Some(format!("uid-{name}"));
    v
}

fn allow(protocol: Protocol, ports: Option<PortRange>, cidr: &str) -> VmiNicSecurity {
    VmiNicSecurity {
        groups: vec!["g".into()],
        ingress_rules: vec![VmiSecurityRule {
            protocol,
            ports,
            cidr: Some(cidr.into()),
            priority: 10,
            action: RuleAction::Accept,
        }],
        egress_rules: vec![],
        default_ingress_policy: RuleAction::Drop,
        default_egress_policy: RuleAction::Accept,
    }
}

fn pings(from: &str, to: &str) -> bool {
    sh(&[
        "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
    ])
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nics_security_groups_become_its_tap_table_and_go_with_it() {
    let tag = format!("tsg{}", std::process::id());
    let host = format!("{tag}-h");
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cleanup = Cleanup(vec![host.clone()], dir);
    sh(&["ip", "netns", "add", &host]).unwrap();
    sh(&[
        "ip", "-n", &host, "link", "add", "phys0", "type", "veth", "peer", "name", "phys1",
    ])
    .unwrap();

    let net = HostNetwork::new(NetworkConfig {
        driver: DriverConfig {
            host_netns: Some(host.clone()),
            scope: host.clone(),
            state_dir: cleanup.1.clone(),
        },
        ..Default::default()
    });
    // The L3 namespace is global (not inside the test's host namespace): clean it up too.
    cleanup.0.push(net.driver().l3_netns("sg-l3"));
    // a lets ICMP in from its subnet only; b is in no security group.
    let a = Arc::new(vmi(
        "a",
        "10.61.0.11",
        "52:54:00:61:00:11",
        Some(allow(Protocol::ICMP, None, "10.61.0.0/24")),
    ));
    let b = Arc::new(vmi("b", "10.61.0.12", "52:54:00:61:00:12", None));
    let (tap_a, tap_b) = (network::tap(&a, 0), network::tap(&b, 0));

    let synced = net.sync(&[a.clone(), b.clone()]).await;
    assert!(
        synced.want.problems.is_empty(),
        "{:?}",
        synced.want.problems
    );
    assert_eq!(synced.ready_l3, ["sg-l3"]);
    let inv = net.driver().inventory().unwrap();
    assert_eq!(
        inv.secured_taps,
        std::slice::from_ref(&tap_a),
        "only a is secured"
    );
    let table = names::sg_table(&tap_a);
    let rules = sh(&[
        "ip", "netns", "exec", &host, "nft", "list", "table", "bridge", &table,
    ])
    .unwrap();
    assert!(
        rules.contains("ip saddr 10.61.0.0/24") && rules.contains("icmp"),
        "{rules}"
    );

    // Guests on the taps the agent named, with their addresses.
    let mut guests = vec![];
    for (v, tap) in [(&a, &tap_a), (&b, &tap_b)] {
        let ns = format!("{tag}-{}", v.metadata.name.as_deref().unwrap());
        sh(&["ip", "netns", "add", &ns]).unwrap();
        cleanup.0.push(ns.clone());
        let nic = &v.spec.nics[0];
        sh(&[
            "ip", "-n", &host, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])
        .unwrap();
        sh(&[
            "ip", "-n", &ns, "link", "set", "eth0", "address", &nic.mac, "up",
        ])
        .unwrap();
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", nic.ip),
            "dev",
            "eth0",
        ])
        .unwrap();
        let bridge = network::bridge(nic);
        sh(&[
            "ip", "-n", &host, "link", "set", tap, "master", &bridge, "up",
        ])
        .unwrap();
        guests.push(ns);
    }
    let (ns_a, ns_b) = (&guests[0], &guests[1]);

    // ICMP is allowed into a; b has no firewall, so a reaches it too.
    assert!(pings(ns_b, "10.61.0.11"), "b pings a: ICMP is allowed");
    assert!(pings(ns_a, "10.61.0.12"), "a pings b");

    // The group now allows only SSH: a's table is replaced, pings to a are dropped, and the
    // replies to a's own pings still come back (stateful).
    let a = Arc::new(vmi(
        "a",
        "10.61.0.11",
        "52:54:00:61:00:11",
        Some(allow(
            Protocol::TCP,
            Some(PortRange { start: 22, end: 22 }),
            "10.61.0.0/24",
        )),
    ));
    net.sync(&[a.clone(), b.clone()]).await;
    let rules = sh(&[
        "ip", "netns", "exec", &host, "nft", "list", "table", "bridge", &table,
    ])
    .unwrap();
    assert!(
        rules.contains("tcp dport 22") && !rules.contains("icmp"),
        "{rules}"
    );
    assert!(!pings(ns_b, "10.61.0.11"), "ICMP into a is dropped now");
    assert!(pings(ns_a, "10.61.0.12"), "a's own pings are answered");

    // a goes: its table goes with it.
    net.sync(std::slice::from_ref(&b)).await;
    let inv = net.driver().inventory().unwrap();
    assert!(inv.secured_taps.is_empty(), "{inv:?}");
    assert!(
        sh(&["ip", "netns", "exec", &host, "nft", "list", "table", "bridge", &table]).is_err(),
        "a's table is gone"
    );

    // b goes too: nothing of the host network is left.
    net.sync(&[]).await;
    let netns = net.driver().l3_netns("sg-l3");
    assert!(
        !sh(&["ip", "netns", "list"]).unwrap().contains(&netns),
        "{netns} is removed"
    );
}
