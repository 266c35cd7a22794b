//! The VirtualMachineInstance a VM resolves to, and writing it.

use kube::{
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    Api, Resource, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    PowerState, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus, VmNicStatus, VmiDisk, VmiNic,
};

use super::{vm_key, Resolved};
use crate::Error;

/// The instance for `vm` on `host`, with every decision made. Owned by the VM (controller
/// reference), so the garbage collector removes it if the VM vanishes without cleanup.
pub(crate) fn build(
    vm: &VirtualMachine,
    host: &str,
    resolved: &Resolved,
    nics: &[VmNicStatus],
    disks: Vec<VmiDisk>,
) -> VirtualMachineInstance {
    let nics = resolved
        .networks
        .iter()
        .zip(nics)
        .enumerate()
        .map(|(i, (network, nic))| VmiNic {
            l3_network: network.name.clone(),
            ip: nic.ip.clone(),
            prefix_length: network.subnet.net.prefix_len(),
            gateway: network.subnet.gateway.to_string(),
            mac: nic.mac.clone(),
            dns: network.dns.clone(),
            dns_domain: network.dns_domain.clone(),
            l2: network.l2.clone(),
            security: resolved.security.get(i).cloned().flatten(),
            eip: resolved.eips.get(i).cloned().flatten(),
            port_forwardings: resolved
                .port_forwardings
                .get(i)
                .cloned()
                .unwrap_or_default(),
        })
        .collect();
    VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(vm.name_any()),
            namespace: vm.namespace(),
            owner_references: vm.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: VirtualMachineInstanceSpec {
            host: host.to_string(),
            cpu: resolved.size.cpu,
            memory: resolved.memory.clone(),
            image: vm.spec.image.clone(),
            image_url: resolved.image.url.clone(),
            image_checksum: resolved.image.checksum.clone(),
            direct_boot: resolved.image.direct_boot.clone(),
            disks,
            power_state: if vm.spec.paused {
                PowerState::Paused
            } else {
                PowerState::Running
            },
            reboot_request: vm.spec.reboot_request.clone(),
            user_data: vm.spec.user_data.clone(),
            nics,
            migration: None,
        },
        status: None,
    }
}

/// What the instance looks like after `apply`.
pub(crate) enum Applied {
    /// It exists with the desired spec; its status as reported by the agent (boxed: the
    /// status is large and the other variant empty).
    Current(Option<Box<VirtualMachineInstanceStatus>>),
    /// An earlier instance is still being destroyed; the new one comes after it.
    Replacing,
}

/// Creates the instance, or brings an existing one's spec up to date.
pub(crate) async fn apply(
    api: &Api<VirtualMachineInstance>,
    vm: &VirtualMachine,
    desired: VirtualMachineInstance,
) -> Result<Applied, Error> {
    let failed = |source| Error::ApplyInstance {
        vm: vm_key(vm),
        source,
    };
    let name = desired.name_any();
    match api.get_opt(&name).await.map_err(failed)? {
        None => {
            api.create(&PostParams::default(), &desired)
                .await
                .map_err(failed)?;
            Ok(Applied::Current(None))
        }
        Some(current) if current.meta().deletion_timestamp.is_some() => Ok(Applied::Replacing),
        Some(current) => {
            let spec = VirtualMachineInstanceSpec {
                migration: crate::migration::carried(&current, &desired.spec.host),
                ..desired.spec
            };
            if current.spec == spec {
                return Ok(Applied::Current(current.status.map(Box::new)));
            }
            let mut patch = json!({ "spec": spec });
            // A merge patch keeps what it leaves out: null removes a landed migration.
            patch["spec"]["migration"] = json!(spec.migration);
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(failed)?;
            Ok(Applied::Current(current.status.map(Box::new)))
        }
    }
}
