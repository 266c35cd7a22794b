//! Volumes through the API, against the in-process control plane with a simulated host: the
//! root volume a VM gets and loses with it; a data volume attached to a running VM, grown,
//! refused to a second VM, detached and handed over; snapshots taken, reverted to and deleted.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{HOST_DISK_FINALIZER, READY, VOLUMES_READY},
    DiskOffering, DiskOfferingSpec, Host, RestorePhase, RunStrategy, SnapshotPhase, VirtualMachine,
    VirtualMachineInstance, VirtualMachineSpec, VmNic, VmPhase, Volume, VolumePhase, VolumeRestore,
    VolumeRestoreSpec, VolumeSnapshot, VolumeSnapshotSpec, VolumeSpec, VolumeStatus, VolumeType,
};
use strata_node_agent::Hypervisor;

mod common;

use common::*;

fn vm(name: &str) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "tiny".into(),
            root_disk_size: Some(Quantity("8Gi".into())),
            nics: vec![VmNic {
                l3_network: "net-1".into(),
                ..VmNic::default()
            }],
            run_strategy: RunStrategy::Always,
            ..VirtualMachineSpec::default()
        },
    )
}

fn condition(conditions: &strata_apis::Conditions, type_: &str) -> (String, String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Waits until volume `name`'s status satisfies `check`.
async fn wait_volume(
    client: &kube::Client,
    name: &str,
    what: &str,
    check: impl Fn(&VolumeStatus) -> bool,
) -> Volume {
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    wait_for(client, &format!("volume {name} {what}"), || async {
        let volume = volumes.get_opt(name).await.ok()??;
        check(volume.status.as_ref()?).then_some(volume)
    })
    .await
}

async fn set_data_volumes(client: &kube::Client, vm: &str, volumes: &[&str]) {
    Api::<VirtualMachine>::namespaced(client.clone(), NS)
        .patch(
            vm,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "dataVolumes": volumes } })),
        )
        .await
        .expect("patch the VM's data volumes");
}

