//! Volume controller: decides which VM holds each volume, sizes it, records where it lives and
//! reports its phase from what the holder's host reports.
//!
//! - **Holder** (`status.virtualMachine`): a Root volume's is the VM that owns it. A Data
//!   volume's is the VM whose `spec.dataVolumes` lists it — the one that already holds it,
//!   else the oldest that lists it. One reconcile per volume at a time, so two VMs are never
//!   both given one volume; the others' `VolumesReady` says `VolumeInUse`. A holder that stops
//!   listing it keeps it until its host reports the disk detached (`Detaching`).
//! - **Where** (`status.host`, `status.primaryStorage`): the holder's host and the primary
//!   storage chosen with it. A data volume keeps the first host it was created on (local
//!   storage); a root volume lives and dies with its VM's instance, so it follows the VM.
//! - **Size** (`status.size`): `spec.size`, else the DiskOffering's (missing → `Ready=False`,
//!   reason `DiskOfferingNotFound`); a size smaller than the current one is refused
//!   (`SizeShrinkRefused`, naming the field) and the volume keeps its size.
//! - **Phase**: `Creating` until the holder's host reports the disk, `Attached` while it does,
//!   `Detaching` while it still does after the holder let go, `Ready` otherwise, `Deleting`
//!   once deleted (the finalizer waits for the host to let the disk go).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::api::resource::Quantity, jiff::Timestamp};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use serde_json::Value;
use strata_apis::{
    condition::{HOST_DISK_FINALIZER, READY},
    quantity,
    volume::VOLUME_FINALIZER,
    DiskOffering, Progress, VirtualMachine, VirtualMachineInstance, VmiDiskStatus, Volume,
    VolumePhase, VolumeStatus, VolumeType,
};

use crate::{
    conditions::{self, Desired},
    events::{self, Transition},
    vm::{ha, recycle, volumes::is_root_of},
    Context, Error,
};

/// How soon a volume waiting for its host to release the disk looks again.
const WAIT_RETRY: Duration = Duration::from_secs(2);

pub(crate) fn controller(client: &Client) -> Controller<Volume> {
    let volumes = Controller::new(
        Api::<Volume>::all(client.clone()),
        watcher::Config::default(),
    );
    let (by_vm, by_instance, by_offering) = (volumes.store(), volumes.store(), volumes.store());
    volumes
        .watches(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default(),
            move |vm| {
                let name = vm.name_any();
                matching(&by_vm, vm.namespace(), |v| {
                    let volume = v.metadata.name.as_deref().unwrap_or_default();
                    match v.spec.volume_type {
                        VolumeType::Root => is_root_of(volume, &name),
                        VolumeType::Data => {
                            vm.spec.data_volumes.iter().any(|d| d == volume) || held_by(v, &name)
                        }
                    }
                })
            },
        )
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            move |vmi| {
                let name = vmi.name_any();
                let reported = vmi
                    .status
                    .as_ref()
                    .map(|s| s.disks.clone())
                    .unwrap_or_default();
                matching(&by_instance, vmi.namespace(), |v| {
                    let volume = v.metadata.name.as_deref().unwrap_or_default();
                    held_by(v, &name)
                        || vmi.spec.disks.iter().any(|d| d.name == volume)
                        || reported.iter().any(|d| d.name == volume)
                })
            },
        )
        .watches(
            Api::<DiskOffering>::all(client.clone()),
            watcher::Config::default(),
            move |offering| {
                let name = offering.name_any();
                matching(&by_offering, None, |v| {
                    v.spec.disk_offering.as_deref() == Some(name.as_str())
                })
            },
        )
}

fn held_by(volume: &Volume, vm: &str) -> bool {
    volume
        .status
        .as_ref()
        .and_then(|s| s.virtual_machine.as_deref())
        == Some(vm)
}

/// The volumes of `namespace` (any, when `None`) that `wanted` picks. Asked on every VM and
/// instance event, so the volumes are looked at in place, without copying the store or
/// allocating per volume: that made bursts of creates quadratic.
fn matching(
    store: &Store<Volume>,
    namespace: Option<String>,
    wanted: impl Fn(&Volume) -> bool,
) -> Vec<ObjectRef<Volume>> {
    store
        .state_filter(|v| (namespace.is_none() || v.metadata.namespace == namespace) && wanted(v))
        .iter()
        .map(|v| ObjectRef::from_obj(v.as_ref()))
        .collect()
}

