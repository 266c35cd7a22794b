//! The API server's Prometheus metrics, served at `/metrics` (OpenMetrics text) on the API port.
//!
//! Everything is measured at a boundary, never counted by hand in handlers:
//! - requests and their latency by a middleware around the whole router ([`instrument`]), which
//!   classifies the path the way kube-apiserver labels `apiserver_request_total` (verb, group,
//!   resource, subresource, code); open watches are a gauge held up by the response body;
//! - store operations by a [`Store`] wrapper ([`ApiMetrics::time_store`]);
//! - store size (objects per resource, bytes of the redb file) by a collector that reads the watch
//!   cache at scrape time;
//! - watch cache events by a task that follows the cache's event ring like a watch does.
//!
//! `/metrics` needs the bearer token like every other API path, as kube-apiserver requires
//! authentication for it. Other components of the same process (`strata up`'s controllers and
//! agents) hand their own registries to [`crate::serve_tls_with_metrics`]; they are appended to
//! this registry's output in one exposition.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cache::TooOld;
use crate::error::ApiError;
use crate::rest::App;
use crate::store::{Feed, KeyValue, Store, StoreError};

/// The content type of the OpenMetrics text format prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, seconds (1 ms … 10 s; writes wait for fsync).
const REQUEST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Store operation buckets, seconds (100 µs … 2.5 s).
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    group: String,
    resource: String,
    subresource: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: &'static str,
    group: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    group: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: &'static str,
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheEventLabels {
    group: String,
    resource: String,
    #[prometheus(flatten)]
    kind: EventKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventKind {
    r#type: &'static str,
}

/// The API server's metric families. Cheap to clone: every family is shared.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<LatencyLabels>,
    watches: Family<ResourceLabels, Gauge>,
    store_latency: HistogramFamily<StoreLabels>,
    cache_events: Family<CacheEventLabels, Counter>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(request_histogram),
            watches: Family::default(),
            store_latency: Family::new_with_constructor(store_histogram),
            cache_events: Family::default(),
        }
    }

    /// Registers every family, plus the store-size collector reading `app`'s cache and, for the
    /// embedded store, the size of `redb_file`.
    fn register(&self, registry: &mut Registry, app: Arc<App>, redb_file: Option<PathBuf>) {
        registry.register(
            "strata_apiserver_requests",
            "API requests by verb, group, resource, subresource and HTTP code",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "strata_apiserver_request_duration",
            "API request latency until the response head (watches excluded), by verb and resource",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "strata_apiserver_open_watches",
            "Watch streams currently open, by resource",
            self.watches.clone(),
        );
        registry.register_with_unit(
            "strata_apiserver_store_operation_duration",
            "Latency of store operations (until durable for writes), by operation and backend",
            Unit::Seconds,
            self.store_latency.clone(),
        );
        registry.register(
            "strata_apiserver_watch_cache_events",
            "Events the watch cache applied from the store's change feed, by resource and type",
            self.cache_events.clone(),
        );
        registry.register_collector(Box::new(StoreSize { app, redb_file }));
    }

    /// Wraps `store` so that every operation is timed under `backend` (`redb`, `etcd`).
    pub fn time_store(&self, store: Arc<dyn Store>, backend: &'static str) -> Arc<dyn Store> {
        Arc::new(TimedStore {
            inner: store,
            backend,
            latency: self.store_latency.clone(),
        })
    }
}

/// Adds `/metrics` to `router` and measures every request through it. `extra` are other
/// components' registries, encoded after the API server's own.
pub fn instrument(
    router: Router,
    app: Arc<App>,
    metrics: ApiMetrics,
    redb_file: Option<PathBuf>,
    extra: Vec<Arc<Registry>>,
) -> Router {
    let mut registry = Registry::default();
    metrics.register(&mut registry, app.clone(), redb_file);
    spawn_cache_events(app.clone(), metrics.cache_events.clone());
    let exposition = Arc::new(Exposition {
        token: app.token.clone(),
        registries: std::iter::once(Arc::new(registry)).chain(extra).collect(),
    });
    router
        .merge(
            Router::new()
                .route("/metrics", get(render))
                .with_state(exposition),
        )
        .layer(middleware::from_fn_with_state(Arc::new(metrics), track))
}

struct Exposition {
    token: Option<String>,
    registries: Vec<Arc<Registry>>,
}

