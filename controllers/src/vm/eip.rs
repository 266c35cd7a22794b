//! Eip controller: allocates the VIP on the Public L3Network (an IpAddress owned by the Eip, the
//! same allocation as VM addresses) and reports the bound NIC's guest address and host. The VM
//! controller carries an Eip with a VIP into the bound NIC of the VM's instance ([`resolve`]) and
//! the host's agent programs the NAT. Agents do not report the NAT back yet, so `Ready` stays
//! False, its reason saying how far the Eip got (`Bound` is as far as the control plane sees).

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
        reflector::ObjectRef,
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{LABEL_L3_NETWORK, READY},
    Eip, EipStatus, IpAddress, IpAddressSpec, L3Category, L3Network, VirtualMachine, VmNicRef,
    VmiEip,
};

use super::ipam::{self, LABEL_OWNER_UID};
use crate::{
    conditions::{self, Desired},
    Context, Error,
};

/// Held until the Eip's VIP is released.
pub(crate) const EIP_FINALIZER: &str = "strata.io/eip-release";
/// Retried this often while blocked on something the user must fix.
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

pub(crate) fn controller(client: &Client) -> Controller<Eip> {
    let eips = Controller::new(Api::<Eip>::all(client.clone()), watcher::Config::default());
    let store = eips.store();
    // The bound VM's address and host.
    eips.watches(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
        move |vm| {
            let (name, namespace) = (vm.name_any(), vm.namespace());
            store
                .state()
                .iter()
                .filter(|e| e.namespace() == namespace)
                .filter(|e| {
                    e.spec
                        .vm_nic
                        .as_ref()
                        .is_some_and(|n| n.virtual_machine == name)
                })
                .map(|e| ObjectRef::from_obj(e.as_ref()))
                .collect::<Vec<_>>()
        },
    )
}

fn key(eip: &Eip) -> String {
    format!("{}/{}", eip.namespace().unwrap_or_default(), eip.name_any())
}

pub(crate) async fn reconcile(eip: Arc<Eip>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = key(&eip);
    let api: Api<Eip> = Api::namespaced(
        ctx.client.clone(),
        eip.namespace().as_deref().unwrap_or_default(),
    );
    let action = finalizer(&api, EIP_FINALIZER, eip, |event| async {
        match event {
            Event::Apply(eip) => apply(&eip, &ctx).await,
            Event::Cleanup(eip) => {
                let uid = eip.uid().unwrap_or_default();
                super::ipam::release_owned(&ctx, &uid, &key(&eip))
                    .await
                    .map(|()| Action::await_change())
            }
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        kind: "Eip",
        name: name.clone(),
        source: Box::new(source),
    })?;
    ctx.succeeded(&name);
    Ok(action)
}

pub(crate) fn error_policy(eip: Arc<Eip>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.failed(format!("Eip/{}", key(&eip)), error))
}

/// What the Eip has got so far, and why not more.
struct Outcome {
    vip: Option<Ipv4Addr>,
    guest_ip: Option<String>,
    host: Option<String>,
    ready: Desired,
    retry: Option<Duration>,
}

fn blocked(reason: &str, message: String) -> Outcome {
    Outcome {
        vip: None,
        guest_ip: None,
        host: None,
        ready: Desired::new(READY, false, reason, message),
        retry: Some(BLOCKED_RETRY),
    }
}

async fn apply(eip: &Eip, ctx: &Context) -> Result<Action, Error> {
    let outcome = allocate(eip, ctx).await?;
    let outcome = match outcome.vip {
        Some(_) => bind(eip, ctx, outcome).await?,
        None => outcome,
    };
    let current = eip.status.clone().unwrap_or_default();
    let mut status = EipStatus {
        observed_generation: eip.metadata.generation,
        vip: outcome.vip.map(|v| v.to_string()),
        guest_ip: outcome.guest_ip,
        host: outcome.host,
        conditions: current.conditions.clone(),
    };
    conditions::set(
        &mut status.conditions,
        outcome.ready,
        eip.metadata.generation,
        Timestamp::now(),
    );
    if status != current {
        let mut patch = serde_json::to_value(&status).unwrap_or_default();
        for field in ["vip", "guestIp", "host"] {
            if patch.get(field).is_none() {
                patch[field] = serde_json::Value::Null;
            }
        }
        Api::<Eip>::namespaced(
            ctx.client.clone(),
            eip.namespace().as_deref().unwrap_or_default(),
        )
        .patch_status(
            &eip.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": patch })),
        )
        .await
        .map_err(|source| Error::UpdateStatus {
            kind: "Eip",
            name: key(eip),
            source,
        })?;
    }
    Ok(outcome
        .retry
        .map_or_else(Action::await_change, Action::requeue))
}