fn key(volume: &Volume) -> String {
    format!(
        "{}/{}",
        volume.namespace().unwrap_or_default(),
        volume.name_any()
    )
}

pub(crate) async fn reconcile(volume: Arc<Volume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = key(&volume);
    let api: Api<Volume> = Api::namespaced(
        ctx.client.clone(),
        volume.namespace().as_deref().unwrap_or_default(),
    );
    let action = finalizer(&api, VOLUME_FINALIZER, volume, |event| async {
        match event {
            Event::Apply(volume) => apply(&api, &volume, &ctx).await,
            Event::Cleanup(volume) => cleanup(&api, &volume, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        kind: "Volume",
        name: name.clone(),
        source: Box::new(source),
    })?;
    ctx.succeeded("Volume", &name);
    Ok(action)
}

pub(crate) fn error_policy(volume: Arc<Volume>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.category() == "waiting" {
        return Action::requeue(WAIT_RETRY);
    }
    Action::requeue(ctx.failed("Volume", &key(&volume), error))
}

/// A VM that lists (or, for a root volume, owns) the volume.
#[derive(Clone, Debug, PartialEq)]
struct Claimant {
    name: String,
    deleting: bool,
    host: Option<String>,
    /// The primary storage recorded for the VM's root volume.
    root_storage: Option<String>,
}

/// The VMs that want `volume`, oldest first.
fn claimants(vms: &[VirtualMachine], volume: &Volume) -> Vec<Claimant> {
    let name = volume.name_any();
    let owner = volume
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "VirtualMachine")
        .map(|o| o.uid.clone());
    let mut wanting: Vec<&VirtualMachine> = vms
        .iter()
        .filter(|vm| vm.namespace() == volume.namespace())
        .filter(|vm| match volume.spec.volume_type {
            VolumeType::Root => owner.is_some() && vm.uid() == owner,
            VolumeType::Data => vm.spec.data_volumes.contains(&name),
        })
        .collect();
    wanting.sort_by_key(|vm| {
        (
            vm.metadata.creation_timestamp.clone().map(|t| t.0),
            vm.name_any(),
        )
    });
    wanting
        .into_iter()
        .map(|vm| {
            let status = vm.status.clone().unwrap_or_default();
            Claimant {
                name: vm.name_any(),
                deleting: vm.metadata.deletion_timestamp.is_some(),
                host: status.host,
                root_storage: status
                    .volumes
                    .first()
                    .filter(|v| v.volume_type == VolumeType::Root)
                    .and_then(|v| v.primary_storage.clone()),
            }
        })
        .collect()
}

/// The VMs that may hold the volume and their instances, read fresh: the watch that woke this
/// reconcile may be ahead of any cache, and a holder decided on stale VMs would stick. A root
/// volume's VM is its owner (one read, as there is a root volume per VM); a data volume's
/// are found by listing the namespace's VMs.
async fn observe(
    ctx: &Context,
    volume: &Volume,
) -> Result<(Vec<VirtualMachine>, Vec<VirtualMachineInstance>), Error> {
    let namespace = volume.namespace().unwrap_or_default();
    let vm_api = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &namespace);
    let vmi_api = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &namespace);
    let read = |kind: &'static str, name: &str| {
        let name = format!("{namespace}/{name}");
        move |source| Error::Get {
            kind: kind.into(),
            name,
            source,
        }
    };
    let holder = volume
        .status
        .as_ref()
        .and_then(|s| s.virtual_machine.clone());
    let mut vms = Vec::new();
    match volume.spec.volume_type {
        VolumeType::Root => {
            let owners = volume
                .owner_references()
                .iter()
                .filter(|o| o.kind == "VirtualMachine")
                .map(|o| o.name.clone());
            for name in owners {
                if let Some(vm) = vm_api
                    .get_opt(&name)
                    .await
                    .map_err(read("VirtualMachine", &name))?
                {
                    vms.push(vm);
                }
            }
        }
        VolumeType::Data => {
            vms = vm_api
                .list(&ListParams::default())
                .await
                .map_err(|source| Error::List {
                    kind: "VirtualMachine",
                    owner: key(volume),
                    source,
                })?
                .items;
        }
    }
    let name = volume.name_any();
    let mut instances: Vec<String> = vms
        .iter()
        .filter(|vm| {
            vm.spec.data_volumes.contains(&name) || volume.spec.volume_type == VolumeType::Root
        })
        .map(ResourceExt::name_any)
        .chain(holder)
        .collect();
    instances.sort();
    instances.dedup();
    let mut vmis = Vec::new();
    for vm in instances {
        if let Some(vmi) = vmi_api
            .get_opt(&vm)
            .await
            .map_err(read("VirtualMachineInstance", &vm))?
        {
            vmis.push(vmi);
        }
    }
    Ok((vms, vmis))
}

