//! The "allocate volumes" step of a VM (ZStack's create-VM flow: host → volumes → NICs): its
//! root Volume, created here and owned by the VM on the primary storage chosen with the host,
//! and the data volumes `spec.dataVolumes` lists, resolved into the instance's disks and
//! reported in `status.volumes` (root first) and the `VolumesReady` condition.
//!
//! Which VM holds a data volume is the Volume controller's decision (`Volume.status
//! .virtualMachine`); this step only takes the volumes given to this VM. A data volume that
//! cannot be attached does not stop the VM: `VolumesReady` says why, and the VM runs with
//! the disks it has. A root volume that cannot be created does.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::api::resource::Quantity, jiff::Timestamp};
use kube::{
    api::{ListParams, ObjectMeta, PostParams},
    runtime::reflector::ObjectRef,
    Api, Resource, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::VOLUMES_READY, RestorePhase, SnapshotPhase, VirtualMachine, VirtualMachineStatus,
    VmVolumeStatus, VmiDisk, VmiRevert, Volume, VolumeRestore, VolumeSnapshot, VolumeSpec,
    VolumeType,
};

use super::{vm_key, Problem, Resolved};
use crate::{
    conditions::{self, Desired},
    events::{self, Transition},
    Context, Error,
};

/// The serial the guest sees on its root disk (`/dev/disk/by-id/virtio-root`).
const ROOT_SERIAL: &str = "root";

/// What a VM's name is followed by in its root Volume's name.
const ROOT_SUFFIX: &str = "-root";

/// The name of `vm`'s root Volume.
pub(crate) fn root_name(vm_name: &str) -> String {
    format!("{vm_name}{ROOT_SUFFIX}")
}

/// Whether `volume` is the root Volume of the VM named `vm_name`.
pub(crate) fn is_root_of(volume: &str, vm_name: &str) -> bool {
    volume.strip_suffix(ROOT_SUFFIX) == Some(vm_name)
}

/// The VM `volume` is the root Volume of, if it is one.
pub(crate) fn root_owner(volume: &Volume) -> Option<ObjectRef<VirtualMachine>> {
    if volume.spec.volume_type != VolumeType::Root {
        return None;
    }
    let vm = volume.metadata.name.as_deref()?.strip_suffix(ROOT_SUFFIX)?;
    Some(ObjectRef::new(vm).within(volume.metadata.namespace.as_deref()?))
}

/// Whether the volume `name` of `namespace` is (or could become) one of `vm`'s disks. Asked of
/// every VM on every volume event, so it allocates nothing.
pub(crate) fn uses(vm: &VirtualMachine, namespace: Option<&str>, name: &str) -> bool {
    vm.metadata.namespace.as_deref() == namespace
        && (vm
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| is_root_of(name, n))
            || vm.spec.data_volumes.iter().any(|v| v == name)
            || vm
                .status
                .as_ref()
                .is_some_and(|s| s.volumes.iter().any(|v| v.name == name)))
}

/// `current` with the root volume's primary storage recorded, for the status write that
/// places the VM: the storage is chosen with the host and written with it, once.
pub(crate) fn placed(
    current: &VirtualMachineStatus,
    vm: &VirtualMachine,
    storage: Option<String>,
) -> VirtualMachineStatus {
    let mut status = current.clone();
    status.volumes = vec![VmVolumeStatus {
        name: root_name(&vm.name_any()),
        volume_type: VolumeType::Root,
        device: Some(device(0)),
        primary_storage: storage,
    }];
    status
}

/// The `index`th virtio disk: `vda` for the root, then `vdb` … (the API allows 24 data
/// volumes, so one letter suffices).
fn device(index: usize) -> String {
    let letter = u8::try_from(index).map_or(b'z', |i| b'a'.saturating_add(i).min(b'z'));
    format!("vd{}", char::from(letter))
}

/// What the step produced: the VM's status with `volumes` and `VolumesReady` as written, and
/// the instance's disks.
pub(crate) struct Allocated {
    pub status: VirtualMachineStatus,
    pub disks: Vec<VmiDisk>,
}

