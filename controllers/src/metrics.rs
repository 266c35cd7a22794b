//! The controllers' Prometheus metrics. Reconcilers are measured from outside: [`Metrics::instrument`]
//! wraps a reconcile function, so reconcile bodies count nothing by hand.
//!
//! kube-runtime's `Controller` keeps its scheduler queue private, so there is no queue depth;
//! `strata_controller_reconciles_in_flight` (reconciles running now) is the load signal instead.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use k8s_openapi::jiff::Timestamp;
use kube::{runtime::controller::Action, ResourceExt};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use strata_apis::{VirtualMachine, VmPhase};

use crate::Error;

/// Reconcile duration buckets, seconds.
const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// VM create→Running buckets, seconds. creationTimestamp has whole seconds, so the first
/// bucket that means anything is 1 s.
const CREATE_TO_RUNNING_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The categories of [`Error::category`], created at zero for every controller so that an error
/// rate reads 0 rather than "no data". A category missing here still counts once it happens.
const REASONS: [&str; 8] = [
    "get",
    "list",
    "status",
    "ipam",
    "instance",
    "delete",
    "waiting",
    "finalizer",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    reason: &'static str,
}

type BoxedReconcile = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Every controller metric. [`Metrics::default`] is unregistered (nobody reads it);
/// [`Metrics::register`] makes one that a registry exposes.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<ControllerLabels, Gauge>,
    create_to_running: Histogram,
    vms: Mutex<RunningTracker>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(RECONCILE_BUCKETS)),
            in_flight: Family::default(),
            create_to_running: Histogram::new(CREATE_TO_RUNNING_BUCKETS),
            vms: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        registry.register(
            "strata_controller_reconciles",
            "Reconciles finished, by controller",
            m.reconciles.clone(),
        );
        registry.register(
            "strata_controller_reconcile_errors",
            "Reconciles that failed, by controller and reason (the error's category)",
            m.errors.clone(),
        );
        registry.register_with_unit(
            "strata_controller_reconcile_duration",
            "Time one reconcile takes, by controller",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "strata_controller_reconciles_in_flight",
            "Reconciles running now, by controller (kube-runtime does not expose its queue)",
            m.in_flight.clone(),
        );
        registry.register_with_unit(
            "strata_controller_vm_create_to_running",
            "From a VirtualMachine's creationTimestamp to the VM controller first seeing it Running",
            Unit::Seconds,
            m.create_to_running.clone(),
        );
        Arc::new(m)
    }

    /// `reconcile`, measured under `controller`; `inspect` sees each object first.
    pub(crate) fn instrument<K, C, F, Fut>(
        self: &Arc<Self>,
        controller: &'static str,
        inspect: fn(&Self, &K),
        mut reconcile: F,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> BoxedReconcile
    where
        F: FnMut(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let labels = ControllerLabels { controller };
        let _ = self.reconciles.get_or_create(&labels);
        let _ = self.duration.get_or_create(&labels);
        let _ = self.in_flight.get_or_create(&labels);
        for reason in REASONS {
            let _ = self
                .errors
                .get_or_create(&ErrorLabels { controller, reason });
        }
        let metrics = self.clone();
        move |object, ctx| {
            inspect(&metrics, &object);
            let reconciled = reconcile(object, ctx);
            let metrics = metrics.clone();
            Box::pin(async move { metrics.measure(controller, reconciled).await })
        }
    }

    async fn measure(
        &self,
        controller: &'static str,
        reconciled: impl Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let labels = ControllerLabels { controller };
        let in_flight = self.in_flight.get_or_create_owned(&labels);
        in_flight.inc();
        let started = Instant::now();
        let result = reconciled.await;
        in_flight.dec();
        self.duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.reconciles.get_or_create(&labels).inc();
        if let Err(error) = &result {
            self.errors
                .get_or_create(&ErrorLabels {
                    controller,
                    reason: error.category(),
                })
                .inc();
        }
        result
    }

    /// Nothing to look at before a reconcile.
    pub(crate) fn ignore<K>(&self, _: &K) {}

    /// Records create→Running the first time `vm` is seen Running after being seen otherwise.
    pub(crate) fn observe_vm(&self, vm: &VirtualMachine) {
        let Some(uid) = vm.uid() else { return };
        let phase = vm.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let created = vm.creation_timestamp().map(|t| t.0);
        let deleting = vm.metadata.deletion_timestamp.is_some();
        let elapsed = self
            .vms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(uid, phase, deleting, created, Timestamp::now());
        if let Some(seconds) = elapsed {
            self.create_to_running.observe(seconds);
        }
    }
}