/// The disk each instance reports for the volume, by VM.
fn reported(volume: &Volume, vmis: &[VirtualMachineInstance]) -> BTreeMap<String, VmiDiskStatus> {
    vmis.iter()
        .filter_map(|vmi| {
            let disk = vmi
                .status
                .as_ref()?
                .disks
                .iter()
                .find(|d| d.name == volume.name_any())?
                .clone();
            Some((vmi.name_any(), disk))
        })
        .collect()
}

/// The size the volume should have: `Ok(None)` when it takes its image's.
async fn wanted_size(
    ctx: &Context,
    volume: &Volume,
) -> Result<Result<Option<Quantity>, Desired>, Error> {
    if let Some(size) = &volume.spec.size {
        return Ok(Ok(Some(size.clone())));
    }
    let Some(offering) = &volume.spec.disk_offering else {
        return Ok(Ok(None));
    };
    let found = Api::<DiskOffering>::all(ctx.client.clone())
        .get_opt(offering)
        .await
        .map_err(|source| Error::Get {
            kind: "DiskOffering".into(),
            name: offering.clone(),
            source,
        })?;
    Ok(match found {
        Some(o) => Ok(Some(o.spec.size)),
        None => Err(Desired::new(
            READY,
            false,
            "DiskOfferingNotFound",
            format!("spec.diskOffering: DiskOffering {offering:?} not found"),
        )),
    })
}

/// What the reconcile found, for [`decide`].
struct Found<'a> {
    claimants: &'a [Claimant],
    /// The disk each VM's instance reports for the volume, by VM.
    reported: BTreeMap<String, VmiDiskStatus>,
    size: Result<Option<Quantity>, Desired>,
    deleting: bool,
}

/// The status `volume` should have. Pure.
fn decide(volume: &Volume, found: &Found<'_>, now: Timestamp) -> VolumeStatus {
    let current = volume.status.clone().unwrap_or_default();
    let generation = volume.metadata.generation;
    let claims = |name: &str| {
        found
            .claimants
            .iter()
            .any(|c| c.name == name && !c.deleting)
    };
    let holder = current
        .virtual_machine
        .clone()
        .filter(|h| claims(h) || found.reported.contains_key(h))
        .or_else(|| {
            found
                .claimants
                .iter()
                .find(|c| !c.deleting)
                .map(|c| c.name.clone())
        });
    let claimant = holder
        .as_ref()
        .and_then(|h| found.claimants.iter().find(|c| c.name == *h));
    let disk = holder
        .as_deref()
        .and_then(|h| found.reported.get(h).cloned());

    let mut status = current.clone();
    status.observed_generation = generation;
    status.virtual_machine = holder.clone();
    status.device = disk.as_ref().map(|d| d.device.clone());
    if let Some(path) = disk.as_ref().and_then(|d| d.path.clone()) {
        status.path = Some(path);
    }
    let follows_vm = volume.spec.volume_type == VolumeType::Root || current.host.is_none();
    if let Some(host) = claimant.and_then(|c| c.host.clone()).filter(|_| follows_vm) {
        status.host = Some(host);
        status.primary_storage = volume
            .spec
            .primary_storage
            .clone()
            .or_else(|| claimant.and_then(|c| c.root_storage.clone()))
            .or(current.primary_storage.clone());
    }

    let (size, size_problem) = settle_size(&current, disk.as_ref(), &found.size);
    status.size = size;

    let phase = match (&holder, &disk) {
        _ if found.deleting => VolumePhase::Deleting,
        (None, _) if recycle::recycled_from(volume).is_some() => VolumePhase::Recycled,
        (Some(h), Some(_)) if claims(h) => VolumePhase::Attached,
        (Some(_), Some(_)) => VolumePhase::Detaching,
        (Some(_), None) if status.path.is_none() => VolumePhase::Creating,
        _ => VolumePhase::Ready,
    };
    status.phase = Some(phase);
    status.progress = (phase == VolumePhase::Creating).then(|| Progress {
        percent: 0,
        step: "Creating".into(),
        message: Some(match &status.host {
            Some(host) => format!("waiting for host {host} to create the disk"),
            None => "waiting for the VM to be placed".into(),
        }),
    });
    let holder = holder.unwrap_or_default();
    let ready = size_problem.unwrap_or_else(|| match phase {
        VolumePhase::Attached => Desired::new(
            READY,
            true,
            "Attached",
            format!(
                "attached to VirtualMachine {holder} as {} on host {}",
                status.device.as_deref().unwrap_or("?"),
                status.host.as_deref().unwrap_or("?")
            ),
        ),
        VolumePhase::Detaching => Desired::new(
            READY,
            false,
            "Detaching",
            format!("waiting for VirtualMachine {holder}'s host to detach it"),
        ),
        VolumePhase::Creating => Desired::new(
            READY,
            false,
            "Creating",
            status
                .progress
                .as_ref()
                .and_then(|p| p.message.clone())
                .unwrap_or_default(),
        ),
        VolumePhase::Deleting => {
            Desired::new(READY, false, "Deleting", "the volume is being deleted")
        }
        VolumePhase::Recycled => Desired::new(
            READY,
            false,
            "Recycled",
            format!(
                "kept for the deleted VirtualMachine {} until {}",
                recycle::recycled_from(volume).unwrap_or_default(),
                volume
                    .annotations()
                    .get(strata_apis::condition::ANNOTATION_EXPUNGE_AT)
                    .map_or("the volume is deleted", String::as_str)
            ),
        ),
        VolumePhase::Ready if status.path.is_none() => Desired::new(
            READY,
            true,
            "NotInstantiated",
            "created on the host of the first VM it is attached to",
        ),
        VolumePhase::Ready => Desired::new(
            READY,
            true,
            "Ready",
            format!(
                "detached, on host {}",
                status.host.as_deref().unwrap_or("?")
            ),
        ),
    });
    conditions::set(&mut status.conditions, ready, generation, now);
    status
}