async fn render(State(exposition): State<Arc<Exposition>>, headers: HeaderMap) -> Response {
    if let Some(token) = &exposition.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    match encode(&exposition.registries) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::Internal("failed to encode metrics".into()).into_response(),
    }
}

/// One OpenMetrics exposition of every registry, with a single `# EOF`.
pub fn encode(registries: &[Arc<Registry>]) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    for registry in registries {
        prometheus_client::encoding::text::encode_registry(&mut text, registry)?;
    }
    prometheus_client::encoding::text::encode_eof(&mut text)?;
    Ok(text)
}

async fn track(State(metrics): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let info = classify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        content_type,
    );
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    // Unauthenticated callers choose any path; they must not choose label values.
    let info = if status == StatusCode::UNAUTHORIZED {
        info.anonymous()
    } else {
        info
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: info.verb,
            group: info.group.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone(),
            code: status.as_u16(),
        })
        .inc();
    if info.verb == "watch" {
        if !status.is_success() {
            return response;
        }
        let labels = ResourceLabels {
            group: info.group,
            resource: info.resource,
        };
        let gauge = metrics.watches.get_or_create_owned(&labels);
        gauge.inc();
        let open = OpenWatch(gauge);
        let (parts, body) = response.into_parts();
        // The gauge goes down when the stream ends or the client leaves (the body is dropped).
        let body = Body::from_stream(body.into_data_stream().map(move |frame| {
            let _ = &open;
            frame
        }));
        return Response::from_parts(parts, body);
    }
    metrics
        .latency
        .get_or_create(&LatencyLabels {
            verb: info.verb,
            group: info.group,
            resource: info.resource,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

struct OpenWatch(Gauge);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a request is labelled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl RequestInfo {
    fn non_resource(method: &Method) -> Self {
        RequestInfo {
            verb: method_verb(method),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
        }
    }

    fn anonymous(self) -> Self {
        RequestInfo {
            verb: self.verb,
            ..RequestInfo::non_resource(&Method::GET)
        }
    }
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

/// Labels a request like kube-apiserver: the Kubernetes verb (list/watch/get/create/update/
/// patch/apply/delete/deletecollection) and group/resource/subresource for resource paths; the
/// lowercase HTTP method and empty resource for everything else (discovery, OpenAPI, /ui, …).
pub(crate) fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    content_type: &str,
) -> RequestInfo {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/") {
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(group), Some(_version), Some(rest)) => (group, rest),
            _ => return RequestInfo::non_resource(method),
        }
    } else {
        return RequestInfo::non_resource(method);
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // `namespaces/<ns>/<plural>[/<name>[/<sub>]]`, except the Namespace's own subresources.
    let (resource, name, subresource) = match segs.as_slice() {
        [] => return RequestInfo::non_resource(method),
        ["namespaces", ns, sub @ ("status" | "finalize")] => ("namespaces", Some(*ns), *sub),
        ["namespaces", _, plural, rest @ ..] => (*plural, rest.first().copied(), {
            rest.get(1).copied().unwrap_or_default()
        }),
        [plural, rest @ ..] => (*plural, rest.first().copied(), {
            rest.get(1).copied().unwrap_or_default()
        }),
    };
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    });
    let verb = match (method, name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) if content_type.starts_with("application/apply-patch") => "apply",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (other, _) => method_verb(other),
    };
    RequestInfo {
        verb,
        group: group.to_string(),
        resource: resource.to_string(),
        subresource: subresource.to_string(),
    }
}

/// A [`Store`] that times every call.
struct TimedStore {
    inner: Arc<dyn Store>,
    backend: &'static str,
    latency: HistogramFamily<StoreLabels>,
}

