//! Placement: filter the hosts a VM may run on, then score the ones left.
//!
//! Like kube-scheduler, decisions are "assumed" in memory the moment they are made, because the
//! caches only show a placement once its instance has been written and watched back. Without
//! that, two VMs reconciled back to back would both see the same last free slot.

use std::collections::{BTreeMap, HashMap};

/// What a VM asks of a host (and what a host has or has given away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resources {
    pub cpu: i64,
    pub memory: u64,
}

impl Resources {
    fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(other.cpu),
            memory: self.memory.saturating_add(other.memory),
        }
    }
}

/// A host as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub name: String,
    /// Connected, with a fresh heartbeat.
    pub ready: bool,
    /// `spec.adminState` is `Enabled`.
    pub enabled: bool,
    /// What the agent reported; `None` until it has.
    pub capacity: Option<Resources>,
    /// Reserved by instances and assumed placements.
    pub used: Resources,
}

/// Why a host was filtered out, in the order the filters run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rejection {
    NotRequested,
    Disabled,
    NotReady,
    NoCapacity,
    InsufficientCpu,
    InsufficientMemory,
}

impl Rejection {
    fn describe(self) -> &'static str {
        match self {
            Rejection::NotRequested => "not the requested host",
            Rejection::Disabled => "disabled",
            Rejection::NotReady => "not ready",
            Rejection::NoCapacity => "capacity not reported",
            Rejection::InsufficientCpu => "insufficient cpu",
            Rejection::InsufficientMemory => "insufficient memory",
        }
    }
}

fn filter(
    request: Resources,
    host: &Candidate,
    pinned: Option<&str>,
) -> Result<Resources, Rejection> {
    if pinned.is_some_and(|p| p != host.name) {
        return Err(Rejection::NotRequested);
    }
    if !host.enabled {
        return Err(Rejection::Disabled);
    }
    if !host.ready {
        return Err(Rejection::NotReady);
    }
    let capacity = host.capacity.ok_or(Rejection::NoCapacity)?;
    let after = host.used.plus(request);
    if after.cpu > capacity.cpu {
        return Err(Rejection::InsufficientCpu);
    }
    if after.memory > capacity.memory {
        return Err(Rejection::InsufficientMemory);
    }
    Ok(Resources {
        cpu: capacity.cpu - after.cpu,
        memory: capacity.memory - after.memory,
    })
}

/// Picks the host for `request`, or explains why none fits ("0/3 hosts fit: 3 insufficient
/// memory"). Among fitting hosts the one left with the most free memory wins (spreading load),
/// then the most free CPU, then the name, so the choice is deterministic.
pub(crate) fn pick(
    request: Resources,
    hosts: &[Candidate],
    pinned: Option<&str>,
) -> Result<String, String> {
    let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
    let mut best: Option<(Resources, &str)> = None;
    for host in hosts {
        match filter(request, host, pinned) {
            Ok(free) => {
                let better = best.is_none_or(|(b, name)| {
                    (free.memory, free.cpu, std::cmp::Reverse(host.name.as_str()))
                        > (b.memory, b.cpu, std::cmp::Reverse(name))
                });
                if better {
                    best = Some((free, host.name.as_str()));
                }
            }
            Err(why) => *rejections.entry(why).or_default() += 1,
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_string());
    }
    let reasons: Vec<String> = rejections
        .iter()
        .map(|(why, n)| format!("{n} {}", why.describe()))
        .collect();
    let mut message = format!("0/{} hosts fit", hosts.len());
    if !reasons.is_empty() {
        message = format!("{message}: {}", reasons.join(", "));
    }
    if let Some(p) = pinned.filter(|p| !hosts.iter().any(|h| h.name == *p)) {
        message = format!("{message}; requested host {p} does not exist");
    }
    Err(message)
}

/// A placement the scheduler has decided, keyed by the VM's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub host: String,
    pub request: Resources,
}

/// Placements decided but possibly not yet visible in the instance cache.
#[derive(Debug, Default)]
pub(crate) struct Assumed {
    placements: HashMap<String, Placement>,
}

impl Assumed {
    pub fn assume(&mut self, vm: String, placement: Placement) {
        self.placements.insert(vm, placement);
    }

    pub fn forget(&mut self, vm: &str) {
        self.placements.remove(vm);
    }

