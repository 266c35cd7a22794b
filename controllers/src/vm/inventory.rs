//! What the scheduler knows about the infrastructure besides hosts: clusters, zones, primary
//! storages and the GlobalConfig, each kept in memory by a watch, and the placements VMs record
//! in their status (from the VM controller's own cache). A change (a cluster
//! disabled, a new overcommit ratio) affects the next placement without a restart.
//!
//! [`candidate`] joins one host with all of that into the pure [`Candidate`] the filters read.

use std::future::Future;

use kube::{
    runtime::reflector::{self, ObjectRef, Store},
    Api, Client, ResourceExt,
};
use strata_apis::{
    globalconfig::GLOBAL_CONFIG_NAME, quantity, AdminState, Cluster, GlobalConfig,
    GlobalConfigSpec, Host, HostAdminState, HostCapacity, HostState, PrimaryStorage,
    PrimaryStorageType, VirtualMachine, Zone,
};

use super::schedule::{
    allocatable, Candidate, ClusterFacts, HostAdmin, Resources, Room, Storage, Usage,
};

/// Caches of the objects placement reads, fed by watches.
#[derive(Clone)]
pub(crate) struct Inventory {
    pub clusters: Store<Cluster>,
    pub zones: Store<Zone>,
    pub storages: Store<PrimaryStorage>,
    pub config: Store<GlobalConfig>,
    /// The VM controller's own cache: `status.host` is the durable record of a placement.
    pub vms: Store<VirtualMachine>,
}

impl Inventory {
    /// The caches, and the future that keeps them filled (run it alongside the controllers).
    pub fn reflect(
        client: &Client,
        vms: Store<VirtualMachine>,
    ) -> (Self, impl Future<Output = ()> + use<>) {
        let (clusters, clusters_w) = reflector::store();
        let (zones, zones_w) = reflector::store();
        let (storages, storages_w) = reflector::store();
        let (config, config_w) = reflector::store();
        let feed = futures::future::join4(
            crate::reflect(Api::<Cluster>::all(client.clone()), clusters_w),
            crate::reflect(Api::<Zone>::all(client.clone()), zones_w),
            crate::reflect(Api::<PrimaryStorage>::all(client.clone()), storages_w),
            crate::reflect(Api::<GlobalConfig>::all(client.clone()), config_w),
        );
        let inventory = Self {
            clusters,
            zones,
            storages,
            config,
            vms,
        };
        (inventory, async move {
            feed.await;
        })
    }

    /// Waits until every cache holds a full list; false if a cache was dropped.
    pub async fn ready(&self) -> bool {
        self.clusters.wait_until_ready().await.is_ok()
            && self.zones.wait_until_ready().await.is_ok()
            && self.storages.wait_until_ready().await.is_ok()
            && self.config.wait_until_ready().await.is_ok()
            && self.vms.wait_until_ready().await.is_ok()
    }

    /// The GlobalConfig's spec, or the defaults while the `default` object does not exist.
    pub fn global(&self) -> GlobalConfigSpec {
        self.config
            .get(&ObjectRef::new(GLOBAL_CONFIG_NAME))
            .map(|g| g.spec.clone())
            .unwrap_or_default()
    }

    /// `host` joined with its cluster, zone, storages and the overcommit settings.
    pub fn candidate(&self, host: &Host, config: &GlobalConfigSpec, usage: Usage) -> Candidate {
        let cluster = self.clusters.get(&ObjectRef::new(&host.spec.cluster));
        let zone = cluster
            .as_ref()
            .and_then(|c| self.zones.get(&ObjectRef::new(&c.spec.zone)));
        candidate(
            host,
            cluster.as_deref(),
            zone.as_deref(),
            |name| {
                self.storages
                    .get(&ObjectRef::new(name))
                    .map(|s| (*s).clone())
            },
            config,
            usage,
        )
    }
}

/// What of `host` can make room for a waiting VM (see [`RoomHints`]).
///
/// [`RoomHints`]: super::schedule::RoomHints
pub(crate) fn room(host: &Host) -> Room {
    let resources = |c: &HostCapacity| {
        Some(Resources {
            cpu: c.cpu,
            memory: quantity::parse_quantity(&c.memory).ok()?,
        })
    };
    let status = host.status.as_ref();
    Room {
        usable: host.spec.admin_state == HostAdminState::Enabled
            && status.is_some_and(|s| s.state == Some(HostState::Connected)),
        capacity: status.and_then(|s| s.capacity.as_ref()).and_then(resources),
        reserved: host.spec.reserved.as_ref().and_then(resources),
        allocated: status
            .and_then(|s| s.allocated.as_ref())
            .and_then(resources),
    }
}

