//! The agent's side of volumes: the instance's disks as the driver takes them, and the disks
//! the hypervisor has attached, reported back in the instance's `status.disks` for the
//! controllers (the Volume controller reads attachment, size and path from there). The agent
//! decides nothing here: devices, serials and sizes come resolved in `spec.disks`. The disk of
//! a deleted data volume is deleted by the agent of its host ([`DISK_FINALIZER`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{self, finalizer, Event},
        reflector::Store,
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{quantity, VirtualMachineInstance, VmiDiskStatus, Volume, VolumeType};
use tracing::{debug, warn};

use crate::{
    driver::{DataDisk, Hypervisor},
    instance::domain_name,
    Error,
};

/// The name of a Volume's disk on the host's storage. Namespaces are DNS labels (no dots), so
/// the first dot separates them, as in domain names.
fn storage_name(namespace: &str, volume: &str) -> String {
    format!("{namespace}.{volume}")
}

/// An instance's disks as a driver takes them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Disks {
    /// The root disk's size; the image's own when unset.
    pub root_bytes: Option<u64>,
    pub data: Vec<DataDisk>,
    /// The snapshots each disk holds, by volume on the host's storage.
    pub snapshots: BTreeMap<String, Vec<String>>,
}

/// The disks of `vmi`.
pub(crate) fn disks(vmi: &VirtualMachineInstance) -> Result<Disks, String> {
    let namespace = vmi.namespace().unwrap_or_default();
    let bytes = |i: usize, q: &Quantity| {
        quantity::parse_quantity(q).map_err(|e| format!("spec.disks[{i}].size {:?}: {e}", q.0))
    };
    let mut disks = Disks::default();
    for (i, disk) in vmi.spec.disks.iter().enumerate() {
        let size = disk.size.as_ref().map(|q| bytes(i, q)).transpose()?;
        let volume = storage_name(&namespace, &disk.name);
        if !disk.snapshots.is_empty() {
            disks
                .snapshots
                .insert(volume.clone(), disk.snapshots.clone());
        }
        match disk.volume_type {
            VolumeType::Root => disks.root_bytes = size,
            VolumeType::Data => disks.data.push(DataDisk {
                volume,
                device: disk.device.clone(),
                serial: disk.serial.clone(),
                size_bytes: size
                    .ok_or_else(|| format!("spec.disks[{i}].size is required for a Data disk"))?,
            }),
        }
    }
    Ok(disks)
}

/// Publishes the disks the hypervisor has attached in `status.disks`, when they changed. A
/// driver that cannot say is logged, not fatal: the next reconcile asks again.
pub(crate) async fn report(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    driver: &dyn Hypervisor,
) -> Result<(), Error> {
    let name = domain_name(vmi);
    let namespace = vmi.namespace().unwrap_or_default();
    let current = vmi
        .status
        .as_ref()
        .map(|s| s.disks.as_slice())
        .unwrap_or(&[]);
    let mut reverted: BTreeMap<String, Option<String>> = current
        .iter()
        .map(|d| (d.name.clone(), d.reverted.clone()))
        .collect();
    for disk in &vmi.spec.disks {
        let Some(revert) = &disk.revert else { continue };
        let done = reverted.get(&disk.name).cloned().flatten();
        if done.as_deref() == Some(revert.request.as_str()) {
            continue;
        }
        let volume = storage_name(&namespace, &disk.name);
        match driver.revert_disk(&name, &volume, &revert.snapshot).await {
            Ok(()) => {
                reverted.insert(disk.name.clone(), Some(revert.request.clone()));
            }
            Err(error) => {
                warn!(domain = %name, volume = %disk.name, %error, "cannot revert the volume")
            }
        }
    }
    let attached = match driver.disks(&name).await {
        Ok(attached) => attached,
        Err(error) => {
            warn!(domain = %name, %error, "cannot list the domain's disks");
            return Ok(());
        }
    };
    let prefix = storage_name(&namespace, "");
    let disks: Vec<VmiDiskStatus> = attached
        .into_iter()
        .filter_map(|d| {
            let name = d.volume.strip_prefix(&prefix)?.to_string();
            Some(VmiDiskStatus {
                reverted: reverted.get(&name).cloned().flatten(),
                name,
                device: d.device,
                size: Quantity(d.size_bytes.to_string()),
                path: d.path,
                snapshots: d.snapshots,
            })
        })
        .collect();
    if current == disks.as_slice() {
        return Ok(());
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "disks": disks } })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any()),
        source,
    })?;
    Ok(())
}

