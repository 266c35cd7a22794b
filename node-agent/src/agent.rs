//! The agent's top level: register the Host, heartbeat its Lease, run its instances.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Namespace,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::ListParams,
    api::{Patch, PatchParams, PostParams},
    runtime::{reflector::ObjectRef, watcher, Controller},
    Api, Client,
};
use serde_json::json;
use strata_apis::{Host, HostCapacity, HostSpec, VirtualMachineInstance, SYSTEM_NAMESPACE};
use tracing::{debug, info, warn};

use crate::{driver::Hypervisor, fencing::Fence, instance, metrics::Metrics, Error};

/// How often the agent renews its host's Lease unless configured otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// The lease outlives this many missed heartbeats, so one slow renewal does not disconnect a host.
const HEARTBEATS_PER_LEASE: u32 = 4;
/// How often the host's networks are re-synced with the instances (leases of deleted
/// instances, orphans after a crash).
const NETWORK_RESYNC: Duration = Duration::from_secs(5);

/// The longest wait between two registration attempts.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(10);

/// What an agent needs to know about its host.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Name of the Host object (and of its Lease).
    pub host_name: String,
    /// The Cluster a newly registered Host joins.
    pub cluster: String,
    /// What the hypervisor offers, reported in the Host's status.
    pub capacity: HostCapacity,
    pub heartbeat_interval: Duration,
    /// The host's networking (bridges, L3 namespaces, DHCP, metadata); `None` leaves the host's
    /// network alone (simulated hosts) and domains boot without NICs plugged.
    pub network: Option<Arc<crate::network::HostNetwork>>,
}

impl AgentConfig {
    /// A config with the default heartbeat interval.
    pub fn new(
        host_name: impl Into<String>,
        cluster: impl Into<String>,
        capacity: HostCapacity,
    ) -> Self {
        Self {
            host_name: host_name.into(),
            cluster: cluster.into(),
            capacity,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            network: None,
        }
    }

    fn lease_duration_seconds(&self) -> i32 {
        let secs = (self.heartbeat_interval * HEARTBEATS_PER_LEASE)
            .as_secs()
            .max(1);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The agent of one host.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    driver: Arc<dyn Hypervisor>,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
}

impl Agent {
    pub fn new(client: Client, config: AgentConfig, driver: Arc<dyn Hypervisor>) -> Self {
        // Fenced one heartbeat before the controllers may see the host Disconnected, so the
        // VMs are off before any HA restart can be decided.
        let fence = Arc::new(Fence::new(
            config.heartbeat_interval * (HEARTBEATS_PER_LEASE - 1),
        ));
        Self {
            client,
            config,
            driver,
            metrics: Arc::default(),
            fence,
        }
    }

    /// Reports into `metrics` (see [`Metrics::register`]), which several agents may share.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        let host = &self.config.host_name;
        metrics.add_host(host, &self.config.capacity);
        self.driver = metrics.driver(host, self.driver);
        self.metrics = metrics;
        self
    }

    /// Registers the host, then heartbeats and runs its instances until the future is dropped.
    /// Fails only if the host cannot be registered.
    pub async fn run(self) -> Result<(), Error> {
        // An agent that gave up on a transient failure (the API server still starting, a lost
        // write race) would leave its host Disconnected for good, so registration retries.
        let mut delay = Duration::from_millis(200);
        while let Err(error) = self.join().await {
            warn!(host = %self.config.host_name, error = %error, retry_in = ?delay, "failed to register, retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REGISTER_RETRY_MAX);
        }
        info!(host = %self.config.host_name, driver = self.driver.name(), "host registered");
        self.remove_orphans().await;
        let fencing = self.fence.watch(
            &self.config.host_name,
            self.driver.as_ref(),
            self.config.heartbeat_interval / 2,
        );
        tokio::select! {
            () = self.heartbeat() => {}
            () = self.instances() => {}
            () = fencing => {}
        }
        Ok(())
    }

    async fn join(&self) -> Result<(), Error> {
        self.register().await?;
        let renewed = self.renew_lease().await;
        self.metrics.lease_renewal(&self.config.host_name, &renewed);
        if renewed.is_ok() {
            self.fence.renewed();
        }
        renewed
    }

    /// Creates the Host if absent (an existing one keeps its spec) and reports capacity and driver.
    async fn register(&self) -> Result<(), Error> {
        let host = &self.config.host_name;
        let failed = |source| Error::RegisterHost {
            host: host.clone(),
            source,
        };
        self.ensure_system_namespace().await.map_err(failed)?;
        let hosts: Api<Host> = Api::all(self.client.clone());
        // Other hosts reach this one at its VTEP (VXLAN peers, live migrations), unless the
        // operator gave the Host another address.
        let address = self
            .config
            .network
            .as_ref()
            .and_then(|n| n.vtep())
            .map(|ip| ip.to_string());
        match hosts.get_opt(host).await.map_err(failed)? {
            None => {
                let spec = HostSpec {
                    cluster: self.config.cluster.clone(),
                    management_address: address,
                    ..HostSpec::default()
                };
                create_if_absent(&hosts, &Host::new(host, spec))
                    .await
                    .map_err(failed)?;
            }
            Some(existing) if existing.spec.management_address.is_none() && address.is_some() => {
                let spec = json!({ "spec": { "managementAddress": address } });
                hosts
                    .patch(host, &PatchParams::default(), &Patch::Merge(spec))
                    .await
                    .map_err(failed)?;
            }
            Some(_) => {}
        }
        let status = json!({ "status": {
            "capacity": self.config.capacity,
            "driver": self.driver.name(),
        }});
        hosts
            .patch_status(host, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn ensure_system_namespace(&self) -> Result<(), kube::Error> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(SYSTEM_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        create_if_absent(&namespaces, &namespace).await
    }

    async fn renew_lease(&self) -> Result<(), Error> {
        let host = &self.config.host_name;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let now = MicroTime(Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(host.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_seconds()),
            renew_time: Some(now.clone()),
            ..LeaseSpec::default()
        };
        let failed = |source| Error::RenewLease {
            host: host.clone(),
            source,
        };
        let renewed = leases
            .patch(
                host,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(host.clone()),
                        namespace: Some(SYSTEM_NAMESPACE.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        acquire_time: Some(now),
                        ..spec
                    }),
                };
                create_if_absent(&leases, &lease).await.map_err(failed)
            }
            Err(source) => Err(failed(source)),
        }
    }

