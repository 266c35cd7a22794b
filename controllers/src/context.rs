//! State shared by the controllers: the client, the caches fed by watches, the scheduler's
//! assumed placements and the per-object retry backoff.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
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
use strata_apis::{Host, IpAddress, VirtualMachineInstance};

use tracing::{debug, warn};

use crate::{
    cache::Caches,
    vm::{inventory::Inventory, schedule::Assumed},
    ControllerOptions, Error,
};

/// Long enough for the watch to deliver the write that beat us, short enough not to stall.
const STALE_WRITE_RETRY: Duration = Duration::from_millis(200);

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
    assumed: Mutex<Assumed>,
    failures: Mutex<HashMap<String, u32>>,
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

    /// Logs a failed reconcile of `object` (`Kind/name`) and returns how long to wait before
    /// the next. Lost concurrency races are retried soon; other failures back off exponentially.
    pub fn failed(&self, object: String, error: &Error) -> Duration {
        if error.is_stale_write() {
            debug!(%object, category = error.category(), error = %chain(error), "stale write, retrying");
            return STALE_WRITE_RETRY;
        }
        warn!(%object, category = error.category(), error = %chain(error), "reconcile failed");
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(object).or_default();
        *count = count.saturating_add(1);
        backoff(*count)
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

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
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
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::UpdateStatus {
        kind,
        name: key,
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
