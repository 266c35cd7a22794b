//! Placement: filter the hosts a VM may run on, then score the ones left (ZStack's host
//! allocator: a chain of filter flows, then a sort by the offering's allocator strategy).
//!
//! Everything here is pure: the hosts arrive as [`Candidate`]s already joined with their
//! cluster, zone, storage and overcommit settings (see `inventory.rs`), so every filter and
//! score is unit-tested without a server.
//!
//! Like kube-scheduler, decisions are "assumed" in memory the moment they are made, because the
//! caches only show a placement once its instance has been written and watched back. Without
//! that, two VMs reconciled back to back would both see the same last free slot.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use strata_apis::AllocatorStrategy;

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

/// How much of a host VMs may be given: what is left after the host's reservation, scaled by
/// the overcommit ratios (ZStack: `(total - reserved) * ratio >= used + requested`).
/// Ratios below 1 are treated as 1: overcommit never shrinks a host.
pub(crate) fn allocatable(
    capacity: Resources,
    reserved: Resources,
    cpu_ratio: f64,
    memory_ratio: f64,
) -> Resources {
    let cpu = capacity.cpu.saturating_sub(reserved.cpu).max(0);
    let memory = capacity.memory.saturating_sub(reserved.memory);
    // f64 is exact for integers below 2^53 (8 PiB), far above any host.
    Resources {
        cpu: (cpu as f64 * cpu_ratio.max(1.0)).floor() as i64,
        memory: (memory as f64 * memory_ratio.max(1.0)).floor() as u64,
    }
}

/// What a VM asks for, with where it may go.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Request {
    pub size: Resources,
    /// Bytes the root volume needs on a primary storage; `None` when neither `rootDiskSize`
    /// nor the image's virtual size is known yet.
    pub root_disk: Option<u64>,
    /// L2 networks the VM's NICs are on; the host's cluster must be attached to all of them.
    pub l2_networks: BTreeSet<String>,
    /// `spec.placement`.
    pub zone: Option<String>,
    pub cluster: Option<String>,
    pub host: Option<String>,
    /// A host the VM must leave: the source of a live migration.
    pub avoid: Option<String>,
    /// The InstanceOffering's allocator strategy.
    pub strategy: AllocatorStrategy,
}

/// A primary storage attached to a host's cluster, as seen from that host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Storage {
    pub name: String,
    /// Exists and `spec.adminState` is `Enabled`.
    pub enabled: bool,
    /// Free bytes this host can use (its own entry for LocalStorage, the shared figure
    /// otherwise); `None` while nothing has reported it.
    pub available: Option<u64>,
}

/// The cluster (and zone) a host belongs to, as far as placement cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterFacts {
    pub zone: String,
    /// The Cluster's `spec.adminState` is `Enabled`.
    pub enabled: bool,
    /// The Zone's `spec.adminState` is `Enabled` (or the Zone object does not exist).
    pub zone_enabled: bool,
    pub l2_networks: BTreeSet<String>,
    pub storages: Vec<Storage>,
}

/// A host as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub name: String,
    pub cluster_name: String,
    /// `None` when the host's Cluster object does not exist.
    pub cluster: Option<ClusterFacts>,
    /// Connected, with a fresh heartbeat.
    pub ready: bool,
    /// `spec.adminState`.
    pub admin: HostAdmin,
    /// CPU and memory VMs may be given, after reservation and overcommit; `None` until the
    /// agent has reported the host's capacity.
    pub allocatable: Option<Resources>,
    /// Reserved by instances and assumed placements.
    pub used: Resources,
    /// VMs placed on the host (instances and assumed placements).
    pub vms: usize,
}

/// A host's admin state, as the filters need it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum HostAdmin {
    #[default]
    Enabled,
    Disabled,
    Maintenance,
}

/// Why a host was filtered out, in the order the filters run. A host is counted under the
/// first filter that removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rejection {
    MigrationSource,
    NotRequestedHost,
    NotRequestedCluster,
    NotRequestedZone,
    HostDisabled,
    HostInMaintenance,
    HostNotConnected,
    ClusterNotFound,
    ClusterDisabled,
    ZoneDisabled,
    L2NotAttached,
    NoPrimaryStorage,
    InsufficientStorage,
    NoCapacity,
    InsufficientCpu,
    InsufficientMemory,
}