/// The size to record and, when the wanted one is refused or unknown, the condition saying
/// why. Volumes only grow: a smaller size keeps the current one.
fn settle_size(
    current: &VolumeStatus,
    disk: Option<&VmiDiskStatus>,
    wanted: &Result<Option<Quantity>, Desired>,
) -> (Option<Quantity>, Option<Desired>) {
    let bytes = |q: &Quantity| quantity::parse_quantity(q).ok();
    let now = current
        .size
        .clone()
        .or_else(|| disk.map(|d| d.size.clone()));
    match wanted {
        Err(problem) => (now, Some(problem.clone())),
        Ok(None) => (now, None),
        Ok(Some(want)) => match (now.as_ref().and_then(bytes), bytes(want)) {
            (Some(have), Some(want_bytes)) if want_bytes < have => {
                let have_q = now.clone().unwrap_or_default();
                let problem = Desired::new(
                    READY,
                    false,
                    "SizeShrinkRefused",
                    format!(
                        "spec.size {} is smaller than the volume's {}: volumes only grow",
                        want.0, have_q.0
                    ),
                );
                (now, Some(problem))
            }
            _ => (Some(want.clone()), None),
        },
    }
}

async fn apply(api: &Api<Volume>, volume: &Volume, ctx: &Context) -> Result<Action, Error> {
    let (vms, vmis) = observe(ctx, volume).await?;
    let claimants = claimants(&vms, volume);
    let found = Found {
        claimants: &claimants,
        reported: reported(volume, &vmis),
        size: wanted_size(ctx, volume).await?,
        deleting: false,
    };
    let status = decide(volume, &found, Timestamp::now());
    write(ctx, api, volume, &status).await?;

    if let Some(vm) = recycle::recycled_from(volume).filter(|_| claimants.is_empty()) {
        return Ok(match recycle::tend(ctx, volume, vm).await? {
            Some(left) => Action::requeue(left),
            None => Action::await_change(),
        });
    }

    // A volume that goes with its VM goes once the VM is being deleted.
    let holder_deleting = claimants
        .iter()
        .any(|c| Some(&c.name) == status.virtual_machine.as_ref() && c.deleting);
    if volume.spec.delete_with_virtual_machine && holder_deleting {
        api.delete(&volume.name_any(), &DeleteParams::default())
            .await
            .map_err(|source| Error::Delete {
                kind: "Volume",
                name: key(volume),
                source,
            })?;
    }
    Ok(Action::await_change())
}