/// Pure join of a host with what placement needs to know about it.
pub(crate) fn candidate(
    host: &Host,
    cluster: Option<&Cluster>,
    zone: Option<&Zone>,
    storage: impl Fn(&str) -> Option<PrimaryStorage>,
    config: &GlobalConfigSpec,
    usage: Usage,
) -> Candidate {
    let name = host.name_any();
    let status = host.status.as_ref();
    let capacity = status.and_then(|s| s.capacity.as_ref()).and_then(|c| {
        Some(Resources {
            cpu: c.cpu,
            memory: quantity::parse_quantity(&c.memory).ok()?,
        })
    });
    let global_reserved = Resources {
        cpu: config.host.reserved_cpu,
        memory: quantity::parse_quantity(&config.host.reserved_memory).unwrap_or(0),
    };
    let reserved = host
        .spec
        .reserved
        .as_ref()
        .and_then(|r| {
            Some(Resources {
                cpu: r.cpu,
                memory: quantity::parse_quantity(&r.memory).ok()?,
            })
        })
        .unwrap_or(global_reserved);
    let cpu_ratio = cluster
        .and_then(|c| c.spec.cpu_overcommit_ratio)
        .unwrap_or(config.allocation.cpu_overcommit_ratio);
    let memory_ratio = cluster
        .and_then(|c| c.spec.memory_overcommit_ratio)
        .unwrap_or(config.allocation.memory_overcommit_ratio);
    let cluster = cluster.map(|c| ClusterFacts {
        zone: c.spec.zone.clone(),
        enabled: c.spec.admin_state == AdminState::Enabled,
        zone_enabled: zone.is_none_or(|z| z.spec.admin_state == AdminState::Enabled),
        l2_networks: c.spec.l2_networks.iter().cloned().collect(),
        storages: c
            .spec
            .primary_storages
            .iter()
            .map(|ps| storage_on(ps, storage(ps).as_ref(), &name))
            .collect(),
    });
    Candidate {
        cluster_name: host.spec.cluster.clone(),
        cluster,
        ready: status.is_some_and(|s| s.state == Some(HostState::Connected)),
        admin: match host.spec.admin_state {
            HostAdminState::Enabled => HostAdmin::Enabled,
            HostAdminState::Disabled => HostAdmin::Disabled,
            HostAdminState::Maintenance => HostAdmin::Maintenance,
        },
        allocatable: capacity.map(|c| allocatable(c, reserved, cpu_ratio, memory_ratio)),
        used: usage.used,
        vms: usage.vms,
        name,
    }
}