impl Rejection {
    fn describe(self) -> &'static str {
        match self {
            Rejection::MigrationSource => "the host the VM leaves",
            Rejection::NotRequestedHost => "not the requested host",
            Rejection::NotRequestedCluster => "not in the requested cluster",
            Rejection::NotRequestedZone => "not in the requested zone",
            Rejection::HostDisabled => "Disabled",
            Rejection::HostInMaintenance => "in Maintenance",
            Rejection::HostNotConnected => "not Connected",
            Rejection::ClusterNotFound => "cluster not found",
            Rejection::ClusterDisabled => "cluster Disabled",
            Rejection::ZoneDisabled => "zone Disabled",
            Rejection::L2NotAttached => "L2 network not attached to the cluster",
            Rejection::NoPrimaryStorage => "no enabled primary storage",
            Rejection::InsufficientStorage => "insufficient primary storage",
            Rejection::NoCapacity => "capacity not reported",
            Rejection::InsufficientCpu => "insufficient cpu",
            Rejection::InsufficientMemory => "insufficient memory",
        }
    }
}

/// The pinning filter: `spec.placement` names a host, cluster or zone; a migration leaves its
/// source.
fn pinning(request: &Request, host: &Candidate) -> Result<(), Rejection> {
    if request.avoid.as_ref() == Some(&host.name) {
        return Err(Rejection::MigrationSource);
    }
    if request.host.as_ref().is_some_and(|h| *h != host.name) {
        return Err(Rejection::NotRequestedHost);
    }
    if request
        .cluster
        .as_ref()
        .is_some_and(|c| *c != host.cluster_name)
    {
        return Err(Rejection::NotRequestedCluster);
    }
    let zone = host.cluster.as_ref().map(|c| c.zone.as_str());
    if request.zone.as_deref().is_some_and(|z| Some(z) != zone) {
        return Err(Rejection::NotRequestedZone);
    }
    Ok(())
}

/// The host's own state: admin state Enabled, agent Connected.
fn host_state(host: &Candidate) -> Result<(), Rejection> {
    match host.admin {
        HostAdmin::Enabled => {}
        HostAdmin::Disabled => return Err(Rejection::HostDisabled),
        HostAdmin::Maintenance => return Err(Rejection::HostInMaintenance),
    }
    if !host.ready {
        return Err(Rejection::HostNotConnected);
    }
    Ok(())
}

/// The cluster and zone take new VMs.
fn cluster_state(host: &Candidate) -> Result<&ClusterFacts, Rejection> {
    let cluster = host.cluster.as_ref().ok_or(Rejection::ClusterNotFound)?;
    if !cluster.enabled {
        return Err(Rejection::ClusterDisabled);
    }
    if !cluster.zone_enabled {
        return Err(Rejection::ZoneDisabled);
    }
    Ok(cluster)
}

/// Every NIC's L2 network is wired to the host's cluster.
fn networks(request: &Request, cluster: &ClusterFacts) -> Result<(), Rejection> {
    if request.l2_networks.is_subset(&cluster.l2_networks) {
        Ok(())
    } else {
        Err(Rejection::L2NotAttached)
    }
}

/// The primary storage the root volume goes on: an enabled storage attached to the cluster
/// with room for it. A storage whose free space nobody has reported yet is not refused (it
/// would refuse everything until an agent reports storage); one that reports too little is.
/// Returns the storage chosen: the one with the most free space, unreported last.
///
/// Transitional: a cluster with no primary storage attached at all is not refused (`None`),
/// because no controller provisions root volumes on a primary storage yet — the agent clones
/// the image onto the host itself — and refusing would strand every cluster set up before
/// storage mattered (the quickstart, `strata bench`). Once root volumes are Volumes on a
/// PrimaryStorage this becomes `Err(Rejection::NoPrimaryStorage)`.
fn storage<'a>(
    request: &Request,
    cluster: &'a ClusterFacts,
) -> Result<Option<&'a Storage>, Rejection> {
    if cluster.storages.is_empty() {
        return Ok(None);
    }
    let mut enabled = cluster.storages.iter().filter(|s| s.enabled).peekable();
    if enabled.peek().is_none() {
        return Err(Rejection::NoPrimaryStorage);
    }
    let need = request.root_disk.unwrap_or(0);
    enabled
        .filter(|s| s.available.is_none_or(|a| a >= need))
        .max_by(|a, b| {
            (
                a.available.is_some(),
                a.available,
                std::cmp::Reverse(&a.name),
            )
                .cmp(&(
                    b.available.is_some(),
                    b.available,
                    std::cmp::Reverse(&b.name),
                ))
        })
        .map(Some)
        .ok_or(Rejection::InsufficientStorage)
}

