//! Migration controller: runs a VirtualMachineMigration (live migration of a running VM).
//!
//! The handshake keeps exactly one host owning an instance at every moment:
//!
//! 1. `Pending`: the VM must exist and run; the migration waits for a slot under the
//!    GlobalConfig limits (per cluster, outbound per source host).
//! 2. `Scheduling` → `Scheduled`: the target is the one asked for, or the scheduler's pick with
//!    the placement filters minus the source; its CPU and memory are reserved in the
//!    scheduler's assumed placements until the migration ends.
//! 3. The instance gets `spec.migration` (this migration, the target). Its `spec.host` stays the
//!    source: the source's agent moves the domain and reports `status.migration` (`Running`
//!    with the share copied → this migration `Running` with progress).
//! 4. Once the source's agent reports `Completed` (the domain has left the source), the VM
//!    controller rewrites the instance's `spec.host` to the target and drops `spec.migration`
//!    in one write ([`placement`], [`carried`]); the target's agent picks it up.
//! 5. The instance on the target without a migration section: `Succeeded`. A failure the agent
//!    reports, or a source host that stops heartbeating, removes the section: `Failed`, and the
//!    VM keeps running on the source.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY, quantity, MigrationPhase, Progress, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceStatus, VirtualMachineMigration, VirtualMachineMigrationStatus, VmPhase,
    VmiMigration, VmiMigrationPhase, VmiPhase,
};

use crate::{
    conditions::{self, Desired},
    events::{self, Transition},
    vm::{
        self,
        schedule::{Placement, Request, Resources},
    },
    Context, Error, Metrics,
};

/// A migration waiting for a slot looks again this often (a finished migration also wakes it).
const SLOT_RETRY: Duration = Duration::from_secs(2);
/// A running migration is looked at this often besides its instance's events, in case the
/// source host goes silent.
const FOLLOW_RETRY: Duration = Duration::from_secs(2);

/// The migration controller's state: the shared context, and the migrations holding a slot.
struct Migrations {
    ctx: Arc<Context>,
    store: Store<VirtualMachineMigration>,
    slots: Slots,
}

impl Migrations {
    fn new(ctx: Arc<Context>, store: Store<VirtualMachineMigration>) -> Self {
        Self {
            ctx,
            store,
            slots: Slots::default(),
        }
    }

    /// Frees the slot and the target's reservation of a finished migration.
    fn release(&self, key: &str, vm: &str) {
        self.slots.free(key);
        self.ctx.assumed().forget(&reservation(vm));
    }
}