/// Primary storage `name` as host `host` sees it: LocalStorage by the host's own entry,
/// shared storage by its total free space.
fn storage_on(name: &str, storage: Option<&PrimaryStorage>, host: &str) -> Storage {
    let Some(ps) = storage else {
        return Storage {
            name: name.to_string(),
            enabled: false,
            available: None,
        };
    };
    let status = ps.status.as_ref();
    let available = match ps.spec.storage_type {
        PrimaryStorageType::LocalStorage => status
            .and_then(|s| s.hosts.iter().find(|h| h.host == host))
            .map(|h| &h.available),
        PrimaryStorageType::NFS | PrimaryStorageType::SharedMountPoint => {
            status.and_then(|s| s.available.as_ref())
        }
    };
    Storage {
        name: name.to_string(),
        enabled: ps.spec.admin_state == AdminState::Enabled,
        available: available.and_then(|q| quantity::parse_quantity(q).ok()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use strata_apis::{
        globalconfig::AllocationConfig, primarystorage::HostStorageCapacity, ClusterSpec,
        HostCapacity, HostSpec, HostStatus, PrimaryStorageSpec, PrimaryStorageStatus, ZoneSpec,
    };

    use super::*;

    const GI: u64 = 1 << 30;

    fn host(reserved: Option<(i64, &str)>) -> Host {
        let mut h = Host::new(
            "h1",
            HostSpec {
                cluster: "c1".into(),
                reserved: reserved.map(|(cpu, m)| HostCapacity {
                    cpu,
                    memory: Quantity(m.into()),
                }),
                ..HostSpec::default()
            },
        );
        h.status = Some(HostStatus {
            state: Some(HostState::Connected),
            capacity: Some(HostCapacity {
                cpu: 8,
                memory: Quantity("16Gi".into()),
            }),
            ..HostStatus::default()
        });
        h
    }

    fn cluster(cpu_ratio: Option<f64>, memory_ratio: Option<f64>) -> Cluster {
        Cluster::new(
            "c1",
            ClusterSpec {
                zone: "z1".into(),
                cpu_overcommit_ratio: cpu_ratio,
                memory_overcommit_ratio: memory_ratio,
                l2_networks: vec!["l2".into()],
                primary_storages: vec!["local".into(), "nfs".into(), "gone".into()],
                ..ClusterSpec::default()
            },
        )
    }

    fn storages(name: &str) -> Option<PrimaryStorage> {
        let (storage_type, status) = match name {
            "local" => (
                PrimaryStorageType::LocalStorage,
                PrimaryStorageStatus {
                    available: Some(Quantity("900Gi".into())),
                    hosts: vec![HostStorageCapacity {
                        host: "h1".into(),
                        total: Quantity("100Gi".into()),
                        available: Quantity("40Gi".into()),
                    }],
                    ..PrimaryStorageStatus::default()
                },
            ),
            "nfs" => (
                PrimaryStorageType::NFS,
                PrimaryStorageStatus {
                    available: Some(Quantity("2Ti".into())),
                    ..PrimaryStorageStatus::default()
                },
            ),
            _ => return None,
        };
        let mut ps = PrimaryStorage::new(
            name,
            PrimaryStorageSpec {
                storage_type,
                ..PrimaryStorageSpec::default()
            },
        );
        ps.status = Some(status);
        Some(ps)
    }

    #[test]
    fn overcommit_comes_from_the_cluster_else_the_global_config() {
        let config = GlobalConfigSpec {
            allocation: AllocationConfig {
                cpu_overcommit_ratio: 4.0,
                memory_overcommit_ratio: 1.5,
            },
            ..GlobalConfigSpec::default()
        };
        let c = candidate(
            &host(Some((0, "0"))),
            Some(&cluster(None, None)),
            None,
            storages,
            &config,
            Usage::default(),
        );
        assert_eq!(
            c.allocatable,
            Some(Resources {
                cpu: 32,
                memory: 24 * GI
            })
        );
        let c = candidate(
            &host(Some((0, "0"))),
            Some(&cluster(Some(2.0), Some(1.0))),
            None,
            storages,
            &config,
            Usage::default(),
        );
        assert_eq!(
            c.allocatable,
            Some(Resources {
                cpu: 16,
                memory: 16 * GI
            })
        );
    }

    #[test]
    fn the_host_reservation_wins_over_the_global_one() {
        // Defaults: cpu ratio 10, memory ratio 1, 1Gi reserved per host.
        let config = GlobalConfigSpec::default();
        let c = candidate(
            &host(None),
            Some(&cluster(None, None)),
            None,
            storages,
            &config,
            Usage::default(),
        );
        assert_eq!(
            c.allocatable,
            Some(Resources {
                cpu: 80,
                memory: 15 * GI
            })
        );
        let c = candidate(
            &host(Some((2, "4Gi"))),
            Some(&cluster(None, None)),
            None,
            storages,
            &config,
            Usage::default(),
        );
        assert_eq!(
            c.allocatable,
            Some(Resources {
                cpu: 60,
                memory: 12 * GI
            })
        );
    }

    #[test]
    fn cluster_zone_and_storages_are_joined() {
        let mut off = Zone::new("z1", ZoneSpec::default());
        off.spec.admin_state = AdminState::Disabled;
        let mut disabled = cluster(None, None);
        disabled.spec.admin_state = AdminState::Disabled;
        let used = Usage {
            used: Resources { cpu: 3, memory: GI },
            vms: 2,
        };
        let c = candidate(
            &host(None),
            Some(&disabled),
            Some(&off),
            storages,
            &GlobalConfigSpec::default(),
            used,
        );
        let facts = c.cluster.expect("cluster joined");
        assert!(!facts.enabled && !facts.zone_enabled);
        assert_eq!(facts.zone, "z1");
        assert!(facts.l2_networks.contains("l2"));
        assert_eq!(
            facts.storages,
            vec![
                Storage {
                    name: "local".into(),
                    enabled: true,
                    available: Some(40 * GI),
                },
                Storage {
                    name: "nfs".into(),
                    enabled: true,
                    available: Some(2048 * GI),
                },
                Storage {
                    name: "gone".into(),
                    enabled: false,
                    available: None,
                },
            ],
            "local storage by the host's own entry, shared by the total, missing as disabled"
        );
        assert_eq!((c.used, c.vms), (used.used, 2));
        assert!(c.ready);

        let orphan = candidate(
            &host(None),
            None,
            None,
            storages,
            &GlobalConfigSpec::default(),
            Usage::default(),
        );
        assert_eq!(orphan.cluster, None);
        assert_eq!(orphan.cluster_name, "c1");
    }

    #[test]
    fn a_host_without_reported_capacity_has_nothing_to_give() {
        let mut h = host(None);
        h.status = None;
        let c = candidate(
            &h,
            Some(&cluster(None, None)),
            None,
            storages,
            &GlobalConfigSpec::default(),
            Usage::default(),
        );
        assert_eq!(c.allocatable, None);
        assert!(!c.ready);
    }
}