/// CPU and memory free under the overcommit ratios, after the reservation. Returns what is
/// left once the VM is placed.
fn capacity(request: &Request, host: &Candidate) -> Result<Resources, Rejection> {
    let allocatable = host.allocatable.ok_or(Rejection::NoCapacity)?;
    let after = host.used.plus(request.size);
    if after.cpu > allocatable.cpu {
        return Err(Rejection::InsufficientCpu);
    }
    if after.memory > allocatable.memory {
        return Err(Rejection::InsufficientMemory);
    }
    Ok(Resources {
        cpu: allocatable.cpu - after.cpu,
        memory: allocatable.memory - after.memory,
    })
}

/// A host that passed every filter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fit<'a> {
    host: &'a Candidate,
    /// CPU and memory left once the VM is placed.
    free: Resources,
    storage: Option<&'a str>,
}

/// Runs the filters in order; the first that refuses says why.
fn filter<'a>(request: &Request, host: &'a Candidate) -> Result<Fit<'a>, Rejection> {
    pinning(request, host)?;
    host_state(host)?;
    let cluster = cluster_state(host)?;
    networks(request, cluster)?;
    let storage = storage(request, cluster)?;
    let free = capacity(request, host)?;
    Ok(Fit {
        host,
        free,
        storage: storage.map(|s| s.name.as_str()),
    })
}

/// How good a fit is under `strategy`: higher is better. Ties break by name (lowest first),
/// so the choice is deterministic.
fn score(strategy: AllocatorStrategy, fit: &Fit<'_>) -> (i128, i128, i128) {
    let memory = i128::from(fit.free.memory);
    let cpu = i128::from(fit.free.cpu);
    let vms = i128::try_from(fit.host.vms).unwrap_or(i128::MAX);
    match strategy {
        // LastHostPreferred needs a record of the last host, which the API does not keep
        // yet (status.host is cleared when a VM stops): it spreads meanwhile.
        AllocatorStrategy::Spread | AllocatorStrategy::LastHostPreferred => (memory, cpu, 0),
        // The fullest host that still fits: fewest bytes, then fewest CPUs left.
        AllocatorStrategy::Pack => (-memory, -cpu, 0),
        AllocatorStrategy::LeastVmPreferred => (-vms, memory, cpu),
    }
}

/// Where a VM goes: the host and the primary storage for its root volume (`None` while its
/// cluster has none attached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub host: String,
    pub storage: Option<String>,
}

/// Picks the host for `request`, or explains, like kube-scheduler, which filter removed how
/// many hosts ("0/10 hosts are available: 3 Disabled, 7 insufficient memory").
pub(crate) fn pick(request: &Request, hosts: &[Candidate]) -> Result<Choice, String> {
    let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
    let mut best: Option<((i128, i128, i128), Fit<'_>)> = None;
    for host in hosts {
        match filter(request, host) {
            Ok(fit) => {
                let score = score(request.strategy, &fit);
                let better = best.as_ref().is_none_or(|(s, b)| {
                    (score, std::cmp::Reverse(&fit.host.name))
                        > (*s, std::cmp::Reverse(&b.host.name))
                });
                if better {
                    best = Some((score, fit));
                }
            }
            Err(why) => *rejections.entry(why).or_default() += 1,
        }
    }
    if let Some((_, fit)) = best {
        return Ok(Choice {
            host: fit.host.name.clone(),
            storage: fit.storage.map(str::to_string),
        });
    }
    Err(unschedulable(request, hosts, &rejections))
}

fn unschedulable(
    request: &Request,
    hosts: &[Candidate],
    rejections: &BTreeMap<Rejection, usize>,
) -> String {
    let reasons: Vec<String> = rejections
        .iter()
        .map(|(why, n)| format!("{n} {}", why.describe()))
        .collect();
    let mut message = format!("0/{} hosts are available", hosts.len());
    if !reasons.is_empty() {
        message = format!("{message}: {}", reasons.join(", "));
    }
    if let Some(p) = request
        .host
        .as_ref()
        .filter(|p| !hosts.iter().any(|h| h.name == **p))
    {
        message = format!("{message}; requested host {p} does not exist");
    }
    if rejections.contains_key(&Rejection::L2NotAttached) {
        let wanted: Vec<&str> = request.l2_networks.iter().map(String::as_str).collect();
        message = format!(
            "{message}; the VM's NICs need L2 networks {}",
            wanted.join(", ")
        );
    }
    message
}

/// What of a host can make room for a VM waiting for one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Room {
    /// Enabled and Connected.
    pub usable: bool,
    pub capacity: Option<Resources>,
    pub reserved: Option<Resources>,
    /// What the host controller last counted as given to instances.
    pub allocated: Option<Resources>,
}