impl TimedStore {
    fn time<T>(&self, operation: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = f();
        self.latency
            .get_or_create(&StoreLabels {
                operation,
                backend: self.backend,
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

impl Store for TimedStore {
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError> {
        self.time("snapshot", || self.inner.snapshot())
    }
    fn follow(&self) -> Result<(u64, Vec<KeyValue>, Feed), StoreError> {
        self.time("follow", || self.inner.follow())
    }
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.time("get", || self.inner.get(key))
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.time("create", || self.inner.create(key, value))
    }
    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError> {
        self.time("update", || self.inner.update(key, expected, value))
    }
    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError> {
        self.time("delete", || self.inner.delete(key, expected))
    }
    fn close(&self) {
        self.inner.close()
    }
}

/// `(group, resource)` of a store key `/registry/[<group>/]<plural>/...`. Built-in core kinds
/// have no group, and no core plural contains a dot, while every group does.
pub(crate) fn key_resource(key: &str) -> Option<(&str, &str)> {
    let mut segs = key.strip_prefix(crate::store::PREFIX)?.split('/');
    let first = segs.next()?;
    if first.contains('.') {
        Some((first, segs.next()?))
    } else {
        Some(("", first))
    }
}

/// Store size, read at scrape time: objects per resource from the watch cache (which holds
/// every stored object) and the embedded store's file size.
struct StoreSize {
    app: Arc<App>,
    redb_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSize")
            .field("redb_file", &self.redb_file)
            .finish_non_exhaustive()
    }
}

impl Collector for StoreSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let objects: Family<ResourceLabels, Gauge> = Family::default();
        let (_, items) = self.app.cache.list(crate::store::PREFIX, None);
        for (key, _) in &items {
            if let Some((group, resource)) = key_resource(key) {
                objects
                    .get_or_create(&ResourceLabels {
                        group: group.to_string(),
                        resource: resource.to_string(),
                    })
                    .inc();
            }
        }
        let descriptor = encoder.encode_descriptor(
            "strata_apiserver_store_objects",
            "Objects in the store, by resource",
            None,
            objects.metric_type(),
        )?;
        objects.encode(descriptor)?;

        let bytes: Gauge = Gauge::default();
        if let Some(len) = self
            .redb_file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok())
        {
            bytes.set(i64::try_from(len.len()).unwrap_or(i64::MAX));
        }
        let unit = Unit::Bytes;
        let descriptor = encoder.encode_descriptor(
            "strata_apiserver_store_size",
            "Size on disk of the embedded (redb) store file; 0 with etcd",
            Some(&unit),
            bytes.metric_type(),
        )?;
        bytes.encode(descriptor)?;
        Ok(())
    }
}

