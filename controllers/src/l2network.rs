//! L2Network controller: gives a VXLAN network a VNI from its pool, as ZStack's VXLAN pool
//! does, and reports it in `status.vni`; the VM controller waits for it before it can describe
//! the network to a host. It also publishes the network's tunnel endpoints (`status.vteps`:
//! the management addresses of the hosts of the clusters it is attached to), from which each
//! agent builds its VXLAN peers. Other network types only report Ready.

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::jiff::Timestamp;
use kube::{
    api::ListParams,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, Client, ResourceExt,
};
use strata_apis::{
    condition::READY, vxlanpool::VniRange, Cluster, Host, L2Network, L2NetworkType, VxlanPool,
};
use tokio::sync::Mutex;

use crate::{
    conditions::{self, Desired},
    Context, Error,
};

/// Picking a free VNI reads every L2 network and then writes one: allocations run one at a
/// time so two networks of a pool never pick the same VNI (there is one controller process).
static ALLOCATION: Mutex<()> = Mutex::const_new(());

pub(crate) fn controller(client: &Client) -> Controller<L2Network> {
    let l2s = Controller::new(
        Api::<L2Network>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = l2s.store();
    let (for_hosts, for_clusters) = (store.clone(), store.clone());
    // A new or resized pool may let waiting networks have a VNI.
    l2s.watches(
        Api::<VxlanPool>::all(client.clone()),
        watcher::Config::default(),
        move |pool| {
            let name = pool.name_any();
            vxlan_networks(&store, |l2| {
                l2.spec.vxlan_pool.as_deref() == Some(name.as_str())
            })
        },
    )
    // Hosts and clusters coming, going or moving change the tunnel endpoints; the reconcile
    // recomputes them from the caches and writes only a change.
    .watches(
        Api::<Host>::all(client.clone()),
        watcher::Config::default(),
        move |_| vxlan_networks(&for_hosts, |_| true),
    )
    .watches(
        Api::<Cluster>::all(client.clone()),
        watcher::Config::default(),
        move |cluster| {
            vxlan_networks(&for_clusters, |l2| {
                cluster.spec.l2_networks.contains(&l2.name_any())
            })
        },
    )
}

fn vxlan_networks(
    store: &Store<L2Network>,
    wanted: impl Fn(&L2Network) -> bool,
) -> Vec<ObjectRef<L2Network>> {
    store
        .state()
        .iter()
        .filter(|l2| l2.spec.network_type == L2NetworkType::Vxlan && wanted(l2))
        .map(|l2| ObjectRef::from_obj(l2.as_ref()))
        .collect()
}

/// The management addresses of the hosts of every cluster `l2` is attached to, sorted.
fn vteps(ctx: &Context, l2: &str) -> Vec<String> {
    let clusters: BTreeSet<String> = ctx
        .inventory
        .clusters
        .state()
        .iter()
        .filter(|c| c.spec.l2_networks.iter().any(|n| n == l2))
        .map(|c| c.name_any())
        .collect();
    let addresses: BTreeSet<String> = ctx
        .hosts
        .state()
        .iter()
        .filter(|h| clusters.contains(&h.spec.cluster))
        .filter_map(|h| h.spec.management_address.clone())
        .collect();
    addresses.into_iter().collect()
}

pub(crate) async fn reconcile(l2: Arc<L2Network>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = l2.name_any();
    let current = l2.status.clone().unwrap_or_default();
    let vxlan = l2.spec.network_type == L2NetworkType::Vxlan;
    // The endpoints come from the host and cluster caches: wait for full lists first.
    if vxlan && (ctx.hosts.wait_until_ready().await.is_err() || !ctx.inventory.ready().await) {
        return Ok(Action::await_change());
    }
    // Held until the status is written, so the next allocation sees this one.
    let _turn = if vxlan {
        Some(ALLOCATION.lock().await)
    } else {
        None
    };
    let (vni, ready) = if vxlan {
        match vxlan_vni(&ctx.client, &l2).await? {
            Ok(vni) => (
                Some(vni),
                Desired::new(READY, true, "VniAllocated", format!("VNI {vni}")),
            ),
            Err((reason, message)) => (current.vni, Desired::new(READY, false, reason, message)),
        }
    } else {
        (
            None,
            Desired::new(READY, true, "Ready", "nothing to allocate"),
        )
    };
    let mut status = current.clone();
    status.observed_generation = l2.metadata.generation;
    status.vni = vni;
    status.vteps = if vxlan {
        vteps(&ctx, &name)
    } else {
        Vec::new()
    };
    conditions::set(
        &mut status.conditions,
        ready,
        l2.metadata.generation,
        Timestamp::now(),
    );
    if status != current {
        ctx.patch_cluster_status::<L2Network, _>("L2Network", &name, &status)
            .await?;
    }
    ctx.succeeded("L2Network", &name);
    Ok(Action::await_change())
}

pub(crate) fn error_policy(l2: Arc<L2Network>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.failed("L2Network", &l2.name_any(), error))
}

