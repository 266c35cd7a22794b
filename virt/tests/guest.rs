//! The libvirt driver against the host's real libvirtd and QEMU (TCG here), booting the real
//! test guest from `hack/build-test-image.sh`. No mocks: what the assertions read comes from
//! libvirt, from the guest's serial console, or from the kernel (bridge ports).
//!
//! Guests under TCG are slow, so one booted guest is shared by the checks of a running VM, and
//! each test boots at most one.

use std::{path::Path, time::Duration};

use futures::StreamExt;
use strata_virt::{
    events::lifecycle_events,
    testing::{self, Cleanup, SerialLog},
    Boot, Disk, DiskFormat, DomainEvent, DomainSpec, EventKind, HostFeatures, Libvirt, Nic, Owner,
    PowerState, Storage, SYSTEM_URI,
};
use tokio::time::{timeout, Instant};

const BOOT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(60);

struct Env {
    lv: Libvirt,
    storage: Storage,
    image: testing::TestImage,
    dir: std::path::PathBuf,
    cleanup: Cleanup,
}

async fn env(prefix: &str) -> Env {
    let image = tokio::task::spawn_blocking(testing::prepare)
        .await
        .expect("joins")
        .expect("libvirtd runs and the test image builds");
    let mut cleanup = Cleanup::default();
    let dir = testing::state_dir(&mut cleanup, prefix);
    let lv = Libvirt::connect(SYSTEM_URI, HostFeatures::detect())
        .await
        .expect("connects to qemu:///system");
    let storage = Storage::open(dir.join("primary")).expect("opens storage");
    Env {
        lv,
        storage,
        image,
        dir,
        cleanup,
    }
}

impl Env {
    /// A 128 MiB direct-boot guest whose root disk is an overlay on the cached test image.
    async fn spec(&mut self, name: &str, nics: Vec<Nic>) -> DomainSpec {
        self.cleanup.domain(name);
        let url = format!("file://{}", self.image.disk.display());
        let cached = self
            .storage
            .cache_image(&url, Some(&self.image.disk_sha256))
            .await
            .expect("caches the image");
        let root = self
            .storage
            .create_root_volume(&format!("{name}-root"), &cached, None)
            .await
            .expect("creates the root overlay");
        DomainSpec {
            name: name.into(),
            owner: Some(Owner {
                host: "test-host".into(),
                instance: format!("test/{name}"),
            }),
            vcpus: 1,
            memory_bytes: 128 << 20,
            boot: Boot::Kernel {
                kernel: self.image.kernel.clone(),
                initrd: Some(self.image.initrd.clone()),
                // No DHCP server on the test bridge: one quick try, then on.
                cmdline: format!("console=ttyS0 quiet strata.name={name} strata.dhcp_tries=1"),
            },
            disks: vec![Disk {
                path: root,
                format: DiskFormat::Qcow2,
                target: "vda".into(),
                serial: Some("root".into()),
            }],
            nics,
            serial_log: Some(self.dir.join(format!("{name}.console.log"))),
            vnc: true,
        }
    }
}

