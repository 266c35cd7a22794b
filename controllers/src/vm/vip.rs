//! What Eips and PortForwardings share: a VIP allocated on a Public L3Network (an IpAddress the
//! object owns, the same allocation as VM addresses), bound to a VM NIC, released with the
//! object. Each kind's controller is this module's, instantiated for it ([`VipHolder`]); the VM
//! controller carries the objects bound to a VM into its instance ([`bound_to`]) and the host's
//! agent programs their NAT and reports it in the instance's `status.nat`, which turns them
//! `Ready`.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{jiff::Timestamp, NamespaceResourceScope};
use kube::{
    api::{ListParams, ObjectMeta, PostParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, Resource, ResourceExt,
};
use serde::Serialize;
use strata_apis::{
    condition::{LABEL_L3_NETWORK, READY},
    Conditions, IpAddress, IpAddressSpec, L3Category, L3Network, VirtualMachine,
    VirtualMachineInstance, VmNicRef, VmiEip, VmiNatStatus,
};

use super::ipam::{self, LABEL_OWNER_UID};
use crate::{
    cache::Reflected,
    conditions::{self, Desired},
    Context, Error,
};

/// Retried this often while blocked on something the user must fix.
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

/// The status fields every VIP holder has, under the same JSON names.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VipStatus {
    pub observed_generation: Option<i64>,
    pub vip: Option<String>,
    pub guest_ip: Option<String>,
    pub host: Option<String>,
    pub conditions: Conditions,
}

/// A namespaced kind holding a VIP bound to a VM NIC.
pub(crate) trait VipHolder:
    Reflected + Resource<Scope = NamespaceResourceScope> + Serialize
{
    /// The kind, as agents report it in `VmiNatStatus.kind`.
    const KIND: &'static str;
    /// Held until the VIP is released.
    const FINALIZER: &'static str;
    fn l3_network(&self) -> &str;
    /// The VIP the spec asks for.
    fn wanted_vip(&self) -> Option<&str>;
    fn vm_nic(&self) -> Option<&VmNicRef>;
    fn vip_status(&self) -> VipStatus;
}

fn key<K: VipHolder>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The allocated VIP, once the status holds one.
fn allocated<K: VipHolder>(object: &K) -> Option<String> {
    object.vip_status().vip
}

/// The controller of `K`, woken by the VM it is bound to (address, host) and by that VM's
/// instance (the NAT its agent reports).
pub(crate) fn controller<K: VipHolder>(client: &Client) -> Controller<K> {
    let objects = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let (by_vm, by_vmi) = (objects.store(), objects.store());
    objects
        .watches(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default(),
            move |vm| bound_in(&by_vm, vm.namespace(), &vm.name_any()),
        )
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            move |vmi| bound_in(&by_vmi, vmi.namespace(), &vmi.name_any()),
        )
}

fn bound_in<K: VipHolder>(
    store: &Store<K>,
    namespace: Option<String>,
    vm: &str,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == namespace)
        .filter(|o| o.vm_nic().is_some_and(|n| n.virtual_machine == vm))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

pub(crate) async fn reconcile<K: VipHolder>(
    object: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = key(object.as_ref());
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        object.namespace().as_deref().unwrap_or_default(),
    );
    let action = finalizer(&api, K::FINALIZER, object, |event| async {
        match event {
            Event::Apply(object) => apply(&api, object.as_ref(), &ctx).await,
            Event::Cleanup(object) => {
                let uid = object.uid().unwrap_or_default();
                ipam::release_owned(&ctx, &uid, &key(object.as_ref()))
                    .await
                    .map(|()| Action::await_change())
            }
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        kind: K::KIND,
        name: name.clone(),
        source: Box::new(source),
    })?;
    ctx.succeeded(K::KIND, &name);
    Ok(action)
}

pub(crate) fn error_policy<K: VipHolder>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(ctx.failed(K::KIND, &key(object.as_ref()), error))
}

