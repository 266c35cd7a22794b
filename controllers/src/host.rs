//! Host controller: turns the agent's Lease heartbeats into `status.state` and the Ready
//! condition, and sums what the instances placed on the host reserve.
//!
//! The agent writes `status.capacity` and `status.driver`; this controller writes only the
//! other status fields, so the two merge patches never overwrite each other.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY, host::DRAINED, quantity, Host, HostCapacity, HostState, HostStatus,
    VirtualMachineInstance, VirtualMachineInstanceSpec, SYSTEM_NAMESPACE,
};

use crate::{
    conditions::{self, Desired},
    drain::{self, Drain},
    events::{self, Transition},
    Context, Error,
};

/// A disconnected host is re-checked this often even without a lease event.
const RECHECK: Duration = Duration::from_secs(300);

pub(crate) fn controller(client: &Client) -> Controller<Host> {
    Controller::new(Api::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE),
            watcher::Config::default(),
            |lease| Some(ObjectRef::new(&lease.name_any())),
        )
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            |vmi| Some(ObjectRef::new(&vmi.spec.host)),
        )
}

pub(crate) async fn reconcile(host: Arc<Host>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = host.name_any();
    // Until the instance cache is filled the allocation would read as zero.
    if ctx.vmis.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(SYSTEM_NAMESPACE));
    let mut liveness = liveness(
        lease.as_ref().and_then(|l| l.spec.as_ref()),
        ctx.opts.host_lease_timeout,
        now,
    );
    // A busy controller's lease cache can lag the agents' renewals by more than a lease (seen
    // with 1,000 VMs starting at once): a host is declared dead only on a lease read fresh.
    if !liveness.connected {
        let fresh = Api::<Lease>::namespaced(ctx.client.clone(), SYSTEM_NAMESPACE)
            .get_opt(&name)
            .await
            .map_err(|source| Error::Get {
                kind: "Lease".into(),
                name: format!("{SYSTEM_NAMESPACE}/{name}"),
                source,
            })?;
        liveness = self::liveness(
            fresh.as_ref().and_then(|l| l.spec.as_ref()),
            ctx.opts.host_lease_timeout,
            now,
        );
    }
    let placed: Vec<_> = ctx
        .vmis
        .state()
        .into_iter()
        .filter(|vmi| vmi.spec.host == name)
        .collect();
    let (allocated, vm_count) = allocation(placed.iter().map(|vmi| &vmi.spec));
    let drain = drain::step(&ctx, &host, &placed).await?;

    let current = host.status.clone().unwrap_or_default();
    let mut status = status(
        &current,
        &liveness,
        allocated,
        vm_count,
        host.metadata.generation,
        now,
    );
    draining(&mut status, drain.clone(), host.metadata.generation, now);
    if status != current {
        let patch = json!({ "status": {
            "observedGeneration": status.observed_generation,
            "state": status.state,
            "allocated": status.allocated,
            "vmCount": status.vm_count,
            "progress": status.progress,
            "drainTotal": status.drain_total,
            "conditions": status.conditions,
        }});
        Api::<Host>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| Error::UpdateStatus {
                kind: "Host",
                name: name.clone(),
                source,
            })?;
    }
    if current.state != status.state {
        let transition = if liveness.connected {
            Transition::normal("Connected", liveness.message.clone())
        } else {
            Transition::warning("Disconnected", liveness.message.clone())
        };
        events::publish(&ctx.recorder, host.as_ref(), vec![transition]).await;
    }
    let was_drained = conditions::is_true(&current.conditions, DRAINED);
    if let Some(drain) = drain.filter(|d| d.drained.status && !was_drained) {
        let note = format!("{} VMs moved or stopped", drain.total);
        events::publish(
            &ctx.recorder,
            host.as_ref(),
            vec![Transition::normal("Drained", note)],
        )
        .await;
    }
    ctx.succeeded("Host", &name);
    // Wake up exactly when the lease runs out, so the host flips without any other event.
    Ok(match liveness.expires_at {
        Some(at) => Action::requeue(until(now, at)),
        None => Action::requeue(RECHECK),
    })
}

pub(crate) fn error_policy(host: Arc<Host>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = host.name_any();
    Action::requeue(ctx.failed("Host", &name, error))
}

/// Whether a host's agent is alive, judged from its Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Liveness {
    pub connected: bool,
    pub reason: &'static str,
    /// Stable between renewals, so heartbeats alone never rewrite the Host.
    pub message: String,
    /// When a connected host turns disconnected unless the lease is renewed.
    pub expires_at: Option<Timestamp>,
}

pub(crate) fn liveness(
    lease: Option<&LeaseSpec>,
    default_duration: Duration,
    now: Timestamp,
) -> Liveness {
    let Some(renewed) = lease.and_then(|l| l.renew_time.as_ref().or(l.acquire_time.as_ref()))
    else {
        return Liveness {
            connected: false,
            reason: "NoLease",
            message: "the host's agent has not sent a heartbeat".into(),
            expires_at: None,
        };
    };
    let duration = lease
        .and_then(|l| l.lease_duration_seconds)
        .map(|s| SignedDuration::from_secs(i64::from(s)))
        .unwrap_or_else(|| {
            SignedDuration::try_from(default_duration).unwrap_or(SignedDuration::MAX)
        });
    let expiry = renewed.0.checked_add(duration).unwrap_or(Timestamp::MAX);
    if expiry > now {
        Liveness {
            connected: true,
            reason: "HeartbeatFresh",
            message: "the host's agent renews its lease".into(),
            expires_at: Some(expiry),
        }
    } else {
        Liveness {
            connected: false,
            reason: "HeartbeatExpired",
            message: format!("the host's lease expired at {expiry}"),
            expires_at: None,
        }
    }
}