/// Holds the finalizer until no host reports the disk attached any more.
async fn cleanup(api: &Api<Volume>, volume: &Volume, ctx: &Context) -> Result<Action, Error> {
    let (vms, vmis) = observe(ctx, volume).await?;
    let claimants = claimants(&vms, volume);
    let found = Found {
        claimants: &claimants,
        reported: reported(volume, &vmis),
        size: Ok(volume.spec.size.clone()),
        deleting: true,
    };
    let status = decide(volume, &found, Timestamp::now());
    write(ctx, api, volume, &status).await?;
    if status
        .virtual_machine
        .as_ref()
        .is_some_and(|h| found.reported.contains_key(h))
    {
        return Err(Error::Waiting {
            what: format!("Volume {}", key(volume)),
            until: "its VM's host to detach the disk",
        });
    }
    release_dead_host(ctx, api, volume).await?;
    if recycle::recycled_from(volume).is_some() {
        recycle::expunge(ctx, volume).await?;
    }
    Ok(Action::await_change())
}

/// The disk finalizer of a host gone for good (see `ha::host_gone`) is released here, so the
/// Volume does not wait forever for an agent that will not come back.
async fn release_dead_host(ctx: &Context, api: &Api<Volume>, volume: &Volume) -> Result<(), Error> {
    let finalizers = volume.finalizers();
    let Some(index) = finalizers.iter().position(|f| f == HOST_DISK_FINALIZER) else {
        return Ok(());
    };
    let Some(host) = volume.status.as_ref().and_then(|s| s.host.clone()) else {
        return Ok(());
    };
    let why = match ha::host_gone(ctx, &host) {
        ha::HostGone::No => return Ok(()),
        ha::HostGone::Later(_) => {
            return Err(Error::Waiting {
                what: format!("Volume {}", key(volume)),
                until: "its dead host's timeout to release the disk",
            })
        }
        ha::HostGone::Yes(why) => why,
    };
    // `test` first: the list may have changed since this copy was read.
    let at = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": at, "value": HOST_DISK_FINALIZER },
        { "op": "remove", "path": at },
    ]))
    .expect("a JSON patch of two well-formed operations");
    api.patch(
        &volume.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|source| Error::Write {
        kind: "Volume",
        name: key(volume),
        source,
    })?;
    events::publish(
        &ctx.recorder,
        volume,
        vec![Transition::warning(
            "HostGone",
            format!("{why}: released the disk without its agent; its file stays on that host"),
        )],
    )
    .await;
    Ok(())
}

/// Writes `status` if it changed, and the Events of its transitions.
async fn write(
    ctx: &Context,
    api: &Api<Volume>,
    volume: &Volume,
    status: &VolumeStatus,
) -> Result<(), Error> {
    let current = volume.status.clone().unwrap_or_default();
    if *status == current {
        return Ok(());
    }
    let mut patch = serde_json::to_value(status).unwrap_or_default();
    // Absent fields must be written as null for a merge patch to clear them.
    for field in ["virtualMachine", "device", "progress"] {
        if patch.get(field).is_none() {
            patch[field] = Value::Null;
        }
    }
    crate::context::merge_status(api, "Volume", &volume.name_any(), key(volume), &patch).await?;
    events::publish(&ctx.recorder, volume, transitions(&current, status)).await;
    Ok(())
}

