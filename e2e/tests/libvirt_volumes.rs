//! A data volume through the API on a real host: `strata up --driver libvirt` runs the test
//! guest; adding a Volume to the VM's `spec.dataVolumes` hot-plugs it into the running domain
//! (the guest reports the new disk), growing `spec.size` grows it live (the guest sees the new
//! size), and removing it from the list unplugs it while the Volume stays, `Ready` on its host.
//! In between, a VolumeSnapshot of the attached disk is taken live (an internal qcow2 snapshot
//! through QEMU) and a VolumeRestore brings its content back: the domain is shut down, the disk
//! reverted and the guest boots again, printing the head of vdb. The content is written
//! through QEMU's own block layer (HMP `qemu-io`, as a guest write would reach the image; the
//! test guest has no shell to write with). Deleting the detached Volume deletes its disk from
//! the host's primary storage.

mod libvirt_support;
mod support;

use std::time::Duration;

use libvirt_support::{data_dir, domain_exists, inventory, test_image, virsh, HostGuard};
use support::Strata;

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

#[test]
fn a_data_volume_is_attached_grown_and_detached_on_a_running_vm() {
    let (image, sha) = test_image();
    let dir = data_dir();
    let ns = format!("e2e-volumes-{}", std::process::id());
    let domain = format!("{ns}.vm");
    let _guard = HostGuard::new(vec![domain.clone()]);
    let host = format!("e2e-host-{}", std::process::id());
    let strata = Strata::start(dir.path(), &["--driver", "libvirt", "--host-name", &host]);

    let manifest = inventory(&ns, &image, &sha, &[], 1)
        + &format!(
            r#"---
apiVersion: strata.io/v1alpha1
kind: Volume
metadata:
  name: data
  namespace: {ns}
spec:
  type: Data
  size: 16Mi
---
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
    let console = dir
        .path()
        .join("agent/console")
        .join(format!("{domain}.log"));
    let log = || std::fs::read_to_string(&console).unwrap_or_default();
    strata.eventually("the guest to be ready", BOOT, || {
        log().contains("STRATA-READY")
    });

    let patch = |kind: &str, name: &str, body: &str| {
        strata.ok(&["patch", "-n", &ns, kind, name, "--type=merge", "-p", body]);
    };
    patch("vm", "vm", r#"{"spec":{"dataVolumes":["data"]}}"#);
    strata.eventually("the guest to see vdb (16 MiB)", STEP, || {
        log().contains("STRATA-DISK-ADDED vdb sectors=32768")
    });
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Attached",
        "volume/data",
        "--timeout=60s",
    ]);
    let get = |path: &str| {
        strata.ok(&[
            "get",
            "-n",
            &ns,
            "volume",
            "data",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(
        get("{.status.virtualMachine} {.status.device} {.status.host}"),
        format!("vm vdb {host}")
    );
    assert!(get("{.status.path}").ends_with(&format!("{ns}.data.qcow2")));

    patch("volume", "data", r#"{"spec":{"size":"32Mi"}}"#);
    strata.eventually("the guest to see vdb grow to 32 MiB", STEP, || {
        log().contains("STRATA-DISK-RESIZED vdb sectors=65536")
    });

    // Snapshot, overwrite, restore: the guest boots with the snapshot's content on vdb.
    let write = |byte: &str| {
        let io = format!(
            r#"qemu-io -d /machine/peripheral/virtio-disk1/virtio-backend "write -P {byte} 0 512""#
        );
        let out = virsh(&["qemu-monitor-command", "--hmp", &domain, &io]);
        let said = String::from_utf8_lossy(&out.stdout);
        // Silent on success (qemu-io prints to QEMU's own stdout); errors come back here.
        assert!(
            out.status.success() && !said.contains("Error"),
            "qemu-io: {out:?}"
        );
    };
    write("0x41");
    let apply = |yaml: String| {
        let file = dir.path().join("snapshot.yaml");
        std::fs::write(&file, yaml).expect("writes the manifest");
        strata.ok(&["apply", "-f", file.to_str().expect("utf-8")]);
    };
    apply(format!(
        "apiVersion: strata.io/v1alpha1\nkind: VolumeSnapshot\nmetadata: {{name: as, namespace: {ns}}}\nspec: {{volume: data}}\n"
    ));
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Ready",
        "vs/as",
        "--timeout=60s",
    ]);
    write("0x42");
    apply(format!(
        "apiVersion: strata.io/v1alpha1\nkind: VolumeRestore\nmetadata: {{name: back, namespace: {ns}}}\nspec: {{volume: data, snapshot: as}}\n"
    ));
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Succeeded",
        "vrs/back",
        "--timeout=90s",
    ]);
    let reverted = "STRATA-DISK vdb sectors=65536 head=AAAAAAAAAAAAAAAAAA";
    let waited = std::time::Instant::now();
    while !log().contains(reverted) && waited.elapsed() < BOOT {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        log().contains(reverted),
        "no {reverted:?} on the console:\n{}",
        log()
    );
    assert!(!log().contains("head=BBBB"), "the overwrite is gone");
    strata.ok(&["delete", "-n", &ns, "vs", "as", "--timeout=60s"]);

    patch("vm", "vm", r#"{"spec":{"dataVolumes":[]}}"#);
    strata.eventually("the guest to lose vdb", STEP, || {
        log().contains("STRATA-DISK-REMOVED vdb")
    });
    strata.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Ready",
        "volume/data",
        "--timeout=60s",
    ]);
    assert_eq!(get("{.status.size}"), "32Mi");

    let disk = std::path::PathBuf::from(get("{.status.path}"));
    assert!(
        disk.exists(),
        "{} is on the primary storage",
        disk.display()
    );
    strata.ok(&["delete", "-n", &ns, "volume", "data", "--timeout=60s"]);
    assert!(
        !disk.exists(),
        "deleting the Volume deleted {}",
        disk.display()
    );

    strata.ok(&["delete", "-n", &ns, "vm", "vm", "--timeout=120s"]);
    strata.eventually("the domain to be removed", BOOT, || !domain_exists(&domain));
    strata.stop();
}
