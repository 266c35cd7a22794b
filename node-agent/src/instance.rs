//! Reconciles the VirtualMachineInstances assigned to this host: make the hypervisor run them,
//! report what it observes, and destroy them before letting their finalizer go.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event},
    },
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{READY, VMI_FINALIZER},
    quantity, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase,
};
use tracing::warn;

use crate::{
    conditions,
    driver::{Domain, Hypervisor},
    Error,
};

/// Re-checks running instances so a domain that died on the hypervisor is started again.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);

pub(crate) struct Context {
    pub client: Client,
    pub host: String,
    pub driver: Arc<dyn Hypervisor>,
}

/// What the agent saw the hypervisor do with an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    Starting,
    Running,
    Failed { reason: String, message: String },
}

pub(crate) async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let instance = instance_key(&vmi);
    let api: Api<VirtualMachineInstance> = Api::namespaced(
        ctx.client.clone(),
        vmi.namespace().as_deref().unwrap_or_default(),
    );
    finalizer(&api, VMI_FINALIZER, vmi, |event| async {
        match event {
            Event::Apply(vmi) => apply(&api, &vmi, &ctx).await,
            Event::Cleanup(vmi) => cleanup(&vmi, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        instance,
        source: Box::new(source),
    })
}

pub(crate) fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    warn!(instance = %instance_key(&vmi), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(RETRY)
}

async fn apply(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> Result<Action, Error> {
    // The field selector already filters, but a stale event after a reassignment must not
    // start the domain here as well.
    if vmi.spec.host != ctx.host {
        return Ok(Action::await_change());
    }
    let observed = match domain(vmi) {
        Err(message) => Observed::Failed {
            reason: "InvalidSpec".into(),
            message,
        },
        Ok(domain) => {
            let phase = vmi.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if phase == VmiPhase::Pending {
                report(api, vmi, &Observed::Starting).await?;
            }
            match ctx.driver.ensure_running(&domain).await {
                Ok(()) => Observed::Running,
                Err(e) => Observed::Failed {
                    reason: e.reason().into(),
                    message: e.to_string(),
                },
            }
        }
    };
    report(api, vmi, &observed).await?;
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(vmi: &VirtualMachineInstance, ctx: &Context) -> Result<Action, Error> {
    ctx.driver
        .destroy(&domain_name(vmi))
        .await
        .map_err(|source| Error::Destroy {
            instance: instance_key(vmi),
            source,
        })?;
    Ok(Action::await_change())
}

async fn report(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    observed: &Observed,
) -> Result<(), Error> {
    let status = status(
        vmi.status.as_ref(),
        observed,
        vmi.metadata.generation,
        Timestamp::now(),
    );
    if vmi.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: instance_key(vmi),
        source,
    })?;
    Ok(())
}

/// The status that reports `observed`, keeping transition times of unchanged conditions.
pub(crate) fn status(
    current: Option<&VirtualMachineInstanceStatus>,
    observed: &Observed,
    generation: Option<i64>,
    now: Timestamp,
) -> VirtualMachineInstanceStatus {
    let mut status = current.cloned().unwrap_or_default();
    let (phase, ready, reason, message) = match observed {
        Observed::Starting => (
            VmiPhase::Starting,
            false,
            "Starting",
            "the hypervisor is starting the domain".to_string(),
        ),
        Observed::Running => (
            VmiPhase::Running,
            true,
            "Running",
            "the hypervisor runs the domain".to_string(),
        ),
        Observed::Failed { reason, message } => {
            (VmiPhase::Failed, false, reason.as_str(), message.clone())
        }
    };
    status.phase = phase;
    status.observed_generation = generation;
    conditions::set(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        generation,
        now,
    );
    status
}

fn domain(vmi: &VirtualMachineInstance) -> Result<Domain, String> {
    let memory_bytes = quantity::parse_quantity(&vmi.spec.memory)
        .map_err(|e| format!("spec.memory {:?}: {e}", vmi.spec.memory.0))?;
    Ok(Domain {
        name: domain_name(vmi),
        cpu: vmi.spec.cpu,
        memory_bytes,
        image_url: vmi.spec.image_url.clone(),
        nics: vmi.spec.nics.clone(),
    })
}

fn domain_name(vmi: &VirtualMachineInstance) -> String {
    format!("{}.{}", vmi.namespace().unwrap_or_default(), vmi.name_any())
}

fn instance_key(vmi: &VirtualMachineInstance) -> String {
    format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    fn ready(
        status: &VirtualMachineInstanceStatus,
    ) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("a Ready condition")
    }

    #[test]
    fn starting_then_running_flips_ready_once() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + SignedDuration::from_secs(5);
        let t2 = t0 + SignedDuration::from_secs(60);
        let starting = status(None, &Observed::Starting, Some(1), t0);
        assert_eq!(starting.phase, VmiPhase::Starting);
        assert_eq!(ready(&starting).status, "False");

        let running = status(Some(&starting), &Observed::Running, Some(1), t1);
        assert_eq!(running.phase, VmiPhase::Running);
        assert_eq!(running.observed_generation, Some(1));
        assert_eq!(ready(&running).status, "True");
        assert_eq!(ready(&running).last_transition_time.0, t1);

        let resync = status(Some(&running), &Observed::Running, Some(1), t2);
        assert_eq!(resync, running, "a resync changes nothing");
    }

    #[test]
    fn a_failure_reports_the_driver_reason() {
        let failed = Observed::Failed {
            reason: "InsufficientResources".into(),
            message: "domain ns.a does not fit".into(),
        };
        let s = status(None, &failed, Some(2), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, VmiPhase::Failed);
        assert_eq!(ready(&s).reason, "InsufficientResources");
        assert_eq!(ready(&s).message, "domain ns.a does not fit");
        assert_eq!(ready(&s).observed_generation, Some(2));
    }

    #[test]
    fn an_unparsable_memory_is_reported_not_run() {
        let mut vmi = VirtualMachineInstance::new("a", Default::default());
        vmi.metadata.namespace = Some("ns".into());
        vmi.spec.memory.0 = "lots".into();
        let err = domain(&vmi).unwrap_err();
        assert!(err.starts_with("spec.memory"), "{err}");
        vmi.spec.memory.0 = "512Mi".into();
        assert_eq!(
            domain(&vmi).map(|d| (d.name, d.memory_bytes)),
            Ok(("ns.a".into(), 512 << 20))
        );
    }
}
