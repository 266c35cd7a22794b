//! The agent's libvirt driver on the host's real libvirtd and QEMU, with the real test guest:
//! desired power states, libvirt events for changes behind the agent's back, and the clean-up
//! of what a crashed agent left behind. (The network driver plugs NICs in later; these guests
//! boot without one.)

use std::time::Duration;

use futures::StreamExt;
use strata_apis::{DirectBoot, PowerState};
use strata_node_agent::{Domain, Hypervisor, LibvirtConfig, LibvirtDriver, Observed};
use strata_virt::testing::{self, Cleanup, SerialLog};
use tokio::time::{timeout, Instant};

const BOOT: Duration = Duration::from_secs(90);

async fn driver(state_dir: &std::path::Path) -> LibvirtDriver {
    LibvirtDriver::new(LibvirtConfig::new("test-host", state_dir))
        .await
        .expect("the libvirt driver starts")
}

fn domain(name: &str, image: &testing::TestImage, power: PowerState) -> Domain {
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
        root_disk_bytes: Some(128 << 20),
        power,
        nics: vec![],
        data_disks: vec![],
        snapshots: Default::default(),
    }
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One guest: runs, pauses, is destroyed behind the agent's back (seen through libvirt's
/// events within 2 s), runs again, stops gracefully. Then the agent "crashes" with a second
/// domain defined, and the restarted driver finds both in its record and removes the one no
/// instance wants: domain, volume, console log and record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_guest_and_cleans_up_after_a_restart() {
    let image = tokio::task::spawn_blocking(testing::prepare)
        .await
        .expect("joins")
        .expect("libvirtd runs and the test image builds");
    let mut cleanup = Cleanup::default();
    let state = testing::state_dir(&mut cleanup, "strata-agent-libvirt");
    let ns = testing::unique_name("agenttest");
    let (kept, orphan) = (format!("{ns}.kept"), format!("{ns}.orphan"));
    cleanup.domain(&kept);
    cleanup.domain(&orphan);

    let d = driver(&state).await;
    let mut events = d.events();
    let mut vm = domain(&kept, &image, PowerState::Running);
    let t0 = Instant::now();
    assert_eq!(d.ensure(&vm).await.expect("runs"), Observed::Running);
    assert_eq!(d.ensure(&vm).await.expect("runs again"), Observed::Running);
    let log = SerialLog(d.console_log(&kept));
    let marker = log.wait_for("STRATA-BOOT-MARKER", BOOT).await;
    eprintln!("marker after {:?}: {marker}", t0.elapsed());
    assert!(marker.contains(&format!("name={kept}")), "{marker}");
    assert!(
        log.wait_for("STRATA-DISK vda", BOOT)
            .await
            .contains("sectors=262144"),
        "the root volume has the requested 128 MiB"
    );
    log.wait_for("STRATA-READY", BOOT).await;

    vm.power = PowerState::Paused;
    assert_eq!(d.ensure(&vm).await.expect("pauses"), Observed::Paused);
    vm.power = PowerState::Running;
    assert_eq!(d.ensure(&vm).await.expect("resumes"), Observed::Running);

    // Behind the agent's back.
    let out = std::process::Command::new("virsh")
        .args(["-c", strata_virt::SYSTEM_URI, "destroy", &kept])
        .output()
        .expect("runs virsh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = Instant::now();
    timeout(Duration::from_secs(2), async {
        while let Some(name) = events.next().await {
            if name == kept && d.state(&kept).await.expect("state") == Some(Observed::Stopped) {
                return;
            }
        }
    })
    .await
    .expect("the stop is reported within 2 s");
    eprintln!(
        "stop seen {:?} after virsh destroy returned",
        seen.elapsed()
    );

    assert_eq!(d.ensure(&vm).await.expect("runs again"), Observed::Running);
    log.wait_for_nth("STRATA-READY", 2, BOOT).await;
    vm.power = PowerState::Stopped;
    assert_eq!(d.ensure(&vm).await.expect("stops"), Observed::Stopped);
    assert_eq!(
        log.count("STRATA-POWEROFF"),
        1,
        "stopped by the power button"
    );

    // A second domain, defined only, then the agent dies.
    d.ensure(&domain(&orphan, &image, PowerState::Stopped))
        .await
        .expect("defines");
    drop(d);

    let d = driver(&state).await;
    let owned = d.owned_domains().await.expect("reads the record");
    assert!(
        owned.contains(&kept) && owned.contains(&orphan),
        "{owned:?}"
    );
    d.destroy(&orphan).await.expect("removes the orphan");
    d.destroy(&orphan).await.expect("removes it again");
    assert_eq!(d.state(&orphan).await.expect("state"), None, "undefined");
    let volumes = files_in(&state.join("storage/volumes"));
    assert!(
        !volumes.iter().any(|v| v.starts_with(&orphan)),
        "{volumes:?}"
    );
    assert!(
        volumes.contains(&format!("{kept}-root.qcow2")),
        "{volumes:?}"
    );
    assert!(!files_in(&state.join("domains")).contains(&format!("{orphan}.json")));
    assert!(!files_in(&state.join("console")).contains(&format!("{orphan}.log")));
    assert_eq!(
        d.state(&kept).await.expect("state"),
        Some(Observed::Stopped),
        "the wanted domain is untouched"
    );

    d.destroy(&kept).await.expect("removes the rest");
    assert!(d.owned_domains().await.expect("lists").is_empty());
    assert!(files_in(&state.join("storage/volumes")).is_empty());
}
