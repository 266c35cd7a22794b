//! VXLAN: two hosts' plumbing, each in its own namespace, joined by an underlay veth. The same VNI
//! stretches one L2 across both (DHCP served across the tunnel, VMs ping each other); another VNI
//! is a separate L2 even with overlapping addresses; distributed DHCP serves each host's VMs from
//! its own namespace.

mod common;

use common::{ip, Lab};
use strata_network::{l2, L2Spec, L2Type, L3Spec, Lease};

fn vxlan(name: &str, vni: u32, local: &str) -> L2Spec {
    L2Spec {
        name: name.into(),
        kind: L2Type::Vxlan {
            vni,
            local: local.parse().unwrap(),
            peers: vec!["172.31.0.1".parse().unwrap(), "172.31.0.2".parse().unwrap()],
            underlay: Some("ul0".into()),
            port: None,
        },
        mtu: None,
    }
}

#[test]
fn vxlan_stretches_l2_across_hosts_and_separates_vnis() {
    let lab = Lab::new("vxlan");
    let (ha, a) = lab.host("ha");
    let (hb, b) = lab.host("hb");
    // Underlay: a /30 between the two hosts' namespaces.
    ip(&[
        "-n", &ha, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &hb,
    ]);
    ip(&["-n", &ha, "addr", "add", "172.31.0.1/30", "dev", "ul0"]);
    ip(&["-n", &hb, "addr", "add", "172.31.0.2/30", "dev", "ul0"]);
    ip(&["-n", &ha, "link", "set", "ul0", "up"]);
    ip(&["-n", &hb, "link", "set", "ul0", "up"]);

    let (red_a, red_b) = (
        vxlan("red", 100, "172.31.0.1"),
        vxlan("red", 100, "172.31.0.2"),
    );
    let (blue_a, blue_b) = (
        vxlan("blue", 200, "172.31.0.1"),
        vxlan("blue", 200, "172.31.0.2"),
    );
    for (d, s) in [(&a, &red_a), (&b, &red_b), (&a, &blue_a), (&b, &blue_b)] {
        d.ensure_l2(s).unwrap();
        d.ensure_l2(s).unwrap();
    }
    assert_eq!(
        l2::flood_list(a.host(), &red_a.uplink()).unwrap(),
        vec!["172.31.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    let (mac_a, mac_b) = ("52:54:00:40:00:11", "52:54:00:40:00:12");
    let mut l3 = L3Spec {
        name: "red-l3".into(),
        bridge: red_a.bridge(),
        cidr: "10.40.0.0/24".parse().unwrap(),
        gateway: "10.40.0.1".parse().unwrap(),
        dns: vec![],
        domain: None,
        mtu: Some(1450),
        // One DHCP server for the whole L2 first: host A serves host B's VM across the tunnel.
        local_only: false,
        leases: vec![
            Lease {
                mac: mac_a.into(),
                ip: "10.40.0.11".parse().unwrap(),
                hostname: None,
            },
            Lease {
                mac: mac_b.into(),
                ip: "10.40.0.12".parse().unwrap(),
                hostname: None,
            },
        ],
    };
    a.ensure_l3(&l3).unwrap();
    let vm_a = lab.vm(&ha, &red_a.bridge(), "vm-a", mac_a);
    let vm_b = lab.vm(&hb, &red_b.bridge(), "vm-b", mac_b);
    assert_eq!(vm_a.dhcp(), Some("10.40.0.11".parse().unwrap()));
    assert_eq!(
        vm_b.dhcp(),
        Some("10.40.0.12".parse().unwrap()),
        "host B's VM gets its lease across VXLAN"
    );
    let mtu = vm_b.exec("cat", &["/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1450", "DHCP hands out the overlay MTU");
    assert!(
        vm_b.reaches("10.40.0.11", 3),
        "VMs on two hosts, same VNI, reach each other"
    );

    // Another VNI is another L2: same subnet, no reachability across VNIs.
    let vm_c = lab.vm(&ha, &blue_a.bridge(), "vm-c", "52:54:00:40:00:21");
    let vm_d = lab.vm(&hb, &blue_b.bridge(), "vm-d", "52:54:00:40:00:22");
    vm_c.set_ip("10.40.0.21/24", None);
    vm_d.set_ip("10.40.0.22/24", None);
    assert!(vm_d.reaches("10.40.0.21", 3), "same VNI 200 across hosts");
    assert!(
        !vm_d.ping_once("10.40.0.11"),
        "VNI 200 does not reach VNI 100 on the other host"
    );
    assert!(
        !vm_c.ping_once("10.40.0.12"),
        "VNI 200 does not reach VNI 100 on the other host"
    );
    assert!(!vm_c.ping_once("10.40.0.11"), "nor on the same host");

    // Distributed DHCP: every host runs the L3's namespace, visible to its own taps only.
    l3.local_only = true;
    a.ensure_l3(&l3).unwrap();
    b.ensure_l3(&L3Spec {
        bridge: red_b.bridge(),
        ..l3.clone()
    })
    .unwrap();
    ip(&["-n", &vm_b.ns, "addr", "flush", "dev", "eth0"]);
    ip(&["-n", &vm_b.ns, "neigh", "flush", "all"]);
    assert_eq!(vm_b.dhcp(), Some("10.40.0.12".parse().unwrap()));
    let log_b = std::fs::read_to_string(
        lab.dir
            .path()
            .join(&hb)
            .join(b.l3_netns("red-l3"))
            .join("dnsmasq.log"),
    )
    .unwrap();
    assert!(
        log_b.contains(&format!("DHCPACK(dhcp0) 10.40.0.12 {mac_b}")),
        "host B's own dnsmasq served it:\n{log_b}"
    );
    let log_a = std::fs::read_to_string(
        lab.dir
            .path()
            .join(&ha)
            .join(a.l3_netns("red-l3"))
            .join("dnsmasq.log"),
    )
    .unwrap();
    assert_eq!(
        log_a
            .matches(&format!("DHCPDISCOVER(dhcp0) {mac_b}"))
            .count(),
        1,
        "host A's namespace no longer sees host B's broadcasts:\n{log_a}"
    );
    assert!(
        vm_b.reaches("10.40.0.1", 3),
        "the gateway is local on host B"
    );
    assert!(vm_a.reaches("10.40.0.1", 3), "and on host A");
    assert!(
        vm_b.reaches("10.40.0.11", 3),
        "VMs still reach each other across hosts"
    );

    // A host leaving the peer list leaves the flood list.
    let mut alone = red_a.clone();
    if let L2Type::Vxlan { peers, .. } = &mut alone.kind {
        peers.retain(|p| p.to_string() == "172.31.0.1");
    }
    a.ensure_l2(&alone).unwrap();
    assert!(l2::flood_list(a.host(), &red_a.uplink())
        .unwrap()
        .is_empty());

    // Removal on both hosts.
    for (d, s) in [(&a, &red_a), (&b, &red_b), (&a, &blue_a), (&b, &blue_b)] {
        d.remove_l3("red-l3").unwrap();
        d.remove_l2(s).unwrap();
        let inv = d.inventory().unwrap();
        assert!(
            !inv.bridges.contains(&s.bridge()) && inv.l3_namespaces.is_empty(),
            "{inv:?}"
        );
        assert!(
            !d.host().link_exists(&s.uplink()).unwrap(),
            "VXLAN device removed"
        );
    }
}