/// Waits for the next event of `domain` matching `kind`; returns it with how long it took.
async fn next_event(
    events: &mut (impl futures::Stream<Item = DomainEvent> + Unpin),
    domain: &str,
    kind: EventKind,
    within: Duration,
) -> (DomainEvent, Duration) {
    let started = Instant::now();
    let found = timeout(within, async {
        while let Some(e) = events.next().await {
            if e.domain == domain && e.kind == kind {
                return e;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {domain} within {within:?}"));
    (found, started.elapsed())
}

fn master_of(ifname: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(ifname).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// One guest through its whole life: boot from a qcow2 overlay with a NIC on a bridge the test
/// owns, VNC, pause/resume, data volume attach + grow + detach while running, reboot, graceful
/// stop, start, a live snapshot, `virsh destroy` behind the driver's back (seen as an event
/// within 2 s), revert to the live snapshot, undefine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_through_its_lifecycle() {
    let mut env = env("strata-virt-life").await;
    let name = testing::unique_name("strata-virt-life");
    let bridge = testing::unique_ifname("stvb");
    let tap = testing::unique_ifname("stvt");
    env.cleanup
        .bridge(&bridge)
        .expect("creates the test bridge");
    let spec = env
        .spec(
            &name,
            vec![Nic {
                mac: "52:54:00:5a:00:01".into(),
                bridge: bridge.clone(),
                tap: Some(tap.clone()),
            }],
        )
        .await;
    let log = SerialLog(spec.serial_log.clone().expect("has a log"));
    let mut events = Box::pin(lifecycle_events(SYSTEM_URI));

    // Define + start; idempotent both.
    env.lv.define(&spec).await.expect("defines");
    env.lv.define(&spec).await.expect("defines again");
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Shutoff)
    );
    let t0 = Instant::now();
    env.lv.start(&name).await.expect("starts");
    env.lv.start(&name).await.expect("starts again");
    next_event(&mut events, &name, EventKind::Started, STEP).await;
    let marker = log.wait_for("STRATA-BOOT-MARKER", BOOT).await;
    eprintln!("boot marker after {:?}: {marker}", t0.elapsed());
    assert!(marker.contains(&format!("name={name}")), "{marker}");
    let disk = log.wait_for("STRATA-DISK vda", STEP).await;
    assert!(
        disk.contains("head=STRATA-TEST-IMAGE"),
        "the overlay reads through to the cached image: {disk}"
    );
    log.wait_for("STRATA-READY", BOOT).await;
    eprintln!("guest ready after {:?}", t0.elapsed());
    assert!(log.text().contains("STRATA-ETH0 mac=52:54:00:5a:00:01"));
    assert_eq!(
        master_of(&tap).as_deref(),
        Some(bridge.as_str()),
        "the tap keeps its fixed name and sits on the bridge"
    );
    let live = env.lv.live_devices(&name).await.expect("live XML");
    assert!(
        live.graphics
            .iter()
            .any(|g| g.graphics_type == "vnc" && g.port >= 5900),
        "{live:?}"
    );
    let listed = env.lv.list().await.expect("lists");
    let me = listed.iter().find(|d| d.name == name).expect("listed");
    assert_eq!(me.state, PowerState::Running);
    assert_eq!(
        me.owner.as_ref().map(|o| o.host.as_str()),
        Some("test-host")
    );

    // Pause and resume.
    env.lv.pause(&name).await.expect("pauses");
    env.lv.pause(&name).await.expect("pauses again");
    next_event(&mut events, &name, EventKind::Suspended, STEP).await;
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Paused)
    );
    env.lv.resume(&name).await.expect("resumes");
    next_event(&mut events, &name, EventKind::Resumed, STEP).await;
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Running)
    );

    // A data volume: hot-plug, grow while attached, unplug.
    let data_name = format!("{name}-data");
    let data = env
        .storage
        .create_data_volume(&data_name, 16 << 20)
        .await
        .expect("creates a data volume");
    let data_disk = Disk {
        path: data,
        format: DiskFormat::Qcow2,
        target: "vdb".into(),
        serial: Some("data".into()),
    };
    env.lv
        .attach_disk(&name, &data_disk)
        .await
        .expect("attaches");
    env.lv
        .attach_disk(&name, &data_disk)
        .await
        .expect("attaches again");
    let added = log.wait_for("STRATA-DISK-ADDED vdb", STEP).await;
    assert!(
        added.contains("sectors=32768"),
        "16 MiB = 32768 sectors: {added}"
    );
    env.lv
        .resize_disk(&name, "vdb", 32 << 20)
        .await
        .expect("grows");
    let grown = log.wait_for("STRATA-DISK-RESIZED vdb", STEP).await;
    assert!(grown.contains("sectors=65536"), "{grown}");
    assert_eq!(
        env.storage
            .volume_info(&data_name)
            .await
            .expect("info")
            .virtual_size,
        32 << 20
    );
    env.lv
        .detach_disk(&name, "vdb", STEP)
        .await
        .expect("detaches");
    env.lv
        .detach_disk(&name, "vdb", STEP)
        .await
        .expect("detaches again");
    log.wait_for("STRATA-DISK-REMOVED vdb", STEP).await;
    env.storage
        .delete_volume(&data_name)
        .await
        .expect("deletes");

    // Reboot: the same domain boots the guest a second time.
    env.lv.reboot(&name).await.expect("reboots");
    log.wait_for_nth("STRATA-BOOT-MARKER", 2, BOOT).await;
    log.wait_for_nth("STRATA-READY", 2, BOOT).await;
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Running)
    );

    // Graceful stop: the guest hears the power button and powers off by itself.
    let t = Instant::now();
    let graceful = env.lv.shutdown(&name, STEP).await.expect("stops");
    eprintln!("graceful stop took {:?}", t.elapsed());
    assert!(graceful, "the guest powered off on ACPI, not by destroy");
    // The reboot pressed the button too (libvirt's ACPI reboot), then started it again.
    assert_eq!(log.count("STRATA-POWEROFF"), 2);
    next_event(&mut events, &name, EventKind::Stopped, STEP).await;
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Shutoff)
    );
    assert!(env.lv.shutdown(&name, STEP).await.expect("stopped already"));

    // Start again, take a live checkpoint.
    env.lv.start(&name).await.expect("starts");
    log.wait_for_nth("STRATA-READY", 3, BOOT).await;
    env.lv
        .snapshot_create(&name, "live")
        .await
        .expect("snapshots");
    env.lv
        .snapshot_create(&name, "live")
        .await
        .expect("snapshots again");
    let snaps = env.lv.snapshots(&name).await.expect("lists snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "live");

    // Destroyed behind the driver's back: the event arrives within 2 s.
    let out = std::process::Command::new("virsh")
        .args(["-c", SYSTEM_URI, "destroy", &name])
        .output()
        .expect("runs virsh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (event, after) = next_event(
        &mut events,
        &name,
        EventKind::Stopped,
        Duration::from_secs(2),
    )
    .await;
    eprintln!("'virsh destroy' seen after {after:?}: {event:?}");
    assert_eq!(event.detail, "Destroyed");

    // Revert to the checkpoint: running again, from memory, without booting.
    let boots = log.count("STRATA-BOOT-MARKER");
    env.lv
        .snapshot_revert(&name, "live")
        .await
        .expect("reverts");
    assert_eq!(
        env.lv.state(&name).await.expect("state"),
        Some(PowerState::Running)
    );
    assert_eq!(
        log.count("STRATA-BOOT-MARKER"),
        boots,
        "restored, not rebooted"
    );
    env.lv
        .snapshot_delete(&name, "live")
        .await
        .expect("deletes the snapshot");
    assert!(env.lv.snapshots(&name).await.expect("lists").is_empty());

    env.lv.undefine(&name).await.expect("undefines");
    env.lv.undefine(&name).await.expect("undefines again");
    assert_eq!(env.lv.state(&name).await.expect("state"), None);
    next_event(&mut events, &name, EventKind::Undefined, STEP).await;
}