/// Admitted migrations (`namespace/name`) by the cluster and host they leave. Admission counts
/// and inserts under one lock, so concurrent reconciles never exceed a limit.
#[derive(Debug, Default)]
struct Slots(Mutex<HashMap<String, Slot>>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    cluster: String,
    source: String,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Single map operations only: consistent even after a panicked holder.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `key` if both limits allow it; `Err` says which one is full. Slots
    /// of migrations that are no longer `live` are dropped first, so a slot whose release was
    /// missed (a reconcile that failed half-way) cannot block the others for good.
    fn admit(
        &self,
        key: &str,
        slot: Slot,
        (per_cluster, per_host): (i32, i32),
        live: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let mut slots = self.lock();
        slots.retain(|k, _| k == key || live(k));
        if slots.contains_key(key) {
            return Ok(());
        }
        let in_cluster = slots.values().filter(|s| s.cluster == slot.cluster).count();
        let out_of_host = slots.values().filter(|s| s.source == slot.source).count();
        // The message stays the same while the migration waits, so waiting writes it once.
        if in_cluster >= usize::try_from(per_cluster).unwrap_or(0)
            || out_of_host >= usize::try_from(per_host).unwrap_or(0)
        {
            return Err(format!(
                "waiting for a slot: at most {per_cluster} migrations run in cluster {} and \
                 {per_host} leave host {} at once",
                slot.cluster, slot.source
            ));
        }
        slots.insert(key.to_string(), slot);
        Ok(())
    }

    /// Holds a slot for a migration already past admission (after a restart).
    fn hold(&self, key: String, slot: Slot) {
        self.lock().insert(key, slot);
    }

    fn free(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Runs the migration controller until dropped.
pub(crate) async fn run(client: &Client, ctx: Arc<Context>, metrics: Arc<Metrics>) {
    let controller = controller(client);
    let migrations = Arc::new(Migrations::new(ctx, controller.store()));
    crate::drain(
        "migration",
        controller.run(
            metrics.instrument("migration", Metrics::ignore, reconcile),
            error_policy,
            migrations,
        ),
    )
    .await;
}

fn controller(client: &Client) -> Controller<VirtualMachineMigration> {
    let migrations = Controller::new(
        Api::<VirtualMachineMigration>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = migrations.store();
    migrations
        // The source agent reports through the instance.
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            |vmi| {
                let namespace = vmi.namespace().unwrap_or_default();
                let spec = vmi.spec.migration.as_ref().map(|m| m.migration.clone());
                let status = vmi
                    .status
                    .as_ref()
                    .and_then(|s| s.migration.as_ref())
                    .map(|m| m.migration.clone());
                spec.into_iter()
                    .chain(status)
                    .map(|name| ObjectRef::new(&name).within(&namespace))
                    .collect::<Vec<_>>()
            },
        )
        // A finished migration frees a slot for the ones waiting.
        .watches(
            Api::<VirtualMachineMigration>::all(client.clone()),
            watcher::Config::default(),
            move |done| {
                if !finished(&done) {
                    return Vec::new();
                }
                store
                    .state()
                    .iter()
                    .filter(|m| phase(m) == MigrationPhase::Pending)
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect()
            },
        )
}

async fn reconcile(
    migration: Arc<VirtualMachineMigration>,
    migrations: Arc<Migrations>,
) -> Result<Action, Error> {
    let key = key(&migration);
    let action = match phase(&migration) {
        MigrationPhase::Succeeded | MigrationPhase::Failed => {
            let vm = vm_key(&migration);
            migrations.release(&key, &vm);
            Action::await_change()
        }
        MigrationPhase::Pending | MigrationPhase::Scheduling => {
            start(&migration, &migrations).await?
        }
        MigrationPhase::Scheduled | MigrationPhase::Running => {
            follow(&migration, &migrations).await?
        }
    };
    migrations.ctx.succeeded("VirtualMachineMigration", &key);
    Ok(action)
}

fn error_policy(
    migration: Arc<VirtualMachineMigration>,
    error: &Error,
    migrations: Arc<Migrations>,
) -> Action {
    let key = key(&migration);
    Action::requeue(
        migrations
            .ctx
            .failed("VirtualMachineMigration", &key, error),
    )
}

/// Validates the request, waits for a slot, picks and reserves the target, and hands the move
/// to the source's agent.
async fn start(
    migration: &VirtualMachineMigration,
    migrations: &Migrations,
) -> Result<Action, Error> {
    let ctx = &migrations.ctx;
    let key = key(migration);
    let vm_name = &migration.spec.virtual_machine;
    let namespace = migration.namespace().unwrap_or_default();
    let Some(vm) = ctx
        .inventory
        .vms
        .get(&ObjectRef::new(vm_name).within(&namespace))
    else {
        let why = format!("VirtualMachine {vm_name} not found");
        return fail(migration, migrations, "VirtualMachineNotFound", why).await;
    };
    let vmi = ctx.vmis.get(&ObjectRef::new(vm_name).within(&namespace));
    let Some(vmi) = vmi.filter(|i| runs(&vm, i)) else {
        let phase = vm.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let why = format!("VirtualMachine {vm_name} is {phase:?}; only a running VM can move");
        return fail(migration, migrations, "VirtualMachineNotRunning", why).await;
    };
    if let Some(other) = vmi
        .spec
        .migration
        .as_ref()
        .filter(|m| m.migration != migration.name_any())
    {
        let why = format!(
            "VirtualMachine {vm_name} is being moved by {}",
            other.migration
        );
        return wait(migration, ctx, "MigrationInProgress", why).await;
    }
    let source = vmi.spec.host.clone();
    if migration.spec.target_host.as_ref() == Some(&source) {
        let why = format!("VirtualMachine {vm_name} already runs on host {source}");
        return fail(migration, migrations, "TargetIsSource", why).await;
    }
    let Some(source_host) = ctx.hosts.get(&ObjectRef::new(&source)) else {
        let why = format!("the VM's host {source} is not known");
        return fail(migration, migrations, "SourceHostNotFound", why).await;
    };
    if !vm::ha::on_shared_storage(ctx, vm.status.as_ref(), &source_host) {
        let why = format!(
            "the volumes of VirtualMachine {vm_name} are not all on shared primary storage \
             (NFS, SharedMountPoint); they cannot leave host {source}"
        );
        return fail(migration, migrations, "VolumesNotShared", why).await;
    }
    let cluster = source_host.spec.cluster.clone();
    let limits = ctx.inventory.global().migration;
    let slot = Slot {
        cluster,
        source: source.clone(),
    };
    let limits = (
        limits.parallel_migrations_per_cluster,
        limits.parallel_outbound_migrations_per_host,
    );
    let live = |key: &str| {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        migrations
            .store
            .get(&ObjectRef::new(name).within(namespace))
            .is_some_and(|m| !finished(&m))
    };
    if let Err(full) = migrations.slots.admit(&key, slot, limits, live) {
        return wait(migration, ctx, "WaitingForSlot", full).await;
    }
    let mut status = migration.status.clone().unwrap_or_default();
    status.phase = MigrationPhase::Scheduling;
    status.source_host = Some(source.clone());
    status.progress = Some(progress(0, "Scheduling", None));
    write(migration, ctx, status.clone()).await?;

    let request = Request {
        avoid: Some(source.clone()),
        host: migration.spec.target_host.clone(),
        zone: vm.spec.placement.as_ref().and_then(|p| p.zone.clone()),
        cluster: vm.spec.placement.as_ref().and_then(|p| p.cluster.clone()),
        ..request(&vmi)
    };
    let target = match vm::schedule(ctx, &reservation(&vm_key(migration)), &request).await {
        Ok(choice) => choice.host,
        Err(why) => return fail(migration, migrations, "Unschedulable", why).await,
    };
    status.phase = MigrationPhase::Scheduled;
    status.target_host = Some(target.clone());
    status.progress = Some(progress(0, "PreparingTarget", None));
    write(migration, ctx, status).await?;
    hand_over(migration, ctx, &target, &vmi).await?;
    Ok(Action::await_change())
}

/// Follows the source agent's report until the instance has landed on the target.
async fn follow(
    migration: &VirtualMachineMigration,
    migrations: &Migrations,
) -> Result<Action, Error> {
    let ctx = &migrations.ctx;
    let status = migration.status.clone().unwrap_or_default();
    let (Some(source), Some(target)) = (status.source_host.clone(), status.target_host.clone())
    else {
        let why = "the status lost its source or target host".to_string();
        return fail(migration, migrations, "StatusLost", why).await;
    };
    // Read afresh: the shared instance cache can trail the event that woke this reconcile,
    // and the last event of a move (the target clearing the report) names no migration.
    let namespace = migration.namespace().unwrap_or_default();
    let vmi = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&migration.spec.virtual_machine)
        .await
        .map_err(|source| Error::Get {
            kind: "VirtualMachineInstance".into(),
            name: vm_key(migration),
            source,
        })?;
    let Some(vmi) = vmi else {
        let why = "the VM's instance is gone".to_string();
        return fail(migration, migrations, "VirtualMachineGone", why).await;
    };
    // After a restart the slot and the reservation are rebuilt from the status.
    let cluster = ctx
        .hosts
        .get(&ObjectRef::new(&source))
        .map(|h| h.spec.cluster.clone())
        .unwrap_or_default();
    migrations.slots.hold(
        key(migration),
        Slot {
            cluster,
            source: source.clone(),
        },
    );
    ctx.assumed().assume(
        reservation(&vm_key(migration)),
        Placement {
            host: target.clone(),
            request: request(&vmi).size,
        },
    );

    let ours = vmi
        .spec
        .migration
        .as_ref()
        .is_some_and(|m| m.migration == migration.name_any());
    if vmi.spec.host == target && !ours {
        return succeed(migration, migrations, status, &source, &target).await;
    }
    if vmi.spec.host != source {
        let why = format!("the instance moved to host {} meanwhile", vmi.spec.host);
        return fail(migration, migrations, "InstanceMoved", why).await;
    }
    let reported = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .filter(|m| m.migration == migration.name_any());
    if let Some(failed) = reported.filter(|m| m.phase == VmiMigrationPhase::Failed) {
        withdraw(migration, ctx).await?;
        let reason = failed
            .reason
            .clone()
            .unwrap_or_else(|| "MigrationFailed".into());
        let why = failed.message.clone().unwrap_or_default();
        return fail(migration, migrations, &reason, why).await;
    }
    let completed = reported.is_some_and(|m| m.phase == VmiMigrationPhase::Completed);
    if !completed && !host_connected(ctx, &source) {
        withdraw(migration, ctx).await?;
        let why = format!("source host {source} stopped heartbeating");
        return fail(migration, migrations, "SourceHostDisconnected", why).await;
    }
    if !ours {
        hand_over(migration, ctx, &target, &vmi).await?;
    }
    let mut next = status.clone();
    next.progress = Some(match reported {
        Some(m) if m.phase == VmiMigrationPhase::Completed => progress(
            100,
            "HandingOver",
            Some(format!("running on host {target}")),
        ),
        Some(m) => progress(m.percent, "CopyingMemory", None),
        None if target_ready(&vmi, migration) => progress(0, "TargetReady", None),
        None => progress(0, "PreparingTarget", None),
    });
    if reported.is_some() && next.phase == MigrationPhase::Scheduled {
        next.phase = MigrationPhase::Running;
        next.start_time = Some(Time(Timestamp::now()));
    }
    if next != status {
        write(migration, ctx, next).await?;
    }
    Ok(Action::requeue(FOLLOW_RETRY))
}

/// Asks the source's agent to move the domain, with the target's address and the deadline
/// the GlobalConfig gives a VM of its memory (idempotent).
async fn hand_over(
    migration: &VirtualMachineMigration,
    ctx: &Context,
    target: &str,
    vmi: &VirtualMachineInstance,
) -> Result<(), Error> {
    let per_gib = ctx.inventory.global().migration.completion_timeout_per_gib;
    let timeout = completion_timeout(per_gib, request(vmi).size.memory);
    let section = VmiMigration {
        migration: migration.name_any(),
        target_host: target.to_string(),
        target_address: ctx
            .hosts
            .get(&ObjectRef::new(target))
            .and_then(|h| h.spec.management_address.clone()),
        deadline: Some(Time(Timestamp::now() + timeout)),
    };
    patch_instance(migration, ctx, json!({ "spec": { "migration": section } })).await
}

/// Takes the migration section back after a failure: the domain stays on the source.
async fn withdraw(migration: &VirtualMachineMigration, ctx: &Context) -> Result<(), Error> {
    patch_instance(migration, ctx, json!({ "spec": { "migration": null } })).await
}

async fn patch_instance(
    migration: &VirtualMachineMigration,
    ctx: &Context,
    patch: serde_json::Value,
) -> Result<(), Error> {
    Api::<VirtualMachineInstance>::namespaced(
        ctx.client.clone(),
        &migration.namespace().unwrap_or_default(),
    )
    .patch(
        &migration.spec.virtual_machine,
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(drop)
    .map_err(|source| Error::ApplyInstance {
        vm: vm_key(migration),
        source,
    })
}

async fn succeed(
    migration: &VirtualMachineMigration,
    migrations: &Migrations,
    mut status: VirtualMachineMigrationStatus,
    source: &str,
    target: &str,
) -> Result<Action, Error> {
    let message = format!("moved from host {source} to host {target}");
    status.phase = MigrationPhase::Succeeded;
    status.completion_time = Some(Time(Timestamp::now()));
    status.progress = Some(progress(100, "Completed", Some(message.clone())));
    set_ready(
        migration,
        &mut status,
        Desired::new(READY, true, "Succeeded", message),
    );
    write(migration, &migrations.ctx, status).await?;
    migrations.release(&key(migration), &vm_key(migration));
    Ok(Action::await_change())
}

async fn fail(
    migration: &VirtualMachineMigration,
    migrations: &Migrations,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let mut status = migration.status.clone().unwrap_or_default();
    status.phase = MigrationPhase::Failed;
    status.completion_time = Some(Time(Timestamp::now()));
    set_ready(
        migration,
        &mut status,
        Desired::new(READY, false, reason, message),
    );
    write(migration, &migrations.ctx, status).await?;
    migrations.release(&key(migration), &vm_key(migration));
    Ok(Action::await_change())
}

/// Stays `Pending`, saying why.
async fn wait(
    migration: &VirtualMachineMigration,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let mut status = migration.status.clone().unwrap_or_default();
    status.phase = MigrationPhase::Pending;
    set_ready(
        migration,
        &mut status,
        Desired::new(READY, false, reason, message),
    );
    if Some(&status) != migration.status.as_ref() {
        write(migration, ctx, status).await?;
    }
    Ok(Action::requeue(SLOT_RETRY))
}

fn set_ready(
    migration: &VirtualMachineMigration,
    status: &mut VirtualMachineMigrationStatus,
    ready: Desired,
) {
    let generation = migration.metadata.generation;
    conditions::set(&mut status.conditions, ready, generation, Timestamp::now());
}

/// Writes `status` and records the phase it enters.
async fn write(
    migration: &VirtualMachineMigration,
    ctx: &Context,
    mut status: VirtualMachineMigrationStatus,
) -> Result<(), Error> {
    status.observed_generation = migration.metadata.generation;
    let old = migration
        .status
        .as_ref()
        .map(|s| s.phase)
        .unwrap_or_default();
    Api::<VirtualMachineMigration>::namespaced(
        ctx.client.clone(),
        &migration.namespace().unwrap_or_default(),
    )
    .patch_status(
        &migration.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        kind: "VirtualMachineMigration",
        name: key(migration),
        source,
    })?;
    if old != status.phase {
        if let Some(transition) = transition(&status) {
            events::publish(&ctx.recorder, migration, vec![transition]).await;
        }
    }
    Ok(())
}

fn transition(status: &VirtualMachineMigrationStatus) -> Option<Transition> {
    let host = |h: &Option<String>| h.clone().unwrap_or_default();
    let ready = conditions::get(&status.conditions, READY);
    Some(match status.phase {
        MigrationPhase::Scheduled => Transition::normal(
            "Scheduled",
            format!(
                "moving from host {} to host {}",
                host(&status.source_host),
                host(&status.target_host)
            ),
        ),
        MigrationPhase::Succeeded => Transition::normal(
            "Succeeded",
            ready.map(|c| c.message.clone()).unwrap_or_default(),
        ),
        MigrationPhase::Failed => Transition::warning(
            ready.map_or("Failed", |c| c.reason.as_str()),
            ready.map(|c| c.message.clone()).unwrap_or_default(),
        ),
        MigrationPhase::Pending | MigrationPhase::Scheduling | MigrationPhase::Running => {
            return None
        }
    })
}

fn progress(percent: i32, step: &str, message: Option<String>) -> Progress {
    Progress {
        percent: percent.clamp(0, 100),
        step: step.to_string(),
        message,
    }
}

/// What the instance asks of a target host: its size and networks.
fn request(vmi: &VirtualMachineInstance) -> Request {
    Request {
        size: Resources {
            cpu: vmi.spec.cpu,
            memory: quantity::parse_quantity(&vmi.spec.memory).unwrap_or(0),
        },
        l2_networks: vmi.spec.nics.iter().map(|n| n.l2.name.clone()).collect(),
        ..Request::default()
    }
}

/// How long a VM with `memory` bytes may take to move: `per_gib` seconds per started GiB, at
/// least one (KubeVirt counts the same way).
fn completion_timeout(per_gib: i32, memory: u64) -> Duration {
    let gib = memory.div_ceil(1 << 30).max(1);
    Duration::from_secs(
        u64::try_from(per_gib)
            .unwrap_or(1)
            .max(1)
            .saturating_mul(gib),
    )
}

/// Whether the target's agent has readied its host for this migration.
fn target_ready(vmi: &VirtualMachineInstance, migration: &VirtualMachineMigration) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_target.as_ref())
        .is_some_and(|t| t.migration == migration.name_any())
}