/// What the object has got so far, and why not more.
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

fn allocated_outcome(vip: Ipv4Addr) -> Outcome {
    Outcome {
        vip: Some(vip),
        guest_ip: None,
        host: None,
        ready: Desired::new(READY, false, "Allocated", ""),
        retry: None,
    }
}

async fn apply<K: VipHolder>(api: &Api<K>, object: &K, ctx: &Context) -> Result<Action, Error> {
    let outcome = allocate(object, ctx).await?;
    let outcome = match outcome.vip {
        Some(vip) => bind(object, ctx, vip, outcome).await?,
        None => outcome,
    };
    let current = object.vip_status();
    let mut status = VipStatus {
        observed_generation: object.meta().generation,
        vip: outcome.vip.map(|v| v.to_string()),
        guest_ip: outcome.guest_ip,
        host: outcome.host,
        conditions: current.conditions.clone(),
    };
    conditions::set(
        &mut status.conditions,
        outcome.ready,
        object.meta().generation,
        Timestamp::now(),
    );
    if status != current {
        // Serialized with nulls, so a merge patch clears what the object no longer has.
        crate::context::merge_status(api, K::KIND, &object.name_any(), key(object), &status)
            .await?;
    }
    Ok(outcome
        .retry
        .map_or_else(Action::await_change, Action::requeue))
}

