//! High availability: a VM with `haPolicy: Restart` whose host has been Disconnected for
//! `GlobalConfig.spec.ha.restartAfterSeconds` is restarted on another host, if its volumes are
//! on shared storage (another host can open them). The placement is revoked first: the old
//! instance is deleted, without waiting for the dead host's agent to release it (its agent
//! fenced itself when its lease ran out, and on return destroys what is no longer placed on
//! it). VMs on local storage, and VMs without the policy, stay `Unknown` until the host returns.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef},
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY, vm::HaPolicy, Host, HostState, PrimaryStorageType, VirtualMachine,
    VirtualMachineInstance, VirtualMachineStatus,
};

use super::vm_key;
use crate::{
    conditions,
    events::{self, Transition},
    Context, Error,
};

/// What HA makes of a VM placed on `host`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do: no HA policy, or the host is fine.
    None,
    /// The host is down, but not for long enough yet.
    Later(Duration),
    /// Restart it elsewhere, for this reason.
    Restart(String),
}

/// Revokes the placement of `vm` if HA restarts it now; returns why, for its status.
pub(crate) async fn evacuate(
    ctx: &Context,
    vm: &VirtualMachine,
    host: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(host) = host else {
        return Ok(None);
    };
    let Verdict::Restart(why) = verdict(ctx, vm, host, Timestamp::now()) else {
        return Ok(None);
    };
    if revoke(ctx, vm).await? {
        events::publish(
            &ctx.recorder,
            vm,
            vec![Transition::warning("HARestart", why.clone())],
        )
        .await;
    }
    Ok(Some(why))
}

/// `await_change`, or a wake-up for the moment an HA restart of `vm` falls due.
pub(crate) fn recheck(ctx: &Context, vm: &VirtualMachine, host: &str) -> Action {
    match verdict(ctx, vm, host, Timestamp::now()) {
        Verdict::Later(wait) => Action::requeue(wait),
        Verdict::None | Verdict::Restart(_) => Action::await_change(),
    }
}

fn verdict(ctx: &Context, vm: &VirtualMachine, host: &str, now: Timestamp) -> Verdict {
    if vm.spec.ha_policy != HaPolicy::Restart {
        return Verdict::None;
    }
    let Some(host) = ctx.hosts.get(&ObjectRef::new(host)) else {
        return Verdict::None;
    };
    let Some(since) = disconnected_since(&host) else {
        return Verdict::None;
    };
    let shared = on_shared_storage(ctx, vm.status.as_ref(), &host);
    let after = ctx.inventory.global().ha.restart_after_seconds;
    decide(host.name_any(), since, after, shared, now)
}

/// The pure decision: restart once the host has been down `after` seconds, shared storage only.
fn decide(host: String, since: Timestamp, after: i32, shared: bool, now: Timestamp) -> Verdict {
    if !shared {
        return Verdict::None;
    }
    let due = since
        .checked_add(SignedDuration::from_secs(i64::from(after.max(0))))
        .unwrap_or(Timestamp::MAX);
    if due > now {
        let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
        return Verdict::Later(wait + Duration::from_millis(100));
    }
    Verdict::Restart(format!(
        "host {host} has been Disconnected since {since} (over {after}s) and haPolicy is \
         Restart: restarting the VM on another host"
    ))
}

/// Whether a host's agent can still be waited for, by objects being deleted that it holds a
/// finalizer on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostGone {
    /// Wait for the agent: the host is up.
    No,
    /// The host is down; ask again after this long.
    Later(Duration),
    /// Gone past the HA delay, for this reason: release what its agent holds.
    Yes(String),
}

/// Nothing being deleted waits forever on a dead host: once `host` has been Disconnected (or
/// deleted) for `ha.restartAfterSeconds`, what its agent holds is released, on the same
/// grounds as an HA restart (the agent fenced itself when its lease ran out, and on return
/// destroys what is no longer placed on it).
pub(crate) fn host_gone(ctx: &Context, host: &str) -> HostGone {
    let Some(found) = ctx.hosts.get(&ObjectRef::new(host)) else {
        return HostGone::Yes(format!("host {host} no longer exists"));
    };
    let Some(since) = disconnected_since(&found) else {
        return HostGone::No;
    };
    let after = ctx.inventory.global().ha.restart_after_seconds;
    match decide(host.to_string(), since, after, true, Timestamp::now()) {
        Verdict::Later(wait) => HostGone::Later(wait),
        Verdict::None => HostGone::No,
        Verdict::Restart(_) => HostGone::Yes(format!(
            "host {host} has been Disconnected since {since} (over {after}s)"
        )),
    }
}

/// Deletes the instance of the VM being deleted without its dead host's agent (see
/// [`host_gone`]), with an Event.
pub(crate) async fn abandon(ctx: &Context, vm: &VirtualMachine, why: &str) -> Result<(), Error> {
    if revoke(ctx, vm).await? {
        events::publish(
            &ctx.recorder,
            vm,
            vec![Transition::warning(
                "HostGone",
                format!("{why}: deleted the instance without its agent, which fenced itself"),
            )],
        )
        .await;
    }
    Ok(())
}

/// When the host turned Disconnected, if it is.
fn disconnected_since(host: &Host) -> Option<Timestamp> {
    let status = host.status.as_ref()?;
    if status.state != Some(HostState::Disconnected) {
        return None;
    }
    let ready = conditions::get(&status.conditions, READY)?;
    (ready.status == "False").then_some(ready.last_transition_time.0)
}

/// Whether every volume of the VM is on storage other hosts can open. The volumes' own
/// primary storage once recorded in `status.volumes`, else every primary storage of the
/// host's cluster (the root volume is on one of them).
pub(crate) fn on_shared_storage(
    ctx: &Context,
    status: Option<&VirtualMachineStatus>,
    host: &Host,
) -> bool {
    let recorded: Vec<String> = status
        .map(|s| {
            s.volumes
                .iter()
                .filter_map(|v| v.primary_storage.clone())
                .collect()
        })
        .unwrap_or_default();
    let storages = if recorded.is_empty() {
        ctx.inventory
            .clusters
            .get(&ObjectRef::new(&host.spec.cluster))
            .map(|c| c.spec.primary_storages.clone())
            .unwrap_or_default()
    } else {
        recorded
    };
    !storages.is_empty()
        && storages.iter().all(|name| {
            ctx.inventory
                .storages
                .get(&ObjectRef::new(name))
                .is_some_and(|ps| ps.spec.storage_type != PrimaryStorageType::LocalStorage)
        })
}

/// Deletes the VM's instance, releasing the dead agent's finalizer itself; returns whether
/// there was one.
async fn revoke(ctx: &Context, vm: &VirtualMachine) -> Result<bool, Error> {
    let api: Api<VirtualMachineInstance> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let failed = |source| Error::Delete {
        kind: "VirtualMachineInstance",
        name: vm_key(vm),
        source,
    };
    let name = vm.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(false),
        Err(source) => return Err(failed(source)),
    }
    let release = json!({ "metadata": { "finalizers": null } });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(release))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(true),
        Err(source) => Err(failed(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(secs)
    }

    #[test]
    fn restarts_after_the_delay_and_only_from_shared_storage() {
        let decide = |shared, now| decide("h1".into(), at(100), 30, shared, at(now));
        assert_eq!(
            decide(true, 110),
            Verdict::Later(Duration::from_millis(20_100))
        );
        let Verdict::Restart(why) = decide(true, 130) else {
            panic!("due at 130");
        };
        assert!(why.contains("host h1") && why.contains("over 30s"), "{why}");
        assert_eq!(decide(false, 1000), Verdict::None, "local storage waits");
    }
}
