//! Real VMs with a real network: `strata up --driver libvirt` builds the L2 network (a VXLAN on
//! this host's loopback VTEP, so nothing touches eth0) as a bridge, the L3's namespace with
//! dnsmasq and the metadata service, and plugs each VM's tap into the bridge. Two test guests
//! applied with kubectl boot, get from DHCP exactly the address the controllers allocated (their
//! serial consoles show the lease) and read their user data from 169.254.169.254; both answer
//! ping and HTTP from the L3's namespace. A security-group rule that drops ICMP into vm-b stops
//! its ping (not its HTTP, not vm-a's ping) and removing the rule restores it. Deleting the VMs
//! removes the domains and the taps.

mod support;

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{repo_file, Strata};

const BOOT: Duration = Duration::from_secs(180);

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().expect("command runs")
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh runs")
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

fn netns_exists(name: &str) -> bool {
    String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Removes what the test's `strata up` created on the host even when the test fails before
/// Strata could: the domains, then the L3 namespaces (with the dnsmasq in them), the bridges and
/// whatever was enslaved to them (the VXLAN device). Declared before `Strata`, so it runs after
/// `strata up` is killed and cannot rebuild anything.
#[derive(Default)]
struct HostGuard {
    domains: Vec<String>,
    /// The agent's network state dir: one directory per L3 namespace.
    network_dir: Option<PathBuf>,
    bridges: RefCell<Vec<String>>,
    /// Host ends of the veths into the L3 namespaces: each has a bridge-family nft table.
    l3_veths: RefCell<Vec<String>>,
    /// The VMs' taps: a NIC in a security group has a bridge-family nft table.
    taps: RefCell<Vec<String>>,
}

impl HostGuard {
    fn namespaces(&self) -> Vec<String> {
        self.network_dir
            .as_deref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("sn"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d]);
        }
        for ns in self.namespaces() {
            if !netns_exists(&ns) {
                continue;
            }
            let pids = run("ip", &["netns", "pids", &ns]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
            let _ = run("ip", &["netns", "del", &ns]);
        }
        for br in self.bridges.borrow().iter() {
            let ports = run("ip", &["-o", "link", "show", "master", br]);
            for line in String::from_utf8_lossy(&ports.stdout).lines() {
                // "7: sx-abc@NONE: <...>" / "8: st-abc: <...>"
                if let Some(name) = line.split(':').nth(1) {
                    let name = name.trim().split('@').next().unwrap_or_default();
                    if name.starts_with("sx-") || name.starts_with("st-") {
                        let _ = run("ip", &["link", "del", name]);
                    }
                }
            }
            if link_exists(br) {
                let _ = run("ip", &["link", "del", br]);
            }
        }
        for tap in self.taps.borrow().iter() {
            let table = format!("strata_sg_{}", tap.replace('-', "_"));
            let _ = run("nft", &["delete", "table", "bridge", &table]);
        }
        for veth in self.l3_veths.borrow().iter() {
            let table = format!("strata_l3_{}", veth.replace('-', "_"));
            let _ = run("nft", &["delete", "table", "bridge", &table]);
        }
    }
}

/// `(tap, bridge)` of a domain's first interface, from libvirt.
fn domain_interface(domain: &str) -> Option<(String, String)> {
    let out = virsh(&["domiflist", domain]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("bridge"))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    // Interface Type Source Model MAC
    Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
}

fn console(dir: &Path, domain: &str) -> String {
    std::fs::read_to_string(dir.join("agent/console").join(format!("{domain}.log")))
        .unwrap_or_default()
}