/// Ensures the root Volume exists, resolves the data volumes and writes what changed in
/// `status.volumes` and `VolumesReady`. `Err(Problem)` when the root volume cannot be had.
pub(crate) async fn allocate(
    ctx: &Context,
    vm: &VirtualMachine,
    resolved: &Resolved,
    current: &VirtualMachineStatus,
) -> Result<Result<Allocated, Problem>, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let api: Api<Volume> = Api::namespaced(ctx.client.clone(), &namespace);
    let recorded_root = current
        .volumes
        .first()
        .filter(|v| v.volume_type == VolumeType::Root);
    let storage = recorded_root.and_then(|v| v.primary_storage.clone());
    let root = match ensure_root(&api, vm, resolved, storage.clone()).await? {
        Ok(root) => root,
        Err(problem) => return Ok(Err(problem)),
    };

    let mut disks = vec![VmiDisk {
        name: root.name_any(),
        volume_type: VolumeType::Root,
        device: device(0),
        serial: ROOT_SERIAL.into(),
        size: size_of(&root),
        ..VmiDisk::default()
    }];
    let plan = snapshot_plan(ctx, &namespace).await?;
    let mut volumes = vec![VmVolumeStatus {
        name: root.name_any(),
        volume_type: VolumeType::Root,
        device: Some(device(0)),
        primary_storage: storage.or_else(|| root.spec.primary_storage.clone()),
    }];
    let mut waiting = Vec::new();
    for name in &vm.spec.data_volumes {
        let volume = api.get_opt(name).await.map_err(|source| Error::Get {
            kind: "Volume".into(),
            name: format!("{namespace}/{name}"),
            source,
        })?;
        match attachable(vm, volume.as_ref(), name) {
            Ok(volume) => {
                let device = current
                    .volumes
                    .iter()
                    .find(|v| v.name == *name)
                    .and_then(|v| v.device.clone())
                    .unwrap_or_else(|| free_device(&volumes));
                volumes.push(VmVolumeStatus {
                    name: name.clone(),
                    volume_type: VolumeType::Data,
                    device: Some(device.clone()),
                    primary_storage: volume
                        .status
                        .as_ref()
                        .and_then(|s| s.primary_storage.clone()),
                });
                disks.push(VmiDisk {
                    name: name.clone(),
                    volume_type: VolumeType::Data,
                    device,
                    serial: serial(volume),
                    size: size_of(volume),
                    ..VmiDisk::default()
                });
            }
            Err(problem) => waiting.push(problem),
        }
    }

    for disk in &mut disks {
        disk.snapshots = plan.snapshots.get(&disk.name).cloned().unwrap_or_default();
        disk.revert = plan.reverts.get(&disk.name).cloned();
    }

    let ready = match waiting.first() {
        None => Desired::new(
            VOLUMES_READY,
            true,
            "VolumesAllocated",
            format!(
                "root volume {} and {} data volume(s)",
                root.name_any(),
                volumes.len() - 1
            ),
        ),
        Some(first) => Desired::new(
            VOLUMES_READY,
            false,
            first.reason,
            waiting
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let mut status = current.clone();
    status.volumes = volumes;
    conditions::set(
        &mut status.conditions,
        ready,
        vm.metadata.generation,
        Timestamp::now(),
    );
    if status.volumes != current.volumes || status.conditions != current.conditions {
        write(ctx, vm, &status).await?;
        events::publish(&ctx.recorder, vm, transitions(current, &status)).await;
    }
    Ok(Ok(Allocated { status, disks }))
}

/// What the hosts must make true of the snapshots of a namespace's volumes.
#[derive(Debug, Default, PartialEq)]
struct SnapshotPlan {
    /// The VolumeSnapshots (not being deleted) of each volume, by name.
    snapshots: BTreeMap<String, Vec<String>>,
    /// The revert each volume owes its oldest unfinished VolumeRestore, once the snapshot it
    /// names is taken.
    reverts: BTreeMap<String, VmiRevert>,
}

async fn snapshot_plan(ctx: &Context, namespace: &str) -> Result<SnapshotPlan, Error> {
    let failed = |kind| {
        move |source| Error::List {
            kind,
            owner: namespace.to_string(),
            source,
        }
    };
    let snapshots = Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(failed("VolumeSnapshot"))?;
    let restores = Api::<VolumeRestore>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(failed("VolumeRestore"))?;
    Ok(plan(&snapshots.items, &restores.items))
}

/// Pure: the plan for `snapshots` and `restores`.
fn plan(snapshots: &[VolumeSnapshot], restores: &[VolumeRestore]) -> SnapshotPlan {
    let mut plan = SnapshotPlan::default();
    for snapshot in snapshots
        .iter()
        .filter(|s| s.meta().deletion_timestamp.is_none())
    {
        plan.snapshots
            .entry(snapshot.spec.volume.clone())
            .or_default()
            .push(snapshot.name_any());
    }
    for list in plan.snapshots.values_mut() {
        list.sort();
    }
    let taken = |name: &str, volume: &str| {
        snapshots.iter().any(|s| {
            s.name_any() == name
                && s.spec.volume == volume
                && s.status.as_ref().and_then(|s| s.phase) == Some(SnapshotPhase::Ready)
        })
    };
    let mut pending: Vec<&VolumeRestore> = restores
        .iter()
        .filter(|r| {
            r.status.as_ref().and_then(|s| s.phase).unwrap_or_default() == RestorePhase::InProgress
        })
        .filter(|r| taken(&r.spec.snapshot, &r.spec.volume))
        .collect();
    pending.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    });
    for restore in pending {
        plan.reverts
            .entry(restore.spec.volume.clone())
            .or_insert_with(|| VmiRevert {
                snapshot: restore.spec.snapshot.clone(),
                request: restore.uid().unwrap_or_default(),
            });
    }
    plan
}