/// The last look at each host, so a host change wakes the VMs waiting for a host only when the
/// host may have gained room (kube-scheduler's queueing hints): hosts filling up change their
/// status on every placement, and waking every waiting VM each time made a burst of creates
/// beyond capacity quadratic.
#[derive(Debug, Default)]
pub(crate) struct RoomHints {
    seen: HashMap<String, Room>,
}

impl RoomHints {
    /// Records `now` for `host`; whether it may fit a VM that did not fit before.
    pub fn gained_room(&mut self, host: &str, now: Room) -> bool {
        let Some(before) = self.seen.insert(host.to_string(), now) else {
            return now.usable;
        };
        let more = |a: Option<Resources>, b: Option<Resources>| {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            a.cpu > b.cpu || a.memory > b.memory
        };
        now.usable
            && (!before.usable
                || more(now.capacity, before.capacity)
                || more(before.allocated, now.allocated)
                || more(before.reserved, now.reserved))
    }
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

/// What a host has given away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub used: Resources,
    pub vms: usize,
}

impl Usage {
    fn add(&mut self, size: Resources) {
        self.used = self.used.plus(size);
        self.vms += 1;
    }
}

impl Assumed {
    pub fn assume(&mut self, vm: String, placement: Placement) {
        self.placements.insert(vm, placement);
    }

    pub fn forget(&mut self, vm: &str) {
        self.placements.remove(vm);
    }

    /// The host `vm` was assumed onto, until the cache confirms it or it is forgotten.
    pub fn host_of(&self, vm: &str) -> Option<String> {
        self.placements.get(vm).map(|p| p.host.clone())
    }