/// Which VMs have been seen before reaching Running. A VM first seen already Running (it ran
/// before this controller started) is never measured, so a restart does not record every VM's
/// age; a VM that stops and starts again is measured once.
#[derive(Debug, Default)]
struct RunningTracker {
    /// uid → whether it has reached Running.
    seen: HashMap<String, bool>,
}

impl RunningTracker {
    fn observe(
        &mut self,
        uid: String,
        phase: VmPhase,
        deleting: bool,
        created: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<f64> {
        if deleting {
            self.seen.remove(&uid);
            return None;
        }
        let running = phase == VmPhase::Running;
        let ran = self.seen.entry(uid).or_insert(running);
        if *ran || !running {
            return None;
        }
        *ran = true;
        let created = created?;
        Some(now.duration_since(created).as_secs_f64().max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    #[test]
    fn create_to_running_is_measured_once_per_vm() {
        let mut t = RunningTracker::default();
        let created = Timestamp::UNIX_EPOCH;
        let at = |s| created + SignedDuration::from_secs(s);
        let uid = || "a".to_string();
        assert_eq!(
            t.observe(uid(), VmPhase::Created, false, Some(created), at(1)),
            None
        );
        assert_eq!(
            t.observe(uid(), VmPhase::Starting, false, Some(created), at(2)),
            None
        );
        assert_eq!(
            t.observe(uid(), VmPhase::Running, false, Some(created), at(3)),
            Some(3.0)
        );
        assert_eq!(
            t.observe(uid(), VmPhase::Running, false, Some(created), at(4)),
            None,
            "later reconciles of a running VM"
        );
        t.observe(uid(), VmPhase::Stopped, false, Some(created), at(5));
        assert_eq!(
            t.observe(uid(), VmPhase::Running, false, Some(created), at(6)),
            None,
            "a restart of the VM is not a creation"
        );
        t.observe(uid(), VmPhase::Running, true, Some(created), at(7));
        assert!(t.seen.is_empty(), "deleted VMs are forgotten");
    }

    #[test]
    fn vms_running_before_the_controller_started_are_not_measured() {
        let mut t = RunningTracker::default();
        let created = Timestamp::UNIX_EPOCH;
        let later = created + SignedDuration::from_secs(86_400);
        assert_eq!(
            t.observe("b".into(), VmPhase::Running, false, Some(created), later),
            None
        );
    }

    #[tokio::test]
    async fn reconciles_and_errors_are_counted_by_controller_and_reason() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut ok = metrics.instrument("vm", Metrics::ignore, |_: Arc<()>, _: Arc<()>| async {
            Ok(Action::await_change())
        });
        let mut failing =
            metrics.instrument("host", Metrics::ignore, |_: Arc<()>, _: Arc<()>| async {
                Err(Error::InstanceStillExists { vm: "ns/a".into() })
            });
        ok(Arc::new(()), Arc::new(())).await.expect("ok");
        ok(Arc::new(()), Arc::new(())).await.expect("ok");
        failing(Arc::new(()), Arc::new(())).await.unwrap_err();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"strata_controller_reconciles_total{controller="vm"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"strata_controller_reconcile_errors_total{controller="host",reason="waiting"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"strata_controller_reconciles_in_flight{controller="vm"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"strata_controller_reconcile_duration_seconds_count{controller="vm"} 2"#
            ),
            "{text}"
        );
    }
}
