//! State shared by the controllers: the client, the caches fed by watches, the scheduler's
//! assumed placements and the per-object retry backoff.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
    },
    Client,
};
use strata_apis::{Host, IpAddress, VirtualMachine, VirtualMachineInstance};

use tracing::{debug, warn};

use crate::{
    cache::Caches,
    vm::{inventory::Inventory, schedule::Assumed},
    ControllerOptions, Error,
};

/// Long enough for the watch to deliver the write that beat us, short enough not to stall.
/// The first retry after a lost concurrency race; it doubles up to [`STALE_WRITE_MAX`].
const STALE_WRITE_RETRY: Duration = Duration::from_millis(200);
const STALE_WRITE_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub opts: ControllerOptions,
    pub hosts: Store<Host>,
    pub vmis: Store<VirtualMachineInstance>,
    pub leases: Store<Lease>,
    pub ips: Store<IpAddress>,
    /// Clusters, zones, primary storages and the GlobalConfig, for placement.
    pub inventory: Inventory,
    /// Offerings, images and networks, for resolving references.
    pub caches: Caches,
    /// The VMs as this process last wrote them, for reconciles the cache has not caught up with.
    pub written_vms: Written<VirtualMachine>,
    assumed: Mutex<Assumed>,
    /// Consecutive failures per `Kind/key`, counted apart for lost races (`true`) and others.
    failures: Mutex<HashMap<(String, bool), u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        opts: ControllerOptions,
        hosts: Store<Host>,
        vmis: Store<VirtualMachineInstance>,
        leases: Store<Lease>,
        ips: Store<IpAddress>,
        inventory: Inventory,
    ) -> Self {
        let reporter = Reporter {
            controller: "strata-controllers".into(),
            instance: None,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            opts,
            hosts,
            vmis,
            leases,
            ips,
            inventory,
            caches: Caches::default(),
            written_vms: Written::default(),
            assumed: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Looks references up in `caches` (see [`Caches::reflect`]) rather than asking the API.
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = caches;
        self
    }

    /// The scheduler's placements. Held across a whole scheduling decision, so two VMs are
    /// never both given the last free slot of a host.
    pub fn assumed(&self) -> MutexGuard<'_, Assumed> {
        // Every update is a single map operation, so a panicked holder leaves it consistent.
        self.assumed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs a failed reconcile of the `kind` object `key` (`name` or `namespace/name`) and
    /// returns how long to wait before the next. Lost concurrency races are retried soon (the
    /// newer state they lost to is on its way through the watch), but not in a tight loop:
    /// their delay doubles from 200 ms up to 5 s, as a cache minutes behind under load made a
    /// 200 ms retry a storm of failed writes. Other failures back off from 1 s to 5 min.
    pub fn failed(&self, kind: &str, key: &str, error: &Error) -> Duration {
        let object = format!("{kind}/{key}");
        let stale = error.is_stale_write();
        if stale {
            debug!(%object, category = error.category(), error = %chain(error), "stale write, retrying");
        } else {
            warn!(%object, category = error.category(), error = %chain(error), "reconcile failed");
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry((object, stale)).or_default();
        *count = count.saturating_add(1);
        if stale {
            stale_retry(*count)
        } else {
            backoff(*count)
        }
    }

    /// Merge-patches the status of the cluster-scoped object `name` of kind `K` (`kind` names
    /// it in errors).
    pub async fn patch_cluster_status<K, S>(
        &self,
        kind: &'static str,
        name: &str,
        status: &S,
    ) -> Result<(), Error>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let api = kube::Api::<K>::all(self.client.clone());
        merge_status(&api, kind, name, name.to_string(), status).await
    }

    /// Forgets the failures of the `kind` object `key` after a successful reconcile.
    pub fn succeeded(&self, kind: &str, key: &str) {
        let object = format!("{kind}/{key}");
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.remove(&(object.clone(), true));
        failures.remove(&(object, false));
    }
}

