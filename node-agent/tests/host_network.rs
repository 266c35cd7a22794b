//! The agent's network side on a real kernel: from VirtualMachineInstance specs to an L3 namespace
//! whose dnsmasq hands each "VM" its address and whose metadata service returns its user data, and
//! back to nothing when the instances go. The host is a namespace the test creates (the driver's
//! `host_netns`); guests are namespaces whose veth plays the tap the agent named.

use std::sync::Arc;

use strata_apis::{
    L2NetworkType, VirtualMachineInstance, VirtualMachineInstanceSpec, VmiL2Network, VmiNic,
};
use strata_network::DriverConfig;
use strata_node_agent::network::{self, HostNetwork, NetworkConfig};
use strata_node_agent::DomainNic;

mod common;

use common::{sh, Cleanup};

fn vmi(name: &str, ip: &str, mac: &str, user_data: &str) -> Arc<VirtualMachineInstance> {
    let mut v = VirtualMachineInstance::new(
        name,
        VirtualMachineInstanceSpec {
            host: "h1".into(),
            user_data: Some(user_data.into()),
            nics: vec![VmiNic {
                l3_network: "agent-l3".into(),
                ip: ip.into(),
                prefix_length: 24,
                gateway: "10.60.0.1".into(),
                mac: mac.into(),
                l2: VmiL2Network {
                    name: "agent-l2".into(),
                    network_type: L2NetworkType::NoVlan,
                    physical_interface: Some("phys0".into()),
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    v.metadata.namespace = Some("default".into());
    v.metadata.uid = Some(format!("uid-{name}"));
    Arc::new(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_their_leases_and_user_data_and_networks_go_with_them() {
    let tag = format!("tna{}", std::process::id());
    let host = format!("{tag}-h");
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cleanup = Cleanup(vec![host.clone()], dir);
    sh(&["ip", "netns", "add", &host]).unwrap();
    sh(&[
        "ip", "-n", &host, "link", "add", "phys0", "type", "veth", "peer", "name", "phys1",
    ])
    .unwrap();

    let net = Arc::new(HostNetwork::new(NetworkConfig {
        driver: DriverConfig {
            host_netns: Some(host.clone()),
            scope: host.clone(),
            state_dir: cleanup.1.clone(),
        },
        metadata: true,
        ..Default::default()
    }));
    let a = vmi("a", "10.60.0.11", "52:54:00:60:00:11", "user data of a");
    let b = vmi("b", "10.60.0.12", "52:54:00:60:00:12", "user data of b");

    // The reconciler's view: plugging a's NIC builds the networks and names bridge and tap.
    let mut nics = vec![DomainNic {
        spec: a.spec.nics[0].clone(),
        ..Default::default()
    }];
    net.plug(&a, &mut nics).await;
    assert_eq!(
        nics[0].bridge.as_deref(),
        Some(network::bridge(&a.spec.nics[0]).as_str())
    );
    assert_eq!(nics[0].tap.as_deref(), Some(network::tap(&a, 0).as_str()));
    let synced = net.sync(&[a.clone(), b.clone()]).await;
    assert_eq!(
        synced.ready_l3,
        vec!["agent-l3".to_string()],
        "{:?}",
        synced.want.problems
    );

    // Guests on the taps the agent named.
    let mut guests = vec![];
    for v in [&a, &b] {
        let ns = format!("{tag}-{}", v.metadata.name.as_deref().unwrap());
        sh(&["ip", "netns", "add", &ns]).unwrap();
        cleanup.0.push(ns.clone());
        let tap = network::tap(v, 0);
        sh(&[
            "ip", "-n", &host, "link", "add", &tap, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])
        .unwrap();
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            &v.spec.nics[0].mac,
            "up",
        ])
        .unwrap();
        sh(&[
            "ip",
            "-n",
            &host,
            "link",
            "set",
            &tap,
            "master",
            &network::bridge(&v.spec.nics[0]),
            "up",
        ])
        .unwrap();
        guests.push(ns);
    }
    let script = cleanup.1.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\" && ip route replace default via \"$router\"\nexit 0\n",
    )
    .unwrap();
    sh(&["chmod", "755", script.to_str().unwrap()]).unwrap();
    for (ns, v) in guests.iter().zip([&a, &b]) {
        let (ns, script) = (ns.clone(), script.clone());
        let out = tokio::task::spawn_blocking(move || {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "4",
                "-T",
                "1",
                "-s",
                script.to_str().unwrap(),
            ])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "curl",
                "-sf",
                "-m",
                "5",
                "http://169.254.169.254/latest/user-data",
            ])
            .map(|ud| {
                (
                    ud,
                    sh(&["ip", "-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                        .unwrap_or_default(),
                )
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            out.1.contains(&format!("{}/24", v.spec.nics[0].ip)),
            "{}",
            out.1
        );
        assert_eq!(out.0, v.spec.user_data.clone().unwrap());
    }

    // b goes: its lease leaves the hosts file; a's stays.
    net.sync(std::slice::from_ref(&a)).await;
    let netns = net.driver().l3_netns("agent-l3");
    let hosts = std::fs::read_to_string(cleanup.1.join(&netns).join("hosts")).unwrap();
    assert!(
        hosts.contains("52:54:00:60:00:11") && !hosts.contains("52:54:00:60:00:12"),
        "{hosts}"
    );

    // No instances: the L3 namespace goes; the bridge stays while taps are on it, then goes.
    net.sync(&[]).await;
    let inv = net.driver().inventory().unwrap();
    assert!(inv.l3_namespaces.is_empty(), "{inv:?}");
    for v in [&a, &b] {
        net.driver().remove_tap(&network::tap(v, 0)).unwrap();
    }
    net.sync(&[]).await;
    let inv = net.driver().inventory().unwrap();
    assert!(inv.bridges.is_empty(), "{inv:?}");
}
