//! Both ends of a live migration.
//!
//! The target host's agent watches the instances whose `spec.migration.targetHost` names it
//! ([`prepare`]): it builds what the domain needs on this host before it arrives — the NICs'
//! networks (bridges, the L3 namespaces with their leases, security-group tables), and the
//! driver checks that the volumes are reachable — then reports `status.migrationTarget`.
//!
//! The source host's agent ([`drive`]) waits for that report, moves the running domain through
//! its driver and reports `status.migration` (Running with the share copied, then Completed or
//! Failed). Only the source ends a migration, so no moment has the domain running on a host
//! Strata does not name: past `spec.migration.deadline` it gives up waiting for the target, or
//! aborts the copy, and reports Failed (the domain keeps running here); a copy that completed
//! despite the abort is reported Completed. It never changes `spec.host`: once it reports
//! Completed the domain is gone from here, the agent leaves the instance alone, and the VM
//! controller hands it to the target.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Patch, PatchParams},
    runtime::controller::Action,
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    VirtualMachineInstance, VmiMigration, VmiMigrationPhase, VmiMigrationStatus, VmiMigrationTarget,
};
use tracing::{info, warn};

use crate::{
    driver::{MigrationTarget, Observed},
    instance::Context,
    Error,
};

/// How often a source waiting for its target looks again (the target's report also wakes it).
const TARGET_WAIT: Duration = Duration::from_secs(2);

/// What the instance reconcile does after looking at the migration section.
pub(crate) enum Next {
    /// No migration to act on (none, or one that failed): run the domain as usual.
    Run,
    /// The domain has left this host, or waits for its target: touch nothing.
    Done(Action),
}