fn runs(vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> bool {
    vm.status.as_ref().map(|s| s.phase) == Some(VmPhase::Running)
        && vmi.metadata.deletion_timestamp.is_none()
        && vmi.status.as_ref().map(|s| s.phase) == Some(VmiPhase::Running)
}

fn host_connected(ctx: &Context, host: &str) -> bool {
    ctx.hosts.get(&ObjectRef::new(host)).is_some_and(|h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.state == Some(strata_apis::HostState::Connected))
    })
}

fn phase(migration: &VirtualMachineMigration) -> MigrationPhase {
    migration
        .status
        .as_ref()
        .map(|s| s.phase)
        .unwrap_or_default()
}

fn finished(migration: &VirtualMachineMigration) -> bool {
    matches!(
        phase(migration),
        MigrationPhase::Succeeded | MigrationPhase::Failed
    )
}

fn key(migration: &VirtualMachineMigration) -> String {
    format!(
        "{}/{}",
        migration.namespace().unwrap_or_default(),
        migration.name_any()
    )
}

fn vm_key(migration: &VirtualMachineMigration) -> String {
    format!(
        "{}/{}",
        migration.namespace().unwrap_or_default(),
        migration.spec.virtual_machine
    )
}

/// The assumed placement holding the target's room while a VM moves.
fn reservation(vm: &str) -> String {
    format!("{vm}@migration")
}