/// The Events for going from `old` to `new`.
fn transitions(old: &VolumeStatus, new: &VolumeStatus) -> Vec<Transition> {
    let mut events = Vec::new();
    let vm = new.virtual_machine.as_deref().unwrap_or_default();
    if old.phase != new.phase {
        match new.phase {
            Some(VolumePhase::Attached) => events.push(Transition::normal(
                "Attached",
                format!(
                    "attached to VirtualMachine {vm} as {}",
                    new.device.as_deref().unwrap_or("?")
                ),
            )),
            Some(VolumePhase::Detaching) => events.push(Transition::normal(
                "Detaching",
                format!("detaching from VirtualMachine {vm}"),
            )),
            Some(VolumePhase::Ready)
                if matches!(
                    old.phase,
                    Some(VolumePhase::Attached | VolumePhase::Detaching)
                ) =>
            {
                events.push(Transition::normal("Detached", "detached"))
            }
            _ => {}
        }
    }
    if let (Some(before), Some(after)) = (&old.size, &new.size) {
        if before != after {
            events.push(Transition::normal(
                "Resized",
                format!("from {} to {}", before.0, after.0),
            ));
        }
    }
    let (old_ready, ready) = (
        conditions::get(&old.conditions, READY),
        conditions::get(&new.conditions, READY),
    );
    if let Some(ready) = ready.filter(|r| r.status == "False") {
        let new_reason = old_ready.is_none_or(|o| o.reason != ready.reason);
        let problem = !matches!(ready.reason.as_str(), "Creating" | "Detaching" | "Deleting");
        if new_reason && problem {
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

    fn claimant(name: &str, host: Option<&str>) -> Claimant {
        Claimant {
            name: name.into(),
            deleting: false,
            host: host.map(str::to_string),
            root_storage: Some("ps-1".into()),
        }
    }

    fn data(size: &str, status: VolumeStatus) -> Volume {
        let mut v = Volume::new(
            "d",
            strata_apis::VolumeSpec {
                size: Some(Quantity(size.into())),
                ..Default::default()
            },
        );
        v.status = Some(status);
        v
    }

    fn disk(size: &str) -> VmiDiskStatus {
        VmiDiskStatus {
            name: "d".into(),
            device: "vdb".into(),
            size: Quantity(size.into()),
            path: Some("/p/d.qcow2".into()),
            ..VmiDiskStatus::default()
        }
    }

    fn decide_with(
        volume: &Volume,
        claimants: &[Claimant],
        attached_to: Option<&str>,
    ) -> VolumeStatus {
        let found = Found {
            claimants,
            reported: attached_to
                .map(|vm| (vm.to_string(), disk("1Gi")))
                .into_iter()
                .collect(),
            size: Ok(volume.spec.size.clone()),
            deleting: false,
        };
        decide(volume, &found, Timestamp::UNIX_EPOCH)
    }

    fn reason(status: &VolumeStatus) -> String {
        conditions::get(&status.conditions, READY)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    }

    #[test]
    fn the_first_vm_gets_the_volume_and_keeps_it() {
        let fresh = data("1Gi", VolumeStatus::default());
        let s = decide_with(&fresh, &[], None);
        assert_eq!(
            (s.phase, s.virtual_machine.as_deref()),
            (Some(VolumePhase::Ready), None)
        );
        assert_eq!(reason(&s), "NotInstantiated");

        let both = [claimant("a", Some("h1")), claimant("b", Some("h2"))];
        let s = decide_with(&fresh, &both, None);
        assert_eq!(s.virtual_machine.as_deref(), Some("a"));
        assert_eq!(
            (s.host.as_deref(), s.primary_storage.as_deref()),
            (Some("h1"), Some("ps-1"))
        );
        assert_eq!(s.phase, Some(VolumePhase::Creating));
        assert!(s.progress.is_some());

        let attached = decide_with(&data("1Gi", s), &both, Some("a"));
        assert_eq!(attached.phase, Some(VolumePhase::Attached));
        assert_eq!(attached.device.as_deref(), Some("vdb"));
        assert_eq!(attached.path.as_deref(), Some("/p/d.qcow2"));
        assert!(attached.progress.is_none());

        // "a" lets go: the disk is still on its host, so "b" waits.
        let detaching = decide_with(&data("1Gi", attached), &both[1..], Some("a"));
        assert_eq!(detaching.phase, Some(VolumePhase::Detaching));
        assert_eq!(detaching.virtual_machine.as_deref(), Some("a"));
        let handed = decide_with(&data("1Gi", detaching), &both[1..], None);
        assert_eq!(handed.virtual_machine.as_deref(), Some("b"));
        assert_eq!(
            handed.host.as_deref(),
            Some("h1"),
            "a data volume stays on its host"
        );
        assert_eq!(handed.phase, Some(VolumePhase::Ready));
    }

    #[test]
    fn volumes_grow_and_never_shrink() {
        let status = VolumeStatus {
            size: Some(Quantity("2Gi".into())),
            ..VolumeStatus::default()
        };
        let grown = decide_with(&data("3Gi", status.clone()), &[], None);
        assert_eq!(grown.size, Some(Quantity("3Gi".into())));
        assert_eq!(
            transitions(&status, &grown)
                .iter()
                .map(|t| t.reason.as_str())
                .collect::<Vec<_>>(),
            ["Resized"]
        );
        let shrunk = decide_with(&data("1Gi", status), &[], None);
        assert_eq!(shrunk.size, Some(Quantity("2Gi".into())));
        let ready = conditions::get(&shrunk.conditions, READY).expect("Ready");
        assert_eq!(ready.reason, "SizeShrinkRefused");
        assert!(
            ready.message.starts_with("spec.size 1Gi"),
            "{}",
            ready.message
        );
    }
}
