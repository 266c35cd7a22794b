//! After a crash or tampering, ensuring again repairs the host: a dead dnsmasq is restarted, a
//! deleted namespace or bridge is rebuilt, and orphans are found by prefix and removed.

mod common;

use common::{veth, Lab};
use strata_network::{L2Spec, L2Type, L3Spec, Lease, NicSecurity};

#[test]
fn ensure_repairs_and_inventory_finds_orphans() {
    let lab = Lab::new("repair");
    let (host, drv) = lab.host("h");
    veth(&host, "phys0", "phys1", None);
    let l2 = L2Spec {
        name: "rep-l2".into(),
        kind: L2Type::NoVlan {
            interface: "phys0".into(),
        },
        mtu: None,
    };
    drv.ensure_l2(&l2).unwrap();
    let mac = "52:54:00:50:00:11";
    let l3 = L3Spec {
        name: "rep-l3".into(),
        bridge: l2.bridge(),
        cidr: "10.50.0.0/24".parse().unwrap(),
        gateway: "10.50.0.1".parse().unwrap(),
        dns: vec![],
        domain: None,
        mtu: None,
        local_only: true,
        leases: vec![Lease {
            mac: mac.into(),
            ip: "10.50.0.11".parse().unwrap(),
            hostname: None,
        }],
    };
    drv.ensure_l3(&l3).unwrap();
    let netns = drv.l3_netns("rep-l3");
    let pidfile = lab.dir.path().join(&host).join(&netns).join("dnsmasq.pid");

    // dnsmasq killed behind our back: restarted.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    common::sh("kill", &["-9", pid.trim()]).unwrap();
    drv.ensure_l3(&l3).unwrap();
    assert_ne!(std::fs::read_to_string(&pidfile).unwrap(), pid);
    let vm = lab.vm(&host, &l2.bridge(), "vm", mac);
    assert_eq!(vm.dhcp(), Some("10.50.0.11".parse().unwrap()));

    // The namespace deleted (its dnsmasq keeps a dead namespace alive): rebuilt with a new dnsmasq.
    let old_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    common::sh("ip", &["netns", "del", &netns]).unwrap();
    // The bridge deleted too: rebuilt, and the L3's veth and the VM's tap re-attached.
    common::sh("ip", &["-n", &host, "link", "del", &l2.bridge()]).unwrap();
    drv.ensure_l2(&l2).unwrap();
    drv.ensure_l3(&l3).unwrap();
    common::ip(&["-n", &host, "link", "set", &vm.tap, "master", &l2.bridge()]);
    common::ip(&["-n", &vm.ns, "addr", "flush", "dev", "eth0"]);
    assert_eq!(
        vm.dhcp(),
        Some("10.50.0.11".parse().unwrap()),
        "DHCP works again"
    );
    let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        "the dnsmasq of the dead namespace was stopped: {stat}"
    );
    assert!(vm.reaches("10.50.0.1", 3));

    // Orphans: the agent compares the inventory with what it wants and removes the rest.
    drv.ensure_nic_security(&NicSecurity::new(&vm.tap)).unwrap();
    let inv = drv.inventory().unwrap();
    assert_eq!(inv.bridges, vec![l2.bridge()]);
    assert_eq!(inv.l3_namespaces, vec![netns.clone()]);
    assert_eq!(inv.taps, vec![vm.tap.clone()]);
    assert_eq!(inv.secured_taps, vec![vm.tap.clone()]);
    for ns in &inv.l3_namespaces {
        drv.remove_l3_netns(ns).unwrap();
    }
    for tap in &inv.taps {
        drv.remove_tap(tap).unwrap();
    }
    for br in &inv.bridges {
        drv.remove_bridge(br).unwrap();
    }
    assert_eq!(drv.inventory().unwrap(), Default::default());
    let tables = drv.host().nft_tables("bridge").unwrap();
    assert!(
        tables.iter().all(|t| !t.starts_with("strata_")),
        "{tables:?}"
    );
    assert!(!pidfile.exists());
}
