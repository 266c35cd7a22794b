//! Which changes of other objects are worth waking VMs for. Watches deliver every write, and
//! most writes are status updates that change nothing a VM waits on; waking every VM that
//! refers to the object each time made bursts of creates quadratic.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use kube::ResourceExt;
use strata_apis::{Host, HostCapacity, HostStatus};

/// An object's identity and spec version: `(metadata.uid, metadata.generation)`.
type Version = (Option<String>, Option<i64>);

/// The last [`Version`] seen of each object of a kind, by name, to tell a new object or a new
/// spec from a status write.
#[derive(Debug, Default)]
pub(crate) struct Generations(Mutex<HashMap<String, Version>>);

impl Generations {
    /// Records the object `name` as seen; whether it is new or its spec changed. A deletion
    /// repeats the last one seen, so it wakes nobody: a VM that needs the deleted object finds
    /// out on its own retry.
    pub fn changed(&self, name: &str, uid: Option<String>, generation: Option<i64>) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (uid, generation);
        seen.insert(name.to_string(), now.clone()).as_ref() != Some(&now)
    }
}

/// A host's status without what placements change: `allocated` and `vmCount`.
type HostFacts = (Option<String>, Option<i64>, Option<HostStatus>);
/// What placements change: `allocated` and `vmCount`.
type Allocation = (Option<HostCapacity>, Option<i64>);

/// The last look at each host, to tell a write that only counts the VMs placed on it from one
/// the VMs on it care about (its state, conditions, drain, spec). The host controller rewrites
/// `allocated` and `vmCount` on every placement, and waking every VM of the host each time made
/// a burst of creates quadratic in the VMs per host.
#[derive(Debug, Default)]
pub(crate) struct HostChanges(Mutex<HashMap<String, (HostFacts, Allocation)>>);

impl HostChanges {
    /// Records `host` as seen; whether the VMs on it should look again. Only a write that
    /// changed the allocation and nothing else is skipped: anything else (a new state, a
    /// spec change, a repeat such as the deletion) wakes them, as it did before.
    pub fn matters(&self, host: &Host) -> bool {
        let mut status = host.status.clone();
        let allocation = status
            .as_mut()
            .map(|s| (s.allocated.take(), s.vm_count.take()))
            .unwrap_or_default();
        let facts = (host.uid(), host.metadata.generation, status);
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = seen.insert(host.name_any(), (facts.clone(), allocation.clone()));
        !before.is_some_and(|(f, a)| f == facts && a != allocation)
    }
}

#[cfg(test)]
mod tests {
    use strata_apis::{HostSpec, HostState};

    use super::*;

    #[test]
    fn only_allocation_writes_are_skipped() {
        let changes = HostChanges::default();
        let host = |state, cpu: i64| {
            let mut h = Host::new("h", HostSpec::default());
            h.metadata.uid = Some("u".into());
            h.status = Some(HostStatus {
                state: Some(state),
                allocated: Some(HostCapacity {
                    cpu,
                    memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
                }),
                vm_count: Some(cpu),
                ..HostStatus::default()
            });
            h
        };
        assert!(changes.matters(&host(HostState::Connected, 1)), "new");
        assert!(
            !changes.matters(&host(HostState::Connected, 2)),
            "a placement"
        );
        assert!(
            changes.matters(&host(HostState::Connected, 2)),
            "a repeat (a deletion carries the last state)"
        );
        assert!(
            changes.matters(&host(HostState::Disconnected, 3)),
            "a new state with a placement"
        );
    }

    #[test]
    fn only_new_objects_and_new_generations_count() {
        let seen = Generations::default();
        let uid = |u: &str| Some(u.to_string());
        assert!(seen.changed("net", uid("a"), Some(1)), "new");
        assert!(!seen.changed("net", uid("a"), Some(1)), "a status write");
        assert!(seen.changed("net", uid("a"), Some(2)), "a spec change");
        assert!(!seen.changed("net", uid("a"), Some(2)));
        assert!(
            seen.changed("net", uid("b"), Some(1)),
            "deleted and created again under the same name"
        );
        assert!(seen.changed("other", uid("c"), Some(2)), "names are apart");
    }
}