    async fn heartbeat(&self) {
        let mut ticks = tokio::time::interval(self.config.heartbeat_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once, and `run` has just renewed the lease.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.fence.renewing();
            let renewed = self.renew_lease().await;
            self.metrics.lease_renewal(&self.config.host_name, &renewed);
            match renewed {
                // Back from a partition: what was placed elsewhere meanwhile goes.
                Ok(()) if self.fence.renewed() => self.remove_orphans().await,
                Ok(()) => {}
                Err(error) => {
                    self.fence.failed();
                    warn!(host = %self.config.host_name, error = %error, "heartbeat failed")
                }
            }
        }
    }

    /// Destroys what the driver created for instances that no longer exist on this host (the
    /// agent was down while they were deleted or moved), before the instance controller runs:
    /// nothing leaks and nothing runs twice. A failure is logged and left for the next start.
    async fn remove_orphans(&self) {
        let selector = format!("spec.host={}", self.config.host_name);
        let api: Api<VirtualMachineInstance> = Api::all(self.client.clone());
        let wanted: std::collections::BTreeSet<String> = match api
            .list(&ListParams::default().fields(&selector))
            .await
        {
            Ok(list) => list.items.iter().map(instance::domain_name).collect(),
            Err(error) => {
                warn!(host = %self.config.host_name, error = %error, "cannot list instances; orphans stay until the next start");
                return;
            }
        };
        let owned = match self.driver.owned_domains().await {
            Ok(owned) => owned,
            Err(error) => {
                warn!(host = %self.config.host_name, error = %error, "cannot list the driver's domains");
                return;
            }
        };
        for name in owned.iter().filter(|name| !wanted.contains(*name)) {
            match self.driver.destroy(name).await {
                Ok(()) => {
                    info!(host = %self.config.host_name, domain = %name, "removed an orphaned domain")
                }
                Err(error) => {
                    warn!(host = %self.config.host_name, domain = %name, error = %error, "failed to remove an orphan")
                }
            }
        }
    }

    async fn instances(&self) {
        let selector = format!("spec.host={}", self.config.host_name);
        let api: Api<VirtualMachineInstance> = Api::all(self.client.clone());
        let ctx = Arc::new(instance::Context {
            client: self.client.clone(),
            host: self.config.host_name.clone(),
            driver: self.driver.clone(),
            network: self.config.network.clone(),
            fence: self.fence.clone(),
        });
        // The hypervisor's own events are a second trigger, so a domain stopped behind the
        // agent's back shows in its status within a second or two, not at the next resync.
        let changed = self.driver.events().filter_map(|domain| {
            futures::future::ready(
                instance::instance_of(&domain)
                    .map(|(ns, name)| ObjectRef::<VirtualMachineInstance>::new(name).within(ns)),
            )
        });
        let controller = Controller::new(api.clone(), watcher::Config::default().fields(&selector))
            .reconcile_on(changed);
        // Instances moving here by live migration: readied before they arrive.
        let incoming = Controller::new(
            api,
            watcher::Config::default().fields(&format!(
                "spec.migration.targetHost={}",
                self.config.host_name
            )),
        );
        self.metrics
            .watch_instances(&self.config.host_name, controller.store());
        if let Some(network) = &self.config.network {
            network.attach(controller.store());
            network.attach_incoming(incoming.store());
            network.attach_l2_networks(crate::network::watch_l2_networks(&self.client));
            tokio::spawn(network.clone().run(NETWORK_RESYNC));
        }
        let log = |result: Result<_, _>| async move {
            match result {
                Ok((instance, _)) => debug!(%instance, "reconciled"),
                Err(error) => debug!(error = %error, "instance controller"),
            }
        };
        // The disks of deleted data volumes on this host's storage.
        let volumes = Arc::new(crate::volume::VolumeContext {
            client: self.client.clone(),
            driver: self.driver.clone(),
            instances: controller.store(),
        });
        tokio::join!(
            crate::volume::run(&self.config.host_name, volumes),
            controller
                .run(instance::reconcile, instance::error_policy, ctx.clone())
                .for_each(log),
            incoming
                .run(crate::migration::prepare, instance::error_policy, ctx)
                .for_each(log),
        );
    }
}

/// Creates `object`, treating "already exists" as success: whoever created it first wins.
async fn create_if_absent<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