/// The host the VM controller must place `vm` on, from its instance: the target once the
/// source's agent has moved the domain there, else the instance's host. `None` without a live
/// instance in the cache. A moving instance is read afresh: the VM controller is woken by its
/// own watch, which can be ahead of the shared instance cache, and a missed landing would
/// leave the VM on its source with nothing to wake it again.
pub(crate) async fn placement(ctx: &Context, vm: &VirtualMachine) -> Result<Option<String>, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let instance = ObjectRef::new(&vm.name_any()).within(&namespace);
    let Some(mut vmi) = ctx.vmis.get(&instance) else {
        return Ok(None);
    };
    if vmi.spec.migration.is_some() {
        let fresh = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&vm.name_any())
            .await
            .map_err(|source| Error::Get {
                kind: "VirtualMachineInstance".into(),
                name: format!("{namespace}/{}", vm.name_any()),
                source,
            })?;
        let Some(fresh) = fresh else {
            return Ok(None);
        };
        vmi = Arc::new(fresh);
    }
    if vmi.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    Ok(Some(landed(&vmi).unwrap_or(&vmi.spec.host).to_string()))
}

/// The target of a migration whose source has reported the domain moved.
fn landed(vmi: &VirtualMachineInstance) -> Option<&str> {
    let wanted = vmi.spec.migration.as_ref()?;
    let reported = vmi.status.as_ref()?.migration.as_ref()?;
    (reported.migration == wanted.migration && reported.phase == VmiMigrationPhase::Completed)
        .then_some(wanted.target_host.as_str())
}

