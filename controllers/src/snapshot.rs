//! VolumeSnapshot and VolumeRestore controllers: they report what the volume's host did.
//!
//! The decisions reach the host through the instance of the VM holding the volume: the VM
//! controller lists every VolumeSnapshot of a volume not being deleted in the disk's
//! `snapshots`, and the oldest unfinished VolumeRestore whose snapshot is taken in its
//! `revert` (see `vm/volumes.rs`); the host takes, drops and reverts, and reports the
//! snapshots a disk holds and the last revert it made in the instance's `status.disks`.
//! Here a snapshot turns `Ready` once its disk reports it (the finalizer waits for the disk
//! to drop it), and a restore `Succeeded` once its disk reports its revert. A volume attached
//! to no running VM has no host acting for it: its snapshots and restores wait, saying so.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, Resource, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY, RestorePhase, SnapshotPhase, VirtualMachineInstance, VmiDiskStatus, Volume,
    VolumeRestore, VolumeRestoreStatus, VolumeSnapshot, VolumeSnapshotStatus,
};

use crate::{
    conditions::{self, Desired},
    events::{self, Transition},
    Context, Error,
};

/// Held until the volume's host has dropped the snapshot.
pub(crate) const SNAPSHOT_FINALIZER: &str = "strata.io/snapshot-cleanup";
/// How soon a snapshot being deleted looks again at its host.
const WAIT_RETRY: Duration = Duration::from_secs(2);

/// Wakes the objects of `store` in the namespace of `object` whose volume `volume` picks.
fn of_volumes<K, O>(
    store: &Store<K>,
    object: &O,
    volume: impl Fn(&K) -> &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
    O: Resource,
{
    store
        .state()
        .iter()
        .filter(|k| k.meta().namespace == object.meta().namespace)
        .filter(|k| wanted(volume(k)))
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// The names of the volumes an instance has or reports.
fn instance_volumes(vmi: &VirtualMachineInstance) -> Vec<String> {
    let reported = vmi
        .status
        .iter()
        .flat_map(|s| &s.disks)
        .map(|d| d.name.clone());
    vmi.spec
        .disks
        .iter()
        .map(|d| d.name.clone())
        .chain(reported)
        .collect()
}

pub(crate) fn snapshots(client: &Client) -> Controller<VolumeSnapshot> {
    let controller = Controller::new(
        Api::<VolumeSnapshot>::all(client.clone()),
        watcher::Config::default(),
    );
    let (by_volume, by_instance) = (controller.store(), controller.store());
    controller
        .watches(
            Api::<Volume>::all(client.clone()),
            watcher::Config::default(),
            move |v| of_volumes(&by_volume, &v, |s| &s.spec.volume, |n| n == v.name_any()),
        )
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            move |vmi| {
                let names = instance_volumes(&vmi);
                of_volumes(
                    &by_instance,
                    &vmi,
                    |s| &s.spec.volume,
                    |n| names.iter().any(|v| v == n),
                )
            },
        )
}

pub(crate) fn restores(client: &Client) -> Controller<VolumeRestore> {
    let controller = Controller::new(
        Api::<VolumeRestore>::all(client.clone()),
        watcher::Config::default(),
    );
    let (by_snapshot, by_instance) = (controller.store(), controller.store());
    controller
        .watches(
            Api::<VolumeSnapshot>::all(client.clone()),
            watcher::Config::default(),
            move |s| {
                let name = s.name_any();
                of_volumes(&by_snapshot, &s, |r| &r.spec.snapshot, |n| n == name)
            },
        )
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            move |vmi| {
                let names = instance_volumes(&vmi);
                of_volumes(
                    &by_instance,
                    &vmi,
                    |r| &r.spec.volume,
                    |n| names.iter().any(|v| v == n),
                )
            },
        )
}

fn key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Where the volume `name` is, as far as its snapshots care.
enum Holder {
    /// No such Volume.
    Missing,
    /// The volume, and the disk the instance of the VM holding it reports (None when it is
    /// attached to no instance).
    Volume(Box<Volume>, Option<VmiDiskStatus>),
}

async fn holder(ctx: &Context, namespace: &str, name: &str) -> Result<Holder, Error> {
    let volume = Api::<Volume>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::Get {
            kind: "Volume".into(),
            name: format!("{namespace}/{name}"),
            source,
        })?;
    let Some(volume) = volume else {
        return Ok(Holder::Missing);
    };
    let vm = volume
        .status
        .as_ref()
        .and_then(|s| s.virtual_machine.clone());
    let disk = match vm {
        Some(vm) => Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&vm)
            .await
            .map_err(|source| Error::Get {
                kind: "VirtualMachineInstance".into(),
                name: format!("{namespace}/{vm}"),
                source,
            })?
            .and_then(|vmi| vmi.status)
            .and_then(|s| s.disks.into_iter().find(|d| d.name == name)),
        None => None,
    };
    Ok(Holder::Volume(Box::new(volume), disk))
}