    /// What each host has given away: the `instances` the cache shows (as `(vm, host, size)`),
    /// plus assumed placements the cache does not show yet, plus placements `recorded` in VM
    /// statuses (`status.host`) of VMs that have neither. Assumptions the cache confirms are
    /// dropped, since from then on the instance itself counts.
    ///
    /// The recorded ones matter after a restart: a VM placed by the previous process whose
    /// instance was not written yet holds its slot, even before this process reconciles it.
    pub fn usage<'a>(
        &mut self,
        instances: impl IntoIterator<Item = (String, &'a str, Resources)>,
        recorded: impl IntoIterator<Item = (String, &'a str, Resources)>,
    ) -> HashMap<String, Usage> {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let mut counted: HashSet<String> = HashSet::new();
        for (vm, host, size) in instances {
            if self.placements.get(&vm).is_some_and(|p| p.host == host) {
                self.placements.remove(&vm);
            }
            usage.entry(host.to_string()).or_default().add(size);
            counted.insert(vm);
        }
        for (vm, placement) in &self.placements {
            usage
                .entry(placement.host.clone())
                .or_default()
                .add(placement.request);
            counted.insert(vm.clone());
        }
        for (vm, host, size) in recorded {
            if !counted.contains(&vm) {
                usage.entry(host.to_string()).or_default().add(size);
            }
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

    fn cluster() -> ClusterFacts {
        ClusterFacts {
            zone: "zone-1".into(),
            enabled: true,
            zone_enabled: true,
            l2_networks: ["l2-a".to_string()].into(),
            storages: vec![Storage {
                name: "ps".into(),
                enabled: true,
                available: None,
            }],
        }
    }

    fn host(name: &str, allocatable: Resources, used: Resources) -> Candidate {
        Candidate {
            name: name.into(),
            cluster_name: "cluster-1".into(),
            cluster: Some(cluster()),
            ready: true,
            admin: HostAdmin::Enabled,
            allocatable: Some(allocatable),
            used,
            vms: 0,
        }
    }

    fn request(size: Resources) -> Request {
        Request {
            size,
            l2_networks: ["l2-a".to_string()].into(),
            ..Request::default()
        }
    }

    fn pick_host(request: &Request, hosts: &[Candidate]) -> Result<String, String> {
        pick(request, hosts).map(|c| c.host)
    }

    #[test]
    fn allocatable_subtracts_the_reservation_then_applies_the_ratios() {
        assert_eq!(allocatable(res(8, 16), res(2, 4), 10.0, 1.0), res(60, 12));
        assert_eq!(
            allocatable(res(4, 4), res(0, 0), 1.5, 1.5),
            Resources {
                cpu: 6,
                memory: 6 * GI
            }
        );
        assert_eq!(
            allocatable(res(2, 1), res(4, 2), 10.0, 1.0),
            res(0, 0),
            "a reservation larger than the host leaves nothing"
        );
        assert_eq!(
            allocatable(res(4, 4), res(0, 0), 0.5, 0.1),
            res(4, 4),
            "ratios never shrink a host"
        );
        // 3 logical CPUs at 1.5 is 4.5 vCPUs: a half vCPU cannot be given away.
        assert_eq!(allocatable(res(3, 1), res(0, 0), 1.5, 1.0).cpu, 4);
    }

    #[test]
    fn spread_picks_the_host_with_the_most_free_memory() {
        let hosts = [
            host("a", res(8, 8), res(0, 6)),
            host("b", res(8, 8), res(0, 2)),
            host("c", res(8, 8), res(0, 4)),
        ];
        assert_eq!(pick_host(&request(res(1, 1)), &hosts), Ok("b".into()));
    }

    #[test]
    fn pack_picks_the_fullest_host_that_still_fits() {
        let hosts = [
            host("a", res(8, 8), res(0, 6)),
            host("b", res(8, 8), res(0, 2)),
            host("c", res(8, 8), res(0, 8)),
        ];
        let mut r = request(res(1, 1));
        r.strategy = AllocatorStrategy::Pack;
        assert_eq!(pick_host(&r, &hosts), Ok("a".into()), "c is full");
        r.size = res(1, 3);
        assert_eq!(pick_host(&r, &hosts), Ok("b".into()), "a has 2Gi left");
    }

    #[test]
    fn least_vm_preferred_picks_the_host_running_the_fewest_vms() {
        let mut busy = host("a", res(8, 8), res(0, 0));
        busy.vms = 3;
        let mut quiet = host("b", res(8, 8), res(0, 6));
        quiet.vms = 1;
        let mut r = request(res(1, 1));
        r.strategy = AllocatorStrategy::LeastVmPreferred;
        assert_eq!(pick_host(&r, &[busy, quiet]), Ok("b".into()));
    }

    #[test]
    fn ties_break_by_name() {
        let hosts = [
            host("b", res(4, 4), res(0, 0)),
            host("a", res(4, 4), res(0, 0)),
        ];
        assert_eq!(pick_host(&request(res(1, 1)), &hosts), Ok("a".into()));
        let mut r = request(res(1, 1));
        r.strategy = AllocatorStrategy::Pack;
        assert_eq!(pick_host(&r, &hosts), Ok("a".into()));
    }

    #[test]
    fn a_full_cluster_explains_why_nothing_fits() {
        let hosts = [
            host("a", res(8, 4), res(0, 0)),
            host("b", res(8, 4), res(0, 0)),
            host("c", res(8, 4), res(0, 0)),
        ];
        assert_eq!(
            pick_host(&request(res(1, 16)), &hosts),
            Err("0/3 hosts are available: 3 insufficient memory".into())
        );
        assert_eq!(
            pick_host(&request(res(9, 1)), &hosts),
            Err("0/3 hosts are available: 3 insufficient cpu".into())
        );
        assert_eq!(
            pick_host(&request(res(1, 1)), &[]),
            Err("0/0 hosts are available".into())
        );
    }

    #[test]
    fn capacity_is_exact_at_the_boundary() {
        let hosts = [host("a", res(4, 4), res(3, 3))];
        assert_eq!(pick_host(&request(res(1, 1)), &hosts), Ok("a".into()));
        assert_eq!(
            pick_host(&request(res(1, 2)), &hosts),
            Err("0/1 hosts are available: 1 insufficient memory".into())
        );
        assert_eq!(
            pick_host(&request(res(2, 1)), &hosts),
            Err("0/1 hosts are available: 1 insufficient cpu".into())
        );
    }

    #[test]
    fn host_state_filter_counts_each_reason() {
        let mut down = host("down", res(8, 8), res(0, 0));
        down.ready = false;
        let mut off = host("off", res(8, 8), res(0, 0));
        off.admin = HostAdmin::Disabled;
        let mut off2 = off.clone();
        off2.name = "off2".into();
        let mut serviced = host("serviced", res(8, 8), res(0, 0));
        serviced.admin = HostAdmin::Maintenance;
        let mut new = host("new", res(8, 8), res(0, 0));
        new.allocatable = None;
        let hosts = [down, off, off2, serviced, new];
        assert_eq!(
            pick_host(&request(res(1, 1)), &hosts),
            Err(
                "0/5 hosts are available: 2 Disabled, 1 in Maintenance, 1 not Connected, \
                 1 capacity not reported"
                    .into()
            )
        );
    }

    #[test]
    fn a_disabled_or_missing_cluster_or_zone_takes_no_vms() {
        let mut disabled = host("a", res(8, 8), res(0, 0));
        disabled.cluster.as_mut().unwrap().enabled = false;
        let mut zone_off = host("b", res(8, 8), res(0, 0));
        zone_off.cluster.as_mut().unwrap().zone_enabled = false;
        let mut orphan = host("c", res(8, 8), res(0, 0));
        orphan.cluster = None;
        let hosts = [disabled, zone_off, orphan];
        assert_eq!(
            pick_host(&request(res(1, 1)), &hosts),
            Err(
                "0/3 hosts are available: 1 cluster not found, 1 cluster Disabled, \
                 1 zone Disabled"
                    .into()
            )
        );
        let mut all = hosts.to_vec();
        all.push(host("d", res(8, 8), res(0, 0)));
        assert_eq!(pick_host(&request(res(1, 1)), &all), Ok("d".into()));
    }

    #[test]
    fn a_migration_never_picks_its_source() {
        let hosts = [
            host("a", res(8, 8), res(0, 0)),
            host("b", res(8, 8), res(0, 6)),
        ];
        let mut r = request(res(1, 1));
        r.avoid = Some("a".into());
        assert_eq!(pick_host(&r, &hosts), Ok("b".into()), "despite spread");
        r.size = res(1, 4);
        assert_eq!(
            pick_host(&r, &hosts),
            Err("0/2 hosts are available: 1 the host the VM leaves, 1 insufficient memory".into())
        );
    }

    #[test]
    fn pinning_to_a_host_cluster_or_zone() {
        let mut other = host("b", res(8, 8), res(0, 6));
        other.cluster_name = "cluster-2".into();
        other.cluster.as_mut().unwrap().zone = "zone-2".into();
        let hosts = [host("a", res(8, 8), res(0, 0)), other];

        let mut r = request(res(1, 1));
        r.host = Some("b".into());
        assert_eq!(pick_host(&r, &hosts), Ok("b".into()));
        r.size = res(1, 4);
        assert_eq!(
            pick_host(&r, &hosts),
            Err("0/2 hosts are available: 1 not the requested host, 1 insufficient memory".into())
        );
        r.host = Some("z".into());
        assert_eq!(
            pick_host(&r, &hosts),
            Err(
                "0/2 hosts are available: 2 not the requested host; requested host z does not \
                 exist"
                    .into()
            )
        );

        let mut r = request(res(1, 1));
        r.cluster = Some("cluster-2".into());
        assert_eq!(pick_host(&r, &hosts), Ok("b".into()), "despite spread");
        let mut r = request(res(1, 1));
        r.zone = Some("zone-2".into());
        assert_eq!(pick_host(&r, &hosts), Ok("b".into()));
        r.cluster = Some("cluster-1".into());
        assert_eq!(
            pick_host(&r, &hosts),
            Err("0/2 hosts are available: 1 not in the requested cluster, \
                 1 not in the requested zone"
                .into()),
            "constraints that disagree leave nothing"
        );
    }

    #[test]
    fn every_nic_l2_must_be_attached_to_the_cluster() {
        let mut wired = host("wired", res(8, 8), res(0, 6));
        wired
            .cluster
            .as_mut()
            .unwrap()
            .l2_networks
            .insert("l2-b".into());
        let hosts = [host("a", res(8, 8), res(0, 0)), wired];
        let mut r = request(res(1, 1));
        r.l2_networks.insert("l2-b".into());
        assert_eq!(pick_host(&r, &hosts), Ok("wired".into()));
        r.l2_networks.insert("l2-c".into());
        assert_eq!(
            pick_host(&r, &hosts),
            Err(
                "0/2 hosts are available: 2 L2 network not attached to the cluster; the VM's \
                 NICs need L2 networks l2-a, l2-b, l2-c"
                    .into()
            )
        );
        // A VM without NICs needs no L2.
        assert_eq!(
            pick_host(&Request::default(), &hosts).map(|_| ()),
            Ok(()),
            "no NIC, no L2 constraint"
        );
    }

    #[test]
    fn the_root_volume_needs_an_enabled_primary_storage_with_room() {
        let storage = |name: &str, enabled, available: Option<u64>| Storage {
            name: name.into(),
            enabled,
            available: available.map(|g| g * GI),
        };
        let with = |name: &str, storages: Vec<Storage>| {
            let mut h = host(name, res(8, 8), res(0, 0));
            h.cluster.as_mut().unwrap().storages = storages;
            h
        };
        let mut r = request(res(1, 1));
        r.root_disk = Some(10 * GI);
        let hosts = [
            with("off", vec![storage("ps-off", false, Some(100))]),
            with(
                "off2",
                vec![
                    storage("ps-off", false, None),
                    storage("ps-gone", false, None),
                ],
            ),
            with("full", vec![storage("ps-full", true, Some(9))]),
        ];
        assert_eq!(
            pick_host(&r, &hosts),
            Err("0/3 hosts are available: 2 no enabled primary storage, \
                 1 insufficient primary storage"
                .into())
        );
        // Transitional: a cluster with no storage attached is not refused, and no storage is
        // chosen.
        let bare = with("bare", vec![]);
        assert_eq!(pick(&r, &[bare]).map(|c| c.storage), Ok(None));
        // Exactly enough is enough; the roomiest storage is chosen; unreported storage is
        // taken only when nothing reported has room.
        let roomy = with(
            "roomy",
            vec![
                storage("ps-unknown", true, None),
                storage("ps-10", true, Some(10)),
                storage("ps-50", true, Some(50)),
            ],
        );
        assert_eq!(
            pick(&r, &[roomy]).map(|c| c.storage),
            Ok(Some("ps-50".into()))
        );
        let unknown = with(
            "unknown",
            vec![
                storage("ps-full", true, Some(1)),
                storage("ps-new", true, None),
            ],
        );
        assert_eq!(
            pick(&r, &[unknown]).map(|c| c.storage),
            Ok(Some("ps-new".into()))
        );
        // A VM whose root disk size is not known yet still needs an enabled storage.
        r.root_disk = None;
        assert_eq!(
            pick(&r, &hosts[2..]).map(|c| c.storage),
            Ok(Some("ps-full".into()))
        );
        assert!(pick(&r, &hosts[..2]).is_err());
    }

    #[test]
    fn a_host_wakes_waiting_vms_only_when_it_may_have_gained_room() {
        let room = |usable, capacity: (i64, u64), allocated: (i64, u64)| Room {
            usable,
            capacity: Some(res(capacity.0, capacity.1)),
            reserved: None,
            allocated: Some(res(allocated.0, allocated.1)),
        };
        let mut hints = RoomHints::default();
        assert!(
            !hints.gained_room("a", room(false, (8, 8), (0, 0))),
            "not usable yet"
        );
        assert!(
            hints.gained_room("a", room(true, (8, 8), (0, 0))),
            "connected"
        );
        assert!(
            !hints.gained_room("a", room(true, (8, 8), (1, 1))),
            "filling up"
        );
        assert!(
            !hints.gained_room("a", room(true, (8, 8), (1, 1))),
            "unchanged"
        );
        assert!(
            hints.gained_room("a", room(true, (8, 8), (0, 1))),
            "a VM left"
        );
        assert!(hints.gained_room("a", room(true, (8, 16), (0, 1))), "grew");
        assert!(
            !hints.gained_room("a", room(false, (8, 16), (0, 0))),
            "disabled"
        );
        assert!(
            hints.gained_room("a", room(true, (8, 16), (0, 0))),
            "enabled again"
        );
        let mut reserved = room(true, (8, 16), (0, 0));
        reserved.reserved = Some(res(1, 1));
        assert!(!hints.gained_room("a", reserved), "reserved more");
        reserved.reserved = None;
        assert!(hints.gained_room("a", reserved), "reserved less");
        assert!(
            hints.gained_room("b", room(true, (1, 1), (1, 1))),
            "a new host"
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
        assert_eq!(assumed.host_of("ns/vm1").as_deref(), Some("a"));
        // The cache does not show vm1 yet: the assumption alone reserves its share.
        let usage = assumed.usage([("ns/vm0".to_string(), "a", res(1, 1))], []);
        assert_eq!(
            usage.get("a"),
            Some(&Usage {
                used: res(2, 3),
                vms: 2
            })
        );

        // Once the cache shows vm1 on a, it counts once, and the assumption is dropped.
        let shown = [
            ("ns/vm0".to_string(), "a", res(1, 1)),
            ("ns/vm1".to_string(), "a", res(1, 2)),
        ];
        assert_eq!(assumed.usage(shown.clone(), [])["a"].used, res(2, 3));
        assert!(assumed.placements.is_empty());
        assert_eq!(assumed.host_of("ns/vm1"), None);
        assert_eq!(assumed.usage(shown, [])["a"].used, res(2, 3));
    }

    #[test]
    fn placements_recorded_in_vm_status_count_after_a_restart() {
        // A fresh process: nothing assumed; vm1 is placed on a (status.host) without an
        // instance yet, vm0 runs on a, vm2's instance already shows it on b.
        let mut assumed = Assumed::default();
        let instances = [
            ("ns/vm0".to_string(), "a", res(1, 1)),
            ("ns/vm2".to_string(), "b", res(1, 1)),
        ];
        let recorded = [
            ("ns/vm0".to_string(), "a", res(1, 1)),
            ("ns/vm1".to_string(), "a", res(2, 2)),
            ("ns/vm2".to_string(), "b", res(1, 1)),
        ];
        let usage = assumed.usage(instances.clone(), recorded.clone());
        assert_eq!(usage["a"].used, res(3, 3), "vm0 once, vm1 from its status");
        assert_eq!(usage["b"].used, res(1, 1), "vm2 once");
        // Once this process assumes vm1 elsewhere (rescheduled after a halt), that counts.
        assumed.assume(
            "ns/vm1".into(),
            Placement {
                host: "b".into(),
                request: res(2, 2),
            },
        );
        let usage = assumed.usage(instances, recorded);
        assert_eq!(usage["a"].used, res(1, 1));
        assert_eq!(usage["b"].used, res(3, 3));
    }

    #[test]
    fn two_vms_never_share_the_last_slot() {
        let mut assumed = Assumed::default();
        let schedule = |assumed: &mut Assumed, vm: &str| {
            let usage = assumed.usage([], []);
            let hosts = [host(
                "a",
                res(4, 4),
                usage.get("a").map(|u| u.used).unwrap_or_default(),
            )];
            let picked = pick_host(&request(res(1, 3)), &hosts)?;
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
        let usage = assumed.usage([("ns/vm".to_string(), "a", res(1, 1))], []);
        assert_eq!(usage["a"].used, res(1, 1));
        assert_eq!(usage["b"].used, res(1, 1));
    }
}
