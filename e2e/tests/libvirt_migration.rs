//! Live migration between two real libvirt hosts on one machine. Host A is `strata up --driver
//! libvirt` on the machine's libvirtd; host B is `strata agent` on a second libvirtd that the
//! test starts in its own network namespace (bridges, taps, VXLAN end, security groups) and its
//! own mount namespace (its /etc, /run, /var/lib, /var/cache and /var/log/libvirt, and a host
//! UUID of its own: libvirt refuses to migrate to the host it runs on). A veth joins the two
//! namespaces: each host's VTEP and management address, and the path of the migration (B's
//! libvirtd listens on TCP there). Both hosts use one primary storage directory, a
//! SharedMountPoint as far as Strata knows.
//!
//! The story: two VMs boot on host A on a VXLAN L3 network; a namespace on that network (on A's
//! bridge, kept by the VM that stays) pings one of them ten times a second; `kubectl apply` of a VirtualMachineMigration moves it to host B; it ends
//! Running there with the same IP and MAC, the migration Succeeded with full progress, the
//! domain is gone from A's libvirtd and runs in B's, B's own L3 namespace reaches it, and the
//! ping kept answering across the move.

mod libvirt_support;
mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libvirt_support::{
    data_dir, domain_exists, inventory, netns_exists, run, test_image, HostGuard, Net,
    TestNamespace,
};
use support::{repo_file, strata_bin, Strata};

const BOOT: Duration = Duration::from_secs(120);

/// A second libvirtd in a network and mount namespace of its own, reached from the machine's
/// namespace over a veth. Dropped: its domains destroyed, its daemons killed, the namespace
/// (with its bridges and VXLAN device) deleted.
struct SecondLibvirtd {
    netns: String,
    /// Mounted over /etc, /run, /var/lib, /var/cache and /var/log `libvirt` inside.
    root: tempfile::TempDir,
    libvirtd: Child,
}

impl SecondLibvirtd {
    /// Starts it in namespace `netns`, `address/30` on its end of the veth and the one below
    /// on the machine's.
    fn start(netns: &str, veth: &str, machine_address: &str, address: &str) -> SecondLibvirtd {
        let root = data_dir();
        let dir = |d: &str| root.path().join(d);
        for (args, what) in [
            (vec!["netns", "add", netns], "netns"),
            (
                vec![
                    "link", "add", veth, "type", "veth", "peer", "name", "uplink", "netns", netns,
                ],
                "veth",
            ),
            (
                vec!["addr", "add", &format!("{machine_address}/30"), "dev", veth],
                "address",
            ),
            (vec!["link", "set", veth, "up"], "up"),
            (
                vec![
                    "-n",
                    netns,
                    "addr",
                    "add",
                    &format!("{address}/30"),
                    "dev",
                    "uplink",
                ],
                "address",
            ),
            (vec!["-n", netns, "link", "set", "uplink", "up"], "up"),
            (vec!["-n", netns, "link", "set", "lo", "up"], "lo"),
        ] {
            ok(run("ip", &args), what);
        }
        for d in ["etc", "run", "lib/qemu", "cache", "log/qemu"] {
            std::fs::create_dir_all(dir(d)).expect("mkdir");
        }
        // The machine's configuration and QEMU capability cache (the first probe takes ~8 s).
        ok(
            run("cp", &["-a", "/etc/libvirt/.", path(&dir("etc"))]),
            "cp",
        );
        ok(
            run("cp", &["-a", "/var/cache/libvirt/.", path(&dir("cache"))]),
            "cp",
        );
        ok(
            run(
                "chown",
                &["libvirt-qemu:libvirt-qemu", path(&dir("lib/qemu"))],
            ),
            "chown",
        );
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid");
        let mut conf = std::fs::read_to_string(dir("etc/libvirtd.conf")).unwrap_or_default();
        conf.push_str(&format!(
            "\nlisten_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{address}\"\nauth_tcp = \"none\"\n\
             host_uuid = \"{}\"\n",
            uuid.trim()
        ));
        std::fs::write(dir("etc/libvirtd.conf"), conf).expect("libvirtd.conf");
        let mounts: String = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ]
        .iter()
        .map(|(d, over)| format!("mount --bind {} {over} && ", dir(d).display()))
        .collect();
        let log = std::fs::File::create(dir("libvirtd.log")).expect("log");
        let libvirtd = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "unshare",
                "--mount",
                "--propagation",
            ])
            .args(["private", "sh", "-c"])
            .arg(format!(
                "{mounts} virtlogd -d -p /run/libvirt/virtlogd.pid && exec libvirtd --listen"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("libvirtd starts");
        let second = SecondLibvirtd {
            netns: netns.to_string(),
            root,
            libvirtd,
        };
        let started = Instant::now();
        while !second.virsh(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the second libvirtd did not answer: {}",
                std::fs::read_to_string(second.root.path().join("libvirtd.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("second libvirtd answers after {:?}", started.elapsed());
        second
    }

    /// Its local URI (the socket under our /run/libvirt).
    fn uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.root.path().join("run/libvirt-sock").display()
        )
    }

    fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri()])
            .args(args)
            .output()
            .expect("virsh runs")
    }
}