/// Carries out the instance's migration, if it has one this host has not finished.
pub(crate) async fn drive(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> Result<Next, Error> {
    let status = vmi.status.as_ref();
    let Some(wanted) = vmi.spec.migration.as_ref() else {
        // Reports outlive their migration (handed over, or withdrawn): the VM no longer moves.
        if status.is_some_and(|s| s.migration.is_some() || s.migration_target.is_some()) {
            clear(api, vmi).await?;
        }
        return Ok(Next::Run);
    };
    let reported = status
        .and_then(|s| s.migration.as_ref())
        .filter(|m| m.migration == wanted.migration);
    match reported.map(|m| m.phase) {
        Some(VmiMigrationPhase::Completed) => return Ok(Next::Done(Action::await_change())),
        Some(VmiMigrationPhase::Failed) => return Ok(Next::Run),
        Some(VmiMigrationPhase::Running) | None => {}
    }
    let target_ready = status
        .and_then(|s| s.migration_target.as_ref())
        .is_some_and(|t| t.migration == wanted.migration && t.host == wanted.target_host);
    let left = remaining(wanted);
    if !target_ready {
        if left == Some(Duration::ZERO) {
            let why = format!(
                "host {} did not get ready to receive the domain in time",
                wanted.target_host
            );
            report(api, vmi, &failed(wanted, "TargetNotReady", why)).await?;
            return Ok(Next::Run);
        }
        let wait = left.map_or(TARGET_WAIT, |l| l.min(TARGET_WAIT));
        return Ok(Next::Done(Action::requeue(wait)));
    }
    // The driver, not the cached status (a reconcile can see an old copy), says whether the
    // domain is still here to move.
    let domain = crate::instance::domain_name(vmi);
    let outcome = match ctx.driver.state(&domain).await {
        Ok(Some(Observed::Running)) => migrate(api, vmi, ctx, wanted, left).await?,
        Ok(None) => VmiMigrationStatus {
            phase: VmiMigrationPhase::Completed,
            ..running(wanted, 100)
        },
        Ok(Some(_)) => failed(
            wanted,
            "NotRunning",
            "the domain does not run on the source host".into(),
        ),
        Err(error) => failed(wanted, error.reason(), crate::instance::error_chain(&error)),
    };
    let done = outcome.phase == VmiMigrationPhase::Completed;
    report(api, vmi, &outcome).await?;
    Ok(if done {
        Next::Done(Action::await_change())
    } else {
        Next::Run
    })
}

/// Time left before the migration's deadline (zero once past it); `None` without one.
fn remaining(wanted: &VmiMigration) -> Option<Duration> {
    let Time(deadline) = wanted.deadline.as_ref()?;
    let left = deadline.duration_since(Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// Moves the domain, publishing its progress while the driver copies memory.
async fn migrate(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    wanted: &VmiMigration,
    left: Option<Duration>,
) -> Result<VmiMigrationStatus, Error> {
    let domain = crate::instance::domain_name(vmi);
    info!(%domain, target = %wanted.target_host, migration = %wanted.migration, "live migration starting");
    let target = MigrationTarget {
        host: wanted.target_host.clone(),
        address: wanted.target_address.clone(),
        deadline: left.map(|l| tokio::time::Instant::now() + l),
    };
    let (progress, mut copied) = tokio::sync::watch::channel(0);
    let moving = ctx.driver.migrate(&domain, &target, progress);
    tokio::pin!(moving);
    let mut percent = 0;
    let result = loop {
        report(api, vmi, &running(wanted, percent)).await?;
        tokio::select! {
            result = &mut moving => break result,
            changed = copied.changed() => {
                if changed.is_err() {
                    break moving.await;
                }
                percent = *copied.borrow_and_update();
            }
        }
    };
    Ok(match result {
        Ok(()) => {
            info!(%domain, target = %wanted.target_host, "live migration completed");
            VmiMigrationStatus {
                phase: VmiMigrationPhase::Completed,
                percent: 100,
                ..running(wanted, 100)
            }
        }
        Err(error) => {
            warn!(%domain, target = %wanted.target_host, %error, "live migration failed");
            failed(wanted, error.reason(), crate::instance::error_chain(&error))
        }
    })
}

/// The target's side: readies this host for an instance moving here and reports it. Run for
/// the instances whose `spec.migration.targetHost` names this host.
pub(crate) async fn prepare(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Some(wanted) = vmi
        .spec
        .migration
        .as_ref()
        .filter(|m| m.target_host == ctx.host && vmi.spec.host != ctx.host)
    else {
        return Ok(Action::await_change());
    };
    let prepared = VmiMigrationTarget {
        migration: wanted.migration.clone(),
        host: ctx.host.clone(),
    };
    if vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_target.as_ref())
        == Some(&prepared)
        || vmi.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    if ctx.fence.fenced() {
        return Ok(Action::requeue(TARGET_WAIT));
    }
    let mut domain = match crate::instance::domain(&vmi) {
        Ok(domain) => domain,
        Err(problem) => {
            warn!(instance = %vmi.name_any(), %problem, "cannot prepare for an invalid instance");
            return Ok(Action::await_change());
        }
    };
    if let Some(network) = &ctx.network {
        network.plug(&vmi, &mut domain.nics).await;
        if domain.nics.iter().any(|n| n.bridge.is_none()) {
            // The network driver logged why; the source waits until its deadline.
            return Ok(Action::requeue(TARGET_WAIT));
        }
    }
    if let Err(error) = ctx.driver.prepare_incoming(&domain).await {
        warn!(domain = %domain.name, %error, "cannot receive the domain");
        return Ok(Action::requeue(TARGET_WAIT));
    }
    info!(domain = %domain.name, migration = %wanted.migration, "ready to receive the domain");
    patch(
        &Api::namespaced(
            ctx.client.clone(),
            vmi.namespace().as_deref().unwrap_or_default(),
        ),
        &vmi,
        json!({ "migrationTarget": prepared }),
    )
    .await?;
    Ok(Action::await_change())
}

fn running(wanted: &VmiMigration, percent: i32) -> VmiMigrationStatus {
    VmiMigrationStatus {
        migration: wanted.migration.clone(),
        phase: VmiMigrationPhase::Running,
        percent,
        reason: None,
        message: None,
    }
}

fn failed(wanted: &VmiMigration, reason: &str, message: String) -> VmiMigrationStatus {
    VmiMigrationStatus {
        phase: VmiMigrationPhase::Failed,
        reason: Some(reason.to_string()),
        message: Some(message),
        ..running(wanted, 0)
    }
}

async fn report(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    migration: &VmiMigrationStatus,
) -> Result<(), Error> {
    patch(api, vmi, json!({ "migration": migration })).await
}

async fn clear(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
) -> Result<(), Error> {
    patch(
        api,
        vmi,
        json!({ "migration": null, "migrationTarget": null }),
    )
    .await
}

async fn patch(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    status: serde_json::Value,
) -> Result<(), Error> {
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any()),
        source,
    })?;
    Ok(())
}
