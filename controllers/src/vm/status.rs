//! The VM's status, computed in one place from what the reconcile found, and the Events its
//! transitions deserve.

use k8s_openapi::{apimachinery::pkg::api::resource::Quantity, jiff::Timestamp};
use strata_apis::{
    condition::{CRASHED, PAUSED, READY, SCHEDULED, STOPPED_OUTSIDE},
    RunStrategy, VirtualMachineInstanceStatus, VirtualMachineStatus, VmNicStatus, VmPhase,
    VmiPhase,
};

use super::Problem;
use crate::{
    conditions::{self, Desired},
    events::Transition,
};

/// Where the reconcile of a VM got to.
// One short-lived value per reconcile: boxing the instance's status would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Observation {
    /// A reference is missing or invalid, or an address range is exhausted.
    Blocked(Problem),
    /// No host fits; the message says why.
    Unschedulable(String),
    /// Placed on `host` with `cpu` and `memory`; the instance reports `instance` (None until
    /// it exists).
    Placed {
        host: String,
        instance: Option<VirtualMachineInstanceStatus>,
        host_connected: bool,
        cpu: i64,
        memory: Quantity,
        /// The VM asks for a reboot its instance has not carried out yet.
        reboot_pending: bool,
    },
    /// `runStrategy: Halted`; the instance may still be going away.
    Halted { instance_exists: bool },
    /// Deleted; waiting for the instance to be destroyed.
    Destroying,
    /// Its host failed and HA revoked the placement; the message says why. It is placed
    /// again on a healthy host next.
    Evacuated(String),
}

/// The phase and Ready condition of a placed VM, from its host and instance.
pub(crate) fn placed_phase(
    host: &str,
    instance: Option<&VirtualMachineInstanceStatus>,
    host_connected: bool,
) -> (VmPhase, Desired) {
    let ready =
        |status, reason: &str, message: String| Desired::new(READY, status, reason, message);
    if !host_connected {
        return (
            VmPhase::Unknown,
            ready(
                false,
                "HostDisconnected",
                format!("host {host} stopped sending heartbeats"),
            ),
        );
    }
    let Some(instance) = instance else {
        return (
            VmPhase::Starting,
            ready(
                false,
                "Starting",
                "waiting for the instance to be created".into(),
            ),
        );
    };
    match instance.phase {
        VmiPhase::Pending => (
            VmPhase::Starting,
            ready(
                false,
                "Starting",
                format!("waiting for host {host} to pick up the instance"),
            ),
        ),
        VmiPhase::Starting => (
            VmPhase::Starting,
            ready(
                false,
                "Starting",
                format!("host {host} is starting the instance"),
            ),
        ),
        VmiPhase::Running if crate::migration::moving(instance) => (
            VmPhase::Migrating,
            ready(
                true,
                "Migrating",
                format!("running on host {host} while it moves to another host"),
            ),
        ),
        VmiPhase::Running
            if conditions::get(&instance.conditions, READY).is_some_and(|c| c.reason == PAUSED) =>
        {
            (
                VmPhase::Paused,
                ready(false, PAUSED, format!("paused on host {host}")),
            )
        }
        VmiPhase::Running => (
            VmPhase::Running,
            ready(true, "Running", format!("running on host {host}")),
        ),
        VmiPhase::Stopped => (
            VmPhase::Stopped,
            ready(
                false,
                "InstanceStopped",
                format!("the instance on host {host} is not running"),
            ),
        ),
        VmiPhase::Failed => {
            let reported = conditions::get(&instance.conditions, READY);
            (
                VmPhase::Error,
                ready(
                    false,
                    reported.map_or("InstanceFailed", |c| c.reason.as_str()),
                    reported.map_or_else(
                        || format!("host {host} failed to run the instance"),
                        |c| c.message.clone(),
                    ),
                ),
            )
        }
    }
}

