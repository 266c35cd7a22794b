//! The libvirt driver's data disks on the host's real libvirtd and QEMU, with the real test
//! guest: a data disk given to a running domain is created and hot-plugged (the guest sees
//! it), grown live (the guest sees the new size), and hot-unplugged when it leaves the list,
//! its file kept on the host's storage.

use std::time::Duration;

use strata_apis::{DirectBoot, PowerState};
use strata_node_agent::{DataDisk, Domain, Hypervisor, LibvirtConfig, LibvirtDriver, Observed};
use strata_virt::testing::{self, Cleanup, SerialLog};

const BOOT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(30);

fn domain(name: &str, image: &testing::TestImage) -> Domain {
    let url = |p: &std::path::Path| format!("file://{}", p.display());
    Domain {
        name: name.into(),
        cpu: 1,
        memory_bytes: 128 << 20,
        image_url: url(&image.disk),
        image_checksum: Some(format!("sha256:{}", image.disk_sha256)),
        direct_boot: Some(DirectBoot {
            kernel_url: url(&image.kernel),
            initrd_url: Some(url(&image.initrd)),
            cmdline: Some("console=ttyS0 quiet".into()),
        }),
        root_disk_bytes: None,
        power: PowerState::Running,
        nics: vec![],
        data_disks: vec![],
        snapshots: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_disk_is_hot_plugged_grown_and_unplugged_on_a_running_guest() {
    let image = tokio::task::spawn_blocking(testing::prepare)
        .await
        .expect("joins")
        .expect("libvirtd runs and the test image builds");
    let mut cleanup = Cleanup::default();
    let state = testing::state_dir(&mut cleanup, "strata-agent-volumes");
    let ns = testing::unique_name("voltest");
    let name = format!("{ns}.vm");
    cleanup.domain(&name);
    let d = LibvirtDriver::new(LibvirtConfig::new("test-host", &state))
        .await
        .expect("the libvirt driver starts");

    let mut vm = domain(&name, &image);
    assert_eq!(d.ensure(&vm).await.expect("runs"), Observed::Running);
    let log = SerialLog(d.console_log(&name));
    log.wait_for("STRATA-READY", BOOT).await;

    let volume = format!("{ns}.data");
    vm.data_disks = vec![DataDisk {
        volume: volume.clone(),
        device: "vdb".into(),
        serial: "data0".into(),
        size_bytes: 16 << 20,
    }];
    assert_eq!(d.ensure(&vm).await.expect("attaches"), Observed::Running);
    let added = log.wait_for("STRATA-DISK-ADDED vdb", STEP).await;
    assert!(added.contains("sectors=32768"), "16 MiB: {added}");
    let disks = d.disks(&name).await.expect("lists disks");
    let vdb = disks
        .iter()
        .find(|x| x.device == "vdb")
        .expect("vdb attached");
    assert_eq!(
        (vdb.volume.as_str(), vdb.size_bytes),
        (volume.as_str(), 16 << 20)
    );

    vm.data_disks[0].size_bytes = 32 << 20;
    d.ensure(&vm).await.expect("grows");
    let resized = log.wait_for("STRATA-DISK-RESIZED vdb", STEP).await;
    assert!(resized.contains("sectors=65536"), "32 MiB: {resized}");

    vm.data_disks.clear();
    d.ensure(&vm).await.expect("detaches");
    log.wait_for("STRATA-DISK-REMOVED vdb", STEP).await;
    let disks = d.disks(&name).await.expect("lists disks");
    assert_eq!(
        disks.iter().map(|x| x.device.as_str()).collect::<Vec<_>>(),
        ["vda"]
    );
    assert!(
        state
            .join(format!("storage/volumes/{volume}.qcow2"))
            .exists(),
        "a detached disk is kept"
    );

    d.destroy(&name).await.expect("destroys");
}