/// The migration section the VM controller writes back when it puts `current` on `host`: kept
/// (it is the migration controller's) unless the move landed and `host` is its target.
pub(crate) fn carried(current: &VirtualMachineInstance, host: &str) -> Option<VmiMigration> {
    if landed(current) == Some(host) {
        return None;
    }
    current.spec.migration.clone()
}

/// Whether the instance is moving: the source's agent copies it, or has copied it and the
/// VM controller has not handed it to the target yet.
pub(crate) fn moving(status: &VirtualMachineInstanceStatus) -> bool {
    status
        .migration
        .as_ref()
        .is_some_and(|m| m.phase != VmiMigrationPhase::Failed)
}

#[cfg(test)]
mod tests {
    use strata_apis::VmiMigrationStatus;

    use super::*;

    fn instance(
        section: Option<&str>,
        reported: Option<VmiMigrationPhase>,
    ) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("a", Default::default());
        vmi.spec.host = "src".into();
        vmi.spec.migration = section.map(|name| VmiMigration {
            migration: name.into(),
            target_host: "dst".into(),
            ..VmiMigration::default()
        });
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: VmiPhase::Running,
            migration: reported.map(|phase| VmiMigrationStatus {
                migration: "m1".into(),
                phase,
                ..VmiMigrationStatus::default()
            }),
            ..VirtualMachineInstanceStatus::default()
        });
        vmi
    }

    #[test]
    fn an_instance_lands_on_the_target_only_once_the_source_reports_completion() {
        for phase in [
            None,
            Some(VmiMigrationPhase::Running),
            Some(VmiMigrationPhase::Failed),
        ] {
            let vmi = instance(Some("m1"), phase);
            assert_eq!(landed(&vmi), None, "{phase:?}");
            assert!(
                carried(&vmi, "src").is_some(),
                "the section stays: {phase:?}"
            );
        }
        let done = instance(Some("m1"), Some(VmiMigrationPhase::Completed));
        assert_eq!(landed(&done), Some("dst"));
        assert_eq!(carried(&done, "dst"), None, "handed over in the same write");
        assert!(
            carried(&done, "src").is_some(),
            "a stale placement never drops a move that already left the source"
        );
        let older = instance(Some("m2"), Some(VmiMigrationPhase::Completed));
        assert_eq!(landed(&older), None, "a report about another migration");
    }

    #[test]
    fn a_vm_is_migrating_while_copied_and_until_handed_over() {
        let status = |phase| instance(Some("m1"), phase).status.unwrap();
        assert!(!moving(&status(None)));
        assert!(moving(&status(Some(VmiMigrationPhase::Running))));
        assert!(moving(&status(Some(VmiMigrationPhase::Completed))));
        assert!(!moving(&status(Some(VmiMigrationPhase::Failed))));
    }

    #[test]
    fn the_timeout_grows_with_each_started_gib() {
        assert_eq!(completion_timeout(150, 128 << 20), Duration::from_secs(150));
        assert_eq!(completion_timeout(150, 1 << 30), Duration::from_secs(150));
        assert_eq!(
            completion_timeout(150, (4 << 30) + 1),
            Duration::from_secs(750)
        );
        assert_eq!(
            completion_timeout(0, 0),
            Duration::from_secs(1),
            "never zero"
        );
    }

    #[test]
    fn slots_respect_both_limits() {
        let slot = |cluster: &str, source: &str| Slot {
            cluster: cluster.into(),
            source: source.into(),
        };
        let slots = Slots::default();
        let admit = |key: &str, s: Slot| slots.admit(key, s, (3, 2), |k| k != "gone");
        assert_eq!(admit("m1", slot("c1", "h1")), Ok(()));
        assert_eq!(admit("m2", slot("c1", "h1")), Ok(()));
        let full = |c: &str, h: &str| {
            Err(format!(
                "waiting for a slot: at most 3 migrations run in cluster {c} and 2 leave host \
                 {h} at once"
            ))
        };
        assert_eq!(admit("m3", slot("c1", "h1")), full("c1", "h1"));
        assert_eq!(admit("m1", slot("c1", "h1")), Ok(()), "already admitted");
        assert_eq!(admit("m4", slot("c1", "h2")), Ok(()));
        assert_eq!(admit("m5", slot("c1", "h3")), full("c1", "h3"));
        assert_eq!(admit("m6", slot("c2", "h4")), Ok(()), "another cluster");
        slots.free("m1");
        assert_eq!(
            admit("m3", slot("c1", "h1")),
            Ok(()),
            "a freed slot is taken"
        );
        let slots = Slots::default();
        slots.hold("gone".into(), slot("c1", "h1"));
        slots.hold("m1".into(), slot("c1", "h1"));
        assert_eq!(
            slots.admit("m2", slot("c1", "h1"), (3, 2), |k| k != "gone"),
            Ok(()),
            "the slot of a finished migration is reclaimed"
        );
    }
}
