//! Deleting a Zone removes what belongs to it (clusters and their hosts, primary storage, L2
//! networks and their L3 networks, VXLAN pools) and nothing else.

mod common;

use std::time::Duration;

use common::{create, wait_for};
use kube::{api::DeleteParams, Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use strata_apis::{
    vxlanpool::VniRange, Cluster, ClusterSpec, Host, L2Network, L3Network, PrimaryStorage,
    VxlanPool, VxlanPoolSpec, Zone, ZoneSpec,
};

/// Whether the cluster-scoped `K` named `name` exists and, if so, the kinds and names of its
/// owners.
async fn owners<K>(client: &Client, name: &str) -> Option<Vec<(String, String)>>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let object = Api::<K>::all(client.clone()).get_opt(name).await.ok()??;
    Some(
        object
            .owner_references()
            .iter()
            .map(|r| (r.kind.clone(), r.name.clone()))
            .collect(),
    )
}

async fn wait_owned_by<K>(client: &Client, name: &str, kind: &str, owner: &str)
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let expected = vec![(kind.to_string(), owner.to_string())];
    wait_for(
        client,
        &format!("{name} to be owned by {owner}"),
        || async { (owners::<K>(client, name).await? == expected).then_some(()) },
    )
    .await;
}

async fn wait_gone<K>(client: &Client, name: &str)
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    wait_for(client, &format!("{name} to be deleted"), || async {
        let api = Api::<K>::all(client.clone());
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_zone_deletes_what_belongs_to_it() {
    let plane = common::start(&["host-1"], Duration::from_secs(1)).await;
    let client = &plane.client;
    common::inventory(client).await;
    let pool = VxlanPoolSpec {
        zone: "zone-1".into(),
        vni_range: VniRange {
            start: 100,
            end: 200,
        },
        vtep_cidr: "192.0.2.0/24".into(),
        port: 4789,
    };
    create(&Api::all(client.clone()), VxlanPool::new("pool-1", pool)).await;
    // A child applied before its parent is adopted once the parent exists.
    let other = ClusterSpec {
        zone: "zone-2".into(),
        ..ClusterSpec::default()
    };
    create(&Api::all(client.clone()), Cluster::new("cluster-2", other)).await;
    create(
        &Api::all(client.clone()),
        Zone::new("zone-2", ZoneSpec::default()),
    )
    .await;

    wait_owned_by::<Cluster>(client, "cluster-1", "Zone", "zone-1").await;
    wait_owned_by::<Cluster>(client, "cluster-2", "Zone", "zone-2").await;
    wait_owned_by::<Host>(client, "host-1", "Cluster", "cluster-1").await;
    wait_owned_by::<PrimaryStorage>(client, "ps-1", "Zone", "zone-1").await;
    wait_owned_by::<L2Network>(client, "l2-1", "Zone", "zone-1").await;
    wait_owned_by::<VxlanPool>(client, "pool-1", "Zone", "zone-1").await;
    wait_owned_by::<L3Network>(client, "net-1", "L2Network", "l2-1").await;

    Api::<Zone>::all(client.clone())
        .delete("zone-1", &DeleteParams::default())
        .await
        .expect("delete zone-1");
    wait_gone::<Cluster>(client, "cluster-1").await;
    wait_gone::<Host>(client, "host-1").await;
    wait_gone::<PrimaryStorage>(client, "ps-1").await;
    wait_gone::<L2Network>(client, "l2-1").await;
    wait_gone::<VxlanPool>(client, "pool-1").await;
    wait_gone::<L3Network>(client, "net-1").await;

    let survivor = Api::<Cluster>::all(client.clone())
        .get("cluster-2")
        .await
        .expect("the other zone's cluster stays");
    assert_eq!(survivor.name_any(), "cluster-2");
    assert!(Api::<Zone>::all(client.clone())
        .get_opt("zone-2")
        .await
        .expect("get zone-2")
        .is_some());
}
