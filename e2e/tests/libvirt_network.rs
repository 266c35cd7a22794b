//! Real VMs with a real network: `strata up --driver libvirt` builds the L2 network (a VXLAN on
//! this host's loopback VTEP, so nothing touches eth0) as a bridge, the L3's namespace with
//! dnsmasq and the metadata service, and plugs each VM's tap into the bridge. Two test guests
//! applied with kubectl boot, get from DHCP exactly the address the controllers allocated (their
//! serial consoles show the lease) and read their user data from 169.254.169.254; both answer
//! ping and HTTP from the L3's namespace, and ping each other (each guest pings the peer its
//! user data names). From a "public" namespace, vm-a answers on its Eip and vm-b on a
//! PortForwarding's VIP (port 8080 to its port 80) until the rule is deleted; both turn Ready
//! once the agent reports their NAT. A security-group rule that drops ICMP into vm-b stops its
//! ping from the namespace and from vm-a (not its HTTP, not vm-a's ping) and removing the rule
//! restores both. Deleting the VMs removes the domains and the taps.

mod libvirt_support;
mod support;

use std::time::{Duration, Instant};

use libvirt_support::{
    console, data_dir, domain_interface, inventory, link_exists, netns_exists, run, test_image,
    virsh, HostGuard, Net, TestNamespace,
};
use support::Strata;

const BOOT: Duration = Duration::from_secs(180);

