//! The walking skeleton as a user sees it: `strata up`, `kubectl apply` of the quickstart, a VM
//! that reaches Running with an address from its network, deletion, and a restart that keeps
//! every object.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::{repo_file, Strata};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn quickstart_vm_runs_is_deleted_and_objects_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quickstart = repo_file("manifests/examples/quickstart.yaml");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "2"]);

    strata.ok(&["apply", "-f", quickstart.to_str().unwrap()]);
    strata.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "vm/demo",
        "--timeout=60s",
    ]);

    let ip: Ipv4Addr = strata
        .ok(&["get", "vm", "demo", "-o", "jsonpath={.status.nics[0].ip}"])
        .parse()
        .expect("status.nics[0].ip is an IPv4 address");
    let range = Ipv4Addr::new(10, 10, 0, 10)..=Ipv4Addr::new(10, 10, 15, 250);
    assert!(
        range.contains(&ip),
        "{ip} is outside the L3 network's range"
    );

    let table = strata.ok(&["get", "vm"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "HOST", "IP", "CPU", "MEMORY", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["demo", "Running"], "{table}");
    assert!(row[2].starts_with("sim-host-"), "{table}");
    assert_eq!(row[3], ip.to_string(), "{table}");
    assert_eq!(row[4..6], ["1", "512Mi"], "sized by the offering: {table}");
    let host = row[2].to_owned();
    let vmi_host = strata.ok(&["get", "vmi", "demo", "-o", "jsonpath={.spec.host}"]);
    assert_eq!(vmi_host, host, "the instance runs where the VM was placed");
    let ips = strata.ok(&[
        "get",
        "ipaddresses",
        "-o",
        "jsonpath={.items[*].spec.address}",
    ]);
    assert_eq!(ips, ip.to_string(), "exactly one address is allocated");

    strata.ok(&["delete", "vm", "demo", "--timeout=60s"]);
    let gone = strata.kubectl(&["get", "vm", "demo"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    strata.eventually("the address and instance to be released", WAIT, || {
        strata
            .ok(&["get", "ipaddresses,vmi", "-A", "-o", "name"])
            .trim()
            .is_empty()
    });

    strata.stop();
    let strata = Strata::start(dir.path(), &["--sim-hosts", "2"]);
    for object in [
        "zone/zone-1",
        "cluster/cluster-1",
        "image/tiny",
        "instanceoffering/small",
    ] {
        strata.ok(&["get", object]);
    }
    let l3 = strata.ok(&["get", "l3network", "flat-1", "-o", "jsonpath={.spec.cidr}"]);
    assert_eq!(l3, "10.10.0.0/20");
    assert!(strata
        .kubectl(&["get", "vm", "demo"])
        .stderr
        .windows(8)
        .any(|w| w == b"NotFound"));
    strata.stop();
}

#[test]
fn vms_that_cannot_be_placed_stay_created_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(
        dir.path(),
        &["--sim-hosts", "1", "--sim-host-memory", "64Gi"],
    );
    let manifest = dir.path().join("pending.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: strata.io/v1alpha1\nkind: Zone\nmetadata: {name: zone-1}\nspec: {}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: L2Network\nmetadata: {name: l2}\n\
         spec: {zone: zone-1, type: NoVlan, physicalInterface: eth1}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: Cluster\nmetadata: {name: cluster-1}\n\
         spec: {zone: zone-1, l2Networks: [l2]}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: InstanceOffering\nmetadata: {name: huge}\n\
         spec: {cpu: 2, memory: 1Ti}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: Image\nmetadata: {name: tiny}\n\
         spec: {url: 'file:///tiny.qcow2'}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: L3Network\nmetadata: {name: net}\n\
         spec: {l2Network: l2, cidr: 10.20.0.0/24, gateway: 10.20.0.1, ipRanges: [{start: 10.20.0.10, end: 10.20.0.200}]}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: too-big}\n\
         spec: {instanceOffering: huge, image: tiny, nics: [{l3Network: net}]}\n---\n\
         apiVersion: strata.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: lost}\n\
         spec: {instanceOffering: huge, image: tiny, nics: [{l3Network: nowhere}]}\n",
    )
    .expect("manifest written");
    // The oldest kubectl we support needs /openapi/v2 for apply; use it when it is installed.
    let old = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27";
    let kubectl = if std::path::Path::new(old).exists() {
        old
    } else {
        "kubectl"
    };
    let applied = strata.kubectl_with(kubectl, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let reason = |vm: &str| {
        strata.ok(&[
            "get",
            "vm",
            vm,
            "-o",
            r#"jsonpath={.status.phase}/{.status.conditions[?(@.type=="Ready")].reason}"#,
        ])
    };
    strata.eventually("too-big to be Unschedulable", WAIT, || {
        reason("too-big") == "Created/Unschedulable"
    });
    // Once the host has connected, memory is what keeps it out, and the message says so.
    strata.eventually("too-big to be refused for memory", WAIT, || {
        strata.ok(&[
            "get",
            "vm",
            "too-big",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Scheduled")].message}"#,
        ]) == "0/1 hosts are available: 1 insufficient memory"
    });
    strata.eventually("lost to miss its network", WAIT, || {
        reason("lost") == "Created/L3NetworkNotFound"
    });
    let message = strata.ok(&[
        "get",
        "vm",
        "lost",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#,
    ]);
    assert!(
        message.contains("nowhere"),
        "the condition names the missing network: {message}"
    );
    strata.stop();
}
