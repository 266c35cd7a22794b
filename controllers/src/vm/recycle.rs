//! The recycle bin of deleted VMs (deletion policy `Delay` or `Never`).
//!
//! Kubernetes cannot undo a deletion, so a recycled VM does not linger as a terminating object
//! (that would also hold `kubectl delete` and the VM's name for the whole expunge period).
//! Instead the VM goes, and what makes it recoverable stays, the way a StatefulSet keeps a
//! pod's volume claim: its root Volume is released from the VM's ownership, labelled with the
//! VM's name, annotated with the VM's spec and its expunge time, and made the holder of the
//! VM's IpAddresses. A VM created again under that name adopts the volume and the addresses
//! (same disk, IPs and MACs); annotating the volume `strata.io/recover` recreates the VM from
//! the kept spec, stopped (ZStack's Destroyed → Stopped); deleting the volume, or its expunge
//! time passing, releases everything.
//!
//! Every step is a patch that can be repeated: addresses move first, then the volume, so a
//! crash between them leaves the addresses with an owner that still exists.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    Api, Resource, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{
        ANNOTATION_EXPUNGE_AT, ANNOTATION_RECOVER, ANNOTATION_RECYCLED_SPEC, LABEL_RECYCLED_FROM,
    },
    DeletionPolicy, RunStrategy, VirtualMachine, VirtualMachineSpec, Volume,
};

use super::{ipam, vm_key, volumes::root_name};
use crate::{
    events::{self, Transition},
    Context, Error,
};

/// The deletion policy that applies to `vm`: its own, else GlobalConfig's.
pub(crate) fn policy(ctx: &Context, vm: &VirtualMachine) -> DeletionPolicy {
    vm.spec
        .deletion_policy
        .unwrap_or_else(|| ctx.inventory.global().vm.deletion_policy)
}

/// The name of the VM `volume` was kept for, if it is in the recycle bin.
pub(crate) fn recycled_from(volume: &Volume) -> Option<&str> {
    volume.labels().get(LABEL_RECYCLED_FROM).map(String::as_str)
}

/// Puts the root volume and addresses of the deleted `vm` in the recycle bin. Returns false
/// when there is no root volume of this VM to keep them with (the caller releases them).
pub(crate) async fn retain(
    ctx: &Context,
    vm: &VirtualMachine,
    policy: DeletionPolicy,
) -> Result<bool, Error> {
    let api = volumes(ctx, vm);
    let name = root_name(&vm.name_any());
    let Some(root) = read(&api, vm, &name).await? else {
        return Ok(false);
    };
    let owned = root
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == vm.uid().as_ref());
    if !owned {
        return Ok(false);
    }
    let holder = (
        format!("{}/{name}", vm.namespace().unwrap_or_default()),
        uid(&root),
    );
    ipam::transfer(ctx, &uid_of(vm), (&holder.0, &holder.1)).await?;
    let expunge_at = (policy == DeletionPolicy::Delay).then(|| {
        let period = ctx.inventory.global().vm.expunge_period_seconds;
        (Timestamp::now() + SignedDuration::from_secs(period)).to_string()
    });
    let until = expunge_at
        .clone()
        .unwrap_or_else(|| "it is deleted".to_string());
    let spec = serde_json::to_string(&vm.spec).unwrap_or_default();
    let patch = json!({"metadata": {
        "ownerReferences": [],
        "labels": {LABEL_RECYCLED_FROM: vm.name_any()},
        "annotations": {ANNOTATION_RECYCLED_SPEC: spec, ANNOTATION_EXPUNGE_AT: expunge_at},
    }});
    write(&api, &name, &patch).await?;
    events::publish(
        &ctx.recorder,
        vm,
        vec![Transition::normal(
            "Recycled",
            format!(
                "deletion policy {policy:?}: Volume {name} and the VM's addresses are kept until {until}; create the VM again or annotate the volume {ANNOTATION_RECOVER} to recover it"
            ),
        )],
    )
    .await;
    Ok(true)
}

/// Takes back the root volume and addresses a deleted VM of the same name left in the
/// recycle bin, so `vm` recovers its disk, IPs and MACs.
pub(crate) async fn adopt(ctx: &Context, vm: &VirtualMachine) -> Result<(), Error> {
    let api = volumes(ctx, vm);
    let name = root_name(&vm.name_any());
    let Some(root) = read(&api, vm, &name).await? else {
        return Ok(());
    };
    if recycled_from(&root) != Some(vm.name_any().as_str()) {
        return Ok(());
    }
    ipam::transfer(ctx, &uid(&root), (&vm_key(vm), &uid_of(vm))).await?;
    let patch = json!({"metadata": {
        "ownerReferences": vm.controller_owner_ref(&()).map(|o| vec![o]),
        "labels": {LABEL_RECYCLED_FROM: null},
        "annotations": {ANNOTATION_RECYCLED_SPEC: null, ANNOTATION_EXPUNGE_AT: null, ANNOTATION_RECOVER: null},
    }});
    write(&api, &name, &patch).await?;
    events::publish(
        &ctx.recorder,
        vm,
        vec![Transition::normal(
            "Recovered",
            format!("took back Volume {name} and the addresses of the deleted VM"),
        )],
    )
    .await;
    Ok(())
}