#[test]
fn vms_on_a_real_l3_network_get_their_lease_and_user_data() {
    let (image, sha) = test_image();
    let dir = data_dir();
    let pid = std::process::id();
    let ns = format!("e2e-net-{pid}");
    let net = Net::unique("net", 0, "10.99.0");
    let l3 = net.l3.clone();
    // The "public" side: a Public L3 whose VIPs the agent NATs from the private L3's namespace.
    let public = Net {
        public: true,
        ..Net::unique("pub", 1, "198.51.100")
    };
    let vms = ["vm-a", "vm-b"];
    let domains: Vec<String> = vms.iter().map(|vm| format!("{ns}.{vm}")).collect();
    let mut guard = HostGuard::new(domains.clone());
    guard.network_dir = Some(dir.path().join("agent/network"));
    let host = format!("e2e-net-{pid}");
    let strata = Strata::start(dir.path(), &["--driver", "libvirt", "--host-name", &host]);

    let mut manifest = inventory(&ns, &image, &sha, &[&net, &public], 40);
    // vm-b's NIC is in a security group that lets everything in until the test adds a rule;
    // vm-a has an EIP, vm-b's port 80 is forwarded from port 8080 of a VIP.
    manifest.push_str(&format!(
        r#"---
apiVersion: strata.io/v1alpha1
kind: Eip
metadata:
  name: vm-a-eip
  namespace: {ns}
spec:
  l3Network: {public_l3}
  vmNic: {{virtualMachine: vm-a}}
---
apiVersion: strata.io/v1alpha1
kind: PortForwarding
metadata:
  name: vm-b-web
  namespace: {ns}
spec:
  l3Network: {public_l3}
  protocol: TCP
  externalPorts: {{start: 8080, end: 8080}}
  internalPorts: {{start: 80, end: 80}}
  vmNic: {{virtualMachine: vm-b}}
---
apiVersion: strata.io/v1alpha1
kind: SecurityGroup
metadata:
  name: open
  namespace: {ns}
spec:
  defaultIngressPolicy: Accept
  defaultEgressPolicy: Accept
"#,
        public_l3 = public.l3
    ));
    // Fixed addresses, so each VM's user data can name the other as a peer to ping.
    let fixed = [format!("{}.89", net.prefix), format!("{}.90", net.prefix)];
    for (i, vm) in vms.iter().enumerate() {
        let groups = if *vm == "vm-b" { "[open]" } else { "[]" };
        let (ip, peer) = (&fixed[i], &fixed[1 - i]);
        manifest.push_str(&format!(
            r#"---
apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {vm}
  namespace: {ns}
spec:
  instanceOffering: tiny
  image: strata-test-guest
  nics:
    - {{l3Network: {l3}, default: true, ip: {ip}, securityGroups: {groups}}}
  userData: |
    user-data-of-{vm}-{pid}
    strata-ping {peer}
"#
        ));
    }
    let file = dir.path().join("vms.yaml");
    std::fs::write(&file, manifest).expect("writes the manifest");
    let started = Instant::now();
    strata.ok(&["apply", "-f", file.to_str().expect("utf-8")]);

    for vm in vms {
        strata.ok(&[
            "wait",
            "-n",
            &ns,
            "--for=jsonpath={.status.phase}=Running",
            &format!("vm/{vm}"),
            "--timeout=180s",
        ]);
    }
    eprintln!("both Running {:?} after apply", started.elapsed());

    let mut ips = Vec::new();
    let mut lease_checks = Vec::new();
    let mut taps = Vec::new();
    for (vm, domain) in vms.iter().zip(&domains) {
        let ip = strata.ok(&[
            "get",
            "vm",
            "-n",
            &ns,
            vm,
            "-o",
            "jsonpath={.status.nics[0].ip}",
        ]);
        assert!(ip.starts_with("10.99.0."), "{vm} has IP {ip:?}");
        let (tap, bridge) = domain_interface(domain).expect("the domain has a bridged NIC");
        guard.taps.borrow_mut().push(tap.clone());
        assert!(tap.starts_with("st-"), "tap {tap}");
        assert!(bridge.starts_with("sb-"), "bridge {bridge}");
        taps.push((tap, bridge));

        let lease = format!("STRATA-LEASE ip={ip}/");
        let user_data = format!("user-data-of-{vm}-{pid}");
        strata.eventually(
            &format!("{vm}'s lease and user data on its serial console"),
            BOOT,
            || {
                let log = console(dir.path(), domain);
                log.contains(&format!("STRATA-BOOT-MARKER name={domain}"))
                    && (log.contains("STRATA-USERDATA-")
                        || log.contains("STRATA-LEASE ip=/")
                        || log.contains("STRATA-READY"))
            },
        );
        lease_checks.push((vm, domain.clone(), lease, user_data));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    assert_eq!(taps[0].1, taps[1].1, "both NICs on the L2's bridge");

    // The L3's namespace (dnsmasq, gateway, metadata) reaches both guests over the bridge.
    let namespaces = guard.namespaces();
    assert_eq!(namespaces.len(), 1, "one L3 namespace: {namespaces:?}");
    let l3ns = &namespaces[0];
    assert!(netns_exists(l3ns), "{l3ns} exists");
    guard.record_bridge(&taps[0].1);
    assert_eq!(
        guard.l3_veths.borrow().len(),
        1,
        "one veth into the L3 namespace"
    );
    for (vm, ip) in vms.iter().zip(&ips) {
        strata.eventually(&format!("{vm} to answer ping"), BOOT, || {
            run("ip", &["netns", "exec", l3ns, "ping", "-c1", "-W2", ip])
                .status
                .success()
        });
        let page = run(
            "ip",
            &[
                "netns",
                "exec",
                l3ns,
                "curl",
                "-sS",
                "-m",
                "5",
                &format!("http://{ip}/"),
            ],
        );
        let page = String::from_utf8_lossy(&page.stdout).into_owned();
        assert!(
            page.contains(&format!("hello from {ns}.{vm} {ip}")),
            "{vm} serves {page:?}"
        );
    }
    eprintln!("both reachable {:?} after apply", started.elapsed());

    // vm-a's EIP: a machine on the public network (a namespace this test plugs into the public
    // L2's bridge) reaches vm-a's web server at the VIP.
    let vip = strata.ok(&[
        "get",
        "eip",
        "-n",
        &ns,
        "vm-a-eip",
        "-o",
        "jsonpath={.status.vip}",
    ]);
    assert!(vip.starts_with("198.51.100."), "VIP {vip:?}");
    strata.eventually("the public L2's bridge", BOOT, || {
        link_exists(&public.bridge())
    });
    guard.record_bridge(&public.bridge());
    let outside = TestNamespace::on_bridge(
        &format!("e2e-pub-{pid}"),
        &public.bridge(),
        "198.51.100.250/24",
    );
    let via_vip = || {
        let out = outside.exec(&["curl", "-sS", "-m", "3", &format!("http://{vip}/")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let asked = Instant::now();
    strata.eventually("vm-a to answer on its EIP", BOOT, || {
        via_vip().contains(&format!("hello from {ns}.vm-a {}", ips[0]))
    });
    eprintln!("EIP reached {:?} after the bridge was up", asked.elapsed());
    let pf_vip = strata.ok(&[
        "get",
        "pf",
        "-n",
        &ns,
        "vm-b-web",
        "-o",
        "jsonpath={.status.vip}",
    ]);
    assert!(
        pf_vip.starts_with("198.51.100.") && pf_vip != vip,
        "{pf_vip:?}"
    );
    let via_pf = || {
        let url = format!("http://{pf_vip}:8080/");
        let out = outside.exec(&["curl", "-sS", "-m", "3", &url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    strata.eventually("vm-b to answer on its forwarded port", BOOT, || {
        via_pf().contains(&format!("hello from {ns}.vm-b {}", ips[1]))
    });
    for object in ["eip/vm-a-eip", "pf/vm-b-web"] {
        strata.ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            object,
            "--timeout=30s",
        ]);
    }
    strata.ok(&["delete", "-n", &ns, "pf", "vm-b-web", "--timeout=60s"]);
    let deleted = Instant::now();
    strata.eventually("the deleted forwarding to stop", BOOT, || {
        via_pf().is_empty()
    });
    eprintln!(
        "forwarding stopped {:?} after its deletion",
        deleted.elapsed()
    );
    drop(outside);
    for (vm, domain, lease, user_data) in lease_checks {
        let log = console(dir.path(), &domain);
        assert!(
            log.contains(&lease),
            "{vm}: no {lease:?} on the console:\n{log}"
        );
        assert!(
            log.contains("STRATA-USERDATA-BEGIN") && log.contains(&user_data),
            "{vm}: no user data on the console:\n{log}"
        );
        eprintln!(
            "{vm} has its lease and user data {:?} after apply",
            started.elapsed()
        );
    }

    // The VMs reach each other: each pings the other from inside (STRATA-PING lines).
    let last_ping = |domain: &str, peer: &str| {
        let prefix = format!("STRATA-PING {peer} ");
        console(dir.path(), domain)
            .lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()).map(str::to_string))
            .next_back()
    };
    for (i, domain) in domains.iter().enumerate() {
        strata.eventually(&format!("{} to ping {}", vms[i], vms[1 - i]), BOOT, || {
            last_ping(domain, &ips[1 - i]).as_deref() == Some("ok")
        });
    }

    // A rule that drops ICMP into vm-b's group stops the ping (vm-a, in no group, still
    // answers), from the namespace and from vm-a; removing the rule restores both.
    let ping = |ip: &str| {
        run("ip", &["netns", "exec", l3ns, "ping", "-c1", "-W2", ip])
            .status
            .success()
    };
    let rules = |rules: &str| {
        strata.ok(&[
            "patch",
            "-n",
            &ns,
            "securitygroup",
            "open",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"ingressRules":{rules}}}}}"#),
        ]);
    };
    rules(r#"[{"protocol":"ICMP","cidr":"0.0.0.0/0","action":"Drop","priority":1}]"#);
    let changed = Instant::now();
    strata.eventually("the ICMP drop rule to stop vm-b's ping", BOOT, || {
        !ping(&ips[1])
    });
    eprintln!("ICMP dropped {:?} after the rule", changed.elapsed());
    strata.eventually("vm-a's own ping of vm-b to fail", BOOT, || {
        last_ping(&domains[0], &ips[1]).as_deref() == Some("fail")
    });
    assert!(ping(&ips[0]), "vm-a is in no group and still answers");
    let vm_b_http = run(
        "ip",
        &[
            "netns",
            "exec",
            l3ns,
            "curl",
            "-sS",
            "-m",
            "5",
            &format!("http://{}/", ips[1]),
        ],
    );
    assert!(
        String::from_utf8_lossy(&vm_b_http.stdout).contains("hello from"),
        "only ICMP is dropped: vm-b still serves HTTP"
    );
    rules("[]");
    let changed = Instant::now();
    strata.eventually("vm-b to answer ping again", BOOT, || ping(&ips[1]));
    eprintln!("ICMP restored {:?} after the rule went", changed.elapsed());
    strata.eventually("vm-a to reach vm-b again", BOOT, || {
        last_ping(&domains[0], &ips[1]).as_deref() == Some("ok")
    });

    for vm in vms {
        strata.ok(&["delete", "-n", &ns, "vm", vm, "--timeout=120s"]);
    }
    strata.eventually("the instances to be gone", BOOT, || {
        strata
            .ok(&["get", "vmi", "-n", &ns, "-o", "name"])
            .trim()
            .is_empty()
    });
    for d in &domains {
        assert!(!virsh(&["dominfo", d]).status.success(), "{d} is undefined");
    }
    strata.eventually("the taps to be gone", Duration::from_secs(30), || {
        taps.iter().all(|(tap, _)| !link_exists(tap))
    });
    // The agent's periodic resync removes the L3 namespace and bridge no instance uses.
    strata.eventually(
        "the unused L3 namespace and both bridges to be removed",
        Duration::from_secs(30),
        || !netns_exists(l3ns) && !link_exists(&taps[0].1) && !link_exists(&public.bridge()),
    );
    eprintln!(
        "domains and taps removed {:?} after apply",
        started.elapsed()
    );
    strata.stop();
}
