//! Cascade: gives each infrastructure object an ownerReference to the object its spec names
//! as its parent, so that deleting a Zone removes its clusters, hosts, storage and networks
//! through the API server's garbage collector, as ZStack's cascade does.
//!
//! Users write only names (`spec.zone`, `spec.cluster`, `spec.l2Network`) and may apply a
//! child before its parent; the reference (which needs the parent's uid) is added as soon as
//! both exist. The rules are in docs/architecture.md ("Cascade").

use std::sync::Arc;

use futures::{future::BoxFuture, FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Api, Client, Resource, ResourceExt,
};
use strata_apis::{Cluster, Host, L2Network, L3Network, PrimaryStorage, VxlanPool, Zone};

use crate::{cache::Cached, Context, Error};

/// A cluster-scoped kind whose objects belong to a parent they name in their spec.
pub(crate) trait Child: Cached {
    type Parent: Cached;

    /// The name of the parent, from the spec.
    fn parent(&self) -> &str;
}

impl Child for Cluster {
    type Parent = Zone;
    fn parent(&self) -> &str {
        &self.spec.zone
    }
}

impl Child for Host {
    type Parent = Cluster;
    fn parent(&self) -> &str {
        &self.spec.cluster
    }
}

impl Child for PrimaryStorage {
    type Parent = Zone;
    fn parent(&self) -> &str {
        &self.spec.zone
    }
}

impl Child for L2Network {
    type Parent = Zone;
    fn parent(&self) -> &str {
        &self.spec.zone
    }
}

impl Child for VxlanPool {
    type Parent = Zone;
    fn parent(&self) -> &str {
        &self.spec.zone
    }
}

impl Child for L3Network {
    type Parent = L2Network;
    fn parent(&self) -> &str {
        &self.spec.l2_network
    }
}

/// Runs the cascade controllers of every child kind until the future is dropped.
pub(crate) fn run(client: &Client, ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    futures::future::join_all([
        adopt::<Cluster>(client, ctx.clone()),
        adopt::<Host>(client, ctx.clone()),
        adopt::<PrimaryStorage>(client, ctx.clone()),
        adopt::<L2Network>(client, ctx.clone()),
        adopt::<VxlanPool>(client, ctx.clone()),
        adopt::<L3Network>(client, ctx),
    ])
    .map(|_| ())
    .boxed()
}

/// The controller that adds the `C::Parent` reference to every `C`.
fn adopt<C: Child>(client: &Client, ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let children = Controller::new(Api::<C>::all(client.clone()), watcher::Config::default());
    let store = children.store();
    // A parent applied after its children adopts them when it appears.
    children
        .watches(
            Api::<C::Parent>::all(client.clone()),
            watcher::Config::default(),
            move |parent| {
                let name = parent.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|child| child.parent() == name)
                    .map(|child| ObjectRef::from_obj(child.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile::<C>, error_policy::<C>, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

async fn reconcile<C: Child>(child: Arc<C>, ctx: Arc<Context>) -> Result<Action, Error> {
    let action = own(child.as_ref(), &ctx).await?;
    ctx.succeeded(&C::kind(&()), &child.name_any());
    Ok(action)
}

/// Gives `child` its parent as an owner, once both exist.
async fn own<C: Child>(child: &C, ctx: &Context) -> Result<Action, Error> {
    let refs = child.owner_references();
    if refs
        .iter()
        .any(|r| refers_to::<C::Parent>(r, child.parent()))
    {
        return Ok(Action::await_change());
    }
    let parents: Api<C::Parent> = Api::all(ctx.client.clone());
    let Some(parent) = parents
        .get_opt(child.parent())
        .await
        .map_err(|source| Error::Get {
            kind: C::Parent::kind(&()).into_owned(),
            name: child.parent().to_string(),
            source,
        })?
    else {
        // Adopted when the parent is created (the watch above).
        return Ok(Action::await_change());
    };
    let Some(owner) = parent.controller_owner_ref(&()) else {
        return Ok(Action::await_change());
    };
    let patch = adoption_patch::<C::Parent>(child, refs, owner);
    Api::<C>::all(ctx.client.clone())
        .patch(
            &child.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(|source| Error::Adopt {
            kind: C::kind(&()).into_owned(),
            name: child.name_any(),
            source,
        })?;
    Ok(Action::await_change())
}

fn error_policy<C: Child>(child: Arc<C>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.failed(&C::kind(&()), &child.name_any(), error))
}

/// Whether `r` refers to the `P` named `name`.
fn refers_to<P: Resource<DynamicType = ()>>(r: &OwnerReference, name: &str) -> bool {
    r.kind == P::kind(&()) && r.api_version == P::api_version(&()) && r.name == name
}

/// A JSON patch that replaces any reference to another `P` (the spec named a different parent
/// before) by `owner`, and fails if the child changed since it was read, so a concurrent writer's
/// references are never lost.
fn adoption_patch<P: Resource<DynamicType = ()>>(
    child: &impl Resource,
    refs: &[OwnerReference],
    owner: OwnerReference,
) -> json_patch::Patch {
    let mut kept: Vec<OwnerReference> = refs
        .iter()
        .filter(|r| !(r.kind == P::kind(&()) && r.api_version == P::api_version(&())))
        .cloned()
        .collect();
    // Not the controller: the parent does not manage the child, it only bounds its lifetime.
    kept.push(OwnerReference {
        controller: None,
        block_owner_deletion: None,
        ..owner
    });
    serde_json::from_value(serde_json::json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": child.resource_version() },
        { "op": "add", "path": "/metadata/ownerReferences", "value": kept },
    ]))
    .expect("a JSON patch of two well-formed operations")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use strata_apis::ClusterSpec;

    fn zone(name: &str, uid: &str) -> Zone {
        let mut zone = Zone::new(name, Default::default());
        zone.metadata.uid = Some(uid.into());
        zone
    }

    fn owner_ref(zone: &Zone) -> OwnerReference {
        zone.controller_owner_ref(&()).unwrap()
    }

    #[test]
    fn a_reference_to_the_named_parent_counts_others_do_not() {
        let r = owner_ref(&zone("z1", "u1"));
        assert!(refers_to::<Zone>(&r, "z1"));
        assert!(!refers_to::<Zone>(&r, "z2"));
        assert!(!refers_to::<Cluster>(&r, "z1"));
    }

    #[test]
    fn adoption_replaces_a_stale_parent_and_keeps_other_owners() {
        let cluster = Cluster {
            metadata: ObjectMeta {
                name: Some("c1".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            spec: ClusterSpec {
                zone: "z2".into(),
                ..Default::default()
            },
            status: None,
        };
        let foreign = OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Team".into(),
            name: "infra".into(),
            uid: "t".into(),
            ..Default::default()
        };
        let stale = owner_ref(&zone("z1", "u1"));
        let patch = adoption_patch::<Zone>(
            &cluster,
            &[foreign.clone(), stale],
            owner_ref(&zone("z2", "u2")),
        );
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["value"], "42");
        let refs = ops[1]["value"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0]["kind"], "Team");
        assert_eq!(refs[1]["name"], "z2");
        assert_eq!(refs[1]["uid"], "u2");
        assert!(refs[1].get("controller").is_none());
    }
}
