//! Draining a host whose admin state is `Maintenance` (part of the host controller): every VM
//! on it is live-migrated if its volumes are on shared storage, and otherwise — or when its
//! migration failed — stopped or left in place, by `GlobalConfig.spec.host.maintenancePolicy`
//! (ZStack's `StopVmOnMigrationFailure` is the default). The host reports how far it got in
//! `status.progress` and the `Drained` condition. Placement already skips Maintenance hosts.

use std::sync::Arc;

use kube::{
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::reflector::ObjectRef,
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    host::DRAINED, HostAdminState, MaintenancePolicy, MigrationPhase, Progress, RunStrategy,
    VirtualMachine, VirtualMachineInstance, VirtualMachineMigration, VirtualMachineMigrationSpec,
    VmPhase,
};

use crate::{
    conditions::Desired,
    events::{self, Transition},
    vm::ha::on_shared_storage,
    Context, Error,
};

/// Label on the migrations a drain creates: the host being drained.
const DRAIN_HOST: &str = "strata.io/drain-host";

/// Where the drain of a host is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Drain {
    /// VMs on the host when the drain began.
    pub total: i64,
    pub progress: Progress,
    pub drained: Desired,
}

/// What to do with one VM on a draining host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    /// Its migration runs; wait.
    Wait,
    Migrate,
    Stop,
    /// Policy `Refuse`: it stays; the condition names it.
    Keep,
}

/// The pure choice for one VM.
fn choose(
    running: bool,
    shared: bool,
    migration: Option<MigrationPhase>,
    policy: MaintenancePolicy,
) -> Move {
    let failed = migration == Some(MigrationPhase::Failed);
    // A migration that succeeded brought the VM away once; it came back since.
    match migration {
        Some(MigrationPhase::Failed | MigrationPhase::Succeeded) | None => {}
        Some(_) => return Move::Wait,
    }
    if running && shared && !failed {
        return Move::Migrate;
    }
    match policy {
        MaintenancePolicy::StopVms => Move::Stop,
        MaintenancePolicy::Refuse => Move::Keep,
    }
}

/// One step of the drain of `host` (`None` unless it is in Maintenance): starts what has to
/// start and reports the progress against the VMs it ran when the drain began.
pub(crate) async fn step(
    ctx: &Context,
    host: &strata_apis::Host,
    placed: &[Arc<VirtualMachineInstance>],
) -> Result<Option<Drain>, Error> {
    if host.spec.admin_state != HostAdminState::Maintenance {
        return Ok(None);
    }
    let name = host.name_any();
    let remaining = i64::try_from(placed.len()).unwrap_or(i64::MAX);
    let total = host
        .status
        .as_ref()
        .and_then(|s| s.drain_total)
        .unwrap_or(remaining)
        .max(remaining);
    let policy = ctx.inventory.global().host.maintenance_policy;
    let migrations = drain_migrations(ctx, &name).await?;
    let mut kept = Vec::new();
    for vmi in placed {
        let namespace = vmi.namespace().unwrap_or_default();
        let vm_ref = ObjectRef::new(&vmi.name_any()).within(&namespace);
        let Some(vm) = ctx.inventory.vms.get(&vm_ref) else {
            continue;
        };
        let latest = migrations
            .iter()
            .filter(|m| m.namespace() == vm.namespace() && m.spec.virtual_machine == vm.name_any())
            .max_by_key(|m| m.metadata.creation_timestamp.clone())
            .map(|m| m.status.as_ref().map(|s| s.phase).unwrap_or_default());
        let running = vm.status.as_ref().map(|s| s.phase) == Some(VmPhase::Running);
        let shared = on_shared_storage(ctx, vm.status.as_ref(), host);
        match choose(running, shared, latest, policy) {
            Move::Wait => {}
            Move::Migrate => migrate(ctx, &name, &vm).await?,
            Move::Stop => stop(ctx, &name, &vm).await?,
            Move::Keep => kept.push(format!("{namespace}/{}", vm.name_any())),
        }
    }
    Ok(Some(report(total, remaining, &kept)))
}

