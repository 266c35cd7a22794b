//! The node agent's Prometheus metrics, labelled by host so that one registry serves every agent
//! of a process (`strata up` runs several).
//!
//! Hypervisor calls are timed by a driver wrapper ([`Metrics::driver`]), so every operation of
//! the [`Hypervisor`] trait is measured at the boundary. VMs by state, host capacity and
//! allocation are read at scrape time from the agent's own watch cache of the instances placed
//! on its host (a collector), so they cannot drift from what the agent sees.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use futures::future::BoxFuture;
use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use strata_apis::{quantity, HostCapacity, VirtualMachineInstance, VmiPhase};

use crate::driver::{Domain, DriverError, Hypervisor, Observed};

/// Hypervisor operation buckets, seconds (a simulated call takes microseconds; a libvirt
/// define+start under TCG seconds).
const OPERATION_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Phases always reported (as 0 when empty), so dashboards have every series from the start.
const PHASES: [VmiPhase; 5] = [
    VmiPhase::Pending,
    VmiPhase::Starting,
    VmiPhase::Running,
    VmiPhase::Stopped,
    VmiPhase::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    host: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    host: String,
    phase: String,
}

/// Every agent metric. [`Metrics::default`] is unregistered; [`Metrics::register`] makes one
/// that a registry exposes.
#[derive(Debug)]
pub struct Metrics {
    operations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    lease_renewals: Family<HostLabels, Counter>,
    lease_failures: Family<HostLabels, Counter>,
    hosts: Arc<Mutex<BTreeMap<String, HostView>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            operations: Family::new_with_constructor(|| Histogram::new(OPERATION_BUCKETS)),
            lease_renewals: Family::default(),
            lease_failures: Family::default(),
            hosts: Arc::default(),
        }
    }
}

/// What the collector reads of one host.
#[derive(Clone)]
struct HostView {
    capacity: HostCapacity,
    instances: Option<Store<VirtualMachineInstance>>,
}

impl std::fmt::Debug for HostView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostView")
            .field("capacity", &self.capacity)
            .field("watching", &self.instances.is_some())
            .finish()
    }
}

