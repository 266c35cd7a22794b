//! The agent killed (SIGKILL, with the whole `strata up`) in the middle of 10 VM creates, and
//! again in the middle of deleting half of them, on a real libvirt host with a real network
//! (VXLAN bridge, L3 namespace with dnsmasq, a security group's nft table per NIC). Restarted on
//! the same data dir each time, it converges: every VM ends in its desired state with exactly
//! one domain, and once every VM is deleted no domain, tap, L3 namespace, nft table, volume file
//! or record is left.

mod libvirt_support;
mod support;

use std::time::{Duration, Instant};

use libvirt_support::{
    data_dir, domain_interface, domain_state, domains_with_prefix, files, inventory, link_exists,
    netns_exists, sg_table_exists, test_image, HostGuard, Net,
};
use support::Strata;

const CONVERGE: Duration = Duration::from_secs(240);
const VMS: usize = 10;

#[test]
fn a_killed_agent_converges_without_leaks() {
    let (image, sha) = test_image();
    let dir = data_dir();
    let pid = std::process::id();
    let ns = format!("e2e-crash-{pid}");
    let net = Net::unique("crash", 0, "10.98.0");
    let mut guard = HostGuard::new(Vec::new());
    guard.domain_prefix = Some(format!("{ns}."));
    guard.network_dir = Some(dir.path().join("agent/network"));
    let host = format!("e2e-crash-{pid}");
    let args = ["--driver", "libvirt", "--host-name", host.as_str()];
    let names: Vec<String> = (0..VMS).map(|i| format!("vm-{i}")).collect();

    let mut manifest = inventory(&ns, &image, &sha, &[&net], 1);
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
    for vm in &names {
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
    - {{l3Network: {l3}, securityGroups: [open]}}
"#,
            l3 = net.l3
        ));
    }
    let file = dir.path().join("vms.yaml");
    std::fs::write(&file, manifest).expect("writes the manifest");
    let domains = || domains_with_prefix(&format!("{ns}."));

    // 1. Killed while the agent is creating the domains.
    let strata = Strata::start(dir.path(), &args);
    strata.ok(&["apply", "-f", file.to_str().expect("utf-8")]);
    strata.eventually("the first domains to be defined", CONVERGE, || {
        !domains().is_empty()
    });
    let at_kill = domains().len();
    drop(strata); // SIGKILL
    eprintln!("killed with {at_kill} of {VMS} domains defined");

    let strata = Strata::start(dir.path(), &args);
    let started = Instant::now();
    let running = |strata: &Strata| {
        strata
            .ok(&[
                "get",
                "vm",
                "-n",
                &ns,
                "-o",
                "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
            ])
            .lines()
            .filter(|p| *p == "Running")
            .count()
    };
    strata.eventually("every VM to be Running", CONVERGE, || {
        running(&strata) == VMS
    });
    eprintln!(
        "all {VMS} Running {:?} after the restart",
        started.elapsed()
    );
    let mut live = domains();
    live.sort();
    let mut want: Vec<String> = names.iter().map(|vm| format!("{ns}.{vm}")).collect();
    want.sort();
    assert_eq!(live, want, "one domain per VM, none twice");
    for d in &live {
        assert_eq!(domain_state(d), "running", "{d}");
    }
    let taps: Vec<(String, String)> = live
        .iter()
        .map(|d| domain_interface(d).unwrap_or_else(|| panic!("{d} has a bridged NIC")))
        .collect();
    guard
        .taps
        .borrow_mut()
        .extend(taps.iter().map(|(t, _)| t.clone()));
    guard.record_bridge(&taps[0].1);
    let l3ns = guard.namespaces();
    assert_eq!(l3ns.len(), 1, "one L3 namespace: {l3ns:?}");
    // Domains that were already running when the agent died get their tables from its
    // periodic network resync, not from a new plug.
    strata.eventually("every NIC's security-group table", CONVERGE, || {
        taps.iter().all(|(tap, _)| sg_table_exists(tap))
    });

    // 2. Killed while the agent is removing half of them.
    let (gone, kept) = names.split_at(VMS / 2);
    for vm in gone {
        strata.ok(&["delete", "-n", &ns, "vm", vm, "--wait=false"]);
    }
    strata.eventually("the first domain to be removed", CONVERGE, || {
        domains().len() < VMS
    });
    let at_kill = domains().len();
    drop(strata); // SIGKILL
    eprintln!("killed with {at_kill} of {VMS} domains left");

    let strata = Strata::start(dir.path(), &args);
    let started = Instant::now();
    strata.eventually("the deleted VMs to be gone", CONVERGE, || {
        let left = strata.ok(&["get", "vm", "-n", &ns, "-o", "name"]);
        left.lines().count() == kept.len() && domains().len() == kept.len()
    });
    strata.eventually("the kept VMs to be Running", CONVERGE, || {
        running(&strata) == kept.len()
    });
    eprintln!("converged {:?} after the second restart", started.elapsed());
    let mut live = domains();
    live.sort();
    let want: Vec<String> = kept.iter().map(|vm| format!("{ns}.{vm}")).collect();
    assert_eq!(live, want, "exactly the kept VMs' domains");
    for (domain, (tap, _)) in want.iter().zip(&taps[VMS / 2..]) {
        assert_eq!(domain_state(domain), "running", "{domain}");
        assert!(link_exists(tap), "{domain}'s tap {tap}");
    }
    strata.eventually("the deleted VMs' taps and tables to go", CONVERGE, || {
        taps[..VMS / 2]
            .iter()
            .all(|(tap, _)| !link_exists(tap) && !sg_table_exists(tap))
    });

    // 3. Everything deleted: nothing of it is left on the host.
    strata.ok(&["delete", "-n", &ns, "vm", "--all", "--timeout=180s"]);
    strata.eventually("every domain to be removed", CONVERGE, || {
        domains().is_empty()
    });
    strata.eventually("the network to be removed", CONVERGE, || {
        taps.iter()
            .all(|(tap, _)| !link_exists(tap) && !sg_table_exists(tap))
            && !link_exists(&taps[0].1)
            && l3ns.iter().all(|n| !netns_exists(n))
    });
    let agent = dir.path().join("agent");
    assert_eq!(files(&agent.join("domains")), Vec::<String>::new());
    assert_eq!(files(&agent.join("storage/volumes")), Vec::<String>::new());
    strata.stop();
}