/// Held by the agent of a data volume's host (`status.host`) until it deleted the volume's disk
/// from its storage, so deleting a Volume frees its space. Root disks go with their domain.
/// If the host is gone for good, the Volume controller releases it instead.
pub const DISK_FINALIZER: &str = strata_apis::condition::HOST_DISK_FINALIZER;
/// How soon a deleted volume whose disk is still attached here looks again.
const IN_USE_RETRY: Duration = Duration::from_secs(2);

pub(crate) struct VolumeContext {
    pub client: Client,
    pub driver: Arc<dyn Hypervisor>,
    /// The instances on this host, to tell whether a disk is still attached.
    pub instances: Store<VirtualMachineInstance>,
}

/// Holds [`DISK_FINALIZER`] on the data volumes of this host; once one is deleted and no
/// instance here has its disk any more, deletes the disk.
pub(crate) async fn run(host: &str, ctx: Arc<VolumeContext>) {
    let api: Api<Volume> = Api::all(ctx.client.clone());
    let selector = format!("status.host={host}");
    Controller::new(api, watcher::Config::default().fields(&selector))
        .run(reconcile_volume, volume_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(error = %error, "volume controller");
            }
        })
        .await;
}

async fn reconcile_volume(volume: Arc<Volume>, ctx: Arc<VolumeContext>) -> Result<Action, Error> {
    if volume.spec.volume_type != VolumeType::Data {
        return Ok(Action::await_change());
    }
    let key = format!(
        "{}/{}",
        volume.namespace().unwrap_or_default(),
        volume.name_any()
    );
    let api: Api<Volume> = Api::namespaced(
        ctx.client.clone(),
        volume.namespace().as_deref().unwrap_or_default(),
    );
    finalizer(&api, DISK_FINALIZER, volume, |event| async {
        match event {
            Event::Apply(_) => Ok(Action::await_change()),
            Event::Cleanup(volume) => delete_disk(&volume, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::VolumeFinalizer {
        volume: key,
        source: Box::new(source),
    })
}

fn volume_error_policy(volume: Arc<Volume>, error: &Error, _ctx: Arc<VolumeContext>) -> Action {
    if !matches!(error, Error::VolumeFinalizer { source, .. }
        if matches!(source.as_ref(), finalizer::Error::CleanupFailed(Error::DiskInUse { .. })))
    {
        warn!(volume = %volume.name_any(), category = error.category(), error = %error, "reconcile failed");
    }
    Action::requeue(IN_USE_RETRY)
}

/// Deletes the deleted `volume`'s disk once no instance on this host has it.
async fn delete_disk(volume: &Volume, ctx: &VolumeContext) -> Result<Action, Error> {
    let namespace = volume.namespace().unwrap_or_default();
    let name = volume.name_any();
    let _ = ctx.instances.wait_until_ready().await;
    let user = ctx.instances.state().into_iter().find(|vmi| {
        vmi.namespace().as_deref() == Some(namespace.as_str())
            && (vmi.spec.disks.iter().any(|d| d.name == name)
                || vmi
                    .status
                    .as_ref()
                    .is_some_and(|s| s.disks.iter().any(|d| d.name == name)))
    });
    if let Some(vmi) = user {
        return Err(Error::DiskInUse {
            volume: format!("{namespace}/{name}"),
            instance: vmi.name_any(),
        });
    }
    ctx.driver
        .delete_volume(&storage_name(&namespace, &name))
        .await
        .map_err(|source| Error::DeleteDisk {
            volume: format!("{namespace}/{name}"),
            source,
        })?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use strata_apis::VmiDisk;

    use super::*;

    #[test]
    fn the_instances_disks_become_the_domains() {
        let mut vmi = VirtualMachineInstance::new("a", Default::default());
        vmi.metadata.namespace = Some("ns".into());
        let disk = |name: &str, volume_type, size: Option<&str>| VmiDisk {
            name: name.into(),
            volume_type,
            device: "vdb".into(),
            serial: "s".into(),
            size: size.map(|s| Quantity(s.into())),
            ..VmiDisk::default()
        };
        vmi.spec.disks = vec![
            disk("a-root", VolumeType::Root, None),
            disk("d", VolumeType::Data, Some("1Gi")),
        ];
        vmi.spec.disks[1].snapshots = vec!["s1".into()];
        let got = disks(&vmi).expect("valid");
        assert_eq!(got.root_bytes, None, "the image's size");
        assert_eq!(got.snapshots["ns.d"], ["s1"]);
        assert_eq!(
            got.data,
            [DataDisk {
                volume: "ns.d".into(),
                device: "vdb".into(),
                serial: "s".into(),
                size_bytes: 1 << 30,
            }]
        );
        vmi.spec.disks[1].size = Some(Quantity("big".into()));
        assert!(disks(&vmi).unwrap_err().starts_with("spec.disks[1].size"));
    }
}
