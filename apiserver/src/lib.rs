//! Strata's Kubernetes-compatible API server.
//!
//! Request flow: [`handlers::router`] is the one route table; a middleware checks the bearer
//! token first. Discovery (`/api`, `/apis`, …), OpenAPI and `/version` are answered from the
//! [`registry::Registry`] of served kinds, built from the built-in kinds plus every stored
//! CustomResourceDefinition. Resource paths are parsed into a [`rest::ResourceRequest`] and
//! dispatched to the verbs on [`rest::App`]: reads (get, list, watch) are served from the
//! in-memory [`cache::Cache`]; writes (run off the async workers, since they wait for fsync) apply
//! Kubernetes object semantics ([`objects`], [`validation`], [`patch`]) and go through the cache to
//! the durable [`store::Store`], whose revision becomes the resourceVersion. Deletes cascade to
//! namespaced objects, custom objects of a deleted CRD, and owner-referenced dependents ([`gc`]).
//! Watches ([`watch`]) follow the cache's event ring. Every error is an [`error::ApiError`],
//! rendered once as a `Status`. [`serve`] speaks plain HTTP; [`serve_tls`] speaks HTTPS, which
//! kubectl needs before it will send a bearer token.

pub mod cache;
pub mod cached;
pub mod cel;
pub mod discovery;
pub mod error;
pub mod gc;
pub mod handlers;
pub mod jsonpath;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod rest;
pub mod routes;
pub mod selectors;
pub mod ssa;
pub mod store;
pub mod table;
#[doc(hidden)]
pub mod testkit;
pub mod tls;
pub mod validation;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub use error::Error;
pub use store::StoreConfig;
pub use tls::TlsIdentity;

/// What `strata up` (or a test) hands the server.
pub struct ServeOptions {
    /// The embedded store lives under here (`store.redb`).
    pub data_dir: std::path::PathBuf,
    /// Which store backend holds the objects.
    pub store: StoreConfig,
    /// When set, every request except the health checks must carry `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Installed (created or updated) at start-up, then served.
    pub crds: Vec<CustomResourceDefinition>,
}

/// Knobs that only tests need.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Limits {
    /// How many recent events the watch cache keeps; older resourceVersions get 410 Expired.
    pub event_ring: usize,
    /// How often a watch with bookmarks enabled gets a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_ring: 10_000,
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then ends open watches, drains
/// requests and closes the store.
pub async fn serve(
    opts: ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_with_limits(opts, Limits::default(), listener, shutdown).await
}

/// Like [`serve`], over HTTPS with the given identity. Needed whenever kubectl must send the
/// bearer token: client-go drops credentials for `http://` servers.
pub async fn serve_tls(
    opts: ServeOptions,
    tls: TlsIdentity,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_tls_with_metrics(opts, tls, Vec::new(), listener, shutdown).await
}

/// Like [`serve_tls`]; `/metrics` also encodes `metrics`, the registries of other components
/// running in this process (`strata up`'s controllers and agents).
pub async fn serve_tls_with_metrics(
    opts: ServeOptions,
    tls: TlsIdentity,
    metrics: Vec<Arc<prometheus_client::registry::Registry>>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_inner(
        opts,
        Limits::default(),
        Some(tls),
        metrics,
        listener,
        shutdown,
    )
    .await
}

#[doc(hidden)]
pub async fn serve_with_limits(
    opts: ServeOptions,
    limits: Limits,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_inner(opts, limits, None, Vec::new(), listener, shutdown).await
}

/// How long start-up waits for etcd to answer, so `strata up` can start alongside it.
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn open_store(opts: &ServeOptions) -> Result<Arc<dyn store::Store>, Error> {
    Ok(match &opts.store {
        StoreConfig::Embedded => {
            std::fs::create_dir_all(&opts.data_dir).map_err(Error::DataDir)?;
            let path = opts.data_dir.join("store.redb");
            Arc::new(store::RedbStore::open(&path).map_err(Error::Store)?)
        }
        StoreConfig::Etcd { endpoints } => Arc::new(
            store::EtcdStore::connect(endpoints, ETCD_CONNECT_TIMEOUT).map_err(Error::Store)?,
        ),
    })
}

async fn serve_inner(
    opts: ServeOptions,
    limits: Limits,
    tls: Option<TlsIdentity>,
    extra_metrics: Vec<Arc<prometheus_client::registry::Registry>>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let api_metrics = metrics::ApiMetrics::new();
    let (backend, redb_file) = match &opts.store {
        StoreConfig::Embedded => ("redb", Some(opts.data_dir.join("store.redb"))),
        StoreConfig::Etcd { .. } => ("etcd", None),
    };
    let store = api_metrics.time_store(open_store(&opts)?, backend);
    let cache = cache::Cache::load(store, limits.event_ring).map_err(Error::Store)?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let app = Arc::new(rest::App::new(
        cache,
        opts.bearer_token,
        shutdown_rx,
        limits.bookmark_interval,
    ));
    let result = async {
        for ns in ["default", "kube-system", "strata-system"] {
            app.ensure_namespace(ns).map_err(|e| Error::InstallCrd {
                name: format!("namespace {ns}"),
                source: Box::new(e),
            })?;
        }
        for crd in &opts.crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let value = serde_json::to_value(crd).map_err(|e| Error::InstallCrd {
                name: name.clone(),
                source: Box::new(e),
            })?;
            app.install_crd(value).map_err(|e| Error::InstallCrd {
                name: name.clone(),
                source: Box::new(e),
            })?;
        }
        let router = metrics::instrument(
            handlers::router(app.clone()),
            app.clone(),
            api_metrics,
            redb_file,
            extra_metrics,
        );
        let signal = async move {
            shutdown.await;
            // Watches observe this and end their streams, so the drain can finish.
            let _ = shutdown_tx.send(true);
        };
        match tls {
            None => axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
                .map_err(Error::Serve),
            Some(identity) => {
                let acceptor = tls::acceptor(&identity).map_err(|e| Error::Tls(Box::new(e)))?;
                let listener = tls::TlsListener::new(listener, acceptor).map_err(Error::Serve)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal)
                    .await
                    .map_err(Error::Serve)
            }
        }
    }
    .await;
    app.cache.close();
    result
}