/// The root Volume of `vm`, created if absent (owned by the VM, so deleting the VM removes it).
async fn ensure_root(
    api: &Api<Volume>,
    vm: &VirtualMachine,
    resolved: &Resolved,
    storage: Option<String>,
) -> Result<Result<Volume, Problem>, Error> {
    let name = root_name(&vm.name_any());
    let key = format!("{}/{name}", vm.namespace().unwrap_or_default());
    let existing = api.get_opt(&name).await.map_err(|source| Error::Get {
        kind: "Volume".into(),
        name: key.clone(),
        source,
    })?;
    let volume = match existing {
        Some(volume) => volume,
        None => {
            let size = vm.spec.root_disk_size.clone().or_else(|| {
                resolved
                    .image_virtual_size
                    .map(|bytes| Quantity(bytes.to_string()))
            });
            let root = Volume {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: vm.namespace(),
                    owner_references: vm.controller_owner_ref(&()).map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                spec: VolumeSpec {
                    volume_type: VolumeType::Root,
                    size,
                    image: Some(vm.spec.image.clone()),
                    primary_storage: storage,
                    ..VolumeSpec::default()
                },
                status: None,
            };
            match api.create(&PostParams::default(), &root).await {
                Ok(created) => created,
                // Created by an earlier reconcile the cache did not show: read it back.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    api.get(&name).await.map_err(|source| Error::Get {
                        kind: "Volume".into(),
                        name: key.clone(),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(Error::CreateVolume {
                        volume: key,
                        source,
                    })
                }
            }
        }
    };
    let owned = volume
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == vm.uid().as_ref());
    if !owned {
        return Ok(Err(Problem::new(
            "RootVolumeConflict",
            format!("Volume {name:?} exists and is not this VM's root volume"),
        )));
    }
    Ok(Ok(volume))
}

/// The data volume `name` if it is given to `vm`, else why not.
fn attachable<'a>(
    vm: &VirtualMachine,
    volume: Option<&'a Volume>,
    name: &str,
) -> Result<&'a Volume, Problem> {
    let Some(volume) = volume else {
        return Err(Problem::new(
            "VolumeNotFound",
            format!("spec.dataVolumes: Volume {name:?} not found"),
        ));
    };
    if volume.spec.volume_type == VolumeType::Root {
        return Err(Problem::new(
            "VolumeNotData",
            format!("spec.dataVolumes: Volume {name:?} is a Root volume"),
        ));
    }
    if volume.meta().deletion_timestamp.is_some() {
        return Err(Problem::new(
            "VolumeDeleting",
            format!("spec.dataVolumes: Volume {name:?} is being deleted"),
        ));
    }
    let status = volume.status.clone().unwrap_or_default();
    match status.virtual_machine.as_deref() {
        Some(holder) if holder == vm.name_any() => {}
        Some(holder) => {
            return Err(Problem::new(
                "VolumeInUse",
                format!(
                    "spec.dataVolumes: Volume {name:?} is attached to VirtualMachine {holder:?}"
                ),
            ))
        }
        None => {
            return Err(Problem::new(
                "VolumeAttaching",
                format!("spec.dataVolumes: Volume {name:?} is not given to this VM yet"),
            ))
        }
    }
    let vm_host = vm.status.as_ref().and_then(|s| s.host.as_deref());
    if let (Some(on), Some(host)) = (status.host.as_deref(), vm_host) {
        if on != host {
            return Err(Problem::new(
                "VolumeOnOtherHost",
                format!(
                    "spec.dataVolumes: Volume {name:?} is on the local storage of host {on}, \
                     the VM runs on {host}"
                ),
            ));
        }
    }
    if status.size.is_none() {
        return Err(Problem::new(
            "VolumeNotReady",
            format!("spec.dataVolumes: Volume {name:?} has no size yet (see its Ready condition)"),
        ));
    }
    Ok(volume)
}