/// CPU and memory reserved by the given instances, and how many there are.
pub(crate) fn allocation<'a>(
    instances: impl Iterator<Item = &'a VirtualMachineInstanceSpec>,
) -> (HostCapacity, i64) {
    let (cpu, memory, count) = instances.fold((0i64, 0u64, 0i64), |(c, m, n), spec| {
        // The VM controller writes only parsable sizes; anything else reserves nothing.
        let bytes = quantity::parse_quantity(&spec.memory).unwrap_or(0);
        (c.saturating_add(spec.cpu), m.saturating_add(bytes), n + 1)
    });
    let allocated = HostCapacity {
        cpu,
        memory: quantity::format_bytes(memory),
    };
    (allocated, count)
}

fn status(
    current: &HostStatus,
    liveness: &Liveness,
    allocated: HostCapacity,
    vm_count: i64,
    generation: Option<i64>,
    now: Timestamp,
) -> HostStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    status.state = Some(if liveness.connected {
        HostState::Connected
    } else {
        HostState::Disconnected
    });
    status.allocated = Some(allocated);
    status.vm_count = Some(vm_count);
    conditions::set(
        &mut status.conditions,
        Desired::new(
            READY,
            liveness.connected,
            liveness.reason,
            liveness.message.clone(),
        ),
        generation,
        now,
    );
    status
}

/// Sets the drain's progress and `Drained` condition, or clears them outside Maintenance.
fn draining(
    status: &mut HostStatus,
    drain: Option<Drain>,
    generation: Option<i64>,
    now: Timestamp,
) {
    match drain {
        Some(drain) => {
            status.drain_total = Some(drain.total);
            status.progress = Some(drain.progress);
            conditions::set(&mut status.conditions, drain.drained, generation, now);
        }
        None => {
            status.drain_total = None;
            status.progress = None;
            status.conditions.retain(|c| c.type_ != DRAINED);
        }
    }
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = at.duration_since(now);
    // A little slack so the requeue lands after the expiry, not a hair before it.
    Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::MicroTime};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(secs)
    }

    fn lease(renewed: i64, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(40);

    #[test]
    fn a_fresh_lease_connects_until_it_expires() {
        let l = liveness(Some(&lease(100, Some(15))), TIMEOUT, at(110));
        assert!(l.connected);
        assert_eq!(l.reason, "HeartbeatFresh");
        assert_eq!(l.expires_at, Some(at(115)));
        assert_eq!(until(at(110), at(115)), Duration::from_millis(5_100));

        let l = liveness(Some(&lease(100, Some(15))), TIMEOUT, at(115));
        assert!(!l.connected);
        assert_eq!(l.reason, "HeartbeatExpired");
        assert_eq!(l.expires_at, None);
    }

    #[test]
    fn a_lease_without_duration_uses_the_timeout() {
        assert!(liveness(Some(&lease(100, None)), TIMEOUT, at(139)).connected);
        assert!(!liveness(Some(&lease(100, None)), TIMEOUT, at(140)).connected);
    }

    #[test]
    fn no_lease_or_no_renewal_is_disconnected() {
        assert_eq!(liveness(None, TIMEOUT, at(0)).reason, "NoLease");
        let never = LeaseSpec::default();
        assert_eq!(liveness(Some(&never), TIMEOUT, at(0)).reason, "NoLease");
    }

    #[test]
    fn heartbeats_alone_do_not_change_the_status() {
        let now = at(110);
        let fresh = liveness(Some(&lease(100, Some(40))), TIMEOUT, now);
        let later = liveness(Some(&lease(130, Some(40))), TIMEOUT, at(135));
        let cap = || HostCapacity::default();
        let first = status(&HostStatus::default(), &fresh, cap(), 0, Some(1), now);
        let second = status(&first, &later, cap(), 0, Some(1), at(135));
        assert_eq!(first, second);
        assert_eq!(first.state, Some(HostState::Connected));
    }

    #[test]
    fn allocation_sums_cpu_and_memory() {
        let spec = |cpu, memory: &str| VirtualMachineInstanceSpec {
            cpu,
            memory: Quantity(memory.into()),
            ..VirtualMachineInstanceSpec::default()
        };
        let specs = [spec(2, "1Gi"), spec(1, "512Mi"), spec(4, "2Gi")];
        let (allocated, count) = allocation(specs.iter());
        assert_eq!(allocated.cpu, 7);
        assert_eq!(allocated.memory.0, "3584Mi");
        assert_eq!(count, 3);
        let (empty, none) = allocation(std::iter::empty());
        assert_eq!((empty.cpu, empty.memory.0.as_str(), none), (0, "0", 0));
    }
}