pub(crate) async fn reconcile_snapshot(
    snapshot: Arc<VolumeSnapshot>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = key(snapshot.as_ref());
    let api: Api<VolumeSnapshot> = Api::namespaced(
        ctx.client.clone(),
        snapshot.namespace().as_deref().unwrap_or_default(),
    );
    let action = finalizer(&api, SNAPSHOT_FINALIZER, snapshot, |event| async {
        match event {
            Event::Apply(s) => apply_snapshot(&ctx, &api, &s, false).await,
            Event::Cleanup(s) => apply_snapshot(&ctx, &api, &s, true).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        kind: "VolumeSnapshot",
        name: name.clone(),
        source: Box::new(source),
    })?;
    ctx.succeeded("VolumeSnapshot", &name);
    Ok(action)
}

async fn apply_snapshot(
    ctx: &Context,
    api: &Api<VolumeSnapshot>,
    snapshot: &VolumeSnapshot,
    deleting: bool,
) -> Result<Action, Error> {
    let namespace = snapshot.namespace().unwrap_or_default();
    let holder = holder(ctx, &namespace, &snapshot.spec.volume).await?;
    let status = snapshot_status(snapshot, &holder, deleting, Timestamp::now());
    let current = snapshot.status.clone().unwrap_or_default();
    if status != current {
        api.patch_status(
            &snapshot.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|source| Error::UpdateStatus {
            kind: "VolumeSnapshot",
            name: key(snapshot),
            source,
        })?;
        events::publish(&ctx.recorder, snapshot, snapshot_events(&current, &status)).await;
    }
    let held = matches!(&holder, Holder::Volume(_, Some(disk))
        if disk.snapshots.iter().any(|s| *s == snapshot.name_any()));
    if deleting && held {
        return Err(Error::Waiting {
            what: format!("VolumeSnapshot {}", key(snapshot)),
            until: "its host to delete it",
        });
    }
    Ok(Action::await_change())
}

/// The status of `snapshot` given where its volume is. Pure.
fn snapshot_status(
    snapshot: &VolumeSnapshot,
    holder: &Holder,
    deleting: bool,
    now: Timestamp,
) -> VolumeSnapshotStatus {
    let mut status = snapshot.status.clone().unwrap_or_default();
    let generation = snapshot.metadata.generation;
    status.observed_generation = generation;
    let volume = &snapshot.spec.volume;
    let (phase, ready) = match holder {
        _ if deleting => (
            SnapshotPhase::Deleting,
            Desired::new(
                READY,
                false,
                "Deleting",
                "waiting for the host to delete it",
            ),
        ),
        Holder::Missing => (
            status.phase.unwrap_or_default(),
            Desired::new(
                READY,
                false,
                "VolumeNotFound",
                format!("spec.volume: Volume {volume:?} not found"),
            ),
        ),
        Holder::Volume(v, disk) => {
            let host = v.status.as_ref().and_then(|s| s.host.clone());
            status.primary_storage = v.status.as_ref().and_then(|s| s.primary_storage.clone());
            status.host.clone_from(&host);
            match disk {
                Some(d) if d.snapshots.iter().any(|s| *s == snapshot.name_any()) => {
                    if status.phase != Some(SnapshotPhase::Ready) {
                        status.size = Some(d.size.clone());
                    }
                    (
                        SnapshotPhase::Ready,
                        Desired::new(
                            READY,
                            true,
                            "Taken",
                            format!(
                                "held in Volume {volume}'s disk on host {}",
                                host.as_deref().unwrap_or("?")
                            ),
                        ),
                    )
                }
                // Taken once, the snapshot lives in the disk even while nothing runs it.
                _ if status.phase == Some(SnapshotPhase::Ready) => (
                    SnapshotPhase::Ready,
                    conditions::get(&status.conditions, READY).map_or_else(
                        || Desired::new(READY, true, "Taken", "taken"),
                        |c| Desired::new(READY, true, "Taken", c.message.clone()),
                    ),
                ),
                Some(_) => (
                    SnapshotPhase::Creating,
                    Desired::new(
                        READY,
                        false,
                        "Creating",
                        format!(
                            "waiting for host {} to take it",
                            host.as_deref().unwrap_or("?")
                        ),
                    ),
                ),
                None => (
                    SnapshotPhase::Creating,
                    Desired::new(
                        READY,
                        false,
                        "VolumeNotAttached",
                        format!(
                            "Volume {volume:?} is attached to no running VM; the host of the VM \
                             it is next attached to takes the snapshot"
                        ),
                    ),
                ),
            }
        }
    };
    status.phase = Some(phase);
    conditions::set(&mut status.conditions, ready, generation, now);
    status
}

fn snapshot_events(old: &VolumeSnapshotStatus, new: &VolumeSnapshotStatus) -> Vec<Transition> {
    if old.phase == new.phase {
        return Vec::new();
    }
    match new.phase {
        Some(SnapshotPhase::Ready) => vec![Transition::normal(
            "SnapshotTaken",
            conditions::get(&new.conditions, READY)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        )],
        _ => Vec::new(),
    }
}

pub(crate) async fn reconcile_restore(
    restore: Arc<VolumeRestore>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = key(restore.as_ref());
    let current = restore.status.clone().unwrap_or_default();
    // A finished restore is a record.
    if matches!(
        current.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    let namespace = restore.namespace().unwrap_or_default();
    let snapshot = Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&restore.spec.snapshot)
        .await
        .map_err(|source| Error::Get {
            kind: "VolumeSnapshot".into(),
            name: format!("{namespace}/{}", restore.spec.snapshot),
            source,
        })?;
    let holder = holder(ctx.as_ref(), &namespace, &restore.spec.volume).await?;
    let status = restore_status(&restore, snapshot.as_ref(), &holder, Timestamp::now());
    if status != current {
        Api::<VolumeRestore>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &restore.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|source| Error::UpdateStatus {
                kind: "VolumeRestore",
                name: name.clone(),
                source,
            })?;
        if status.phase != current.phase {
            let ready = conditions::get(&status.conditions, READY);
            let message = ready.map(|c| c.message.clone()).unwrap_or_default();
            let transition = match status.phase {
                Some(RestorePhase::Succeeded) => Some(Transition::normal("Restored", message)),
                Some(RestorePhase::Failed) => Some(Transition::warning(
                    ready.map_or("Failed", |c| c.reason.as_str()),
                    message,
                )),
                _ => None,
            };
            events::publish(
                &ctx.recorder,
                restore.as_ref(),
                transition.into_iter().collect(),
            )
            .await;
        }
    }
    ctx.succeeded("VolumeRestore", &name);
    Ok(Action::await_change())
}

