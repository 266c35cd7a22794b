//! VM controller: resolves a VirtualMachine's references, places it on a host, allocates its
//! addresses and writes the VirtualMachineInstance that the host's agent runs; then mirrors
//! what the agent reports. Deletion destroys the instance before releasing the addresses.

pub(crate) mod eip;
pub(crate) mod ha;
mod instance;
pub(crate) mod inventory;
mod ipam;
pub(crate) mod portforwarding;
pub(crate) mod recycle;
pub(crate) mod schedule;
mod security;
mod status;
pub(crate) mod vip;
pub(crate) mod volumes;
mod wake;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::api::resource::Quantity, jiff::Timestamp};
use kube::{
    api::DeleteParams,
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::VM_FINALIZER, l3network::Subnet, quantity, DeletionPolicy, Host, HostState, Image,
    ImageSpec, InstanceOffering, IpAddress, L2Network, L2NetworkType, L3Network, RunStrategy,
    SecurityGroup, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus, VmiL2Network,
    VmiPhase,
};
use strata_apis::{AllocatorStrategy, Cluster, GlobalConfig, PrimaryStorage, Zone};

use self::{
    instance::Applied,
    schedule::{Candidate, Choice, Placement, Request, Resources, RoomHints},
    status::Observation,
    wake::Generations,
};
use crate::{
    events::{self, Transition},
    Context, Error,
};

/// A VM blocked on something the user must fix is retried this often anyway, in case the
/// watch that would wake it was missed.
const BLOCKED_RETRY: Duration = Duration::from_secs(60);
/// An unschedulable VM is retried this often; host changes also wake it.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(30);
/// Waiting for an old instance to go away before creating the new one.
const REPLACING_RETRY: Duration = Duration::from_secs(2);

/// Why a VM cannot progress, as a condition reason and a message naming the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// An L3 network a NIC is on, validated, with the L2 network under it.
#[derive(Clone, Debug)]
pub(crate) struct Network {
    pub name: String,
    pub subnet: Subnet,
    pub dns: Vec<String>,
    pub dns_domain: Option<String>,
    pub l2: VmiL2Network,
}

/// A VM's references, fetched and validated.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub size: Resources,
    pub memory: Quantity,
    pub image: ImageSpec,
    /// The image's virtual size, once it has been measured (`status.virtualSize`).
    pub image_virtual_size: Option<u64>,
    /// How the scheduler picks among fitting hosts (the offering's; Spread without one).
    pub strategy: AllocatorStrategy,
    pub networks: Vec<Network>,
    /// Each NIC's firewall, from its SecurityGroups (`None` for a NIC in none).
    pub security: Vec<Option<strata_apis::VmiNicSecurity>>,
    /// Each NIC's Eip, once it has a VIP.
    pub eips: Vec<Option<strata_apis::VmiEip>>,
    /// Each NIC's PortForwardings that have a VIP.
    pub port_forwardings: Vec<Vec<strata_apis::VmiPortForwarding>>,
}