/// The Eip's VIP: the one it holds, else the one it asks for, else the next free one.
async fn allocate(eip: &Eip, ctx: &Context) -> Result<Outcome, Error> {
    let l3name = &eip.spec.l3_network;
    let Some(l3) = Api::<L3Network>::all(ctx.client.clone())
        .get_opt(l3name)
        .await
        .map_err(|source| Error::Get {
            kind: "L3Network".into(),
            name: l3name.clone(),
            source,
        })?
    else {
        return Ok(blocked(
            "L3NetworkNotFound",
            format!("L3Network {l3name:?} not found"),
        ));
    };
    if l3.spec.category != L3Category::Public {
        return Ok(blocked(
            "L3NetworkNotPublic",
            format!("L3Network {l3name:?} is not a Public network"),
        ));
    }
    let subnet = match l3.spec.subnet() {
        Ok(subnet) => subnet,
        Err(e) => {
            return Ok(blocked(
                "L3NetworkInvalid",
                format!("L3Network {l3name:?} is invalid: {e}"),
            ))
        }
    };
    let uid = eip.uid().unwrap_or_default();
    let on_network: Vec<(Ipv4Addr, bool)> = ctx
        .ips
        .state()
        .iter()
        .filter(|ip| ip.spec.l3_network == *l3name)
        .filter_map(|ip| Some((ip.spec.address.parse().ok()?, ip.spec.owner_uid == uid)))
        .collect();
    let wanted = match &eip.spec.vip {
        Some(vip) => match ipam::check_static(&subnet, vip) {
            Ok(vip) => Some(vip),
            Err(e) => return Ok(blocked("IPOutOfRange", format!("vip {vip}: {e}"))),
        },
        None => None,
    };
    let held = on_network
        .iter()
        .find(|(a, mine)| *mine && wanted.is_none_or(|w| w == *a));
    if let Some((vip, _)) = held {
        return Ok(Outcome {
            vip: Some(*vip),
            guest_ip: None,
            host: None,
            ready: Desired::new(READY, false, "Allocated", ""),
            retry: None,
        });
    }
    let taken: BTreeSet<Ipv4Addr> = on_network.iter().map(|(a, _)| *a).collect();
    let vip = match wanted {
        Some(vip) => vip,
        None => match ipam::next_free(&subnet, &taken, ipam::search_start(&uid, 0)) {
            Some(vip) => vip,
            None => {
                return Ok(blocked(
                    ipam::IP_EXHAUSTED,
                    format!("L3Network {l3name:?} has no free address"),
                ))
            }
        },
    };
    let object = IpAddress {
        metadata: ObjectMeta {
            name: Some(IpAddress::object_name(l3name, vip)),
            labels: Some(
                [
                    (LABEL_L3_NETWORK.to_string(), l3name.clone()),
                    (LABEL_OWNER_UID.to_string(), uid.clone()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: IpAddressSpec {
            l3_network: l3name.clone(),
            address: vip.to_string(),
            owner: key(eip),
            owner_uid: uid,
        },
    };
    match Api::<IpAddress>::all(ctx.client.clone())
        .create(&PostParams::default(), &object)
        .await
    {
        Ok(_) => Ok(Outcome {
            vip: Some(vip),
            guest_ip: None,
            host: None,
            ready: Desired::new(READY, false, "Allocated", ""),
            retry: None,
        }),
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            let mut outcome = blocked(
                ipam::IP_CONFLICT,
                format!("{vip} on L3Network {l3name:?} is taken"),
            );
            if wanted.is_none() {
                // Lost a race for a free address: the cache will show it taken.
                outcome.retry = Some(Duration::from_secs(1));
            }
            Ok(outcome)
        }
        Err(source) => Err(Error::AllocateIp {
            l3network: l3name.clone(),
            vm: key(eip),
            source,
        }),
    }
}

/// Adds the bound NIC's address and host to an allocated Eip.
async fn bind(eip: &Eip, ctx: &Context, mut outcome: Outcome) -> Result<Outcome, Error> {
    let Some(nic) = &eip.spec.vm_nic else {
        outcome.ready = Desired::new(READY, false, "Unbound", "the VIP is bound to no NIC");
        return Ok(outcome);
    };
    let vms: Api<VirtualMachine> = Api::namespaced(
        ctx.client.clone(),
        eip.namespace().as_deref().unwrap_or_default(),
    );
    let vm = vms
        .get_opt(&nic.virtual_machine)
        .await
        .map_err(|source| Error::Get {
            kind: "VirtualMachine".into(),
            name: nic.virtual_machine.clone(),
            source,
        })?;
    let Some(vm) = vm else {
        outcome.ready = Desired::new(
            READY,
            false,
            "VirtualMachineNotFound",
            format!("VirtualMachine {:?} not found", nic.virtual_machine),
        );
        return Ok(outcome);
    };
    let index = nic_index(&vm, nic);
    let status = vm.status.unwrap_or_default();
    outcome.guest_ip = index
        .and_then(|i| status.nics.get(i))
        .map(|n| n.ip.clone())
        .filter(|ip| !ip.is_empty());
    outcome.host = status.host;
    outcome.ready = match (index, &outcome.guest_ip, &outcome.host) {
        (None, _, _) => Desired::new(
            READY,
            false,
            "NicNotFound",
            format!(
                "VirtualMachine {:?} has no NIC on {:?}",
                nic.virtual_machine, nic.l3_network
            ),
        ),
        (_, Some(ip), Some(host)) => Desired::new(
            READY,
            false,
            "Bound",
            format!("bound to {ip} on host {host}, whose agent programs the NAT (not reported back yet)"),
        ),
        _ => Desired::new(
            READY,
            false,
            "WaitingForVirtualMachine",
            "the NIC has no address or host yet",
        ),
    };
    Ok(outcome)
}

/// The VM each Eip was last bound to, so unbinding wakes the VM it leaves.
#[derive(Debug, Default)]
pub(crate) struct Bindings(Mutex<HashMap<String, String>>);

impl Bindings {
    /// Records `eip`'s binding; returns the VMs to wake (the new one and the one it left).
    pub fn record(&self, eip: &Eip) -> Vec<ObjectRef<VirtualMachine>> {
        let namespace = eip.namespace().unwrap_or_default();
        let now = eip.spec.vm_nic.as_ref().map(|n| n.virtual_machine.clone());
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = match &now {
            Some(vm) => seen.insert(key(eip), vm.clone()),
            None => seen.remove(&key(eip)),
        };
        let mut vms: Vec<String> = now.into_iter().chain(before).collect();
        vms.dedup();
        vms.iter()
            .map(|vm| ObjectRef::new(vm).within(&namespace))
            .collect()
    }
}

/// The index of the NIC `nic` names in `vm`: the one on its L3 network, else the default NIC.
pub(crate) fn nic_index(vm: &VirtualMachine, nic: &VmNicRef) -> Option<usize> {
    match &nic.l3_network {
        Some(l3) => vm.spec.nics.iter().position(|n| n.l3_network == *l3),
        None => vm
            .spec
            .nics
            .iter()
            .position(|n| n.default == Some(true))
            .or((!vm.spec.nics.is_empty()).then_some(0)),
    }
}

/// The Eip of each of `vm`'s NICs: those bound to it that have a VIP, with their Public
/// network as the host must build it. An Eip whose network cannot be resolved is left out (the
/// VM runs without it; its Eip status says why).
pub(crate) async fn resolve(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Vec<Option<VmiEip>>, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let bound = Api::<Eip>::namespaced(ctx.client.clone(), &namespace)
        .list(
            &ListParams::default().fields(&format!("spec.vmNic.virtualMachine={}", vm.name_any())),
        )
        .await
        .map_err(|source| Error::List {
            kind: "Eip",
            owner: super::vm_key(vm),
            source,
        })?;
    let mut out = vec![None; vm.spec.nics.len()];
    let mut eips = bound.items;
    eips.sort_by_key(|e| e.name_any());
    for eip in eips {
        if eip.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(nic), Some(vip)) = (
            eip.spec.vm_nic.as_ref(),
            eip.status.as_ref().and_then(|s| s.vip.clone()),
        ) else {
            continue;
        };
        let Some(slot) = nic_index(vm, nic).and_then(|i| out.get_mut(i)) else {
            continue;
        };
        if slot.is_some() {
            continue;
        }
        let Ok(network) = super::resolve_network(ctx, &eip.spec.l3_network).await? else {
            continue;
        };
        *slot = Some(VmiEip {
            name: eip.name_any(),
            vip,
            l3_network: network.name.clone(),
            prefix_length: network.subnet.net.prefix_len(),
            gateway: Some(network.subnet.gateway.to_string()),
            l2: network.l2,
        });
    }
    Ok(out)
}
