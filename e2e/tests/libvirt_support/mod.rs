//! What the tests on a real libvirt host share: the test guest, the inventory manifest, `virsh`
//! and `ip`, and a guard that removes what a test's `strata up` built on the host even when the
//! test fails before Strata could.

// Each libvirt test binary uses a different part of this module.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::repo_file;

/// Builds the test guest (`hack/build-test-image.sh`, cached in target/test-image) and returns
/// its directory and the disk's sha256.
pub fn test_image() -> (PathBuf, String) {
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
    let sha = sha
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_string();
    (image, sha)
}

/// A temporary data dir that qemu (running as libvirt-qemu) can traverse to the volumes.
pub fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A VXLAN L2 (on the loopback VTEP, so nothing touches eth0) with one L3.
pub struct Net {
    pub l2: String,
    pub l3: String,
    pub vni: u32,
    /// The L3's /24, as `10.99.0`.
    pub prefix: &'static str,
    /// A Public L3 (EIPs, port forwarding) rather than a Private one.
    pub public: bool,
}

impl Net {
    /// A private network with names and a VNI unique to this process (bridges and VXLAN
    /// devices live in the host's namespace); a test's networks have tags and indexes 0 and 1.
    pub fn unique(tag: &str, index: u32, prefix: &'static str) -> Net {
        let pid = std::process::id();
        Net {
            l2: format!("e2e-{tag}-l2-{pid}"),
            l3: format!("e2e-{tag}-l3-{pid}"),
            vni: 10_000 + (pid % 4_000) * 2 + index % 2,
            prefix,
            public: false,
        }
    }

    /// The bridge the agent builds for the L2 on this host.
    pub fn bridge(&self) -> String {
        strata_network::names::bridge(&self.l2)
    }
}