/// Why a VM whose instance stopped by itself must run again, by its run strategy (KubeVirt's
/// semantics): `Always` after any stop Strata did not ask for, `RerunOnFailure` after a crash
/// only, `Manual` never. `None` leaves the VM Stopped.
pub(crate) fn restart_due(
    strategy: RunStrategy,
    instance: &VirtualMachineInstanceStatus,
) -> Option<String> {
    if instance.phase != VmiPhase::Stopped {
        return None;
    }
    let reason = conditions::get(&instance.conditions, READY)?
        .reason
        .as_str();
    let due = match strategy {
        RunStrategy::Always => reason == STOPPED_OUTSIDE || reason == CRASHED,
        RunStrategy::RerunOnFailure => reason == CRASHED,
        RunStrategy::Manual | RunStrategy::Halted => false,
    };
    due.then(|| format!("the instance stopped ({reason}) and runStrategy is {strategy:?}"))
}

/// The status that reports `observation`, with `nics` as allocated so far.
pub(crate) fn compute(
    current: &VirtualMachineStatus,
    observation: Observation,
    nics: Vec<VmNicStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> VirtualMachineStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    status.nics = nics;
    let mut set = |desired| conditions::set(&mut status.conditions, desired, generation, now);
    let (phase, host) = match observation {
        Observation::Blocked(problem) => {
            if current.host.is_none() {
                set(Desired::new(
                    SCHEDULED,
                    false,
                    problem.reason,
                    problem.message.clone(),
                ));
            }
            set(Desired::new(READY, false, problem.reason, problem.message));
            (VmPhase::Created, current.host.clone())
        }
        Observation::Unschedulable(message) => {
            set(Desired::new(
                SCHEDULED,
                false,
                "Unschedulable",
                message.clone(),
            ));
            set(Desired::new(READY, false, "Unschedulable", message));
            (VmPhase::Created, None)
        }
        Observation::Placed {
            host,
            instance,
            host_connected,
            cpu,
            memory,
            reboot_pending,
        } => {
            status.cpu = Some(cpu);
            status.memory = Some(memory);
            set(Desired::new(
                SCHEDULED,
                true,
                "Scheduled",
                format!("placed on host {host}"),
            ));
            let (phase, ready) = match placed_phase(&host, instance.as_ref(), host_connected) {
                (VmPhase::Running, _) if reboot_pending => (
                    VmPhase::Rebooting,
                    Desired::new(
                        READY,
                        false,
                        "Rebooting",
                        format!("host {host} is rebooting the instance"),
                    ),
                ),
                placed => placed,
            };
            set(ready);
            (phase, Some(host))
        }
        Observation::Halted { instance_exists } => {
            let message = "runStrategy is Halted";
            set(Desired::new(SCHEDULED, false, "Halted", message));
            set(Desired::new(READY, false, "Halted", message));
            let phase = if instance_exists {
                VmPhase::Stopping
            } else {
                VmPhase::Stopped
            };
            (phase, None)
        }
        Observation::Evacuated(message) => {
            set(Desired::new(
                SCHEDULED,
                false,
                "HostFailed",
                message.clone(),
            ));
            set(Desired::new(READY, false, "HARestarting", message));
            (VmPhase::Unknown, None)
        }
        Observation::Destroying => {
            set(Desired::new(
                READY,
                false,
                "Destroying",
                "the VM is being deleted",
            ));
            (VmPhase::Destroying, current.host.clone())
        }
    };
    status.phase = phase;
    status.host = host;
    status
}

