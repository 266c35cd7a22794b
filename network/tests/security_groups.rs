//! Security groups on one bridge: default ingress drop with stateful replies, a rule that drops
//! ICMP and its removal, port rules, anti-spoofing, and atomic replacement/removal of a NIC's table.

mod common;

use common::{veth, Lab};
use strata_network::{names, Action, L2Spec, L2Type, NicSecurity, Protocol, SgRule};

fn rule(priority: i32, protocol: Protocol, ports: Option<(u16, u16)>, action: Action) -> SgRule {
    SgRule {
        priority,
        protocol,
        ports,
        cidr: None,
        action,
    }
}

#[test]
fn security_group_blocks_and_restores_icmp_statefully() {
    let lab = Lab::new("sg");
    let (host, drv) = lab.host("h");
    veth(&host, "phys0", "phys1", None);
    let l2 = L2Spec {
        name: "sg-l2".into(),
        kind: L2Type::NoVlan {
            interface: "phys0".into(),
        },
        mtu: None,
    };
    drv.ensure_l2(&l2).unwrap();
    let br = l2.bridge();
    let vm1 = lab.vm(&host, &br, "vm1", "52:54:00:20:00:01");
    let vm2 = lab.vm(&host, &br, "vm2", "52:54:00:20:00:02");
    vm1.set_ip("10.20.0.1/24", None);
    vm2.set_ip("10.20.0.2/24", None);
    assert!(vm1.reaches("10.20.0.2", 3), "no security group: open");

    // Ingress accept by default, but a rule drops ICMP: ping to vm2 stops.
    let mut sec = NicSecurity::new(&vm2.tap);
    sec.default_ingress = Action::Accept;
    sec.ingress = vec![rule(10, Protocol::Icmp, None, Action::Drop)];
    drv.ensure_nic_security(&sec).unwrap();
    assert!(!vm1.ping_once("10.20.0.2"), "ICMP to vm2 is dropped");
    // Removing the rule restores it.
    sec.ingress.clear();
    drv.ensure_nic_security(&sec).unwrap();
    assert!(vm1.ping_once("10.20.0.2"), "rule removed: ping works again");

    // Default ingress drop: nothing gets in, but vm2's own connections get their replies back.
    let mut sec = NicSecurity::new(&vm2.tap);
    sec.mac = Some(vm2.mac.clone());
    sec.ip = Some("10.20.0.2".parse().unwrap());
    drv.ensure_nic_security(&sec).unwrap();
    assert!(!vm1.ping_once("10.20.0.2"), "default ingress drop");
    assert!(
        vm2.ping_once("10.20.0.1"),
        "stateful: vm2's echo replies come back"
    );

    // A TCP port rule lets exactly that port in (busybox nc as a one-shot server in vm2).
    sec.ingress = vec![rule(1, Protocol::Tcp, Some((8000, 8010)), Action::Accept)];
    drv.ensure_nic_security(&sec).unwrap();
    let serve = |port: &str| {
        let ns = vm2.ns.clone();
        let port = port.to_string();
        std::thread::spawn(move || {
            let _ = common::sh(
                "timeout",
                &[
                    "5", "ip", "netns", "exec", &ns, "busybox", "nc", "-l", "-p", &port, "-e",
                    "echo", "hello",
                ],
            );
        })
    };
    let connect = |port: &str| {
        let mut last = Err(String::new());
        for _ in 0..20 {
            last = vm1.exec("busybox", &["nc", "-w", "1", "10.20.0.2", port]);
            if last.as_ref().is_ok_and(|o| o.contains("hello")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        last
    };
    let server = serve("8005");
    assert!(
        connect("8005").unwrap_or_default().contains("hello"),
        "port 8005 is allowed"
    );
    server.join().unwrap();
    assert!(!vm1.ping_once("10.20.0.2"), "ICMP still dropped");
    let server = serve("9000");
    let blocked = vm1.exec("busybox", &["nc", "-w", "1", "10.20.0.2", "9000"]);
    assert!(
        !blocked.unwrap_or_default().contains("hello"),
        "port 9000 is not allowed"
    );
    server.join().unwrap();

    // Anti-spoofing: vm2 cannot send from another address.
    vm2.set_ip("10.20.0.99/24", None);
    assert!(
        vm2.exec(
            "ping",
            &["-c", "1", "-W", "1", "-I", "10.20.0.99", "10.20.0.1"]
        )
        .is_err(),
        "spoofed source dropped"
    );

    // Removal deletes the NIC's table; the inventory no longer lists it.
    assert_eq!(drv.inventory().unwrap().secured_taps, vec![vm2.tap.clone()]);
    drv.remove_nic_security(&vm2.tap).unwrap();
    drv.remove_nic_security(&vm2.tap).unwrap();
    assert!(drv.inventory().unwrap().secured_taps.is_empty());
    assert!(!drv
        .host()
        .nft_tables("bridge")
        .unwrap()
        .contains(&names::sg_table(&vm2.tap)));
    assert!(vm1.ping_once("10.20.0.2"), "no security group: open again");
    assert!(
        vm2.exec(
            "ping",
            &["-c", "1", "-W", "1", "-I", "10.20.0.99", "10.20.0.1"]
        )
        .is_ok(),
        "the same spoofed ping passes without the security group"
    );
}