pub(crate) fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    if error.category() == "waiting" {
        return Action::requeue(WAIT_RETRY);
    }
    Action::requeue(ctx.failed(&K::kind(&()), &key(object.as_ref()), error))
}

/// The status of `restore`. Pure.
fn restore_status(
    restore: &VolumeRestore,
    snapshot: Option<&VolumeSnapshot>,
    holder: &Holder,
    now: Timestamp,
) -> VolumeRestoreStatus {
    let mut status = restore.status.clone().unwrap_or_default();
    let generation = restore.metadata.generation;
    status.observed_generation = generation;
    let (volume, wanted) = (&restore.spec.volume, &restore.spec.snapshot);
    let failed = |reason: &str, message: String| {
        (
            RestorePhase::Failed,
            Desired::new(READY, false, reason, message),
        )
    };
    let waiting = |reason: &str, message: String| {
        (
            RestorePhase::InProgress,
            Desired::new(READY, false, reason, message),
        )
    };
    let (phase, ready) = match (snapshot, holder) {
        (None, _) => failed(
            "SnapshotNotFound",
            format!("spec.snapshot: VolumeSnapshot {wanted:?} not found"),
        ),
        (Some(s), _) if s.spec.volume != *volume => failed(
            "SnapshotOfOtherVolume",
            format!(
                "spec.snapshot: VolumeSnapshot {wanted:?} is of Volume {:?}, not {volume:?}",
                s.spec.volume
            ),
        ),
        (_, Holder::Missing) => failed(
            "VolumeNotFound",
            format!("spec.volume: Volume {volume:?} not found"),
        ),
        (Some(s), _) if s.status.as_ref().and_then(|s| s.phase) != Some(SnapshotPhase::Ready) => {
            waiting(
                "SnapshotNotReady",
                format!("waiting for VolumeSnapshot {wanted:?} to be taken"),
            )
        }
        (_, Holder::Volume(_, None)) => waiting(
            "VolumeNotAttached",
            format!(
                "Volume {volume:?} is attached to no running VM; the host of the VM it is next \
                 attached to reverts it"
            ),
        ),
        (_, Holder::Volume(_, Some(disk))) if disk.reverted == restore.uid() => (
            RestorePhase::Succeeded,
            Desired::new(
                READY,
                true,
                "Restored",
                format!("Volume {volume} reverted to VolumeSnapshot {wanted}"),
            ),
        ),
        (_, Holder::Volume(v, Some(_))) => waiting(
            "Reverting",
            format!(
                "waiting for host {} to revert it",
                v.status
                    .as_ref()
                    .and_then(|s| s.host.as_deref())
                    .unwrap_or("?")
            ),
        ),
    };
    status.phase = Some(phase);
    conditions::set(&mut status.conditions, ready, generation, now);
    status
}