/// Counts the events the watch cache applies, following its ring as a watch does.
fn spawn_cache_events(app: Arc<App>, counter: Family<CacheEventLabels, Counter>) {
    tokio::spawn(async move {
        let mut revisions = app.cache.subscribe();
        let mut shutdown = app.shutdown.clone();
        let mut last = app.cache.revision();
        loop {
            revisions.mark_unchanged();
            match app.cache.events_since(last) {
                Ok((events, up_to)) => {
                    last = up_to;
                    for event in events {
                        let Some((group, resource)) = key_resource(&event.key) else {
                            continue;
                        };
                        counter
                            .get_or_create(&CacheEventLabels {
                                group: group.to_string(),
                                resource: resource.to_string(),
                                kind: EventKind {
                                    r#type: event.type_.as_str(),
                                },
                            })
                            .inc();
                    }
                }
                // Fell behind the ring (a burst larger than it): skip to now.
                Err(TooOld { .. }) => last = app.cache.revision(),
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Bytes;
    use tower::ServiceExt;

    use super::*;
    use crate::cache::Cache;
    use crate::store::RedbStore;

    fn request(path: &str, token: Option<&str>) -> Request {
        let mut req = Request::builder().uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Body::empty()).expect("request")
    }

    async fn scrape(router: &Router) -> String {
        let resp = router
            .clone()
            .oneshot(request("/metrics", Some("secret")))
            .await
            .expect("served");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn metrics_need_the_token_and_watches_are_counted_while_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.redb");
        let metrics = ApiMetrics::new();
        let store = metrics.time_store(Arc::new(RedbStore::open(&file).expect("open")), "redb");
        let cache = Cache::load(store, 100).expect("load");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let app = Arc::new(App::new(
            cache,
            Some("secret".into()),
            stopped,
            Duration::from_secs(60),
        ));
        app.ensure_namespace("default").expect("namespace");
        // Stands in for the API: every resource path answers with a stream that stays open.
        let api = Router::new().route(
            "/apis/{*rest}",
            get(|| async {
                Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
            }),
        );
        let router = instrument(api, app, metrics, Some(file), Vec::new());

        let anonymous = router
            .clone()
            .oneshot(request("/metrics", None))
            .await
            .expect("served");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

        let watch = router
            .clone()
            .oneshot(request(
                "/apis/strata.io/v1alpha1/hosts?watch=true",
                Some("secret"),
            ))
            .await
            .expect("served");
        let open = r#"strata_apiserver_open_watches{group="strata.io",resource="hosts"}"#;
        let text = scrape(&router).await;
        assert!(text.contains(&format!("{open} 1")), "{text}");
        assert!(
            text.contains(
                r#"strata_apiserver_requests_total{verb="watch",group="strata.io",resource="hosts",subresource="",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"strata_apiserver_requests_total{verb="get",group="",resource="",subresource="",code="401"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"strata_apiserver_store_objects{group="",resource="namespaces"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"strata_apiserver_store_operation_duration_seconds_count{operation="create",backend="redb"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("strata_apiserver_store_size_bytes 0"),
            "{text}"
        );

        drop(watch);
        let text = scrape(&router).await;
        assert!(text.contains(&format!("{open} 0")), "{text}");
    }

    fn info(method: Method, path: &str, query: Option<&str>) -> (String, String, String, String) {
        let i = classify(&method, path, query, "application/json");
        (i.verb.into(), i.group, i.resource, i.subresource)
    }

    fn t(verb: &str, group: &str, resource: &str, sub: &str) -> (String, String, String, String) {
        (verb.into(), group.into(), resource.into(), sub.into())
    }

    #[test]
    fn resource_paths_get_kubernetes_verbs() {
        let vms = "/apis/strata.io/v1alpha1/namespaces/default/virtualmachines";
        assert_eq!(
            info(Method::GET, vms, None),
            t("list", "strata.io", "virtualmachines", "")
        );
        assert_eq!(
            info(Method::GET, vms, Some("watch=true&resourceVersion=5")),
            t("watch", "strata.io", "virtualmachines", "")
        );
        assert_eq!(
            info(Method::POST, vms, None),
            t("create", "strata.io", "virtualmachines", "")
        );
        assert_eq!(
            info(Method::PATCH, &format!("{vms}/demo/status"), None),
            t("patch", "strata.io", "virtualmachines", "status")
        );
        assert_eq!(
            info(Method::DELETE, &format!("{vms}/demo"), None),
            t("delete", "strata.io", "virtualmachines", "")
        );
        assert_eq!(
            info(Method::DELETE, vms, None),
            t("deletecollection", "strata.io", "virtualmachines", "")
        );
        assert_eq!(
            info(Method::GET, "/apis/strata.io/v1alpha1/hosts/h1", None),
            t("get", "strata.io", "hosts", "")
        );
        let apply = classify(
            &Method::PATCH,
            &format!("{vms}/demo"),
            None,
            "application/apply-patch+yaml",
        );
        assert_eq!(apply.verb, "apply");
    }

    #[test]
    fn core_paths_and_namespace_subresources() {
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces", None),
            t("list", "", "namespaces", "")
        );
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/default", None),
            t("get", "", "namespaces", "")
        );
        assert_eq!(
            info(Method::PUT, "/api/v1/namespaces/x/finalize", None),
            t("update", "", "namespaces", "finalize")
        );
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/x/events/e", None),
            t("get", "", "events", "")
        );
    }

    #[test]
    fn other_paths_are_non_resource() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/strata.io",
            "/apis/strata.io/v1alpha1",
            "/openapi/v3",
            "/ui/",
            "/metrics",
        ] {
            assert_eq!(
                info(Method::GET, path, None),
                t("get", "", "", ""),
                "{path}"
            );
        }
    }

    #[test]
    fn store_keys_name_their_resource() {
        assert_eq!(
            key_resource("/registry/strata.io/virtualmachines/default/a"),
            Some(("strata.io", "virtualmachines"))
        );
        assert_eq!(
            key_resource("/registry/namespaces/default"),
            Some(("", "namespaces"))
        );
        assert_eq!(key_resource("/elsewhere/x"), None);
    }

    #[test]
    fn registries_share_one_eof() {
        let mut a = Registry::default();
        let counter: Counter = Counter::default();
        counter.inc();
        a.register("a_things", "things", counter);
        let mut b = Registry::default();
        b.register("b_level", "level", Gauge::<i64>::default());
        let text = encode(&[Arc::new(a), Arc::new(b)]).expect("encodes");
        assert!(text.contains("a_things_total 1"), "{text}");
        assert!(text.contains("# TYPE b_level gauge"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