/// The namespace, zone, cluster (attached to the L2 of every net), image, offering `tiny`
/// (1 CPU, 128Mi) and, with nets, a VXLAN pool and each net's L2 and L3: what VMs on this host
/// need.
pub fn inventory(ns: &str, image: &Path, sha: &str, nets: &[&Net], dhcp_tries: u32) -> String {
    let l2s = nets
        .iter()
        .map(|n| n.l2.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut yaml = format!(
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
kind: Cluster
metadata:
  name: cluster-1
spec:
  zone: zone-1
  hypervisorType: KVM
  l2Networks: [{l2s}]
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
    cmdline: console=ttyS0 quiet strata.dhcp_tries={dhcp_tries}
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
    if !nets.is_empty() {
        yaml.push_str(
            r#"---
apiVersion: strata.io/v1alpha1
kind: VxlanPool
metadata:
  name: pool-1
spec:
  zone: zone-1
  vniRange: {start: 10000, end: 19999}
  vtepCidr: 127.0.0.0/8
"#,
        );
    }
    for Net {
        l2,
        l3,
        vni,
        prefix,
        public,
    } in nets
    {
        let category = if *public { "Public" } else { "Private" };
        yaml.push_str(&format!(
            r#"---
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
kind: L3Network
metadata:
  name: {l3}
spec:
  l2Network: {l2}
  category: {category}
  cidr: {prefix}.0/24
  gateway: {prefix}.1
  ipRanges:
    - {{start: {prefix}.10, end: {prefix}.100}}
"#
        ));
    }
    yaml
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect("command runs")
}

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh runs")
}

/// Whether libvirt knows the domain (defined, running or not).
pub fn domain_exists(domain: &str) -> bool {
    virsh(&["dominfo", domain]).status.success()
}

/// `virsh domstate`, trimmed (`running`, `shut off`…), empty for an unknown domain.
pub fn domain_state(domain: &str) -> String {
    String::from_utf8_lossy(&virsh(&["domstate", domain]).stdout)
        .trim()
        .to_string()
}

/// The names of every domain libvirt knows whose name starts with `prefix`.
pub fn domains_with_prefix(prefix: &str) -> Vec<String> {
    String::from_utf8_lossy(&virsh(&["list", "--all", "--name"]).stdout)
        .lines()
        .map(str::trim)
        .filter(|d| d.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

pub fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

pub fn netns_exists(name: &str) -> bool {
    String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Whether the bridge-family nft table of a NIC's security group exists.
pub fn sg_table_exists(tap: &str) -> bool {
    run("nft", &["list", "table", "bridge", &sg_table(tap)])
        .status
        .success()
}

fn sg_table(tap: &str) -> String {
    format!("strata_sg_{}", tap.replace('-', "_"))
}

/// `(tap, bridge)` of a domain's first interface, from libvirt.
pub fn domain_interface(domain: &str) -> Option<(String, String)> {
    let out = virsh(&["domiflist", domain]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("bridge"))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    // Interface Type Source Model MAC
    Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
}

/// The serial console log of `domain` under the data dir.
pub fn console(dir: &Path, domain: &str) -> String {
    std::fs::read_to_string(dir.join("agent/console").join(format!("{domain}.log")))
        .unwrap_or_default()
}

/// A network namespace the test creates, with a veth whose host end is plugged into `bridge`
/// and whose inside end (`eth0`) has `address` (CIDR): a machine on that network. Deleted (with
/// the veth) on drop.
pub struct TestNamespace(pub String);

impl TestNamespace {
    pub fn on_bridge(name: &str, bridge: &str, address: &str) -> TestNamespace {
        let ns = TestNamespace(name.to_string());
        let host_end = format!("ve{}", std::process::id());
        let netns = ns.0.as_str();
        for args in [
            &["netns", "add", netns][..],
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
            &["link", "set", &host_end, "master", bridge, "up"],
            &["-n", netns, "addr", "add", address, "dev", "eth0"],
            &["-n", netns, "link", "set", "eth0", "up"],
            &["-n", netns, "link", "set", "lo", "up"],
        ] {
            let out = run("ip", args);
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ns
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", self.0.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// Removes what the test's `strata up` created on the host: the domains (listed, or any with
/// `domain_prefix`), then the L3 namespaces (with the dnsmasq in them), the bridges and what
/// was enslaved to them (the VXLAN device), and the nft tables of taps and L3 veths. Declared
/// before `Strata`, so it runs after `strata up` is killed and cannot rebuild anything.
pub struct HostGuard {
    pub domains: Vec<String>,
    pub domain_prefix: Option<String>,
    /// The agent's network state dir: one directory per L3 namespace.
    pub network_dir: Option<PathBuf>,
    pub bridges: RefCell<Vec<String>>,
    /// Host ends of the veths into the L3 namespaces: each has a bridge-family nft table.
    pub l3_veths: RefCell<Vec<String>>,
    /// The VMs' taps: a NIC in a security group has a bridge-family nft table.
    pub taps: RefCell<Vec<String>>,
}

impl HostGuard {
    /// Guards `domains`; the network parts are recorded as the test learns them.
    pub fn new(domains: Vec<String>) -> HostGuard {
        HostGuard {
            domains,
            domain_prefix: None,
            network_dir: None,
            bridges: RefCell::default(),
            l3_veths: RefCell::default(),
            taps: RefCell::default(),
        }
    }

    /// The L3 namespaces the agent recorded state for.
    pub fn namespaces(&self) -> Vec<String> {
        self.network_dir
            .as_deref()
            .map(files)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("sn"))
            .collect()
    }

    /// Records the bridge and the host end of the veth into the L3 namespace plugged into it.
    pub fn record_bridge(&self, bridge: &str) {
        self.bridges.borrow_mut().push(bridge.to_string());
        for name in bridge_ports(bridge) {
            if name.starts_with("sd-") {
                self.l3_veths.borrow_mut().push(name);
            }
        }
    }
}

/// The names of the interfaces enslaved to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let ports = run("ip", &["-o", "link", "show", "master", bridge]);
    String::from_utf8_lossy(&ports.stdout)
        .lines()
        // "7: sx-abc@NONE: <...>" / "8: st-abc: <...>"
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| {
            name.trim()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        let mut domains = self.domains.clone();
        if let Some(prefix) = &self.domain_prefix {
            domains.extend(domains_with_prefix(prefix));
        }
        for d in &domains {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", "--snapshots-metadata", d]);
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
            for name in bridge_ports(br) {
                if name.starts_with("sx-") || name.starts_with("st-") {
                    let _ = run("ip", &["link", "del", &name]);
                }
            }
            if link_exists(br) {
                let _ = run("ip", &["link", "del", br]);
            }
        }
        for tap in self.taps.borrow().iter() {
            let _ = run("nft", &["delete", "table", "bridge", &sg_table(tap)]);
        }
        for veth in self.l3_veths.borrow().iter() {
            let table = format!("strata_l3_{}", veth.replace('-', "_"));
            let _ = run("nft", &["delete", "table", "bridge", &table]);
        }
    }
}
