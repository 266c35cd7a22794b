//! Watch-fed caches of the cluster-scoped kinds reconcilers look up by name (offerings, images,
//! networks), so that resolving a VM's references reads memory instead of making one API
//! request per reference: under 100 concurrent creates those requests were most of a VM
//! reconcile's time. Like every informer-based controller, a reconcile may see an object a
//! moment late; the VM controller also watches these kinds, so it is woken again when the
//! object arrives or changes.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::Arc,
};

use futures::{future::BoxFuture, FutureExt, StreamExt};
use kube::{
    runtime::{reflector, reflector::ObjectRef, reflector::Store, watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tracing::warn;

/// A kind of either scope that can be cached (for listing, see [`Caches::all`]).
pub(crate) trait Reflected:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Reflected for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A cluster-scoped kind that can be cached.
pub(crate) trait Cached:
    Reflected + Resource<Scope = kube::core::ClusterResourceScope>
{
}

impl<K> Cached for K where K: Reflected + Resource<Scope = kube::core::ClusterResourceScope> {}

/// One store per cached kind.
#[derive(Default)]
pub(crate) struct Caches {
    stores: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Caches {
    /// Caches every `K`; the returned future keeps the cache fed and must be run.
    pub fn reflect<K: Reflected>(&mut self, client: &Client) -> BoxFuture<'static, ()> {
        let (store, writer) = reflector::store::<K>();
        self.stores.insert(TypeId::of::<K>(), Box::new(store));
        watcher(Api::<K>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                if let Err(error) = event {
                    warn!(kind = %K::kind(&()), error = %error, "cache watch failed");
                }
                futures::future::ready(())
            })
            .boxed()
    }

    /// The cached `K` named `name`: `Some(None)` when it does not exist, `None` when `K` is not
    /// cached or its first list has not arrived (ask the API server then).
    pub fn get<K: Cached>(&self, name: &str) -> Option<Option<Arc<K>>> {
        let store = self
            .stores
            .get(&TypeId::of::<K>())?
            .downcast_ref::<Store<K>>()?;
        // An empty store may just not be filled yet; a filled one answers for absent names too.
        if store.is_empty() {
            return None;
        }
        Some(store.get(&ObjectRef::new(name)))
    }

    /// Every cached `K` (namespaced kinds looked up by a field, like the Eips bound to a VM):
    /// `None` when `K` is not cached or its first list has not arrived.
    pub fn all<K: Reflected>(&self) -> Option<Vec<Arc<K>>> {
        let store = self
            .stores
            .get(&TypeId::of::<K>())?
            .downcast_ref::<Store<K>>()?;
        // Ready once the first list arrived, even if it was empty.
        store.wait_until_ready().now_or_never()?.ok()?;
        Some(store.state())
    }
}