pub(crate) fn controller(client: &Client) -> Controller<VirtualMachine> {
    let vms = Controller::new(Api::all(client.clone()), watcher::Config::default());
    let store = vms.store();
    let (offerings, images, networks, hosts) =
        (store.clone(), store.clone(), store.clone(), store.clone());
    let groups = store.clone();
    let l2_waiters = store.clone();
    let (volume_users, snapshot_users, restore_users) =
        (store.clone(), store.clone(), store.clone());
    let group_generations = Generations::default();
    let eip_bindings = vip::Bindings::default();
    let port_forwarding_bindings = vip::Bindings::default();
    let remote_groups = security::RemoteGroups::default();
    let room_hints = Mutex::new(RoomHints::default());
    let host_changes = wake::HostChanges::default();
    let l3_generations = Generations::default();
    let image_generations = Generations::default();
    vms.owns(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<InstanceOffering>::all(client.clone()),
        watcher::Config::default(),
        move |o| {
            let name = o.name_any();
            referring(&offerings, |vm| {
                vm.spec.instance_offering.as_ref() == Some(&name)
            })
        },
    )
    .watches(
        Api::<Image>::all(client.clone()),
        watcher::Config::default(),
        // Progress writes do not matter to VMs: only a new image, spec or stored copy does.
        move |i| {
            let (name, version) = (i.name_any(), crate::image::handoff(&i));
            if !image_generations.changed(&name, version, i.metadata.generation) {
                return Vec::new();
            }
            referring(&images, |vm| vm.spec.image == name)
        },
    )
    .watches(
        Api::<L3Network>::all(client.clone()),
        watcher::Config::default(),
        // Only a new network or a new spec matters to the VMs on it: the L3 controller
        // rewrites the status on every allocation, and waking every VM on the network each
        // time made bursts of creates quadratic.
        move |l3| {
            let name = l3.name_any();
            if !l3_generations.changed(&name, l3.uid(), l3.metadata.generation) {
                return Vec::new();
            }
            referring(&networks, |vm| {
                vm.spec.nics.iter().any(|n| n.l3_network == name)
            })
        },
    )
    // A VXLAN network's VNI arrives in its status after the VMs on it were first seen; VMs
    // waiting for an L2 network try again when any L2 network changes.
    .watches(
        Api::<L2Network>::all(client.clone()),
        watcher::Config::default(),
        move |_| {
            referring(&l2_waiters, |vm| {
                vm.status
                    .as_ref()
                    .and_then(|s| {
                        s.conditions
                            .iter()
                            .find(|c| c.type_ == strata_apis::condition::READY)
                    })
                    .is_some_and(|c| c.reason.starts_with("L2Network"))
            })
        },
    )
    // A group's rules are resolved into the instances of the VMs whose NICs list it, and its
    // members' addresses into the rules of groups naming it as `remoteGroup`.
    .watches(
        Api::<SecurityGroup>::all(client.clone()),
        watcher::Config::default(),
        // Its status (`nicCount`) changes with its members, which matters only to the VMs in
        // groups whose rules name it as `remoteGroup`.
        move |sg| {
            let (name, namespace) = (sg.name_any(), sg.namespace().unwrap_or_default());
            let key = format!("{namespace}/{name}");
            let new_spec = group_generations.changed(&key, sg.uid(), sg.metadata.generation);
            let referrers = remote_groups.record(&sg);
            referring(&groups, |vm| {
                vm.namespace().unwrap_or_default() == namespace
                    && vm.spec.nics.iter().any(|n| {
                        n.security_groups
                            .iter()
                            .any(|g| (new_spec && *g == name) || referrers.contains(g))
                    })
            })
        },
    )
    // An Eip's or PortForwarding's VIP or binding is resolved into the instance of the VM it
    // is (or was) bound to.
    .watches(
        Api::<strata_apis::Eip>::all(client.clone()),
        watcher::Config::default(),
        move |e| eip_bindings.record(&e),
    )
    .watches(
        Api::<strata_apis::PortForwarding>::all(client.clone()),
        watcher::Config::default(),
        move |pf| port_forwarding_bindings.record(&pf),
    )
    // A volume given to a VM, taken back, grown or gone changes its disks.
    .watches(
        Api::<strata_apis::Volume>::all(client.clone()),
        watcher::Config::default(),
        move |v| {
            // A root volume is its own VM's disk only (another VM listing it is refused
            // whatever happens to it): no need to look at every VM.
            if let Some(owner) = volumes::root_owner(&v) {
                return vec![owner];
            }
            let (namespace, name) = (v.namespace(), v.name_any());
            referring(&volume_users, |vm| {
                volumes::uses(vm, namespace.as_deref(), &name)
            })
        },
    )
    // Snapshots to take or drop and reverts to make are part of the disks.
    .watches(
        Api::<strata_apis::VolumeSnapshot>::all(client.clone()),
        watcher::Config::default(),
        move |s| {
            let namespace = s.namespace();
            referring(&snapshot_users, |vm| {
                volumes::uses(vm, namespace.as_deref(), &s.spec.volume)
            })
        },
    )
    .watches(
        Api::<strata_apis::VolumeRestore>::all(client.clone()),
        watcher::Config::default(),
        move |r| {
            let namespace = r.namespace();
            referring(&restore_users, |vm| {
                volumes::uses(vm, namespace.as_deref(), &r.spec.volume)
            })
        },
    )
    .watches(
        Api::<Host>::all(client.clone()),
        watcher::Config::default(),
        // A host change matters to the VMs on it unless it only counts placements, and to
        // every VM still waiting for a host if the host may have gained room.
        move |h| {
            let name = h.name_any();
            let gained = room_hints
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .gained_room(&name, inventory::room(&h));
            let matters = host_changes.matters(&h);
            if !gained && !matters {
                return Vec::new();
            }
            referring(&hosts, |vm| {
                vm.status
                    .as_ref()
                    .and_then(|s| s.host.as_ref())
                    .map_or(gained, |host| matters && *host == name)
            })
        },
    )
    // What placement reads besides hosts: a change may make a waiting VM schedulable.
    .watches(
        Api::<Cluster>::all(client.clone()),
        watcher::Config::default(),
        unplaced(&store),
    )
    .watches(
        Api::<Zone>::all(client.clone()),
        watcher::Config::default(),
        unplaced(&store),
    )
    .watches(
        Api::<PrimaryStorage>::all(client.clone()),
        watcher::Config::default(),
        unplaced(&store),
    )
    .watches(
        Api::<GlobalConfig>::all(client.clone()),
        watcher::Config::default(),
        unplaced(&store),
    )
    // An address released on a network may be the one a VM waits for.
    .watches(
        Api::<IpAddress>::all(client.clone()),
        watcher::Config::default(),
        move |ip| {
            referring(&store, |vm| {
                waits_for_address(vm)
                    && vm
                        .spec
                        .nics
                        .iter()
                        .any(|n| n.l3_network == ip.spec.l3_network)
            })
        },
    )
}