/// What the volume controller does with a recycled `volume`: recreate its VM when asked to,
/// expunge it when its time has come; otherwise, how long until it has.
pub(crate) async fn tend(
    ctx: &Context,
    volume: &Volume,
    vm_name: &str,
) -> Result<Option<std::time::Duration>, Error> {
    let namespace = volume.namespace().unwrap_or_default();
    let api: Api<Volume> = Api::namespaced(ctx.client.clone(), &namespace);
    if volume.annotations().contains_key(ANNOTATION_RECOVER) {
        recover(ctx, volume, vm_name).await?;
        return Ok(None);
    }
    let Some(at) = volume
        .annotations()
        .get(ANNOTATION_EXPUNGE_AT)
        .and_then(|at| at.parse::<Timestamp>().ok())
    else {
        return Ok(None);
    };
    let left = at.duration_since(Timestamp::now());
    if left.is_positive() {
        return Ok(Some(left.unsigned_abs()));
    }
    let key = format!("{namespace}/{}", volume.name_any());
    events::publish(
        &ctx.recorder,
        volume,
        vec![Transition::normal(
            "Expunged",
            format!("VirtualMachine {vm_name} stayed deleted until {at}"),
        )],
    )
    .await;
    match api.delete(&volume.name_any(), &Default::default()).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(source) => Err(Error::Delete {
            kind: "Volume",
            name: key,
            source,
        }),
    }
}

/// Releases the addresses a recycled volume holds, as it is expunged.
pub(crate) async fn expunge(ctx: &Context, volume: &Volume) -> Result<(), Error> {
    let key = format!(
        "{}/{}",
        volume.namespace().unwrap_or_default(),
        volume.name_any()
    );
    ipam::release_owned(ctx, &uid(volume), &key).await
}

/// Creates the VM `vm_name` again from the spec kept on `volume`, stopped; the VM controller
/// then adopts the volume (which clears the recover annotation).
async fn recover(ctx: &Context, volume: &Volume, vm_name: &str) -> Result<(), Error> {
    let namespace = volume.namespace().unwrap_or_default();
    let key = format!("{namespace}/{vm_name}");
    let Some(mut spec) = volume
        .annotations()
        .get(ANNOTATION_RECYCLED_SPEC)
        .and_then(|s| serde_json::from_str::<VirtualMachineSpec>(s).ok())
    else {
        events::publish(
            &ctx.recorder,
            volume,
            vec![Transition::warning(
                "RecoverFailed",
                format!("the kept spec of VirtualMachine {vm_name} is missing or unreadable"),
            )],
        )
        .await;
        return Ok(());
    };
    spec.run_strategy = RunStrategy::Halted;
    let vm = VirtualMachine {
        metadata: ObjectMeta {
            name: Some(vm_name.to_string()),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &vm).await {
        Ok(_) => {}
        // Recreated already (by an earlier try or by its owner): it adopts the volume.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(source) => {
            return Err(Error::Write {
                kind: "VirtualMachine",
                name: key,
                source,
            })
        }
    }
    events::publish(
        &ctx.recorder,
        volume,
        vec![Transition::normal(
            "Recovering",
            format!("recreated VirtualMachine {vm_name} (stopped) from the kept spec"),
        )],
    )
    .await;
    Ok(())
}

fn volumes(ctx: &Context, vm: &VirtualMachine) -> Api<Volume> {
    Api::namespaced(
        ctx.client.clone(),
        vm.namespace().as_deref().unwrap_or_default(),
    )
}

async fn read(api: &Api<Volume>, vm: &VirtualMachine, name: &str) -> Result<Option<Volume>, Error> {
    api.get_opt(name).await.map_err(|source| Error::Get {
        kind: "Volume".into(),
        name: format!("{}/{name}", vm.namespace().unwrap_or_default()),
        source,
    })
}

async fn write(api: &Api<Volume>, name: &str, patch: &serde_json::Value) -> Result<(), Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Write {
            kind: "Volume",
            name: name.to_string(),
            source,
        })
}

fn uid(volume: &Volume) -> String {
    volume.meta().uid.clone().unwrap_or_default()
}

fn uid_of(vm: &VirtualMachine) -> String {
    vm.uid().unwrap_or_default()
}