#[cfg(test)]
mod tests {
    use strata_apis::{VolumeRestoreSpec, VolumeSnapshotSpec, VolumeStatus};

    use super::*;

    fn volume_on(host: &str) -> Box<Volume> {
        let mut v = Volume::new("d", Default::default());
        v.status = Some(VolumeStatus {
            host: Some(host.into()),
            ..VolumeStatus::default()
        });
        Box::new(v)
    }

    fn disk(snapshots: &[&str], reverted: Option<&str>) -> VmiDiskStatus {
        VmiDiskStatus {
            name: "d".into(),
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
            reverted: reverted.map(str::to_string),
            ..VmiDiskStatus::default()
        }
    }

    fn reason(conditions: &strata_apis::Conditions) -> &str {
        conditions::get(conditions, READY).map_or("", |c| c.reason.as_str())
    }

    #[test]
    fn a_snapshot_is_ready_once_its_disk_holds_it() {
        let snapshot = VolumeSnapshot::new(
            "s1",
            VolumeSnapshotSpec {
                volume: "d".into(),
                description: None,
            },
        );
        let at = |holder: &Holder| snapshot_status(&snapshot, holder, false, Timestamp::UNIX_EPOCH);
        let detached = at(&Holder::Volume(volume_on("h1"), None));
        assert_eq!(detached.phase, Some(SnapshotPhase::Creating));
        assert_eq!(reason(&detached.conditions), "VolumeNotAttached");
        let waiting = at(&Holder::Volume(volume_on("h1"), Some(disk(&[], None))));
        assert_eq!(reason(&waiting.conditions), "Creating");
        let taken = at(&Holder::Volume(volume_on("h1"), Some(disk(&["s1"], None))));
        assert_eq!(taken.phase, Some(SnapshotPhase::Ready));
        assert_eq!(taken.host.as_deref(), Some("h1"));
        assert_eq!(reason(&at(&Holder::Missing).conditions), "VolumeNotFound");
    }

    #[test]
    fn a_restore_succeeds_once_its_revert_is_reported_and_fails_on_bad_references() {
        let mut restore = VolumeRestore::new(
            "r",
            VolumeRestoreSpec {
                volume: "d".into(),
                snapshot: "s1".into(),
            },
        );
        restore.metadata.uid = Some("uid-r".into());
        let mut snapshot = VolumeSnapshot::new(
            "s1",
            VolumeSnapshotSpec {
                volume: "d".into(),
                description: None,
            },
        );
        let of = |s: Option<&VolumeSnapshot>, h: &Holder| {
            let status = restore_status(&restore, s, h, Timestamp::UNIX_EPOCH);
            (status.phase, reason(&status.conditions).to_string())
        };
        let attached = |reverted| Holder::Volume(volume_on("h1"), Some(disk(&["s1"], reverted)));
        assert_eq!(
            of(None, &attached(None)),
            (Some(RestorePhase::Failed), "SnapshotNotFound".into())
        );
        assert_eq!(
            of(Some(&snapshot), &attached(None)),
            (Some(RestorePhase::InProgress), "SnapshotNotReady".into())
        );
        snapshot.status = Some(VolumeSnapshotStatus {
            phase: Some(SnapshotPhase::Ready),
            ..VolumeSnapshotStatus::default()
        });
        assert_eq!(
            of(Some(&snapshot), &attached(Some("uid-older"))),
            (Some(RestorePhase::InProgress), "Reverting".into())
        );
        assert_eq!(
            of(Some(&snapshot), &attached(Some("uid-r"))),
            (Some(RestorePhase::Succeeded), "Restored".into())
        );
        snapshot.spec.volume = "other".into();
        assert_eq!(
            of(Some(&snapshot), &attached(None)),
            (Some(RestorePhase::Failed), "SnapshotOfOtherVolume".into())
        );
    }
}
