//! EIP and port forwarding: a "public" namespace reaches a VM through its EIP and a forwarded TCP
//! port, through NAT in the L3 namespace; the VM's own traffic leaves with the EIP as source.

mod common;

use common::{veth, Lab};
use strata_network::{
    Eip, L2Spec, L2Type, L3Spec, Lease, NatSpec, PfProtocol, PortForward, PublicUplink,
};

#[test]
fn eip_and_port_forwarding_reach_vms_from_the_public_side() {
    let lab = Lab::new("nat");
    let (host, drv) = lab.host("h");
    // The public network's uplink leads to a namespace that plays the outside world.
    let outside = lab.netns("pub");
    veth(&host, "pubup0", "eth0", Some(&outside));
    common::ip(&[
        "-n",
        &outside,
        "addr",
        "add",
        "198.51.100.2/24",
        "dev",
        "eth0",
    ]);
    common::ip(&["-n", &outside, "link", "set", "eth0", "up"]);
    let public = L2Spec {
        name: "nat-pub".into(),
        kind: L2Type::NoVlan {
            interface: "pubup0".into(),
        },
        mtu: None,
    };
    veth(&host, "phys0", "phys1", None);
    let private = L2Spec {
        name: "nat-priv".into(),
        kind: L2Type::NoVlan {
            interface: "phys0".into(),
        },
        mtu: None,
    };
    drv.ensure_l2(&public).unwrap();
    drv.ensure_l2(&private).unwrap();

    let (mac1, mac2) = ("52:54:00:30:00:11", "52:54:00:30:00:12");
    let l3 = L3Spec {
        name: "nat-l3".into(),
        bridge: private.bridge(),
        cidr: "10.30.0.0/24".parse().unwrap(),
        gateway: "10.30.0.1".parse().unwrap(),
        dns: vec![],
        domain: None,
        mtu: None,
        local_only: true,
        leases: vec![
            Lease {
                mac: mac1.into(),
                ip: "10.30.0.11".parse().unwrap(),
                hostname: None,
            },
            Lease {
                mac: mac2.into(),
                ip: "10.30.0.12".parse().unwrap(),
                hostname: None,
            },
        ],
    };
    drv.ensure_l3(&l3).unwrap();
    let vm1 = lab.vm(&host, &private.bridge(), "vm1", mac1);
    let vm2 = lab.vm(&host, &private.bridge(), "vm2", mac2);
    assert_eq!(vm1.dhcp(), Some("10.30.0.11".parse().unwrap()));
    assert_eq!(vm2.dhcp(), Some("10.30.0.12".parse().unwrap()));
    // Each VM serves a page naming itself.
    for (vm, name) in [(&vm1, "vm1"), (&vm2, "vm2")] {
        let www = lab.dir.path().join(format!("www-{name}"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), format!("hello from {name}\n")).unwrap();
        vm.exec(
            "busybox",
            &["httpd", "-p", "80", "-h", www.to_str().unwrap()],
        )
        .unwrap();
    }
    let curl = |url: &str| {
        common::sh(
            "ip",
            &["netns", "exec", &outside, "curl", "-sf", "-m", "3", url],
        )
    };
    let ping = |to: &str| {
        common::sh(
            "ip",
            &["netns", "exec", &outside, "ping", "-c", "1", "-W", "1", to],
        )
        .is_ok()
    };
    assert!(!ping("198.51.100.50"), "no EIP yet");

    let mut nat = NatSpec {
        l3: "nat-l3".into(),
        public: PublicUplink {
            bridge: public.bridge(),
            cidr: "198.51.100.0/24".parse().unwrap(),
            gateway: None,
        },
        eips: vec![Eip {
            vip: "198.51.100.50".parse().unwrap(),
            private_ip: "10.30.0.11".parse().unwrap(),
        }],
        port_forwards: vec![PortForward {
            vip: "198.51.100.51".parse().unwrap(),
            protocol: PfProtocol::Tcp,
            external: (8080, 8080),
            private_ip: "10.30.0.12".parse().unwrap(),
            internal: (80, 80),
            allowed_cidr: None,
        }],
    };
    drv.ensure_nat(&nat).unwrap();
    drv.ensure_nat(&nat).unwrap();
    assert!(ping("198.51.100.50"), "the EIP answers ping (DNAT to vm1)");
    assert_eq!(curl("http://198.51.100.50/").unwrap(), "hello from vm1\n");
    assert_eq!(
        curl("http://198.51.100.51:8080/").unwrap(),
        "hello from vm2\n",
        "port forwarding to vm2:80"
    );
    assert!(
        curl("http://198.51.100.51:80/").is_err(),
        "only the forwarded port is forwarded"
    );

    // vm1's own connections leave with its EIP as source: the outside serves a page that is
    // only reachable back through the EIP, and its log names the client.
    let www = lab.dir.path().join("www-outside");
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(
        www.join("cgi-bin/who"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s' \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    common::sh("chmod", &["755", www.join("cgi-bin/who").to_str().unwrap()]).unwrap();
    common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &outside,
            "busybox",
            "httpd",
            "-p",
            "80",
            "-h",
            www.to_str().unwrap(),
        ],
    )
    .unwrap();
    let seen = vm1
        .exec(
            "curl",
            &["-sf", "-m", "3", "http://198.51.100.2/cgi-bin/who"],
        )
        .unwrap();
    // busybox httpd prints IPv4 clients as [::ffff:a.b.c.d].
    assert!(
        seen.trim()
            .trim_matches(['[', ']'])
            .ends_with(":198.51.100.50"),
        "SNAT to the EIP, saw {seen}"
    );

    // Dropping the EIP from the spec removes its NAT and address; the port forwarding stays.
    nat.eips.clear();
    drv.ensure_nat(&nat).unwrap();
    assert!(!ping("198.51.100.50"), "EIP gone");
    assert_eq!(
        curl("http://198.51.100.51:8080/").unwrap(),
        "hello from vm2\n"
    );

    drv.remove_nat("nat-l3", &public.bridge()).unwrap();
    drv.remove_nat("nat-l3", &public.bridge()).unwrap();
    assert!(
        curl("http://198.51.100.51:8080/").is_err(),
        "port forwarding gone"
    );
}