/// (volume on the host's storage, device, size) of every disk the simulated host attached.
async fn host_view(plane: &Plane, domain: &str) -> Vec<(String, String, u64)> {
    plane.drivers[0]
        .disks(domain)
        .await
        .expect("the sim lists disks")
        .into_iter()
        .map(|d| (d.volume, d.device, d.size_bytes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_owns_its_root_volume_on_the_storage_chosen_with_its_host() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let created = create(&vms, vm("vm-1")).await;

    let running = wait_phase(&client, "vm-1", VmPhase::Running).await;
    let status = running.status.expect("status");
    let root = &status.volumes[0];
    assert_eq!(
        (root.name.as_str(), root.volume_type, root.device.as_deref()),
        ("vm-1-root", VolumeType::Root, Some("vda"))
    );
    assert_eq!(root.primary_storage.as_deref(), Some("ps-1"));
    assert_eq!(condition(&status.conditions, VOLUMES_READY).0, "True");

    let volume = wait_volume(&client, "vm-1-root", "attached", |s| {
        s.phase == Some(VolumePhase::Attached)
    })
    .await;
    let owner = &volume.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, &owner.uid),
        ("VirtualMachine", Some(true), &created.uid().expect("uid"))
    );
    assert_eq!(volume.spec.image.as_deref(), Some("tiny"));
    let vstatus = volume.status.expect("status");
    assert_eq!(vstatus.host.as_deref(), Some("host-a"));
    assert_eq!(vstatus.primary_storage.as_deref(), Some("ps-1"));
    assert_eq!(vstatus.virtual_machine.as_deref(), Some("vm-1"));
    assert_eq!(vstatus.size, Some(Quantity("8Gi".into())));
    assert_eq!(condition(&vstatus.conditions, READY).1, "Attached");
    assert_eq!(
        host_view(&plane, "it.vm-1").await,
        [("it.vm-1-root".to_string(), "vda".to_string(), 8 << 30)]
    );

    vms.delete("vm-1", &DeleteParams::default())
        .await
        .expect("delete");
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    wait_for(&client, "the root volume to go with its VM", || async {
        volumes
            .get_opt("vm-1-root")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_volume_attaches_grows_refuses_a_second_vm_and_detaches() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    create(&vms, vm("vm-a")).await;
    create(&vms, vm("vm-b")).await;
    let data = VolumeSpec {
        volume_type: VolumeType::Data,
        size: Some(Quantity("1Gi".into())),
        ..VolumeSpec::default()
    };
    create(&volumes, Volume::new("data-1", data)).await;
    let fresh = wait_volume(&client, "data-1", "ready", |s| {
        s.phase == Some(VolumePhase::Ready)
    })
    .await;
    assert_eq!(
        condition(&fresh.status.expect("status").conditions, READY).1,
        "NotInstantiated"
    );
    wait_phase(&client, "vm-a", VmPhase::Running).await;
    wait_phase(&client, "vm-b", VmPhase::Running).await;

    // Attached to the running vm-a: the host sees it as vdb.
    set_data_volumes(&client, "vm-a", &["data-1"]).await;
    let attached = wait_volume(&client, "data-1", "attached to vm-a", |s| {
        s.phase == Some(VolumePhase::Attached)
    })
    .await
    .status
    .expect("status");
    assert_eq!(attached.virtual_machine.as_deref(), Some("vm-a"));
    assert_eq!(attached.device.as_deref(), Some("vdb"));
    assert_eq!(attached.host.as_deref(), Some("host-a"));
    assert!(
        attached.path.is_some(),
        "the host reports where the disk is"
    );
    assert!(host_view(&plane, "it.vm-a").await.contains(&(
        "it.data-1".into(),
        "vdb".into(),
        1 << 30
    )));
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
        .get("vm-a")
        .await
        .expect("instance");
    assert_eq!(
        vmi.spec
            .disks
            .iter()
            .map(|d| (d.name.as_str(), d.device.as_str()))
            .collect::<Vec<_>>(),
        [("vm-a-root", "vda"), ("data-1", "vdb")]
    );

    // Grown live; a smaller size is refused, naming the field.
    volumes
        .patch(
            "data-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": "2Gi" } })),
        )
        .await
        .expect("grow");
    wait_for(&client, "the host to grow data-1", || async {
        host_view(&plane, "it.vm-a")
            .await
            .contains(&("it.data-1".into(), "vdb".into(), 2 << 30))
            .then_some(())
    })
    .await;
    volumes
        .patch(
            "data-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": "1Gi" } })),
        )
        .await
        .expect("ask to shrink");
    let refused = wait_volume(&client, "data-1", "to refuse shrinking", |s| {
        condition(&s.conditions, READY).1 == "SizeShrinkRefused"
    })
    .await
    .status
    .expect("status");
    assert_eq!(refused.size, Some(Quantity("2Gi".into())));
    assert!(
        condition(&refused.conditions, READY)
            .2
            .starts_with("spec.size 1Gi"),
        "{:?}",
        refused.conditions
    );
    volumes
        .patch(
            "data-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": "2Gi" } })),
        )
        .await
        .expect("back to its size");

    // A second VM asking for it is refused while vm-a holds it.
    set_data_volumes(&client, "vm-b", &["data-1"]).await;
    let message = wait_for(&client, "vm-b to be refused data-1", || async {
        let vm = vms.get("vm-b").await.ok()?;
        let (status, reason, message) = condition(&vm.status?.conditions, VOLUMES_READY);
        (status == "False" && reason == "VolumeInUse").then_some(message)
    })
    .await;
    assert!(message.contains("vm-a"), "{message}");
    assert!(host_view(&plane, "it.vm-b")
        .await
        .iter()
        .all(|(volume, _, _)| volume != "it.data-1"));

    // Detached from vm-a: it leaves vm-a's host view and goes to vm-b, still 2Gi.
    set_data_volumes(&client, "vm-a", &[]).await;
    let handed = wait_volume(&client, "data-1", "attached to vm-b", |s| {
        s.phase == Some(VolumePhase::Attached) && s.virtual_machine.as_deref() == Some("vm-b")
    })
    .await
    .status
    .expect("status");
    assert_eq!(handed.device.as_deref(), Some("vdb"));
    assert!(host_view(&plane, "it.vm-a")
        .await
        .iter()
        .all(|(volume, _, _)| volume != "it.data-1"));
    assert!(host_view(&plane, "it.vm-b").await.contains(&(
        "it.data-1".into(),
        "vdb".into(),
        2 << 30
    )));

    // Detached for good: Ready again, kept on its host.
    set_data_volumes(&client, "vm-b", &[]).await;
    let ready = wait_volume(&client, "data-1", "ready again", |s| {
        s.phase == Some(VolumePhase::Ready)
    })
    .await
    .status
    .expect("status");
    assert_eq!(ready.virtual_machine, None);
    assert_eq!(ready.host.as_deref(), Some("host-a"));
    assert_eq!(condition(&ready.conditions, READY).1, "Ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_volume_sized_by_a_missing_offering_says_so_until_it_exists() {
    let plane = start(&[], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    let spec = VolumeSpec {
        volume_type: VolumeType::Data,
        disk_offering: Some("data-4g".into()),
        ..VolumeSpec::default()
    };
    create(&volumes, Volume::new("data-2", spec)).await;
    let missing = wait_volume(&client, "data-2", "to miss its offering", |s| {
        condition(&s.conditions, READY).1 == "DiskOfferingNotFound"
    })
    .await;
    assert_eq!(
        condition(&missing.status.expect("status").conditions, READY).2,
        "spec.diskOffering: DiskOffering \"data-4g\" not found"
    );
    let offering = DiskOfferingSpec {
        size: Quantity("4Gi".into()),
        description: None,
    };
    create(
        &Api::all(client.clone()),
        DiskOffering::new("data-4g", offering),
    )
    .await;
    let sized = wait_volume(&client, "data-2", "sized by its offering", |s| {
        s.size == Some(Quantity("4Gi".into())) && condition(&s.conditions, READY).0 == "True"
    })
    .await;
    assert_eq!(
        sized.status.and_then(|s| s.observed_generation),
        sized.metadata.generation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_reverted_to_and_deleted_by_the_volumes_host() {
    let plane = start(&["host-a"], Duration::from_secs(10)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), NS);
    let restores: Api<VolumeRestore> = Api::namespaced(client.clone(), NS);
    let data = VolumeSpec {
        volume_type: VolumeType::Data,
        size: Some(Quantity("1Gi".into())),
        ..VolumeSpec::default()
    };
    create(&volumes, Volume::new("data-s", data)).await;
    let mut with_data = vm("vm-s");
    with_data.spec.data_volumes = vec!["data-s".into()];
    create(&Api::namespaced(client.clone(), NS), with_data).await;
    wait_volume(&client, "data-s", "attached", |s| {
        s.phase == Some(VolumePhase::Attached)
    })
    .await;
    let host = &plane.drivers[0];
    host.write_volume("it.data-s", "before");

    let snapshot = |name: &str| {
        VolumeSnapshot::new(
            name,
            VolumeSnapshotSpec {
                volume: "data-s".into(),
                description: None,
            },
        )
    };
    create(&snapshots, snapshot("snap-1")).await;
    let taken = wait_for(&client, "snap-1 to be taken", || async {
        let s = snapshots.get("snap-1").await.ok()?.status?;
        (s.phase == Some(SnapshotPhase::Ready)).then_some(s)
    })
    .await;
    assert_eq!(taken.host.as_deref(), Some("host-a"));
    assert_eq!(taken.size, Some(Quantity((1u64 << 30).to_string())));
    host.write_volume("it.data-s", "after");

    let restore = |name: &str, snapshot: &str| {
        VolumeRestore::new(
            name,
            VolumeRestoreSpec {
                volume: "data-s".into(),
                snapshot: snapshot.into(),
            },
        )
    };
    create(&restores, restore("back", "snap-1")).await;
    wait_for(&client, "the restore to succeed", || async {
        let s = restores.get("back").await.ok()?.status?;
        (s.phase == Some(RestorePhase::Succeeded)).then_some(())
    })
    .await;
    assert_eq!(host.volume_content("it.data-s").as_deref(), Some("before"));

    create(&restores, restore("nowhere", "no-such-snapshot")).await;
    let failed = wait_for(&client, "the bad restore to fail", || async {
        let s = restores.get("nowhere").await.ok()?.status?;
        (s.phase == Some(RestorePhase::Failed)).then_some(s)
    })
    .await;
    assert_eq!(
        condition(&failed.conditions, READY).2,
        "spec.snapshot: VolumeSnapshot \"no-such-snapshot\" not found"
    );

    snapshots
        .delete("snap-1", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&client, "snap-1 to go", || async {
        snapshots
            .get_opt("snap-1")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let disks = host.disks("it.vm-s").await.expect("disks");
    let data_disk = disks
        .iter()
        .find(|d| d.volume == "it.data-s")
        .expect("still attached");
    assert!(data_disk.snapshots.is_empty(), "{:?}", data_disk.snapshots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_a_host_gone_for_good_is_not_stuck_in_deletion() {
    let plane = start(&["host-a"], Duration::from_secs(1)).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let volumes: Api<Volume> = Api::namespaced(client.clone(), NS);
    let data = VolumeSpec {
        volume_type: VolumeType::Data,
        size: Some(Quantity("1Gi".into())),
        ..VolumeSpec::default()
    };
    create(&volumes, Volume::new("data-1", data)).await;
    create(&vms, vm("vm-a")).await;
    wait_phase(&client, "vm-a", VmPhase::Running).await;
    set_data_volumes(&client, "vm-a", &["data-1"]).await;
    wait_volume(&client, "data-1", "attached", |s| {
        s.phase == Some(VolumePhase::Attached)
    })
    .await;
    set_data_volumes(&client, "vm-a", &[]).await;
    wait_volume(&client, "data-1", "detached", |s| {
        s.phase == Some(VolumePhase::Ready)
    })
    .await;
    let held = volumes.get("data-1").await.expect("volume");
    assert!(
        held.finalizers().iter().any(|f| f == HOST_DISK_FINALIZER),
        "the host's agent holds the disk: {:?}",
        held.finalizers()
    );

    // The host is gone for good: its agent stops and its Host is deleted.
    for task in &plane.tasks[2..] {
        task.abort();
    }
    Api::<Host>::all(client.clone())
        .delete("host-a", &DeleteParams::default())
        .await
        .expect("delete the host");
    volumes
        .delete("data-1", &DeleteParams::default())
        .await
        .expect("delete the volume");
    wait_for(&client, "data-1 to be gone", || async {
        volumes
            .get_opt("data-1")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}