/// The size the Volume controller settled on (a refused shrink keeps the old one), else the
/// requested one. A root volume asked for no size takes its image's: the size its disk then
/// reports is not a request, and passing it on would change the instance's spec under a
/// running (or just stopped) domain.
fn size_of(volume: &Volume) -> Option<Quantity> {
    let settled = volume.status.as_ref().and_then(|s| s.size.clone());
    match volume.spec.volume_type {
        VolumeType::Root => volume
            .spec
            .size
            .as_ref()
            .map(|asked| settled.unwrap_or_else(|| asked.clone())),
        VolumeType::Data => settled.or_else(|| volume.spec.size.clone()),
    }
}

/// A serial that names the volume for the guest: its uid's first 20 hex digits (virtio's limit).
fn serial(volume: &Volume) -> String {
    volume
        .uid()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(20)
        .collect()
}

/// The lowest device no volume of `volumes` uses.
fn free_device(volumes: &[VmVolumeStatus]) -> String {
    (1..)
        .map(device)
        .find(|d| !volumes.iter().any(|v| v.device.as_ref() == Some(d)))
        .unwrap_or_else(|| device(25))
}

async fn write(
    ctx: &Context,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
) -> Result<(), Error> {
    let api =
        Api::<VirtualMachine>::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let patch = json!({
        "volumes": status.volumes,
        "conditions": status.conditions,
    });
    let written =
        crate::context::patched_status(&api, "VirtualMachine", &vm.name_any(), vm_key(vm), &patch)
            .await?;
    ctx.written_vms.record(vm_key(vm), written);
    Ok(())
}

