//! Reconciles the VirtualMachineInstances assigned to this host: drive the hypervisor to each
//! instance's desired power state, report what it observes, and destroy them before letting
//! their finalizer go.
//!
//! A domain that stops behind the agent's back (`virsh destroy`, a guest power-off, a crash)
//! is reported `Stopped` and *not* started again by the agent: whether it should run again is
//! the VM's run strategy, which the controllers own. The agent starts it again once the
//! instance's spec changes (a new `metadata.generation`), e.g. when the controller asks for it.

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
    condition::{CRASHED, PAUSED, READY, STOPPED_OUTSIDE, VMI_FINALIZER},
    quantity, PowerState, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiNatStatus,
    VmiPhase,
};
use tracing::warn;

use crate::{
    conditions,
    driver::{self, Domain, DomainNic, Hypervisor},
    Error,
};

/// Re-checks running instances so a domain that died on the hypervisor is started again.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);
/// How often a running instance's console tail is refreshed in its status.
const CONSOLE_REFRESH: Duration = Duration::from_secs(5);

pub(crate) struct Context {
    pub client: Client,
    pub host: String,
    pub driver: Arc<dyn Hypervisor>,
    pub network: Option<Arc<crate::network::HostNetwork>>,
    /// Up while the host's lease is lost: nothing is started.
    pub fence: Arc<crate::fencing::Fence>,
}

/// What the agent saw the hypervisor do with an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    Starting,
    Running,
    Paused,
    /// Stopped as asked, or (`reason` [`STOPPED_OUTSIDE`] / [`CRASHED`]) by itself.
    Stopped {
        reason: &'static str,
    },
    Failed {
        reason: String,
        message: String,
    },
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
    if ctx.fence.fenced() {
        return Ok(Action::requeue(RETRY));
    }
    if let crate::migration::Next::Done(action) = crate::migration::drive(api, vmi, ctx).await? {
        return Ok(action);
    }
    let observed = match domain(vmi) {
        Err(message) => Observed::Failed {
            reason: "InvalidSpec".into(),
            message,
        },
        Ok(mut domain) => match stopped_by_itself(vmi, ctx.driver.as_ref(), &domain).await {
            Some(stopped) => stopped,
            None => {
                let phase = vmi.status.as_ref().map(|s| s.phase).unwrap_or_default();
                if phase == VmiPhase::Pending {
                    report(api, vmi, &Observed::Starting).await?;
                }
                let nat = match &ctx.network {
                    Some(network) => network.plug(vmi, &mut domain.nics).await,
                    None => simulated_nat(vmi),
                };
                report_nat(api, vmi, nat).await?;
                let ensured = match ctx.driver.ensure(&domain).await {
                    Ok(observed) => reboot_if_asked(api, vmi, ctx, &domain, phase, observed).await,
                    Err(e) => Err(e),
                };
                match ensured {
                    Ok(observed) => from_driver(observed, domain.power),
                    Err(e) => Observed::Failed {
                        reason: e.reason().into(),
                        message: error_chain(&e),
                    },
                }
            }
        },
    };
    report(api, vmi, &observed).await?;
    crate::volume::report(api, vmi, ctx.driver.as_ref()).await?;
    let console = ctx.driver.console_tail(&domain_name(vmi));
    if observed != Observed::Running || console.is_none() {
        return Ok(Action::requeue(RESYNC));
    }
    report_console(api, vmi, console).await?;
    // A running guest's console changes: look again soon (patched only when it did).
    Ok(Action::requeue(CONSOLE_REFRESH))
}

/// A simulated host has no network: it reports every Eip and port forwarding of the instance as
/// programmed, as it reports domains running.
fn simulated_nat(vmi: &VirtualMachineInstance) -> Vec<VmiNatStatus> {
    let nat = |kind: &str, public: &strata_apis::VmiEip| VmiNatStatus {
        kind: kind.into(),
        name: public.name.clone(),
        vip: public.vip.clone(),
    };
    let mut all: Vec<VmiNatStatus> = vmi
        .spec
        .nics
        .iter()
        .flat_map(|nic| {
            nic.eip.iter().map(|e| nat("Eip", e)).chain(
                nic.port_forwardings
                    .iter()
                    .map(|pf| nat("PortForwarding", &pf.public)),
            )
        })
        .collect();
    all.sort();
    all
}