/// Merge-patches `status` onto the object `name` of `api`; `key` names it in errors (with its
/// namespace, for namespaced kinds).
pub(crate) async fn merge_status<K, S>(
    api: &kube::Api<K>,
    kind: &'static str,
    name: &str,
    key: String,
    status: &S,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    patched_status(api, kind, name, key, status).await.map(drop)
}

/// [`merge_status`], returning the object as stored after the patch.
pub(crate) async fn patched_status<K, S>(
    api: &kube::Api<K>,
    kind: &'static str,
    name: &str,
    key: String,
    status: &S,
) -> Result<K, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        kind,
        name: key,
        source,
    })
}

/// Objects as this process last wrote them, by key, until the watch-fed cache shows them. A
/// reconcile woken by some other object's event otherwise starts from a copy older than its
/// own last write, recomputes the status from it, writes it again (with new transition times,
/// which wakes the object once more) and publishes the same Events again: under a burst of
/// 1,000 creates that was ~15 status writes and ~30 Events per VM instead of ~4 and 3.
pub(crate) struct Written<K>(Mutex<HashMap<String, Arc<K>>>);

impl<K> Default for Written<K> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: kube::Resource> Written<K> {
    /// Remembers `object` as written under `key`.
    pub fn record(&self, key: String, object: K) {
        self.lock().insert(key, Arc::new(object));
    }

    /// `cached`, or the copy written under `key` if it is newer (a higher resourceVersion, the
    /// store's revision); a copy the cache has caught up with is forgotten.
    pub fn freshest(&self, key: &str, cached: Arc<K>) -> Arc<K> {
        let mut written = self.lock();
        let Some(mine) = written.get(key) else {
            return cached;
        };
        if revision(mine.as_ref()) > revision(cached.as_ref()) {
            return mine.clone();
        }
        written.remove(key);
        cached
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<K>>> {
        // Every update is a single map operation, so a panicked holder leaves it consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The resourceVersion as a number; `None` (older than any) if it is not one.
fn revision<K: kube::Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

/// Exponential backoff from 1 s to 5 min after `failures` consecutive failures.
/// `error: source: source…`, so a log line says what the API server answered.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX)
}

/// The delay after `races` consecutive lost concurrency races.
fn stale_retry(races: u32) -> Duration {
    let exponent = races.saturating_sub(1).min(8);
    (STALE_WRITE_RETRY * (1u32 << exponent)).min(STALE_WRITE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_of_the_written_and_the_cached_copy_wins() {
        let at = |rv: &str| {
            let mut vm = VirtualMachine::new("a", Default::default());
            vm.metadata.resource_version = Some(rv.into());
            vm
        };
        let written = Written::default();
        assert_eq!(
            written
                .freshest("ns/a", Arc::new(at("5")))
                .metadata
                .resource_version
                .as_deref(),
            Some("5")
        );
        written.record("ns/a".into(), at("7"));
        let fresh = |rv| {
            written
                .freshest("ns/a", Arc::new(at(rv)))
                .metadata
                .resource_version
                .clone()
        };
        assert_eq!(fresh("6").as_deref(), Some("7"), "the cache lags");
        assert_eq!(fresh("8").as_deref(), Some("8"), "the cache caught up");
        written.record("ns/a".into(), at("9"));
        assert_eq!(fresh("9").as_deref(), Some("9"));
        assert!(written.lock().is_empty(), "forgotten once caught up");
    }

    #[test]
    fn lost_races_retry_soon_then_slower_up_to_five_seconds() {
        assert_eq!(stale_retry(1), Duration::from_millis(200));
        assert_eq!(stale_retry(2), Duration::from_millis(400));
        assert_eq!(stale_retry(5), Duration::from_millis(3200));
        assert_eq!(stale_retry(6), Duration::from_secs(5));
        assert_eq!(stale_retry(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