/// The network's VNI: the one it asked for or already holds, else the lowest free one of its
/// pool. `Err` is the (reason, message) of a condition the user must act on.
async fn vxlan_vni(
    client: &Client,
    l2: &L2Network,
) -> Result<Result<i32, (&'static str, String)>, Error> {
    let pool_name = l2.spec.vxlan_pool.clone().unwrap_or_default();
    let pools: Api<VxlanPool> = Api::all(client.clone());
    let pool = pools
        .get_opt(&pool_name)
        .await
        .map_err(|source| Error::Get {
            kind: "VxlanPool".into(),
            name: pool_name.clone(),
            source,
        })?;
    let Some(pool) = pool else {
        let message = format!("VxlanPool {pool_name:?} not found");
        return Ok(Err(("VxlanPoolNotFound", message)));
    };
    // Read fresh, not from a cache: an allocation made a moment ago must count.
    let others = Api::<L2Network>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: "L2Network",
            owner: pool_name.clone(),
            source,
        })?;
    let taken: BTreeSet<i32> = others
        .items
        .iter()
        .filter(|o| o.uid() != l2.uid() && o.spec.vxlan_pool == l2.spec.vxlan_pool)
        .filter_map(|o| o.spec.vni.or(o.status.as_ref().and_then(|s| s.vni)))
        .collect();
    let held = l2.spec.vni.or(l2.status.as_ref().and_then(|s| s.vni));
    Ok(choose(pool.spec.vni_range, &taken, held, &pool_name))
}

/// Pure VNI choice within `range`, given the VNIs other networks of the pool hold.
fn choose(
    range: VniRange,
    taken: &BTreeSet<i32>,
    held: Option<i32>,
    pool: &str,
) -> Result<i32, (&'static str, String)> {
    match held {
        Some(vni) if !(range.start..=range.end).contains(&vni) => Err((
            "VniOutOfRange",
            format!(
                "VNI {vni} is outside VxlanPool {pool:?} ({}-{})",
                range.start, range.end
            ),
        )),
        Some(vni) if taken.contains(&vni) => Err((
            "VniConflict",
            format!("VNI {vni} of VxlanPool {pool:?} belongs to another L2Network"),
        )),
        Some(vni) => Ok(vni),
        None => (range.start..=range.end)
            .find(|vni| !taken.contains(vni))
            .ok_or_else(|| {
                (
                    "VniExhausted",
                    format!("VxlanPool {pool:?} has no free VNI"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: VniRange = VniRange {
        start: 100,
        end: 102,
    };

    #[test]
    fn the_lowest_free_vni_is_given_and_a_held_one_kept() {
        let taken = BTreeSet::from([100]);
        assert_eq!(choose(RANGE, &taken, None, "p"), Ok(101));
        assert_eq!(choose(RANGE, &taken, Some(102), "p"), Ok(102));
    }

    #[test]
    fn conflicts_range_and_exhaustion_are_reasons() {
        let full = BTreeSet::from([100, 101, 102]);
        assert_eq!(
            choose(RANGE, &full, None, "p").unwrap_err().0,
            "VniExhausted"
        );
        assert_eq!(
            choose(RANGE, &full, Some(101), "p").unwrap_err().0,
            "VniConflict"
        );
        let none = BTreeSet::new();
        assert_eq!(
            choose(RANGE, &none, Some(7), "p").unwrap_err().0,
            "VniOutOfRange"
        );
    }
}