/// Disk snapshots of a stopped domain: what is written after the snapshot is gone after a
/// revert. Checked on the image itself with qemu-io, without booting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reverts_the_disk() {
    let mut env = env("strata-virt-snap").await;
    let name = testing::unique_name("strata-virt-snap");
    let spec = env.spec(&name, vec![]).await;
    let root = spec.disks[0].path.display().to_string();
    env.lv.define(&spec).await.expect("defines");

    let head = |path: &str| {
        let out = std::process::Command::new("qemu-io")
            .args(["-r", "-U", "-f", "qcow2", "-c", "read -v 0 17", path])
            .output()
            .expect("runs qemu-io");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        head(&root).contains("53 54 52 41 54 41 2d 54 45 53 54"),
        "{}",
        head(&root)
    );

    env.lv
        .snapshot_create(&name, "before")
        .await
        .expect("snapshots");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x58 0 512", &root])
        .output()
        .expect("runs qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        head(&root).contains("58 58 58 58 58 58 58 58"),
        "the write landed: {}",
        head(&root)
    );

    env.lv
        .snapshot_revert(&name, "before")
        .await
        .expect("reverts");
    assert!(
        head(&root).contains("53 54 52 41 54 41 2d 54 45 53 54"),
        "reverted: {}",
        head(&root)
    );
    assert!(matches!(
        env.lv.snapshot_revert(&name, "missing").await,
        Err(strata_virt::Error::NoSnapshot { .. })
    ));
    env.lv
        .snapshot_delete(&name, "before")
        .await
        .expect("deletes");
    env.lv.undefine(&name).await.expect("undefines");
    assert_eq!(env.lv.state(&name).await.expect("state"), None);
}