/// Whether `vm` is blocked on an address that another VM holds or that its network lacks.
fn waits_for_address(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == strata_apis::condition::READY
                && matches!(c.reason.as_str(), ipam::IP_EXHAUSTED | ipam::IP_CONFLICT)
        })
    })
}

/// A mapper that wakes every VM still waiting for a host.
fn unplaced<K>(store: &Store<VirtualMachine>) -> impl Fn(K) -> Vec<ObjectRef<VirtualMachine>> {
    let store = store.clone();
    move |_| {
        referring(&store, |vm| {
            vm.status.as_ref().and_then(|s| s.host.as_ref()).is_none()
        })
    }
}

/// The VMs `refers` picks, looked at in place: asked on every event of the watched kinds, so
/// copying the whole store each time made bursts of creates quadratic.
fn referring(
    store: &Store<VirtualMachine>,
    refers: impl Fn(&VirtualMachine) -> bool,
) -> Vec<ObjectRef<VirtualMachine>> {
    store
        .state_filter(refers)
        .iter()
        .map(|vm| ObjectRef::from_obj(vm.as_ref()))
        .collect()
}

pub(crate) fn vm_key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

pub(crate) async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = vm_key(&vm);
    let vm = ctx.written_vms.freshest(&key, vm);
    let api: Api<VirtualMachine> = Api::namespaced(
        ctx.client.clone(),
        vm.namespace().as_deref().unwrap_or_default(),
    );
    let action = finalizer(&api, VM_FINALIZER, vm, |event| async {
        match event {
            Event::Apply(vm) => apply(&vm, &ctx).await,
            Event::Cleanup(vm) => cleanup(&vm, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        kind: "VirtualMachine",
        name: key.clone(),
        source: Box::new(source),
    })?;
    ctx.succeeded("VirtualMachine", &key);
    Ok(action)
}

pub(crate) fn error_policy(vm: Arc<VirtualMachine>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = vm_key(&vm);
    if error.category() == "waiting" {
        return Action::requeue(REPLACING_RETRY);
    }
    Action::requeue(ctx.failed("VirtualMachine", &key, error))
}

async fn apply(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let key = vm_key(vm);
    let mut current = vm.status.clone().unwrap_or_default();
    let instances = instances(ctx, vm);
    // A VM deleted under a Delay or Never policy left its disk and addresses in the recycle
    // bin; one created again under its name takes them back before anything is allocated.
    if !current
        .volumes
        .iter()
        .any(|v| v.volume_type == strata_apis::VolumeType::Root)
    {
        recycle::adopt(ctx, vm).await?;
    }

    if vm.spec.run_strategy == RunStrategy::Halted {
        ctx.assumed().forget(&key);
        let instance_exists = delete_instance(&instances, vm).await?;
        let observation = Observation::Halted { instance_exists };
        update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
        return Ok(Action::await_change());
    }

    let resolved = match resolve(ctx, vm).await? {
        Ok(resolved) => resolved,
        Err(problem) => {
            let observation = Observation::Blocked(problem);
            update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
            return Ok(Action::requeue(BLOCKED_RETRY));
        }
    };

    // A static address that can never be given is refused before the VM takes a host.
    if let Err(problem) = ipam::static_addresses(vm, &resolved.networks) {
        let observation = Observation::Blocked(problem);
        update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
        return Ok(Action::requeue(BLOCKED_RETRY));
    }

    // The cached VM can predate the write that placed it (a host event may wake it before its
    // own status update arrives): a placement this process has decided, or an instance
    // already written, wins over scheduling it a second time.
    let placed = crate::migration::placement(ctx, vm)
        .await?
        .or_else(|| current.host.clone())
        .or_else(|| placed_before(ctx, vm, &key));
    if let Some(why) = ha::evacuate(ctx, vm, placed.as_deref()).await? {
        ctx.assumed().forget(&key);
        let observation = Observation::Evacuated(why);
        update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
        return Ok(Action::requeue(REPLACING_RETRY));
    }
    let host = match &placed {
        Some(host) => {
            // Re-assert a placement made before a restart, until the cache shows its instance.
            let placement = Placement {
                host: host.clone(),
                request: resolved.size,
            };
            let instance =
                ObjectRef::new(&vm.name_any()).within(&vm.namespace().unwrap_or_default());
            if ctx.vmis.get(&instance).is_none() {
                ctx.assumed().assume(key.clone(), placement);
            }
            host.clone()
        }
        None => match schedule(ctx, &key, &request(vm, &resolved)).await {
            Ok(Choice { host, storage }) => {
                current = volumes::placed(&current, vm, storage);
                // The placement is recorded before anything else, so a crash after this point
                // resumes on the same host instead of scheduling the VM again.
                let placed = Observation::Placed {
                    host: host.clone(),
                    instance: None,
                    host_connected: true,
                    cpu: resolved.size.cpu,
                    memory: resolved.memory.clone(),
                    reboot_pending: false,
                };
                if let Err(error) =
                    update_status(ctx, vm, &current, placed, current.nics.clone()).await
                {
                    ctx.assumed().forget(&key);
                    return Err(error);
                }
                host
            }
            Err(message) => {
                let observation = Observation::Unschedulable(message);
                update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
                return Ok(Action::requeue(UNSCHEDULABLE_RETRY));
            }
        },
    };

    let allocated = match volumes::allocate(ctx, vm, &resolved, &current).await? {
        Ok(allocated) => allocated,
        Err(problem) => {
            let observation = Observation::Blocked(problem);
            update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
            return Ok(Action::requeue(BLOCKED_RETRY));
        }
    };
    let current = allocated.status;

    let nics = match ipam::allocate(ctx, vm, &resolved.networks, &current.nics).await? {
        Ok(nics) => nics,
        Err(problem) => {
            let observation = Observation::Blocked(problem);
            update_status(ctx, vm, &current, observation, current.nics.clone()).await?;
            return Ok(Action::requeue(BLOCKED_RETRY));
        }
    };

    let desired = instance::build(vm, &host, &resolved, &nics, allocated.disks);
    let applied = instance::apply(&instances, vm, desired).await?;
    if let Applied::Current(Some(reported)) = &applied {
        if let Some(why) = status::restart_due(vm.spec.run_strategy, reported) {
            // A new instance is a new run, as in KubeVirt: the stopped one goes first, and the
            // next reconcile creates its successor on the same host.
            delete_instance(&instances, vm).await?;
            events::publish(
                &ctx.recorder,
                vm,
                vec![Transition::normal("Restarting", why)],
            )
            .await;
            return Ok(Action::requeue(REPLACING_RETRY));
        }
    }
    let next = ha::recheck(ctx, vm, &host);
    let observation = match applied {
        Applied::Current(reported) => Observation::Placed {
            host_connected: host_connected(ctx, &host),
            host,
            reboot_pending: reported.as_ref().is_some_and(|r| {
                r.phase == VmiPhase::Running && r.reboot_request != vm.spec.reboot_request
            }),
            instance: reported.map(|r| *r),
            cpu: resolved.size.cpu,
            memory: resolved.memory.clone(),
        },
        Applied::Replacing => {
            let observation = Observation::Placed {
                host,
                instance: None,
                host_connected: true,
                cpu: resolved.size.cpu,
                memory: resolved.memory.clone(),
                reboot_pending: false,
            };
            update_status(ctx, vm, &current, observation, nics).await?;
            return Ok(Action::requeue(REPLACING_RETRY));
        }
    };
    update_status(ctx, vm, &current, observation, nics).await?;
    // Instance reports, host state and reference changes all arrive as watch events; an HA
    // restart falling due does not.
    Ok(next)
}

async fn cleanup(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let key = vm_key(vm);
    let current = vm.status.clone().unwrap_or_default();
    update_status(
        ctx,
        vm,
        &current,
        Observation::Destroying,
        current.nics.clone(),
    )
    .await?;
    if delete_instance(&instances(ctx, vm), vm).await? {
        // The agent's finalizer holds the instance until the hypervisor has destroyed it,
        // unless its host is gone.
        let instance = ObjectRef::new(&vm.name_any()).within(&vm.namespace().unwrap_or_default());
        let host = ctx.vmis.get(&instance).map(|vmi| vmi.spec.host.clone());
        let gone = match host.or_else(|| current.host.clone()) {
            Some(host) => ha::host_gone(ctx, &host),
            None => ha::HostGone::No,
        };
        match gone {
            ha::HostGone::Yes(why) => ha::abandon(ctx, vm, &why).await?,
            ha::HostGone::Later(wait) => return Ok(Action::requeue(wait)),
            ha::HostGone::No => return Err(Error::InstanceStillExists { vm: key }),
        }
    }
    let policy = recycle::policy(ctx, vm);
    let kept = policy != DeletionPolicy::Direct && recycle::retain(ctx, vm, policy).await?;
    if !kept {
        ipam::release_owned(ctx, vm.uid().unwrap_or_default().as_str(), &vm_key(vm)).await?;
    }
    ctx.assumed().forget(&key);
    Ok(Action::await_change())
}

fn instances(ctx: &Context, vm: &VirtualMachine) -> Api<VirtualMachineInstance> {
    Api::namespaced(
        ctx.client.clone(),
        vm.namespace().as_deref().unwrap_or_default(),
    )
}

/// Asks for the VM's instance to be deleted; returns whether it still exists.
async fn delete_instance(
    api: &Api<VirtualMachineInstance>,
    vm: &VirtualMachine,
) -> Result<bool, Error> {
    let name = vm.name_any();
    let failed = |source| Error::Delete {
        kind: "VirtualMachineInstance",
        name: vm_key(vm),
        source,
    };
    let Some(existing) = api.get_opt(&name).await.map_err(failed)? else {
        return Ok(false);
    };
    if existing.metadata.deletion_timestamp.is_none() {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(false),
            Err(source) => return Err(failed(source)),
        }
    }
    Ok(api.get_opt(&name).await.map_err(failed)?.is_some())
}

