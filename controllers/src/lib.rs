//! Strata's controllers: one reconciler per kind, each a `kube::runtime::Controller`.
//!
//! All business logic lives here rather than in the node agents (ZStack's lesson): the VM
//! controller places VMs, allocates their addresses and writes the fully resolved
//! VirtualMachineInstance that a host's agent runs; the host controller turns Lease heartbeats
//! into host state; the L2Network controller gives VXLAN networks a VNI from their pool; the
//! L3Network controller validates networks and counts their addresses.
//!
//! Reconcilers follow one shape: fetch → validate → build (pure) → apply → update status.
//! The pure parts (scheduling, address choice, MACs, conditions, phases) are plain functions
//! tested without a server.

mod cache;
mod cascade;
mod conditions;
mod context;
mod drain;
mod error;
mod events;
mod host;
mod image;
mod l2network;
mod l3network;
pub mod metrics;
mod migration;
mod securitygroup;
mod snapshot;
mod vm;
mod volume;

use std::{sync::Arc, time::Duration};

use futures::{future, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    runtime::{controller, reflector, watcher, WatchStreamExt},
    Api, Client,
};
use strata_apis::{IpAddress, VirtualMachineInstance, SYSTEM_NAMESPACE};
use tracing::{debug, warn};

pub use error::Error;
pub use metrics::Metrics;

use crate::context::Context;

/// Settings shared by every controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// A host whose Lease does not say how long it lasts is Disconnected once its last renewal
    /// is older than this.
    pub host_lease_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            host_lease_timeout: Duration::from_secs(40),
        }
    }
}

/// Runs every controller until the returned future is dropped.
pub async fn run(client: Client, opts: ControllerOptions) -> Result<(), Error> {
    run_with_metrics(client, opts, Arc::default()).await
}

/// Like [`run`], measured into `metrics` (see [`Metrics::register`]).
pub async fn run_with_metrics(
    client: Client,
    opts: ControllerOptions,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let hosts = host::controller(&client);
    let vms = vm::controller(&client);
    let l2networks = l2network::controller(&client);
    let l3networks = l3network::controller(&client);
    let security_groups = securitygroup::controller(&client);
    let eips = vm::vip::controller::<strata_apis::Eip>(&client);
    let port_forwardings = vm::vip::controller::<strata_apis::PortForwarding>(&client);
    let volumes = volume::controller(&client);
    let (snapshots, restores) = (snapshot::snapshots(&client), snapshot::restores(&client));

    let (vmis, vmi_writer) = reflector::store();
    let (leases, lease_writer) = reflector::store();
    let (ips, ip_writer) = reflector::store();
    let (inventory, inventory_feed) = vm::inventory::Inventory::reflect(&client, vms.store());
    let mut caches = cache::Caches::default();
    let cache_feeds = future::join(
        future::join4(
            caches.reflect::<strata_apis::InstanceOffering>(&client),
            caches.reflect::<strata_apis::Image>(&client),
            caches.reflect::<strata_apis::L3Network>(&client),
            caches.reflect::<strata_apis::L2Network>(&client),
        ),
        future::join(
            caches.reflect::<strata_apis::Eip>(&client),
            caches.reflect::<strata_apis::PortForwarding>(&client),
        ),
    );
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            opts,
            hosts.store(),
            vmis,
            leases,
            ips,
            inventory,
        )
        .with_caches(caches),
    );
    let cascade = cascade::run(&client, ctx.clone());
    let images = image::run(&client, ctx.clone(), metrics.clone());
    let migrations = migration::run(&client, ctx.clone(), metrics.clone());

    let caches = future::join4(
        reflect(
            Api::<VirtualMachineInstance>::all(client.clone()),
            vmi_writer,
        ),
        reflect(
            Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE),
            lease_writer,
        ),
        reflect(Api::<IpAddress>::all(client.clone()), ip_writer),
        inventory_feed,
    );
    let controllers = future::join5(
        drain(
            "host",
            hosts.run(
                metrics.instrument("host", Metrics::ignore, host::reconcile),
                host::error_policy,
                ctx.clone(),
            ),
        ),
        drain(
            "vm",
            vms.run(
                metrics.instrument("vm", Metrics::observe_vm, vm::reconcile),
                vm::error_policy,
                ctx.clone(),
            ),
        ),
        future::join(
            drain(
                "l2network",
                l2networks.run(
                    metrics.instrument("l2network", Metrics::ignore, l2network::reconcile),
                    l2network::error_policy,
                    ctx.clone(),
                ),
            ),
            drain(
                "l3network",
                l3networks.run(
                    metrics.instrument("l3network", Metrics::ignore, l3network::reconcile),
                    l3network::error_policy,
                    ctx.clone(),
                ),
            ),
        ),
        drain(
            "securitygroup",
            security_groups.run(
                metrics.instrument("securitygroup", Metrics::ignore, securitygroup::reconcile),
                securitygroup::error_policy,
                ctx.clone(),
            ),
        ),
        future::join5(
            drain(
                "eip",
                eips.run(
                    metrics.instrument("eip", Metrics::ignore, vm::vip::reconcile),
                    vm::vip::error_policy,
                    ctx.clone(),
                ),
            ),
            drain(
                "portforwarding",
                port_forwardings.run(
                    metrics.instrument("portforwarding", Metrics::ignore, vm::vip::reconcile),
                    vm::vip::error_policy,
                    ctx.clone(),
                ),
            ),
            drain(
                "volume",
                volumes.run(
                    metrics.instrument("volume", Metrics::ignore, volume::reconcile),
                    volume::error_policy,
                    ctx.clone(),
                ),
            ),
            drain(
                "volumesnapshot",
                snapshots.run(
                    metrics.instrument(
                        "volumesnapshot",
                        Metrics::ignore,
                        snapshot::reconcile_snapshot,
                    ),
                    snapshot::error_policy,
                    ctx.clone(),
                ),
            ),
            drain(
                "volumerestore",
                restores.run(
                    metrics.instrument(
                        "volumerestore",
                        Metrics::ignore,
                        snapshot::reconcile_restore,
                    ),
                    snapshot::error_policy,
                    ctx,
                ),
            ),
        ),
    );
    future::join5(
        future::join(caches, cache_feeds),
        controllers,
        cascade,
        images,
        migrations,
    )
    .await;
    Ok(())
}

/// Keeps `writer`'s store in sync with every object of `api`.
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| {
            if let Err(error) = event {
                warn!(kind = %K::kind(&()), error = %error, "cache watch failed");
            }
            future::ready(())
        })
        .await;
}

async fn drain<K, S>(name: &'static str, results: S)
where
    K: kube::Resource,
    S: Stream<Item = Result<(reflector::ObjectRef<K>, controller::Action), ControllerError>>,
{
    results
        .for_each(|result| {
            match result {
                Ok((object, _)) => debug!(controller = name, %object, "reconciled"),
                // Reconcile errors were already logged by the error policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!(controller = name, error = %error, "controller error"),
            }
            future::ready(())
        })
        .await;
}

type ControllerError = controller::Error<Error, watcher::Error>;
