//! A real VM from `kubectl apply`: `strata up --driver libvirt` runs this machine as a host on
//! its libvirtd (QEMU, TCG here), the test guest from `hack/build-test-image.sh` boots from its
//! kernel with a root overlay on the cached image, and its serial console shows the boot
//! marker. A `virsh destroy` behind Strata's back reaches the instance's status within 2 s;
//! pause/resume, a reboot request, and a stop and start by run strategy go through to the
//! domain and the guest; deleting the VM removes the domain, its volume, console log and the
//! agent's record.
//! (Networking comes from the network driver; this VM has no NIC.)

mod libvirt_support;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use libvirt_support::{data_dir, domain_exists, files, inventory, test_image, virsh, HostGuard};
use support::Strata;

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn kubectl_apply_boots_a_real_vm_on_libvirt() {
    let (image, sha) = test_image();
    let dir = data_dir();
    let ns = format!("e2e-libvirt-{}", std::process::id());
    let domain = format!("{ns}.tiny-vm");
    let _guard = HostGuard::new(vec![domain.clone()]);
    let host = format!("e2e-host-{}", std::process::id());
    let strata = Strata::start(dir.path(), &["--driver", "libvirt", "--host-name", &host]);

    let manifest = inventory(&ns, &image, &sha, &[], 1)
        + &format!(
            r#"---
apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: tiny-vm
  namespace: {ns}
spec:
  instanceOffering: tiny
  image: strata-test-guest
"#
        );
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("writes the manifest");
    strata.ok(&["apply", "-f", file.to_str().expect("utf-8")]);

    let started = Instant::now();
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        "vm/tiny-vm",
        "--timeout=120s",
    ]);
    assert_eq!(
        strata.ok(&[
            "get",
            "vmi",
            "-n",
            &ns,
            "tiny-vm",
            "-o",
            "jsonpath={.spec.host}"
        ]),
        host
    );
    let console = dir
        .path()
        .join("agent/console")
        .join(format!("{domain}.log"));
    strata.eventually("the boot marker on the serial console", BOOT, || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains(&format!("STRATA-BOOT-MARKER name={domain}"))
    });
    eprintln!("boot marker {:?} after apply", started.elapsed());
    // The end of the console reaches the API (the dashboard shows it) while the guest runs.
    strata.eventually("the console tail in the instance's status", BOOT, || {
        strata
            .kubectl(&[
                "get",
                "vmi",
                "-n",
                &ns,
                "tiny-vm",
                "-o",
                "jsonpath={.status.consoleTail}",
            ])
            .stdout
            .windows(b"STRATA-READY".len())
            .any(|w| w == b"STRATA-READY")
    });
    let dominfo = String::from_utf8_lossy(&virsh(&["domstate", &domain]).stdout).into_owned();
    assert_eq!(dominfo.trim(), "running");

    // Behind Strata's back: the agent reports the stop at once, and the VM controller acts by
    // the run strategy (Always: the instance is replaced and the VM boots again).
    let vmi_field = |path: &str| {
        strata.ok(&[
            "get",
            "vmi",
            "-n",
            &ns,
            "tiny-vm",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    // The same, empty while the instance is being replaced.
    let vmi_now = |path: &str| {
        let out = strata.kubectl(&[
            "get",
            "vmi",
            "-n",
            &ns,
            "tiny-vm",
            "-o",
            &format!("jsonpath={path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let uid = vmi_field("{.metadata.uid}");
    let out = virsh(&["destroy", &domain]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let destroyed = Instant::now();
    strata.eventually(
        "the stop to reach the instance",
        Duration::from_secs(2),
        || {
            let now = vmi_now("{.metadata.uid} {.status.phase}");
            now.is_empty() || now.ends_with(" Stopped") || !now.starts_with(&uid)
        },
    );
    eprintln!(
        "stop seen {:?} after virsh destroy returned",
        destroyed.elapsed()
    );
    strata.eventually("the VM to run again (runStrategy Always)", BOOT, || {
        String::from_utf8_lossy(&virsh(&["domstate", &domain]).stdout).trim() == "running"
            && std::fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("STRATA-BOOT-MARKER")
    });
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        "vm/tiny-vm",
        "--timeout=120s",
    ]);
    eprintln!(
        "running again {:?} after virsh destroy",
        destroyed.elapsed()
    );

    // Pause, resume, reboot, stop and start through the API, each seen by libvirt and the guest.
    let patch = |spec: &str| {
        strata.ok(&[
            "patch",
            "-n",
            &ns,
            "vm",
            "tiny-vm",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{spec}}}"#),
        ]);
    };
    let wait_phase = |phase: &str| {
        strata.ok(&[
            "wait",
            "-n",
            &ns,
            &format!("--for=jsonpath={{.status.phase}}={phase}"),
            "vm/tiny-vm",
            "--timeout=120s",
        ]);
    };
    let state = || {
        String::from_utf8_lossy(&virsh(&["domstate", &domain]).stdout)
            .trim()
            .to_string()
    };
    let boots = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .matches("STRATA-BOOT-MARKER")
            .count()
    };
    patch(r#"{"paused":true}"#);
    wait_phase("Paused");
    assert_eq!(state(), "paused");
    patch(r#"{"paused":false}"#);
    wait_phase("Running");
    assert_eq!(state(), "running");

    let before = boots();
    patch(r#"{"rebootRequest":"e2e-1"}"#);
    strata.eventually("the host to record the reboot", BOOT, || {
        vmi_field("{.status.rebootRequest}") == "e2e-1"
    });
    strata.eventually("the guest to boot again", BOOT, || boots() > before);
    assert_eq!(state(), "running");

    let stopped_uid = vmi_field("{.metadata.uid}");
    patch(r#"{"runStrategy":"Halted"}"#);
    wait_phase("Stopped");
    strata.eventually("the domain to stop", BOOT, || state() != "running");
    patch(r#"{"runStrategy":"Always"}"#);
    wait_phase("Running");
    strata.eventually("a new instance to boot", BOOT, || {
        let now = vmi_now("{.metadata.uid} {.status.consoleTail}");
        !now.starts_with(&stopped_uid) && now.contains("STRATA-READY")
    });
    assert_eq!(state(), "running");

    strata.ok(&["delete", "-n", &ns, "vm", "tiny-vm", "--timeout=120s"]);
    strata.eventually("the instance to be gone", BOOT, || {
        strata
            .ok(&["get", "vmi", "-n", &ns, "-o", "name"])
            .trim()
            .is_empty()
    });
    assert!(!domain_exists(&domain), "the domain is undefined");
    let agent = dir.path().join("agent");
    assert!(files(&agent.join("storage/volumes")).is_empty());
    assert!(files(&agent.join("domains")).is_empty());
    assert!(files(&agent.join("console")).is_empty());
    strata.stop();
}

/// The agent is killed (SIGKILL, with the whole `strata up`) while it runs a VM and after it
/// had created a domain, volume and record that no instance wants any more (planted here, as a
/// crash between a VM's deletion and its clean-up would leave them). Restarted on the same
/// data dir, it removes those and keeps the VM running: nothing leaks, nothing boots twice.
#[test]
fn a_restarted_agent_removes_orphans_and_keeps_its_vm() {
    let (image, sha) = test_image();
    let dir = data_dir();
    let ns = format!("e2e-restart-{}", std::process::id());
    let domain = format!("{ns}.vm");
    let ghost = format!("{ns}-gone.vm");
    let _guard = HostGuard::new(vec![domain.clone(), ghost.clone()]);
    let host = format!("e2e-restart-{}", std::process::id());
    let args = ["--driver", "libvirt", "--host-name", host.as_str()];
    let strata = Strata::start(dir.path(), &args);
    let manifest = inventory(&ns, &image, &sha, &[], 1)
        + &format!(
            r#"---
apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: vm
  namespace: {ns}
spec:
  instanceOffering: tiny
  image: strata-test-guest
"#
        );
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("writes the manifest");
    strata.ok(&["apply", "-f", file.to_str().expect("utf-8")]);
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        "vm/vm",
        "--timeout=120s",
    ]);
    let agent = dir.path().join("agent");
    let console = agent.join("console").join(format!("{domain}.log"));
    let markers = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .matches("STRATA-BOOT-MARKER")
            .count()
    };
    strata.eventually("the boot marker", BOOT, || markers() == 1);

    // What a crash mid-clean-up leaves: a defined domain, its volume, its record.
    let ghost_xml = dir.path().join("ghost.xml");
    std::fs::write(
        &ghost_xml,
        format!(
            "<domain type='qemu'><name>{ghost}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        ),
    )
    .expect("writes");
    let out = virsh(&["define", ghost_xml.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let volume = agent
        .join("storage/volumes")
        .join(format!("{ghost}-root.qcow2"));
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&volume)
        .arg("1M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success());
    let record = agent.join("domains").join(format!("{ghost}.json"));
    std::fs::write(
        &record,
        format!(
            r#"{{"domain":"{ghost}","volumes":["{ghost}-root"],"console_log":"{}"}}"#,
            agent.join("console").join(format!("{ghost}.log")).display()
        ),
    )
    .expect("writes the record");

    drop(strata); // SIGKILL
    let strata = Strata::start(dir.path(), &args);
    strata.eventually("the orphan to be removed", BOOT, || !domain_exists(&ghost));
    assert!(!volume.exists(), "the orphan's volume is deleted");
    assert!(!record.exists(), "the orphan's record is deleted");
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        "vm/vm",
        "--timeout=60s",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&virsh(&["domstate", &domain]).stdout).trim(),
        "running"
    );
    assert_eq!(markers(), 1, "the VM kept running; it did not boot again");

    strata.ok(&["delete", "-n", &ns, "vm", "vm", "--timeout=120s"]);
    strata.eventually("the domain to be removed", BOOT, || !domain_exists(&domain));
    assert!(files(&agent.join("domains")).is_empty());
    assert!(files(&agent.join("storage/volumes")).is_empty());
    strata.stop();
}