/// Publishes the NAT programmed for the instance in the status, when it changed.
async fn report_nat(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    nat: Vec<VmiNatStatus>,
) -> Result<(), Error> {
    if vmi.status.as_ref().map(|s| &s.nat).unwrap_or(&Vec::new()) == &nat {
        return Ok(());
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "nat": nat } })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: instance_key(vmi),
        source,
    })?;
    Ok(())
}

/// Publishes the end of the serial console in the status, when it changed.
async fn report_console(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    console: Option<String>,
) -> Result<(), Error> {
    if vmi.status.as_ref().and_then(|s| s.console_tail.as_ref()) == console.as_ref() {
        return Ok(());
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "consoleTail": console } })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        instance: instance_key(vmi),
        source,
    })?;
    Ok(())
}

/// Carries out a new `spec.rebootRequest` and records it in the status. A domain that was not
/// running before this reconcile has just booted, which satisfies the request without a
/// second boot.
async fn reboot_if_asked(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    domain: &Domain,
    phase_before: VmiPhase,
    observed: driver::Observed,
) -> Result<driver::Observed, driver::DriverError> {
    let done = vmi.status.as_ref().and_then(|s| s.reboot_request.as_ref());
    let Some(asked) = vmi
        .spec
        .reboot_request
        .as_ref()
        .filter(|a| Some(*a) != done)
    else {
        return Ok(observed);
    };
    if observed != driver::Observed::Running {
        return Ok(observed);
    }
    if phase_before == VmiPhase::Running {
        ctx.driver.reboot(&domain.name).await?;
    }
    let record = json!({ "status": { "rebootRequest": asked } });
    if let Err(error) = api
        .patch_status(
            &vmi.name_any(),
            &PatchParams::default(),
            &Patch::Merge(record),
        )
        .await
    {
        // The next reconcile sees the request again; a second reboot is the lesser harm.
        warn!(instance = %instance_key(vmi), %error, "recording the reboot failed");
    }
    Ok(observed)
}

/// `Some` when the domain should run but stopped without the agent asking, either just now
/// (the driver reports it stopped while the status still says it runs) or earlier at this
/// same generation. Then the agent reports it and leaves it alone.
async fn stopped_by_itself(
    vmi: &VirtualMachineInstance,
    driver: &dyn Hypervisor,
    domain: &Domain,
) -> Option<Observed> {
    if domain.power == PowerState::Stopped {
        return None;
    }
    let status = vmi.status.as_ref()?;
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str());
    if status.phase == VmiPhase::Stopped
        && status.observed_generation == vmi.metadata.generation
        && matches!(reason, Some(STOPPED_OUTSIDE | CRASHED))
    {
        return Some(Observed::Stopped {
            reason: if reason == Some(CRASHED) {
                CRASHED
            } else {
                STOPPED_OUTSIDE
            },
        });
    }
    if status.phase != VmiPhase::Running {
        return None;
    }
    match driver.state(&domain.name).await {
        Ok(Some(driver::Observed::Stopped)) => Some(Observed::Stopped {
            reason: STOPPED_OUTSIDE,
        }),
        Ok(Some(driver::Observed::Crashed)) => Some(Observed::Stopped { reason: CRASHED }),
        _ => None,
    }
}