/// The Events for going from `old` to `new`.
pub(crate) fn transitions(
    old: &VirtualMachineStatus,
    new: &VirtualMachineStatus,
) -> Vec<Transition> {
    let mut events = Vec::new();
    if let (false, Some(host)) = (conditions::is_true(&old.conditions, SCHEDULED), &new.host) {
        if conditions::is_true(&new.conditions, SCHEDULED) {
            events.push(Transition::normal(
                "Scheduled",
                format!("placed on host {host}"),
            ));
        }
    }
    let added: Vec<String> = new
        .nics
        .iter()
        .filter(|nic| !old.nics.contains(nic))
        .map(|nic| {
            format!(
                "{} on L3Network {} (MAC {})",
                nic.ip, nic.l3_network, nic.mac
            )
        })
        .collect();
    if !added.is_empty() {
        events.push(Transition::normal("IPAllocated", added.join(", ")));
    }
    let ready = conditions::get(&new.conditions, READY);
    let old_ready = conditions::get(&old.conditions, READY);
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    if new.phase != old.phase {
        match new.phase {
            VmPhase::Running if old.phase == VmPhase::Migrating => {
                events.push(Transition::normal("Migrated", message.clone()))
            }
            VmPhase::Running => events.push(Transition::normal("Started", message.clone())),
            VmPhase::Error => events.push(Transition::warning("Failed", message.clone())),
            VmPhase::Stopped => events.push(Transition::normal("Stopped", message.clone())),
            VmPhase::Unknown => {
                events.push(Transition::warning("HostDisconnected", message.clone()))
            }
            _ => {}
        }
    }
    if new.phase == VmPhase::Created {
        if let Some(ready) = ready.filter(|r| old_ready.is_none_or(|o| o.reason != r.reason)) {
            events.push(Transition::warning(ready.reason.clone(), message));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    fn vmi(phase: VmiPhase) -> VirtualMachineInstanceStatus {
        VirtualMachineInstanceStatus {
            phase,
            ..VirtualMachineInstanceStatus::default()
        }
    }

    fn placed(phase: Option<VmiPhase>, host_connected: bool) -> Observation {
        Observation::Placed {
            host: "h1".into(),
            instance: phase.map(vmi),
            host_connected,
            cpu: 1,
            memory: Quantity("1Gi".into()),
            reboot_pending: false,
        }
    }

    fn nic() -> VmNicStatus {
        VmNicStatus {
            l3_network: "net".into(),
            ip: "10.0.0.10".into(),
            mac: "fa:16:0a:00:00:0a".into(),
        }
    }

    fn reasons(events: &[Transition]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn run_strategies_decide_which_stops_restart() {
        let stopped = |reason: &str| {
            let mut status = vmi(VmiPhase::Stopped);
            let failed = Desired::new(READY, false, reason, String::new());
            conditions::set(&mut status.conditions, failed, None, Timestamp::now());
            status
        };
        let due = |strategy, reason: &str| restart_due(strategy, &stopped(reason)).is_some();
        assert!(due(RunStrategy::Always, STOPPED_OUTSIDE));
        assert!(due(RunStrategy::Always, CRASHED));
        assert!(
            !due(RunStrategy::Always, "Stopped"),
            "a requested stop stays"
        );
        assert!(due(RunStrategy::RerunOnFailure, CRASHED));
        assert!(!due(RunStrategy::RerunOnFailure, STOPPED_OUTSIDE));
        assert!(!due(RunStrategy::Manual, CRASHED));
        assert!(restart_due(RunStrategy::Always, &vmi(VmiPhase::Running)).is_none());
    }

    #[test]
    fn instance_phases_map_to_vm_phases() {
        let phase =
            |p: Option<VmiPhase>, connected| placed_phase("h1", p.map(vmi).as_ref(), connected).0;
        assert_eq!(phase(None, true), VmPhase::Starting);
        assert_eq!(phase(Some(VmiPhase::Pending), true), VmPhase::Starting);
        assert_eq!(phase(Some(VmiPhase::Starting), true), VmPhase::Starting);
        assert_eq!(phase(Some(VmiPhase::Running), true), VmPhase::Running);
        assert_eq!(phase(Some(VmiPhase::Stopped), true), VmPhase::Stopped);
        assert_eq!(phase(Some(VmiPhase::Failed), true), VmPhase::Error);
        assert_eq!(phase(Some(VmiPhase::Running), false), VmPhase::Unknown);
        assert!(
            placed_phase("h1", Some(&vmi(VmiPhase::Running)), true)
                .1
                .status
        );
    }

    #[test]
    fn a_failed_instance_passes_its_reason_on() {
        let mut failed = vmi(VmiPhase::Failed);
        crate::conditions::set(
            &mut failed.conditions,
            Desired::new(READY, false, "InsufficientResources", "does not fit"),
            None,
            Timestamp::UNIX_EPOCH,
        );
        let (phase, ready) = placed_phase("h1", Some(&failed), true);
        assert_eq!(phase, VmPhase::Error);
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("InsufficientResources", "does not fit")
        );
    }

    #[test]
    fn a_vm_goes_pending_scheduled_running_with_one_event_each() {
        let t = |s| Timestamp::UNIX_EPOCH + SignedDuration::from_secs(s);
        let start = VirtualMachineStatus::default();
        let pending = compute(
            &start,
            Observation::Blocked(Problem::new(
                "L3NetworkNotFound",
                "L3Network \"net\" not found",
            )),
            vec![],
            Some(1),
            t(0),
        );
        assert_eq!(pending.phase, VmPhase::Created);
        let scheduled = conditions::get(&pending.conditions, SCHEDULED).expect("Scheduled");
        assert_eq!(
            (scheduled.status.as_str(), scheduled.reason.as_str()),
            ("False", "L3NetworkNotFound")
        );
        assert_eq!(
            reasons(&transitions(&start, &pending)),
            ["L3NetworkNotFound"]
        );
        assert!(
            transitions(&pending, &pending).is_empty(),
            "no event without a transition"
        );

        let starting = compute(&pending, placed(None, true), vec![nic()], Some(1), t(1));
        assert_eq!(starting.phase, VmPhase::Starting);
        assert_eq!(starting.host.as_deref(), Some("h1"));
        assert_eq!(
            reasons(&transitions(&pending, &starting)),
            ["Scheduled", "IPAllocated"]
        );

        let running = compute(
            &starting,
            placed(Some(VmiPhase::Running), true),
            vec![nic()],
            Some(1),
            t(2),
        );
        assert_eq!(running.phase, VmPhase::Running);
        assert!(conditions::is_true(&running.conditions, READY));
        assert_eq!(reasons(&transitions(&starting, &running)), ["Started"]);
        let ready = conditions::get(&running.conditions, READY).expect("Ready");
        assert_eq!(ready.last_transition_time.0, t(2));
        let scheduled = conditions::get(&running.conditions, SCHEDULED).expect("Scheduled");
        assert_eq!(
            scheduled.last_transition_time.0,
            t(1),
            "unchanged since scheduling"
        );
    }

    #[test]
    fn unschedulable_and_halted_vms_have_no_host() {
        let placed = compute(
            &VirtualMachineStatus::default(),
            placed(None, true),
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        let unschedulable = compute(
            &VirtualMachineStatus::default(),
            Observation::Unschedulable("0/3 hosts fit: 3 insufficient memory".into()),
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            (unschedulable.phase, unschedulable.host.as_deref()),
            (VmPhase::Created, None)
        );
        let ready = conditions::get(&unschedulable.conditions, READY).expect("Ready");
        assert_eq!(ready.reason, "Unschedulable");
        assert_eq!(ready.message, "0/3 hosts fit: 3 insufficient memory");

        let stopping = compute(
            &placed,
            Observation::Halted {
                instance_exists: true,
            },
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            (stopping.phase, stopping.host.as_deref()),
            (VmPhase::Stopping, None)
        );
        let stopped = compute(
            &stopping,
            Observation::Halted {
                instance_exists: false,
            },
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(stopped.phase, VmPhase::Stopped);
        assert_eq!(reasons(&transitions(&stopping, &stopped)), ["Stopped"]);
    }

    #[test]
    fn a_disconnected_host_makes_the_vm_unknown() {
        let running = compute(
            &VirtualMachineStatus::default(),
            placed(Some(VmiPhase::Running), true),
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        let unknown = compute(
            &running,
            placed(Some(VmiPhase::Running), false),
            vec![],
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(unknown.phase, VmPhase::Unknown);
        assert_eq!(
            reasons(&transitions(&running, &unknown)),
            ["HostDisconnected"]
        );
    }
}