#[test]
fn vms_on_a_real_l3_network_get_their_lease_and_user_data() {
    let built = Command::new(repo_file("hack/build-test-image.sh"))
        .output()
        .expect("the image script runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image = repo_file("target/test-image")
        .canonicalize()
        .expect("test image dir");
    let sha = std::fs::read_to_string(image.join("disk.qcow2.sha256")).expect("checksum");
    let sha = sha.split_whitespace().next().expect("a checksum");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pid = std::process::id();
    let ns = format!("e2e-net-{pid}");
    // Bridges and VXLAN devices are named after the L2 and live in the host's namespace: unique
    // names keep concurrent runs apart.
    let l2 = format!("e2e-l2-{pid}");
    let l3 = format!("e2e-l3-{pid}");
    let vni = 10_000 + pid % 9_000;
    let vms = ["vm-a", "vm-b"];
    let domains: Vec<String> = vms.iter().map(|vm| format!("{ns}.{vm}")).collect();
    let guard = HostGuard {
        domains: domains.clone(),
        network_dir: Some(dir.path().join("agent/network")),
        bridges: RefCell::default(),
        l3_veths: RefCell::default(),
        taps: RefCell::default(),
    };
    let host = format!("e2e-net-{pid}");
    let strata = Strata::start(dir.path(), &["--driver", "libvirt", "--host-name", &host]);

    let mut manifest = format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: strata.io/v1alpha1
kind: Zone
metadata:
  name: zone-1
spec: {{}}
---
apiVersion: strata.io/v1alpha1
kind: VxlanPool
metadata:
  name: pool-1
spec:
  zone: zone-1
  vniRange: {{start: 10000, end: 19999}}
  vtepCidr: 127.0.0.0/8
---
apiVersion: strata.io/v1alpha1
kind: L2Network
metadata:
  name: {l2}
spec:
  zone: zone-1
  type: Vxlan
  vxlanPool: pool-1
  vni: {vni}
---
apiVersion: strata.io/v1alpha1
kind: Cluster
metadata:
  name: cluster-1
spec:
  zone: zone-1
  hypervisorType: KVM
  l2Networks: [{l2}]
---
apiVersion: strata.io/v1alpha1
kind: L3Network
metadata:
  name: {l3}
spec:
  l2Network: {l2}
  category: Private
  cidr: 10.99.0.0/24
  gateway: 10.99.0.1
  ipRanges:
    - {{start: 10.99.0.10, end: 10.99.0.100}}
---
apiVersion: strata.io/v1alpha1
kind: Image
metadata:
  name: strata-test-guest
spec:
  url: file://{img}/disk.qcow2
  format: qcow2
  checksum: sha256:{sha}
  directBoot:
    kernelUrl: file://{img}/vmlinuz
    initrdUrl: file://{img}/initrd.img
    cmdline: console=ttyS0 quiet strata.dhcp_tries=40
---
apiVersion: strata.io/v1alpha1
kind: InstanceOffering
metadata:
  name: tiny
spec:
  cpu: 1
  memory: 128Mi
"#,
        img = image.display()
    );
    // vm-b's NIC is in a security group that lets everything in until the test adds a rule.
    manifest.push_str(&format!(
        r#"---
apiVersion: strata.io/v1alpha1
kind: SecurityGroup
metadata:
  name: open
  namespace: {ns}
spec:
  defaultIngressPolicy: Accept
  defaultEgressPolicy: Accept
"#
    ));
    for vm in vms {
        let groups = if vm == "vm-b" { "[open]" } else { "[]" };
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
    - {{l3Network: {l3}, default: true, securityGroups: {groups}}}
  userData: |
    user-data-of-{vm}-{pid}
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
        guard.bridges.borrow_mut().push(bridge.clone());
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
    let ports = run("ip", &["-o", "link", "show", "master", &taps[0].1]);
    for line in String::from_utf8_lossy(&ports.stdout).lines() {
        if let Some(name) = line.split(':').nth(1) {
            let name = name.trim().split('@').next().unwrap_or_default();
            if name.starts_with("sd-") {
                guard.l3_veths.borrow_mut().push(name.to_string());
            }
        }
    }
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

    // A rule that drops ICMP into vm-b's group stops the ping (vm-a, in no group, still
    // answers); removing the rule restores it.
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
        "the unused L3 namespace and bridge to be removed",
        Duration::from_secs(30),
        || !netns_exists(l3ns) && !link_exists(&taps[0].1),
    );
    eprintln!(
        "domains and taps removed {:?} after apply",
        started.elapsed()
    );
    strata.stop();
}
