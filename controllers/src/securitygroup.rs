//! SecurityGroup controller: reports how many NICs the group's rules apply to (`status.nicCount`:
//! NICs of VMs in the group's namespace that list it and have an address). The rules themselves
//! reach the hosts through the VM controller, which resolves them into each VM's instance; the
//! count changing is also what wakes the VMs whose rules name the group as `remoteGroup`.

use std::sync::Arc;

use kube::{
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{SecurityGroup, VirtualMachine};

use crate::{Context, Error};

pub(crate) fn controller(client: &Client) -> Controller<SecurityGroup> {
    Controller::new(Api::all(client.clone()), watcher::Config::default()).watches(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
        |vm| {
            let namespace = vm.namespace().unwrap_or_default();
            let mut groups: Vec<ObjectRef<SecurityGroup>> = vm
                .spec
                .nics
                .iter()
                .flat_map(|n| &n.security_groups)
                .map(|g| ObjectRef::new(g).within(&namespace))
                .collect();
            groups.dedup();
            groups
        },
    )
}

/// The NICs of `vms` (of the group's namespace) that list `group` and have an address.
pub(crate) fn nic_count<'a>(vms: impl Iterator<Item = &'a VirtualMachine>, group: &str) -> i64 {
    let count = vms
        .filter(|vm| vm.metadata.deletion_timestamp.is_none())
        .map(|vm| {
            let status = vm.status.as_ref().map(|s| s.nics.as_slice()).unwrap_or(&[]);
            vm.spec
                .nics
                .iter()
                .zip(status)
                .filter(|(nic, s)| {
                    nic.security_groups.iter().any(|g| g == group) && !s.ip.is_empty()
                })
                .count()
        })
        .sum::<usize>();
    i64::try_from(count).unwrap_or(i64::MAX)
}

pub(crate) async fn reconcile(sg: Arc<SecurityGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (name, namespace) = (sg.name_any(), sg.namespace().unwrap_or_default());
    let key = format!("{namespace}/{name}");
    let vms = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: "VirtualMachine",
            owner: key.clone(),
            source,
        })?;
    let count = nic_count(vms.items.iter(), &name);
    let current = sg.status.clone().unwrap_or_default();
    if current.nic_count != Some(count) || current.observed_generation != sg.metadata.generation {
        let status = json!({ "status": {
            "nicCount": count,
            "observedGeneration": sg.metadata.generation,
        }});
        Api::<SecurityGroup>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map_err(|source| Error::UpdateStatus {
                kind: "SecurityGroup",
                name: key.clone(),
                source,
            })?;
    }
    ctx.succeeded("SecurityGroup", &key);
    Ok(Action::await_change())
}

pub(crate) fn error_policy(sg: Arc<SecurityGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", sg.namespace().unwrap_or_default(), sg.name_any());
    Action::requeue(ctx.failed("SecurityGroup", &key, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nics_in_the_group_with_an_address_count() {
        let vm = |nics: serde_json::Value, status: serde_json::Value| -> VirtualMachine {
            serde_json::from_value(json!({
                "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "a", "namespace": "ns"},
                "spec": {"image": "i", "nics": nics},
                "status": {"nics": status}
            }))
            .unwrap()
        };
        let two = vm(
            json!([{"l3Network": "n", "securityGroups": ["web"]},
                   {"l3Network": "n", "securityGroups": ["web", "db"]}]),
            json!([{"l3Network": "n", "ip": "10.0.0.2", "mac": "m"},
                   {"l3Network": "n", "ip": "10.0.0.3", "mac": "m"}]),
        );
        let unaddressed = vm(
            json!([{"l3Network": "n", "securityGroups": ["web"]}]),
            json!([]),
        );
        assert_eq!(nic_count([&two, &unaddressed].into_iter(), "web"), 2);
        assert_eq!(nic_count([&two].into_iter(), "db"), 1);
        assert_eq!(nic_count([&unaddressed].into_iter(), "db"), 0);
    }
}