/// The progress and condition for `remaining` of `total` VMs left, `kept` refused.
fn report(total: i64, remaining: i64, kept: &[String]) -> Drain {
    let done = total - remaining;
    let percent = if total == 0 {
        100
    } else {
        i32::try_from(done * 100 / total).unwrap_or(100)
    };
    let message = format!("{done} of {total} VMs moved or stopped");
    let drained = if remaining == 0 {
        Desired::new(DRAINED, true, "Drained", "the host runs no VM")
    } else if !kept.is_empty() {
        Desired::new(
            DRAINED,
            false,
            "VmsCannotMigrate",
            format!(
                "maintenancePolicy is Refuse and these VMs cannot be live-migrated: {}",
                kept.join(", ")
            ),
        )
    } else {
        Desired::new(DRAINED, false, "Draining", message.clone())
    };
    Drain {
        total,
        progress: Progress {
            percent,
            step: if remaining == 0 {
                "Drained"
            } else {
                "MigratingVMs"
            }
            .into(),
            message: Some(message),
        },
        drained,
    }
}

async fn drain_migrations(
    ctx: &Context,
    host: &str,
) -> Result<Vec<VirtualMachineMigration>, Error> {
    Api::<VirtualMachineMigration>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&format!("{DRAIN_HOST}={host}")))
        .await
        .map(|list| list.items)
        .map_err(|source| Error::List {
            kind: "VirtualMachineMigration",
            owner: format!("Host/{host}"),
            source,
        })
}

async fn migrate(ctx: &Context, host: &str, vm: &VirtualMachine) -> Result<(), Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let migration = VirtualMachineMigration {
        metadata: ObjectMeta {
            generate_name: Some(format!("drain-{host}-")),
            namespace: Some(namespace.clone()),
            labels: Some([(DRAIN_HOST.to_string(), host.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: VirtualMachineMigrationSpec {
            virtual_machine: vm.name_any(),
            target_host: None,
        },
        status: None,
    };
    Api::<VirtualMachineMigration>::namespaced(ctx.client.clone(), &namespace)
        .create(&PostParams::default(), &migration)
        .await
        .map(drop)
        .map_err(|source| Error::Write {
            kind: "VirtualMachineMigration",
            name: format!("{namespace}/drain-{host}-…"),
            source,
        })
}

/// Stops the VM for good (`runStrategy: Halted`): its owner starts it again when the host is
/// back, or elsewhere.
async fn stop(ctx: &Context, host: &str, vm: &VirtualMachine) -> Result<(), Error> {
    if vm.spec.run_strategy == RunStrategy::Halted {
        return Ok(());
    }
    let namespace = vm.namespace().unwrap_or_default();
    Api::<VirtualMachine>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "runStrategy": RunStrategy::Halted } })),
        )
        .await
        .map_err(|source| Error::Write {
            kind: "VirtualMachine",
            name: format!("{namespace}/{}", vm.name_any()),
            source,
        })?;
    let note = format!(
        "host {host} entered Maintenance and the VM cannot be live-migrated: stopped \
         (runStrategy Halted); set runStrategy again to start it elsewhere"
    );
    events::publish(
        &ctx.recorder,
        vm,
        vec![Transition::warning("StoppedForMaintenance", note)],
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_running_vms_migrate_the_rest_follow_the_policy() {
        use MaintenancePolicy::{Refuse, StopVms};
        assert_eq!(choose(true, true, None, StopVms), Move::Migrate);
        assert_eq!(choose(true, false, None, StopVms), Move::Stop);
        assert_eq!(choose(true, false, None, Refuse), Move::Keep);
        assert_eq!(choose(false, true, None, StopVms), Move::Stop);
        let running = Some(MigrationPhase::Running);
        assert_eq!(choose(true, true, running, StopVms), Move::Wait);
        let back = Some(MigrationPhase::Succeeded);
        assert_eq!(
            choose(true, true, back, StopVms),
            Move::Migrate,
            "came back"
        );
        let failed = Some(MigrationPhase::Failed);
        assert_eq!(choose(true, true, failed, StopVms), Move::Stop);
        assert_eq!(choose(true, true, failed, Refuse), Move::Keep);
    }

    #[test]
    fn progress_counts_against_the_vms_at_the_start() {
        let d = report(30, 12, &[]);
        assert_eq!(
            (d.progress.percent, d.drained.reason.as_str()),
            (60, "Draining")
        );
        assert_eq!(
            d.progress.message.as_deref(),
            Some("18 of 30 VMs moved or stopped")
        );
        let done = report(30, 0, &[]);
        assert_eq!((done.progress.percent, done.drained.status), (100, true));
        assert_eq!(report(0, 0, &[]).progress.percent, 100, "an empty host");
        let refused = report(2, 1, &["ns/a".into()]);
        assert_eq!(refused.drained.reason, "VmsCannotMigrate");
        assert!(refused.drained.message.ends_with("ns/a"));
    }
}