/// The VIP: the one the object holds, else the one it asks for, else the next free one.
async fn allocate<K: VipHolder>(object: &K, ctx: &Context) -> Result<Outcome, Error> {
    let l3name = object.l3_network();
    let Some(l3) = super::get::<L3Network>(ctx, l3name).await? else {
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
    let uid = object.uid().unwrap_or_default();
    let on_network: Vec<(Ipv4Addr, bool)> = ctx
        .ips
        .state()
        .iter()
        .filter(|ip| ip.spec.l3_network == *l3name)
        .filter_map(|ip| Some((ip.spec.address.parse().ok()?, ip.spec.owner_uid == uid)))
        .collect();
    let wanted = match object.wanted_vip() {
        Some(vip) => match ipam::check_static(&subnet, vip) {
            Ok(vip) => Some(vip),
            Err(e) => return Ok(blocked(ipam::IP_OUT_OF_RANGE, format!("vip {vip}: {e}"))),
        },
        None => None,
    };
    let held = on_network
        .iter()
        .find(|(a, mine)| *mine && wanted.is_none_or(|w| w == *a));
    if let Some((vip, _)) = held {
        return Ok(allocated_outcome(*vip));
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
    let ip = IpAddress {
        metadata: ObjectMeta {
            name: Some(IpAddress::object_name(l3name, vip)),
            labels: Some(
                [
                    (LABEL_L3_NETWORK.to_string(), l3name.to_string()),
                    (LABEL_OWNER_UID.to_string(), uid.clone()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: IpAddressSpec {
            l3_network: l3name.to_string(),
            address: vip.to_string(),
            owner: key(object),
            owner_uid: uid,
        },
    };
    match Api::<IpAddress>::all(ctx.client.clone())
        .create(&PostParams::default(), &ip)
        .await
    {
        Ok(_) => Ok(allocated_outcome(vip)),
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
            l3network: l3name.to_string(),
            vm: key(object),
            source,
        }),
    }
}

/// Adds the bound NIC's address and host to an allocated VIP, and `Ready` once the host's agent
/// reports the NAT programmed.
async fn bind<K: VipHolder>(
    object: &K,
    ctx: &Context,
    vip: Ipv4Addr,
    mut outcome: Outcome,
) -> Result<Outcome, Error> {
    let Some(nic) = object.vm_nic() else {
        outcome.ready = Desired::new(READY, false, "Unbound", "the VIP is bound to no NIC");
        return Ok(outcome);
    };
    let namespace = object.namespace().unwrap_or_default();
    let vm = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &namespace)
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
    let programmed = VmiNatStatus {
        kind: K::KIND.into(),
        name: object.name_any(),
        vip: vip.to_string(),
    };
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
        (_, Some(ip), Some(host)) => {
            let vmi = ctx
                .vmis
                .get(&ObjectRef::new(&nic.virtual_machine).within(&namespace));
            let reported = vmi.is_some_and(|vmi| {
                vmi.spec.host == *host
                    && vmi
                        .status
                        .as_ref()
                        .is_some_and(|s| s.nat.contains(&programmed))
            });
            if reported {
                Desired::new(
                    READY,
                    true,
                    "Programmed",
                    format!("host {host} NATs {vip} to {ip}"),
                )
            } else {
                Desired::new(
                    READY,
                    false,
                    "Bound",
                    format!(
                        "bound to {ip} on host {host}, waiting for its agent to program the NAT"
                    ),
                )
            }
        }
        _ => Desired::new(
            READY,
            false,
            "WaitingForVirtualMachine",
            "the NIC has no address or host yet",
        ),
    };
    Ok(outcome)
}

/// The VM each object was last bound to, so unbinding wakes the VM it leaves.
#[derive(Debug, Default)]
pub(crate) struct Bindings(Mutex<HashMap<String, String>>);

impl Bindings {
    /// Records `object`'s binding; returns the VMs to wake (the new one and the one it left).
    pub fn record<K: VipHolder>(&self, object: &K) -> Vec<ObjectRef<VirtualMachine>> {
        let namespace = object.namespace().unwrap_or_default();
        let now = object.vm_nic().map(|n| n.virtual_machine.clone());
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = match &now {
            Some(vm) => seen.insert(key(object), vm.clone()),
            None => seen.remove(&key(object)),
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

/// A VIP holder bound to one of a VM's NICs, as the host programs it.
pub(crate) struct Bound<K> {
    /// The NIC's index.
    pub nic: usize,
    pub object: Arc<K>,
    /// Its name, VIP and Public network.
    pub public: VmiEip,
}

/// The `K`s bound to `vm` that have a VIP, by name, from the watch-fed cache (the API until
/// its first list arrived). One whose network cannot be resolved is left out (the VM runs
/// without it; its status says why).
pub(crate) async fn bound_to<K: VipHolder>(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Vec<Bound<K>>, Error> {
    let namespace = vm.namespace();
    let vm_name = vm.name_any();
    let mut objects = match ctx.caches.all::<K>() {
        Some(all) => all
            .into_iter()
            .filter(|o| o.namespace() == namespace)
            .filter(|o| o.vm_nic().is_some_and(|n| n.virtual_machine == vm_name))
            .collect(),
        None => Api::<K>::namespaced(ctx.client.clone(), namespace.as_deref().unwrap_or_default())
            .list(&ListParams::default().fields(&format!("spec.vmNic.virtualMachine={vm_name}")))
            .await
            .map_err(|source| Error::List {
                kind: K::KIND,
                owner: super::vm_key(vm),
                source,
            })?
            .items
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>(),
    };
    objects.sort_by_key(|o| o.name_any());
    let mut out = Vec::new();
    for object in objects {
        if object.meta().deletion_timestamp.is_some() {
            continue;
        }
        let (Some(nic), Some(vip)) = (object.vm_nic(), allocated(object.as_ref())) else {
            continue;
        };
        let Some(nic) = nic_index(vm, nic) else {
            continue;
        };
        let Ok(network) = super::resolve_network(ctx, object.l3_network()).await? else {
            continue;
        };
        let public = VmiEip {
            name: object.name_any(),
            vip,
            l3_network: network.name.clone(),
            prefix_length: network.subnet.net.prefix_len(),
            gateway: Some(network.subnet.gateway.to_string()),
            l2: network.l2,
        };
        out.push(Bound {
            nic,
            object,
            public,
        });
    }
    Ok(out)
}