impl Metrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        registry.register_with_unit(
            "strata_agent_hypervisor_operation_duration",
            "Latency of hypervisor driver calls, by host and operation",
            Unit::Seconds,
            m.operations.clone(),
        );
        registry.register(
            "strata_agent_lease_renewals",
            "Host Lease renewals that succeeded, by host",
            m.lease_renewals.clone(),
        );
        registry.register(
            "strata_agent_lease_renewal_failures",
            "Host Lease renewals that failed, by host",
            m.lease_failures.clone(),
        );
        registry.register_collector(Box::new(Hosts(m.hosts.clone())));
        Arc::new(m)
    }

    /// Reports `host`'s capacity from now on.
    pub(crate) fn add_host(&self, host: &str, capacity: &HostCapacity) {
        let labels = HostLabels {
            host: host.to_string(),
        };
        let _ = self.lease_renewals.get_or_create(&labels);
        let _ = self.lease_failures.get_or_create(&labels);
        self.lock().insert(
            host.to_string(),
            HostView {
                capacity: capacity.clone(),
                instances: None,
            },
        );
    }

    /// Counts the instances in `store` as `host`'s.
    pub(crate) fn watch_instances(&self, host: &str, store: Store<VirtualMachineInstance>) {
        if let Some(view) = self.lock().get_mut(host) {
            view.instances = Some(store);
        }
    }

    pub(crate) fn lease_renewal<T, E>(&self, host: &str, result: &Result<T, E>) {
        let labels = HostLabels {
            host: host.to_string(),
        };
        match result {
            Ok(_) => self.lease_renewals.get_or_create(&labels).inc(),
            Err(_) => self.lease_failures.get_or_create(&labels).inc(),
        };
    }

    /// `driver`, with each call timed under `host`.
    pub(crate) fn driver(
        self: &Arc<Self>,
        host: &str,
        driver: Arc<dyn Hypervisor>,
    ) -> Arc<dyn Hypervisor> {
        for operation in ["ensure", "state", "reboot", "destroy", "owned_domains"] {
            let _ = self.operations.get_or_create(&OperationLabels {
                host: host.to_string(),
                operation,
            });
        }
        Arc::new(TimedDriver {
            inner: driver,
            host: host.to_string(),
            metrics: self.clone(),
        })
    }

    async fn time<T>(
        &self,
        host: &str,
        operation: &'static str,
        call: impl Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let result = call.await;
        self.operations
            .get_or_create(&OperationLabels {
                host: host.to_string(),
                operation,
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HostView>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`Hypervisor`] that times every call of the one it wraps. A new trait method needs a line
/// here: delegate it through `time` with the operation's name.
struct TimedDriver {
    inner: Arc<dyn Hypervisor>,
    host: String,
    metrics: Arc<Metrics>,
}

impl Hypervisor for TimedDriver {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn ensure<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Observed, DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "ensure", self.inner.ensure(domain)),
        )
    }

    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Observed>, DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "state", self.inner.state(name)),
        )
    }

    fn reboot<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "reboot", self.inner.reboot(name)),
        )
    }

    fn power_off<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "power_off", self.inner.power_off(name)),
        )
    }

    fn migrate<'a>(
        &'a self,
        name: &'a str,
        target: &'a crate::driver::MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.metrics.time(
            &self.host,
            "migrate",
            self.inner.migrate(name, target, progress),
        ))
    }

    fn prepare_incoming<'a>(
        &'a self,
        domain: &'a Domain,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.metrics.time(
            &self.host,
            "prepare_incoming",
            self.inner.prepare_incoming(domain),
        ))
    }

    fn owned_domains(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "owned_domains", self.inner.owned_domains()),
        )
    }

    fn events(&self) -> futures::stream::BoxStream<'static, String> {
        self.inner.events()
    }

    fn delete_volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.metrics.time(
            &self.host,
            "delete_volume",
            self.inner.delete_volume(volume),
        ))
    }

    fn revert_disk<'a>(
        &'a self,
        name: &'a str,
        volume: &'a str,
        snapshot: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.metrics.time(
            &self.host,
            "revert_disk",
            self.inner.revert_disk(name, volume, snapshot),
        ))
    }

    fn disks<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::driver::AttachedDisk>, DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "disks", self.inner.disks(name)),
        )
    }

    fn console_tail(&self, name: &str) -> Option<String> {
        self.inner.console_tail(name)
    }

    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(
            self.metrics
                .time(&self.host, "destroy", self.inner.destroy(name)),
        )
    }
}

/// Per-host gauges computed at scrape time.
struct Hosts(Arc<Mutex<BTreeMap<String, HostView>>>);

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts").finish_non_exhaustive()
    }
}

/// One host's numbers.
#[derive(Debug, Default, PartialEq, Eq)]
struct Usage {
    capacity_cpu: i64,
    capacity_memory: i64,
    allocated_cpu: i64,
    allocated_memory: i64,
    /// Instances by phase name.
    phases: BTreeMap<String, i64>,
}

fn usage<'a>(
    capacity: &HostCapacity,
    instances: impl Iterator<Item = &'a VirtualMachineInstance>,
) -> Usage {
    let bytes = |q| i64::try_from(quantity::parse_quantity(q).unwrap_or(0)).unwrap_or(i64::MAX);
    let mut u = Usage {
        capacity_cpu: capacity.cpu,
        capacity_memory: bytes(&capacity.memory),
        phases: PHASES.iter().map(|p| (format!("{p:?}"), 0)).collect(),
        ..Usage::default()
    };
    for vmi in instances {
        u.allocated_cpu = u.allocated_cpu.saturating_add(vmi.spec.cpu);
        u.allocated_memory = u.allocated_memory.saturating_add(bytes(&vmi.spec.memory));
        let phase = vmi.status.as_ref().map(|s| s.phase).unwrap_or_default();
        *u.phases.entry(format!("{phase:?}")).or_default() += 1;
    }
    u
}