fn from_driver(observed: driver::Observed, wanted: PowerState) -> Observed {
    match observed {
        driver::Observed::Running => Observed::Running,
        driver::Observed::Paused => Observed::Paused,
        driver::Observed::Stopped if wanted == PowerState::Stopped => {
            Observed::Stopped { reason: "Stopped" }
        }
        driver::Observed::Stopped => Observed::Stopped {
            reason: STOPPED_OUTSIDE,
        },
        driver::Observed::Crashed => Observed::Stopped { reason: CRASHED },
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
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
    let mut patch = json!(status);
    // Only reboot_if_asked, report_console, report_nat and volume::report write these: this
    // status may predate them.
    if let Some(fields) = patch.as_object_mut() {
        fields.remove("rebootRequest");
        fields.remove("consoleTail");
        fields.remove("disks");
        fields.remove("nat");
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": patch })),
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
        // VmiPhase has no Paused: the domain holds its resources like a running one, and the
        // Ready condition says why it does not serve.
        Observed::Paused => (
            VmiPhase::Running,
            false,
            PAUSED,
            "the domain's vCPUs are paused".to_string(),
        ),
        Observed::Stopped { reason } => (
            VmiPhase::Stopped,
            false,
            *reason,
            match *reason {
                STOPPED_OUTSIDE => "the domain stopped without Strata asking (guest power-off or \
                                    a stop behind Strata's back); it stays stopped until the \
                                    instance changes"
                    .to_string(),
                CRASHED => {
                    "the guest crashed; it stays stopped until the instance changes".to_string()
                }
                _ => "the domain is stopped as asked".to_string(),
            },
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

pub(crate) fn domain(vmi: &VirtualMachineInstance) -> Result<Domain, String> {
    let memory_bytes = quantity::parse_quantity(&vmi.spec.memory)
        .map_err(|e| format!("spec.memory {:?}: {e}", vmi.spec.memory.0))?;
    let disks = crate::volume::disks(vmi)?;
    Ok(Domain {
        name: domain_name(vmi),
        cpu: vmi.spec.cpu,
        memory_bytes,
        image_url: vmi.spec.image_url.clone(),
        image_checksum: vmi.spec.image_checksum.clone(),
        direct_boot: vmi.spec.direct_boot.clone(),
        root_disk_bytes: disks.root_bytes,
        power: vmi.spec.power_state,
        // The network driver fills in bridge and tap once it builds this host's networks.
        nics: vmi
            .spec
            .nics
            .iter()
            .map(|nic| DomainNic {
                spec: nic.clone(),
                ..DomainNic::default()
            })
            .collect(),
        data_disks: disks.data,
        snapshots: disks.snapshots,
    })
}

/// The instance a domain name (`<namespace>.<name>`) belongs to. Namespaces are DNS labels
/// (no dots), so the first dot separates them.
pub(crate) fn instance_of(domain: &str) -> Option<(&str, &str)> {
    domain.split_once('.')
}

pub(crate) fn domain_name(vmi: &VirtualMachineInstance) -> String {
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
    fn stopped_and_paused_domains_say_why() {
        let stopped = status(
            None,
            &Observed::Stopped {
                reason: STOPPED_OUTSIDE,
            },
            Some(3),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(stopped.phase, VmiPhase::Stopped);
        assert_eq!(ready(&stopped).reason, STOPPED_OUTSIDE);
        let paused = status(None, &Observed::Paused, Some(3), Timestamp::UNIX_EPOCH);
        assert_eq!(paused.phase, VmiPhase::Running);
        assert_eq!(
            (
                ready(&paused).status.as_str(),
                ready(&paused).reason.as_str()
            ),
            ("False", "Paused")
        );
        assert_eq!(
            from_driver(driver::Observed::Stopped, PowerState::Stopped),
            Observed::Stopped { reason: "Stopped" }
        );
        assert_eq!(
            from_driver(driver::Observed::Stopped, PowerState::Running),
            Observed::Stopped {
                reason: STOPPED_OUTSIDE
            }
        );
        assert_eq!(instance_of("ns.vm.with.dots"), Some(("ns", "vm.with.dots")));
    }

    #[tokio::test]
    async fn a_domain_stopped_behind_the_agents_back_stays_stopped_until_the_spec_changes() {
        let sim = crate::SimDriver::new(&strata_apis::HostCapacity {
            cpu: 4,
            memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Gi".into()),
        })
        .expect("capacity");
        let mut vmi = VirtualMachineInstance::new("a", Default::default());
        vmi.metadata.namespace = Some("ns".into());
        vmi.metadata.generation = Some(1);
        vmi.spec.cpu = 1;
        vmi.spec.memory.0 = "1Gi".into();
        let d = domain(&vmi).expect("valid");
        assert_eq!(
            stopped_by_itself(&vmi, &sim, &d).await,
            None,
            "never ran yet"
        );
        Hypervisor::ensure(&sim, &d).await.expect("runs");
        vmi.status = Some(status(
            None,
            &Observed::Running,
            Some(1),
            Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            stopped_by_itself(&vmi, &sim, &d).await,
            None,
            "runs as reported"
        );

        sim.stop_behind_the_agents_back("ns.a");
        let seen = stopped_by_itself(&vmi, &sim, &d).await.expect("noticed");
        assert_eq!(
            seen,
            Observed::Stopped {
                reason: STOPPED_OUTSIDE
            }
        );
        vmi.status = Some(status(
            vmi.status.as_ref(),
            &seen,
            Some(1),
            Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            stopped_by_itself(&vmi, &sim, &d).await,
            Some(seen),
            "the next reconcile leaves it stopped"
        );
        vmi.metadata.generation = Some(2);
        assert_eq!(
            stopped_by_itself(&vmi, &sim, &d).await,
            None,
            "a new spec runs it again"
        );
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