/// Events for volumes attached, detached, and `VolumesReady` turning False for a new reason.
fn transitions(old: &VirtualMachineStatus, new: &VirtualMachineStatus) -> Vec<Transition> {
    let names = |s: &VirtualMachineStatus| -> Vec<(String, Option<String>)> {
        s.volumes
            .iter()
            .filter(|v| v.volume_type == VolumeType::Data)
            .map(|v| (v.name.clone(), v.device.clone()))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    let mut events: Vec<Transition> = after
        .iter()
        .filter(|v| !before.contains(v))
        .map(|(name, device)| {
            Transition::normal(
                "VolumeAttached",
                format!("Volume {name} as {}", device.as_deref().unwrap_or("?")),
            )
        })
        .collect();
    events.extend(
        before
            .iter()
            .filter(|v| !after.contains(v))
            .map(|(name, _)| Transition::normal("VolumeDetached", format!("Volume {name}"))),
    );
    let old_ready = conditions::get(&old.conditions, VOLUMES_READY);
    if let Some(ready) = conditions::get(&new.conditions, VOLUMES_READY) {
        let changed =
            old_ready.is_none_or(|o| o.reason != ready.reason || o.status != ready.status);
        if changed && ready.status == "False" {
            events.push(Transition::warning(
                ready.reason.clone(),
                ready.message.clone(),
            ));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, holder: Option<&str>, host: Option<&str>) -> Volume {
        let mut v = Volume::new(
            name,
            VolumeSpec {
                size: Some(Quantity("1Gi".into())),
                ..VolumeSpec::default()
            },
        );
        v.status = Some(strata_apis::VolumeStatus {
            virtual_machine: holder.map(str::to_string),
            host: host.map(str::to_string),
            size: Some(Quantity("1Gi".into())),
            ..Default::default()
        });
        v
    }

    fn vm_on(host: &str) -> VirtualMachine {
        let mut vm = VirtualMachine::new("a", Default::default());
        vm.status = Some(VirtualMachineStatus {
            host: Some(host.into()),
            ..Default::default()
        });
        vm
    }

    #[test]
    fn only_a_volume_given_to_this_vm_on_its_host_is_attached() {
        let vm = vm_on("h1");
        let reason = |v: Option<&Volume>| attachable(&vm, v, "d").err().map(|p| p.reason);
        assert_eq!(reason(None), Some("VolumeNotFound"));
        assert_eq!(
            reason(Some(&volume("d", Some("b"), None))),
            Some("VolumeInUse")
        );
        assert_eq!(
            reason(Some(&volume("d", None, None))),
            Some("VolumeAttaching")
        );
        assert_eq!(
            reason(Some(&volume("d", Some("a"), Some("h2")))),
            Some("VolumeOnOtherHost")
        );
        assert_eq!(reason(Some(&volume("d", Some("a"), Some("h1")))), None);
        assert_eq!(reason(Some(&volume("d", Some("a"), None))), None);
        let message = attachable(&vm, Some(&volume("d", Some("b"), None)), "d")
            .err()
            .map(|p| p.message);
        assert_eq!(
            message.as_deref(),
            Some("spec.dataVolumes: Volume \"d\" is attached to VirtualMachine \"b\"")
        );
    }

    #[test]
    fn a_restore_waits_for_its_snapshot_and_goes_in_order() {
        let snapshot = |name: &str, phase| {
            let mut s = VolumeSnapshot::new(
                name,
                strata_apis::VolumeSnapshotSpec {
                    volume: "d".into(),
                    description: None,
                },
            );
            s.status = Some(strata_apis::VolumeSnapshotStatus {
                phase: Some(phase),
                ..Default::default()
            });
            s
        };
        let restore = |name: &str, snapshot: &str, phase| {
            let mut r = VolumeRestore::new(
                name,
                strata_apis::VolumeRestoreSpec {
                    volume: "d".into(),
                    snapshot: snapshot.into(),
                },
            );
            r.metadata.uid = Some(format!("uid-{name}"));
            r.status = Some(strata_apis::VolumeRestoreStatus {
                phase,
                ..Default::default()
            });
            r
        };
        let snapshots = [
            snapshot("s2", SnapshotPhase::Creating),
            snapshot("s1", SnapshotPhase::Ready),
        ];
        let restores = [
            restore("done", "s1", Some(RestorePhase::Succeeded)),
            restore("early", "s2", None),
            restore("late", "s1", None),
        ];
        let plan = plan(&snapshots, &restores);
        assert_eq!(plan.snapshots["d"], ["s1", "s2"]);
        assert_eq!(
            plan.reverts["d"],
            VmiRevert {
                snapshot: "s1".into(),
                request: "uid-late".into()
            },
            "s2 is not taken yet; the finished restore is not done again"
        );
    }

    #[test]
    fn a_vm_uses_its_root_and_its_data_volumes_in_its_namespace() {
        let mut vm = VirtualMachine::new("web", Default::default());
        vm.metadata.namespace = Some("ns".into());
        vm.spec.data_volumes = vec!["data".into()];
        let ns = Some("ns");
        assert!(uses(&vm, ns, "web-root"));
        assert!(uses(&vm, ns, "data"));
        assert!(!uses(&vm, ns, "web2-root"));
        assert!(!uses(&vm, ns, "other"));
        assert!(!uses(&vm, Some("elsewhere"), "web-root"));
        assert!(is_root_of(&root_name("web"), "web"));
        let mut root = Volume::new(
            "web-root",
            VolumeSpec {
                volume_type: VolumeType::Root,
                ..VolumeSpec::default()
            },
        );
        root.metadata.namespace = Some("ns".into());
        assert_eq!(root_owner(&root), Some(ObjectRef::new("web").within("ns")));
        root.spec.volume_type = VolumeType::Data;
        assert_eq!(root_owner(&root), None, "a data volume may be any VM's");
    }

    #[test]
    fn devices_stay_and_new_ones_take_the_lowest_free() {
        assert_eq!(device(0), "vda");
        assert_eq!(device(24), "vdy");
        let held = |d: &str| VmVolumeStatus {
            device: Some(d.into()),
            ..VmVolumeStatus::default()
        };
        assert_eq!(free_device(&[held("vda"), held("vdc")]), "vdb");
        assert_eq!(free_device(&[held("vda"), held("vdb")]), "vdc");
    }
}