impl Collector for Hosts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let hosts: Vec<(String, HostView)> = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(h, v)| (h.clone(), v.clone()))
            .collect();
        let vms: Family<PhaseLabels, Gauge> = Family::default();
        let usages: Vec<(String, Usage)> = hosts
            .into_iter()
            .map(|(host, view)| {
                let state = view
                    .instances
                    .as_ref()
                    .map(Store::state)
                    .unwrap_or_default();
                let u = usage(&view.capacity, state.iter().map(Arc::as_ref));
                for (phase, count) in &u.phases {
                    vms.get_or_create(&PhaseLabels {
                        host: host.clone(),
                        phase: phase.clone(),
                    })
                    .set(*count);
                }
                (host, u)
            })
            .collect();
        let descriptor = encoder.encode_descriptor(
            "strata_agent_vms",
            "Instances placed on the host, by the phase the agent last reported",
            None,
            vms.metric_type(),
        )?;
        vms.encode(descriptor)?;
        let per_host: [HostGauge; 4] = [
            (
                "strata_agent_host_capacity_cpu",
                "Logical CPUs the host offers",
                None,
                |u| u.capacity_cpu,
            ),
            (
                "strata_agent_host_capacity_memory",
                "Memory the host offers",
                Some(Unit::Bytes),
                |u| u.capacity_memory,
            ),
            (
                "strata_agent_host_allocated_cpu",
                "CPUs of the instances placed on the host",
                None,
                |u| u.allocated_cpu,
            ),
            (
                "strata_agent_host_allocated_memory",
                "Memory of the instances placed on the host",
                Some(Unit::Bytes),
                |u| u.allocated_memory,
            ),
        ];
        for (name, help, unit, value) in per_host {
            let family: Family<HostLabels, Gauge> = Family::default();
            for (host, u) in &usages {
                family
                    .get_or_create(&HostLabels { host: host.clone() })
                    .set(value(u));
            }
            let descriptor =
                encoder.encode_descriptor(name, help, unit.as_ref(), family.metric_type())?;
            family.encode(descriptor)?;
        }
        Ok(())
    }
}

/// Name, help, unit and value of a per-host gauge.
type HostGauge = (&'static str, &'static str, Option<Unit>, fn(&Usage) -> i64);

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use strata_apis::VirtualMachineInstanceStatus;

    use super::*;
    use crate::SimDriver;

    fn capacity() -> HostCapacity {
        HostCapacity {
            cpu: 8,
            memory: Quantity("16Gi".into()),
        }
    }

    fn vmi(cpu: i64, memory: &str, phase: Option<VmiPhase>) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("a", Default::default());
        vmi.spec.cpu = cpu;
        vmi.spec.memory = Quantity(memory.into());
        vmi.status = phase.map(|phase| VirtualMachineInstanceStatus {
            phase,
            ..Default::default()
        });
        vmi
    }

    #[test]
    fn usage_sums_instances_and_counts_phases() {
        let instances = [
            vmi(2, "1Gi", Some(VmiPhase::Running)),
            vmi(1, "512Mi", None),
        ];
        let u = usage(&capacity(), instances.iter());
        assert_eq!(u.capacity_cpu, 8);
        assert_eq!(u.capacity_memory, 16 << 30);
        assert_eq!(u.allocated_cpu, 3);
        assert_eq!(u.allocated_memory, (1 << 30) + (512 << 20));
        assert_eq!(u.phases["Running"], 1);
        assert_eq!(u.phases["Pending"], 1);
        assert_eq!(u.phases["Failed"], 0);
    }

    #[tokio::test]
    async fn driver_calls_are_timed_and_hosts_reported() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.add_host("h1", &capacity());
        metrics.lease_renewal::<(), ()>("h1", &Ok(()));
        metrics.lease_renewal::<(), ()>("h1", &Err(()));
        let driver = metrics.driver("h1", Arc::new(SimDriver::new(&capacity()).expect("sim")));
        driver.destroy("ns.a").await.expect("destroys");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for expected in [
            r#"strata_agent_hypervisor_operation_duration_seconds_count{host="h1",operation="destroy"} 1"#,
            r#"strata_agent_lease_renewals_total{host="h1"} 1"#,
            r#"strata_agent_lease_renewal_failures_total{host="h1"} 1"#,
            r#"strata_agent_host_capacity_cpu{host="h1"} 8"#,
            r#"strata_agent_host_allocated_cpu{host="h1"} 0"#,
            r#"strata_agent_vms{host="h1",phase="Running"} 0"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
