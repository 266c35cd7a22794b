//! The source side of a live migration. When an instance placed on this host carries
//! `spec.migration`, the agent moves the running domain to the target host through its
//! driver and reports `status.migration` (Running with the share copied, then Completed or
//! Failed). It never changes `spec.host`: once it reports Completed the domain is gone from
//! here, the agent leaves the instance alone, and the VM controller hands it to the target.

use kube::{
    api::{Patch, PatchParams},
    runtime::controller::Action,
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{VirtualMachineInstance, VmiMigration, VmiMigrationPhase, VmiMigrationStatus};
use tracing::{info, warn};

use crate::{driver::Observed, instance::Context, Error};

/// What the instance reconcile does after looking at the migration section.
pub(crate) enum Next {
    /// No migration to act on (none, or one that failed): run the domain as usual.
    Run,
    /// The domain has left this host: touch nothing.
    Done(Action),
}

/// Carries out the instance's migration, if it has one this host has not finished.
pub(crate) async fn drive(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> Result<Next, Error> {
    let Some(wanted) = vmi.spec.migration.as_ref() else {
        // A report outlives its migration (handed over, or withdrawn): the VM no longer moves.
        if vmi.status.as_ref().is_some_and(|s| s.migration.is_some()) {
            clear(api, vmi).await?;
        }
        return Ok(Next::Run);
    };
    let reported = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .filter(|m| m.migration == wanted.migration);
    match reported.map(|m| m.phase) {
        Some(VmiMigrationPhase::Completed) => return Ok(Next::Done(Action::await_change())),
        Some(VmiMigrationPhase::Failed) => return Ok(Next::Run),
        Some(VmiMigrationPhase::Running) | None => {}
    }
    // The driver, not the cached status (a reconcile can see an old copy), says whether the
    // domain is still here to move.
    let domain = crate::instance::domain_name(vmi);
    let outcome = match ctx.driver.state(&domain).await {
        Ok(Some(Observed::Running)) => migrate(api, vmi, ctx, wanted).await?,
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

/// Moves the domain, publishing its progress while the driver copies memory.
async fn migrate(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    wanted: &VmiMigration,
) -> Result<VmiMigrationStatus, Error> {
    let domain = crate::instance::domain_name(vmi);
    info!(%domain, target = %wanted.target_host, migration = %wanted.migration, "live migration starting");
    let (progress, mut copied) = tokio::sync::watch::channel(0);
    let moving = ctx.driver.migrate(&domain, &wanted.target_host, progress);
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
    patch(api, vmi, json!(migration)).await
}

async fn clear(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
) -> Result<(), Error> {
    patch(api, vmi, serde_json::Value::Null).await
}

async fn patch(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    migration: serde_json::Value,
) -> Result<(), Error> {
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "migration": migration } })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any()),
        source,
    })?;
    Ok(())
}