impl Drop for SecondLibvirtd {
    fn drop(&mut self) {
        let listed = self.virsh(&["list", "--all", "--name"]);
        for domain in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = self.virsh(&["destroy", domain]);
            let _ = self.virsh(&["undefine", domain]);
        }
        // Its domains are gone: no need to wait for its slow clean shutdown.
        let _ = self.libvirtd.kill();
        let _ = self.libvirtd.wait();
        if let Ok(pid) = std::fs::read_to_string(self.root.path().join("run/virtlogd.pid")) {
            let _ = run("kill", &["-9", pid.trim()]);
        }
        let pids = run("ip", &["netns", "pids", &self.netns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ok(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// When each reply of `ping -D` came, in seconds since the epoch.
fn replies(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn a_running_vm_moves_to_another_libvirtd_and_keeps_answering_ping() {
    let (image, sha) = test_image();
    // The machine's libvirtd first: the second one copies its capability cache.
    ok(
        Command::new(repo_file("hack/libvirtd.sh"))
            .arg("start")
            .output()
            .expect("libvirtd.sh runs"),
        "libvirtd",
    );
    let pid = std::process::id();
    let dir_a = data_dir();
    let dir_b = data_dir();
    let shared = data_dir();
    let ns = format!("e2e-mig-{pid}");
    let net = Net::unique("mig", 0, "10.97.0");
    let vm = "vm-m";
    let domain = format!("{ns}.{vm}");
    // A VM that stays on host A keeps A's bridge (and the machine plugged into it) up after
    // vm-m has left.
    let stays = format!("{ns}.vm-stay");
    let underlay = format!("172.30.{}", pid % 250);
    let (vtep_a, vtep_b) = (format!("{underlay}.1"), format!("{underlay}.2"));
    let (host_a, host_b) = (format!("mig-a-{pid}"), format!("mig-b-{pid}"));

    // Dropped last to first: strata, agent B, B's libvirtd and namespace, then what the agents
    // built on the machine.
    let mut guard_a = HostGuard::new(vec![domain.clone(), stays]);
    guard_a.network_dir = Some(dir_a.path().join("agent/network"));
    let mut guard_b = HostGuard::new(Vec::new());
    guard_b.network_dir = Some(dir_b.path().join("network"));
    let libvirtd_b = SecondLibvirtd::start(
        &format!("e2e-migb-{pid}"),
        &format!("vm{pid}"),
        &vtep_a,
        &vtep_b,
    );
    let strata = Strata::start(
        dir_a.path(),
        &[
            "--driver",
            "libvirt",
            "--host-name",
            &host_a,
            "--vtep",
            &vtep_a,
            "--storage-dir",
            path(shared.path()),
        ],
    );

    let mut manifest = inventory(&ns, &image, &sha, &[&net], 40).replace(
        "  hypervisorType: KVM\n",
        "  hypervisorType: KVM\n  primaryStorages: [shared]\n",
    );
    manifest.push_str(&format!(
        r#"---
apiVersion: strata.io/v1alpha1
kind: PrimaryStorage
metadata:
  name: shared
spec:
  zone: zone-1
  type: SharedMountPoint
  url: {shared}
---
apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {vm}
  namespace: {ns}
spec:
  instanceOffering: tiny
  image: strata-test-guest
  nics:
    - {{l3Network: {l3}, default: true}}
---
apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: vm-stay
  namespace: {ns}
spec:
  instanceOffering: tiny
  image: strata-test-guest
  nics:
    - {{l3Network: {l3}, default: true}}
"#,
        shared = shared.path().display(),
        l3 = net.l3,
    ));
    let file = dir_a.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("writes the manifest");
    strata.ok(&["apply", "-f", path(&file)]);
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        &format!("vm/{vm}"),
        "vm/vm-stay",
        "--timeout=120s",
    ]);
    let get = |what: &str| {
        strata.ok(&[
            "get",
            "vm",
            "-n",
            &ns,
            vm,
            "-o",
            &format!("jsonpath={what}"),
        ])
    };
    assert_eq!(get("{.status.host}"), host_a);
    let (ip, mac) = (get("{.status.nics[0].ip}"), get("{.status.nics[0].mac}"));
    assert!(ip.starts_with("10.97.0."), "IP {ip:?}");

    // Host B joins: its agent on the second libvirtd, its plumbing in that namespace.
    let agent_b = Killed(
        Command::new(strata_bin())
            .args(["agent", "--kubeconfig", path(&strata.kubeconfig())])
            .args(["--host-name", &host_b, "--libvirt-uri", &libvirtd_b.uri()])
            .args(["--data-dir", path(dir_b.path()), "--storage-dir"])
            .arg(shared.path())
            .args(["--vtep", &vtep_b, "--host-netns", &libvirtd_b.netns])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir_b.path().join("agent.log")).expect("log"))
            .spawn()
            .expect("strata agent starts"),
    );
    strata.ok(&[
        "wait",
        "--for=jsonpath={.status.state}=Connected",
        &format!("host/{host_b}"),
        "--timeout=60s",
    ]);

    // A machine on the VMs' L2, on host A's bridge, pings vm-m ten times a second.
    strata.eventually("host A's bridge", BOOT, || {
        libvirt_support::link_exists(&net.bridge())
    });
    guard_a.record_bridge(&net.bridge());
    // Host A tunnels to B once the L2 network publishes B's VTEP (the agent's next resync).
    strata.eventually("host A's VXLAN to list host B", BOOT, || {
        libvirt_support::bridge_ports(&net.bridge())
            .iter()
            .filter(|port| port.starts_with("sx-"))
            .any(|port| {
                let fdb = run("bridge", &["fdb", "show", "dev", port]);
                String::from_utf8_lossy(&fdb.stdout).contains(&vtep_b)
            })
    });
    let outside =
        TestNamespace::on_bridge(&format!("e2e-migc-{pid}"), &net.bridge(), "10.97.0.250/24");
    strata.eventually("the VM to answer ping", BOOT, || {
        outside.exec(&["ping", "-c1", "-W1", &ip]).status.success()
    });
    let ping_log = dir_a.path().join("ping.log");
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &outside.0, "ping", "-D", "-i", "0.1", "-W", "1", &ip,
        ])
        .stdout(std::fs::File::create(&ping_log).expect("ping log"))
        .spawn()
        .expect("ping starts");
    let ping = Killed(ping);
    std::thread::sleep(Duration::from_secs(2));

    let migration = dir_a.path().join("migration.yaml");
    std::fs::write(
        &migration,
        format!(
            r#"apiVersion: strata.io/v1alpha1
kind: VirtualMachineMigration
metadata:
  name: move-{vm}
  namespace: {ns}
spec:
  virtualMachine: {vm}
  targetHost: {host_b}
"#
        ),
    )
    .expect("writes the migration");
    let asked = Instant::now();
    strata.ok(&["apply", "-f", path(&migration)]);
    let mut seen = Vec::new();
    strata.eventually("the migration to succeed", BOOT, || {
        let status = strata.ok(&[
            "get",
            "vmim",
            "-n",
            &ns,
            &format!("move-{vm}"),
            "-o",
            "jsonpath={.status.phase} {.status.progress.step} {.status.progress.percent}",
        ]);
        if status.starts_with("Failed") {
            panic!(
                "the migration failed:\n{}",
                strata.ok(&["get", "vmim", "-n", &ns, "-o", "yaml"])
            );
        }
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        status.starts_with("Succeeded")
    });
    let took = asked.elapsed();
    let moved_at = now();
    eprintln!("migration succeeded {took:?} after apply; seen: {seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Succeeded Completed 100")
    );

    // Same VM, same addresses, now on B: gone from A's libvirtd, running in B's.
    strata.eventually("the VM Running on host B", BOOT, || {
        get("{.status.phase} {.status.host}") == format!("Running {host_b}")
    });
    assert_eq!(get("{.status.nics[0].ip}"), ip);
    assert_eq!(get("{.status.nics[0].mac}"), mac);
    assert!(!domain_exists(&domain), "the domain left A's libvirtd");
    let state = libvirtd_b.virsh(&["domstate", &domain]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "running");
    let iflist =
        String::from_utf8_lossy(&libvirtd_b.virsh(&["domiflist", &domain]).stdout).into_owned();
    assert!(iflist.contains(&mac), "B's domain has the MAC: {iflist}");

    // B's own L3 namespace (its DHCP server and gateway) reaches the VM.
    let namespaces = guard_b.namespaces();
    assert_eq!(namespaces.len(), 1, "B's L3 namespace: {namespaces:?}");
    assert!(netns_exists(&namespaces[0]));
    strata.eventually("the VM to answer B's L3 namespace", BOOT, || {
        run(
            "ip",
            &["netns", "exec", &namespaces[0], "ping", "-c1", "-W1", &ip],
        )
        .status
        .success()
    });

    // The ping from A's side of the network kept answering.
    std::thread::sleep(Duration::from_secs(3));
    let mut ping = ping;
    ok(
        run("kill", &["-INT", &ping.0.id().to_string()]),
        "kill ping",
    );
    let _ = ping.0.wait();
    let log = std::fs::read_to_string(&ping_log).expect("ping log");
    let answered = replies(&log);
    let sent: u32 = log
        .lines()
        .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
        .expect("ping's summary");
    let share = answered.len() as f64 / f64::from(sent.max(1));
    let gap = answered.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let after = answered.iter().filter(|at| **at > moved_at).count();
    eprintln!(
        "ping: {} of {sent} answered ({:.1} %), longest gap {gap:.2} s, {after} after the move",
        answered.len(),
        share * 100.0
    );
    assert!(share >= 0.9, "only {:.1} % answered:\n{log}", share * 100.0);
    assert!(after >= 10, "the VM answers after the move:\n{log}");

    strata.ok(&["delete", "-n", &ns, "vm", vm, "vm-stay", "--timeout=120s"]);
    strata.eventually("B's domain to be removed", BOOT, || {
        !libvirtd_b.virsh(&["dominfo", &domain]).status.success()
    });
    drop(agent_b);
    strata.stop();
}