/// Fetches and validates the offering (or explicit size), image and networks the VM names.
async fn resolve(ctx: &Context, vm: &VirtualMachine) -> Result<Result<Resolved, Problem>, Error> {
    let (what, cpu, memory, strategy) = match &vm.spec.instance_offering {
        Some(name) => {
            let Some(offering) = get::<InstanceOffering>(ctx, name).await? else {
                return Ok(Err(not_found("InstanceOffering", name)));
            };
            (
                format!("InstanceOffering {name:?}"),
                offering.spec.cpu,
                offering.spec.memory,
                offering.spec.allocator_strategy,
            )
        }
        None => (
            "the VM".to_string(),
            vm.spec.cpu.unwrap_or_default(),
            vm.spec.memory.clone().unwrap_or_default(),
            AllocatorStrategy::default(),
        ),
    };
    let memory_bytes = match quantity::parse_quantity(&memory) {
        Ok(bytes) if bytes > 0 && cpu > 0 => bytes,
        _ => {
            return Ok(Err(Problem::new(
                "InstanceOfferingInvalid",
                format!(
                "{what} needs at least 1 cpu and a memory quantity, has cpu {cpu} and memory {:?}",
                memory.0
            ),
            )))
        }
    };
    let Some(image) = get::<Image>(ctx, &vm.spec.image).await? else {
        return Ok(Err(not_found("Image", &vm.spec.image)));
    };
    let mut networks = Vec::with_capacity(vm.spec.nics.len());
    for nic in &vm.spec.nics {
        match resolve_network(ctx, &nic.l3_network).await? {
            Ok(network) => networks.push(network),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    let security = match security::resolve(ctx, vm).await? {
        Ok(security) => security,
        Err(problem) => return Ok(Err(problem)),
    };
    Ok(Ok(Resolved {
        size: Resources {
            cpu,
            memory: memory_bytes,
        },
        memory,
        image_virtual_size: image
            .status
            .as_ref()
            .and_then(|s| s.virtual_size.as_ref())
            .and_then(|q| quantity::parse_quantity(q).ok()),
        image: crate::image::for_hosts(&image),
        strategy,
        networks,
        security,
        eips: eip::resolve(ctx, vm).await?,
        port_forwardings: portforwarding::resolve(ctx, vm).await?,
    }))
}

/// An L3 network and the L2 network under it, as a host needs them to plumb a NIC.
async fn resolve_network(ctx: &Context, name: &str) -> Result<Result<Network, Problem>, Error> {
    let Some(l3) = get::<L3Network>(ctx, name).await? else {
        return Ok(Err(not_found("L3Network", name)));
    };
    let subnet = match l3.spec.subnet() {
        Ok(subnet) => subnet,
        Err(e) => {
            return Ok(Err(Problem::new(
                "L3NetworkInvalid",
                format!("L3Network {name:?} is invalid: {e}"),
            )))
        }
    };
    let Some(l2) = get::<L2Network>(ctx, &l3.spec.l2_network).await? else {
        return Ok(Err(not_found("L2Network", &l3.spec.l2_network)));
    };
    // A VXLAN network's VNI is the user's or the one its pool allocated into status; the
    // bridge cannot be built before there is one.
    let vni = l2
        .spec
        .vni
        .or_else(|| l2.status.as_ref().and_then(|s| s.vni));
    if l2.spec.network_type == L2NetworkType::Vxlan && vni.is_none() {
        return Ok(Err(Problem::new(
            "L2NetworkNotReady",
            format!("L2Network {:?} has no VNI allocated yet", l2.name_any()),
        )));
    }
    Ok(Ok(Network {
        name: name.to_string(),
        subnet,
        dns: l3.spec.dns,
        dns_domain: l3.spec.dns_domain,
        l2: VmiL2Network {
            name: l2.name_any(),
            network_type: l2.spec.network_type,
            physical_interface: l2.spec.physical_interface,
            vlan_id: l2.spec.vlan_id,
            vni,
            mtu: l2.spec.mtu,
        },
    }))
}

fn not_found(kind: &'static str, name: &str) -> Problem {
    let reason = match kind {
        "InstanceOffering" => "InstanceOfferingNotFound",
        "Image" => "ImageNotFound",
        "L2Network" => "L2NetworkNotFound",
        _ => "L3NetworkNotFound",
    };
    Problem::new(reason, format!("{kind} {name:?} not found"))
}

async fn get<K: crate::cache::Cached>(ctx: &Context, name: &str) -> Result<Option<K>, Error> {
    if let Some(cached) = ctx.caches.get::<K>(name) {
        return Ok(cached.map(|k| K::clone(&k)));
    }
    Api::<K>::all(ctx.client.clone())
        .get_opt(name)
        .await
        .map_err(|source| Error::Get {
            kind: <K as kube::Resource>::kind(&()).into_owned(),
            name: name.to_string(),
            source,
        })
}

/// The host `vm` was given by an earlier reconcile whose status write the cache may not show
/// yet: an assumed placement, or a live instance.
fn placed_before(ctx: &Context, vm: &VirtualMachine, key: &str) -> Option<String> {
    if let Some(host) = ctx.assumed().host_of(key) {
        return Some(host);
    }
    let instance = ObjectRef::new(&vm.name_any()).within(&vm.namespace().unwrap_or_default());
    ctx.vmis
        .get(&instance)
        .filter(|vmi| vmi.metadata.deletion_timestamp.is_none())
        .map(|vmi| vmi.spec.host.clone())
}

/// What `vm` asks of the scheduler: its size, root disk, L2 networks, pinning and strategy.
fn request(vm: &VirtualMachine, resolved: &Resolved) -> Request {
    let placement = vm.spec.placement.clone().unwrap_or_default();
    Request {
        size: resolved.size,
        root_disk: vm
            .spec
            .root_disk_size
            .as_ref()
            .and_then(|q| quantity::parse_quantity(q).ok())
            .or(resolved.image_virtual_size),
        l2_networks: resolved
            .networks
            .iter()
            .map(|n| n.l2.name.clone())
            .collect(),
        zone: placement.zone,
        cluster: placement.cluster,
        host: placement.host,
        avoid: None,
        strategy: resolved.strategy,
    }
}

/// Chooses a host and assumes the placement, atomically with respect to other VMs: the
/// assumed placements stay locked from reading the usage to recording the choice.
pub(crate) async fn schedule(
    ctx: &Context,
    key: &str,
    request: &Request,
) -> Result<Choice, String> {
    // Scheduling on half-filled caches would overcommit hosts or miss clusters.
    if ctx.hosts.wait_until_ready().await.is_err()
        || ctx.vmis.wait_until_ready().await.is_err()
        || !ctx.inventory.ready().await
    {
        return Err("the host and instance caches are not ready".into());
    }
    let config = ctx.inventory.global();
    let mut assumed = ctx.assumed();
    let placed = ctx.vmis.state();
    let vms = ctx.inventory.vms.state();
    let instances = placed.iter().filter_map(|vmi| {
        let memory = quantity::parse_quantity(&vmi.spec.memory).ok()?;
        let key = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
        Some((
            key,
            vmi.spec.host.as_str(),
            Resources {
                cpu: vmi.spec.cpu,
                memory,
            },
        ))
    });
    let recorded = vms.iter().filter_map(|vm| {
        let status = vm.status.as_ref()?;
        let memory = quantity::parse_quantity(status.memory.as_ref()?).ok()?;
        Some((
            vm_key(vm),
            status.host.as_deref()?,
            Resources {
                cpu: status.cpu?,
                memory,
            },
        ))
    });
    let usage = assumed.usage(instances, recorded);
    let candidates: Vec<Candidate> = ctx
        .hosts
        .state()
        .iter()
        .map(|h| {
            let used = usage.get(&h.name_any()).copied().unwrap_or_default();
            ctx.inventory.candidate(h, &config, used)
        })
        .collect();
    let choice = schedule::pick(request, &candidates)?;
    assumed.assume(
        key.to_string(),
        Placement {
            host: choice.host.clone(),
            request: request.size,
        },
    );
    Ok(choice)
}

fn host_connected(ctx: &Context, host: &str) -> bool {
    ctx.hosts.get(&ObjectRef::new(host)).is_some_and(|h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.state == Some(HostState::Connected))
    })
}

/// Writes the status `observation` leads to, if it differs, and records the transitions.
async fn update_status(
    ctx: &Context,
    vm: &VirtualMachine,
    current: &VirtualMachineStatus,
    observation: Observation,
    nics: Vec<strata_apis::VmNicStatus>,
) -> Result<(), Error> {
    let new = status::compute(
        current,
        observation,
        nics,
        vm.metadata.generation,
        Timestamp::now(),
    );
    if &new == current {
        return Ok(());
    }
    let mut patch = serde_json::to_value(&new).unwrap_or_default();
    // `host` is omitted when empty; a merge patch must say null to clear it.
    patch["host"] = json!(new.host);
    let api: Api<VirtualMachine> = Api::namespaced(
        ctx.client.clone(),
        vm.namespace().as_deref().unwrap_or_default(),
    );
    let written =
        crate::context::patched_status(&api, "VirtualMachine", &vm.name_any(), vm_key(vm), &patch)
            .await?;
    ctx.written_vms.record(vm_key(vm), written);
    events::publish(&ctx.recorder, vm, status::transitions(current, &new)).await;
    Ok(())
}
