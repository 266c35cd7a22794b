//! A flat (NoVlan) L3 network on one host: static DHCP leases from the L3 namespace's dnsmasq,
//! VMs reaching each other and the gateway, the metadata service, idempotency and removal.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{ip, veth, Lab};
use strata_network::{names, InstanceMetadata, L2Spec, L2Type, L3Spec, Lease, MetadataServer};

fn l3(name: &str, bridge: &str, leases: Vec<Lease>) -> L3Spec {
    L3Spec {
        name: name.into(),
        bridge: bridge.into(),
        cidr: "10.10.1.0/24".parse().unwrap(),
        gateway: "10.10.1.1".parse().unwrap(),
        dns: vec![],
        domain: Some("strata.test".into()),
        mtu: None,
        local_only: true,
        leases,
    }
}

fn lease(mac: &str, ip: &str, host: &str) -> Lease {
    Lease {
        mac: mac.into(),
        ip: ip.parse().unwrap(),
        hostname: Some(host.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_static_leases_ping_metadata_and_cleanup() {
    let t0 = Instant::now();
    let lab = Lab::new("flat");
    let (host, drv) = lab.host("h");
    // The "physical" interface of the NoVlan network: one end of a veth inside the host namespace.
    veth(&host, "phys0", "phys1", None);
    let l2 = L2Spec {
        name: "flat-l2".into(),
        kind: L2Type::NoVlan {
            interface: "phys0".into(),
        },
        mtu: None,
    };
    // An interface with addresses is refused (it would cut the host off), before anything is made.
    veth(&host, "mgmt0", "mgmt1", None);
    ip(&["-n", &host, "addr", "add", "192.0.2.1/24", "dev", "mgmt0"]);
    let busy = L2Spec {
        name: "busy".into(),
        kind: L2Type::NoVlan {
            interface: "mgmt0".into(),
        },
        mtu: None,
    };
    assert!(matches!(
        drv.ensure_l2(&busy),
        Err(strata_network::Error::Invalid(_))
    ));
    assert!(drv.inventory().unwrap().bridges.is_empty());

    drv.ensure_l2(&l2).unwrap();
    let br = l2.bridge();

    let (mac1, mac2, mac3) = (
        "52:54:00:10:01:11",
        "52:54:00:10:01:12",
        "52:54:00:10:01:13",
    );
    let mut spec = l3(
        "flat-l3",
        &br,
        vec![
            lease(mac1, "10.10.1.11", "vm1"),
            lease(mac2, "10.10.1.12", "vm2"),
        ],
    );
    drv.ensure_l3(&spec).unwrap();

    let vm1 = lab.vm(&host, &br, "vm1", mac1);
    let vm2 = lab.vm(&host, &br, "vm2", mac2);
    assert_eq!(
        vm1.dhcp(),
        Some("10.10.1.11".parse().unwrap()),
        "vm1 gets its static lease"
    );
    assert_eq!(
        vm2.dhcp(),
        Some("10.10.1.12".parse().unwrap()),
        "vm2 gets its static lease"
    );
    assert!(vm1.reaches("10.10.1.12", 3), "vm1 pings vm2");
    assert!(
        vm2.reaches("10.10.1.1", 3),
        "vm2 pings the gateway in the L3 namespace"
    );
    // dnsmasq also answers DNS for the leased host names.
    let dns = vm1
        .exec("busybox", &["nslookup", "vm2.strata.test", "10.10.1.1"])
        .unwrap();
    assert!(dns.contains("10.10.1.12"), "{dns}");

    // No dynamic pool: a MAC without a lease gets nothing.
    let stranger = lab.vm(&host, &br, "stranger", "52:54:00:10:01:99");
    assert_eq!(stranger.dhcp(), None, "an unknown MAC gets no address");

    // Ensuring again changes nothing: same dnsmasq, same links.
    let netns = drv.l3_netns("flat-l3");
    let pid = || {
        std::fs::read_to_string(lab.dir.path().join(&host).join(&netns).join("dnsmasq.pid"))
            .unwrap()
    };
    let before = (pid(), drv.host().links().unwrap());
    drv.ensure_l2(&l2).unwrap();
    drv.ensure_l3(&spec).unwrap();
    assert_eq!(before, (pid(), drv.host().links().unwrap()));

    // A new lease is picked up by SIGHUP, without restarting dnsmasq.
    spec.leases.push(lease(mac3, "10.10.1.13", "vm3"));
    drv.ensure_l3(&spec).unwrap();
    assert_eq!(pid(), before.0);
    let vm3 = lab.vm(&host, &br, "vm3", mac3);
    assert_eq!(vm3.dhcp(), Some("10.10.1.13".parse().unwrap()));

    // The metadata service answers each VM with its own user data.
    let md = MetadataServer::start(&netns).unwrap();
    assert!(md.is_current());
    md.set_all(HashMap::from([
        (
            "10.10.1.11".parse().unwrap(),
            InstanceMetadata {
                user_data: "#cloud-config\nvm: one\n".into(),
                ..Default::default()
            },
        ),
        (
            "10.10.1.12".parse().unwrap(),
            InstanceMetadata {
                user_data: "vm two".into(),
                hostname: Some("vm2".into()),
                ..Default::default()
            },
        ),
    ]));
    let get = |vm: &common::Vm, path: &str| {
        let vm_ns = vm.ns.clone();
        let url = format!("http://169.254.169.254{path}");
        std::thread::spawn(move || {
            common::sh(
                "ip",
                &["netns", "exec", &vm_ns, "curl", "-sf", "-m", "5", &url],
            )
        })
        .join()
        .unwrap()
    };
    assert_eq!(
        get(&vm1, "/latest/user-data").unwrap(),
        "#cloud-config\nvm: one\n"
    );
    assert_eq!(get(&vm2, "/latest/user-data").unwrap(), "vm two");
    assert_eq!(get(&vm2, "/latest/meta-data/hostname").unwrap(), "vm2");
    assert!(
        get(&vm3, "/latest/user-data").is_err(),
        "vm3 has no user data: 404"
    );
    drop(md);

    // The inventory shows what exists; removal leaves nothing behind.
    let inv = drv.inventory().unwrap();
    assert_eq!(inv.bridges, vec![br.clone()]);
    assert_eq!(inv.l3_namespaces, vec![netns.clone()]);
    assert!(inv.taps.contains(&vm1.tap));
    drv.remove_l3("flat-l3").unwrap();
    drv.remove_l3("flat-l3").unwrap();
    drv.remove_l2(&l2).unwrap();
    drv.remove_l2(&l2).unwrap();
    let inv = drv.inventory().unwrap();
    assert!(
        inv.bridges.is_empty() && inv.l3_namespaces.is_empty(),
        "{inv:?}"
    );
    assert!(!drv.host().link_exists(&names::l3_veth("flat-l3")).unwrap());
    assert!(
        drv.host().link_exists("phys0").unwrap(),
        "the physical interface is released, not deleted"
    );
    assert!(!lab.dir.path().join(&host).join(&netns).exists());
    ip(&["-n", &host, "link", "show", "phys0"]);
    eprintln!("flat test took {:?}", t0.elapsed());
}