    /// What each host has given away: the `instances` the cache shows (as `(vm, host, size)`)
    /// plus assumed placements the cache does not show yet. Assumptions the cache confirms are
    /// dropped, since from then on the instance itself counts.
    pub fn usage<'a>(
        &mut self,
        instances: impl IntoIterator<Item = (String, &'a str, Resources)>,
    ) -> HashMap<String, Resources> {
        let mut usage: HashMap<String, Resources> = HashMap::new();
        for (vm, host, size) in instances {
            if self.placements.get(&vm).is_some_and(|p| p.host == host) {
                self.placements.remove(&vm);
            }
            let used = usage.entry(host.to_string()).or_default();
            *used = used.plus(size);
        }
        for placement in self.placements.values() {
            let used = usage.entry(placement.host.clone()).or_default();
            *used = used.plus(placement.request);
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn res(cpu: i64, gib: u64) -> Resources {
        Resources {
            cpu,
            memory: gib * GI,
        }
    }

    fn host(name: &str, capacity: Resources, used: Resources) -> Candidate {
        Candidate {
            name: name.into(),
            ready: true,
            enabled: true,
            capacity: Some(capacity),
            used,
        }
    }

    #[test]
    fn picks_the_host_with_the_most_free_memory() {
        let hosts = [
            host("a", res(8, 8), res(0, 6)),
            host("b", res(8, 8), res(0, 2)),
            host("c", res(8, 8), res(0, 4)),
        ];
        assert_eq!(pick(res(1, 1), &hosts, None), Ok("b".into()));
    }

    #[test]
    fn ties_break_by_name() {
        let hosts = [
            host("b", res(4, 4), res(0, 0)),
            host("a", res(4, 4), res(0, 0)),
        ];
        assert_eq!(pick(res(1, 1), &hosts, None), Ok("a".into()));
    }

    #[test]
    fn a_full_cluster_explains_why_nothing_fits() {
        let hosts = [
            host("a", res(8, 4), res(0, 0)),
            host("b", res(8, 4), res(0, 0)),
            host("c", res(8, 4), res(0, 0)),
        ];
        assert_eq!(
            pick(res(1, 16), &hosts, None),
            Err("0/3 hosts fit: 3 insufficient memory".into())
        );
        assert_eq!(
            pick(res(9, 1), &hosts, None),
            Err("0/3 hosts fit: 3 insufficient cpu".into())
        );
        assert_eq!(pick(res(1, 1), &[], None), Err("0/0 hosts fit".into()));
    }

    #[test]
    fn capacity_is_exact_at_the_boundary() {
        let hosts = [host("a", res(4, 4), res(3, 3))];
        assert_eq!(pick(res(1, 1), &hosts, None), Ok("a".into()));
        assert!(pick(res(1, 2), &hosts, None).is_err());
    }

    #[test]
    fn skips_hosts_that_are_not_ready_disabled_or_unreported() {
        let mut down = host("down", res(8, 8), res(0, 0));
        down.ready = false;
        let mut off = host("off", res(8, 8), res(0, 0));
        off.enabled = false;
        let mut new = host("new", res(8, 8), res(0, 0));
        new.capacity = None;
        let hosts = [down, off, new];
        assert_eq!(
            pick(res(1, 1), &hosts, None),
            Err("0/3 hosts fit: 1 disabled, 1 not ready, 1 capacity not reported".into())
        );
    }

    #[test]
    fn pinning_picks_only_the_named_host() {
        let hosts = [
            host("a", res(8, 8), res(0, 0)),
            host("b", res(8, 8), res(0, 6)),
        ];
        assert_eq!(pick(res(1, 1), &hosts, Some("b")), Ok("b".into()));
        assert_eq!(
            pick(res(1, 4), &hosts, Some("b")),
            Err("0/2 hosts fit: 1 not the requested host, 1 insufficient memory".into())
        );
        assert_eq!(
            pick(res(1, 1), &hosts, Some("z")),
            Err("0/2 hosts fit: 2 not the requested host; requested host z does not exist".into())
        );
    }

    #[test]
    fn assumed_placements_count_until_the_cache_shows_them() {
        let mut assumed = Assumed::default();
        assumed.assume(
            "ns/vm1".into(),
            Placement {
                host: "a".into(),
                request: res(1, 2),
            },
        );
        // The cache does not show vm1 yet: the assumption alone reserves its share.
        let usage = assumed.usage([("ns/vm0".to_string(), "a", res(1, 1))]);
        assert_eq!(usage.get("a"), Some(&res(2, 3)));

        // Once the cache shows vm1 on a, it counts once, and the assumption is dropped.
        let shown = [
            ("ns/vm0".to_string(), "a", res(1, 1)),
            ("ns/vm1".to_string(), "a", res(1, 2)),
        ];
        assert_eq!(assumed.usage(shown.clone()).get("a"), Some(&res(2, 3)));
        assert!(assumed.placements.is_empty());
        assert_eq!(assumed.usage(shown).get("a"), Some(&res(2, 3)));
    }

    #[test]
    fn two_vms_never_share_the_last_slot() {
        let mut assumed = Assumed::default();
        let schedule = |assumed: &mut Assumed, vm: &str| {
            let usage = assumed.usage([]);
            let hosts = [host(
                "a",
                res(4, 4),
                usage.get("a").copied().unwrap_or_default(),
            )];
            let picked = pick(res(1, 3), &hosts, None)?;
            assumed.assume(
                vm.into(),
                Placement {
                    host: picked.clone(),
                    request: res(1, 3),
                },
            );
            Ok::<_, String>(picked)
        };
        assert_eq!(schedule(&mut assumed, "ns/vm1"), Ok("a".into()));
        assert!(schedule(&mut assumed, "ns/vm2").is_err());
        assumed.forget("ns/vm1");
        assert_eq!(schedule(&mut assumed, "ns/vm2"), Ok("a".into()));
    }

    #[test]
    fn an_old_instance_on_another_host_does_not_confirm_a_new_placement() {
        let mut assumed = Assumed::default();
        assumed.assume(
            "ns/vm".into(),
            Placement {
                host: "b".into(),
                request: res(1, 1),
            },
        );
        let usage = assumed.usage([("ns/vm".to_string(), "a", res(1, 1))]);
        assert_eq!(usage.get("a"), Some(&res(1, 1)));
        assert_eq!(usage.get("b"), Some(&res(1, 1)));
    }
}
