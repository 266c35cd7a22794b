//! The HTTP surface: one route table, discovery and OpenAPI handlers, and the parsing of resource
//! paths into [`ResourceRequest`]s for the verbs in [`crate::rest`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceDef;
use crate::rest::{App, ResourceRequest};
use crate::{discovery, openapi, protobuf, rest, watch};

type AppState = State<Arc<App>>;
type Params = Query<HashMap<String, String>>;

/// Request bodies larger than this get 413, as kube-apiserver caps them (its
/// `MaxRequestBodyBytes`, 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Every route the server answers.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(core_resources))
        .route("/apis", get(api_groups))
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/api/{version}", get(openapi_v3_core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_v3_group))
        .route("/api/v1/{*path}", any(core_resource))
        .route("/apis/{group}/{version}/{*path}", any(group_resource))
        .fallback(|| async { ApiError::NoSuchResource })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
        // Merged after the auth layer: the console's files are public, and the page calls the
        // API above with the user's token.
        .merge(strata_dashboard::router())
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    json_response_with_warnings(code, body, &[])
}

/// A JSON response; `warnings` become `Warning: 299 - "..."` headers, which kubectl prints.
pub fn json_response_with_warnings(
    code: StatusCode,
    body: &Value,
    warnings: &[String],
) -> Response {
    bytes_response(code, serde_json::to_vec(body).unwrap_or_default(), warnings)
}

/// Like [`json_response_with_warnings`], for a body that is already encoded.
pub fn bytes_response(code: StatusCode, bytes: Vec<u8>, warnings: &[String]) -> Response {
    let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

async fn authenticate(State(app): AppState, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/livez" | "/readyz") && req.method() == Method::GET;
    if let (Some(token), false) = (&app.token, open) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn health() -> &'static str {
    "ok"
}

async fn version() -> Response {
    json_response(StatusCode::OK, &discovery::version())
}

async fn api_versions() -> Response {
    json_response(StatusCode::OK, &discovery::api_versions())
}

async fn core_resources(State(app): AppState) -> Response {
    match discovery::resource_list(&app.registry(), "", "v1") {
        Some(list) => json_response(StatusCode::OK, &list),
        None => ApiError::NoSuchResource.into_response(),
    }
}

async fn api_groups(State(app): AppState) -> Response {
    json_response(StatusCode::OK, &discovery::api_group_list(&app.registry()))
}

async fn api_group(State(app): AppState, Path(group): Path<String>) -> Response {
    match discovery::api_group(&app.registry(), &group) {
        Some(g) => json_response(StatusCode::OK, &g),
        None => ApiError::NoSuchResource.into_response(),
    }
}

async fn group_resources(
    State(app): AppState,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match discovery::resource_list(&app.registry(), &group, &version) {
        Some(list) => json_response(StatusCode::OK, &list),
        None => ApiError::NoSuchResource.into_response(),
    }
}

async fn openapi_v2() -> Response {
    // An empty gnostic Document: enough for kubectl 1.27/1.28, which then skip client-side
    // validation for kinds without a schema.
    (
        [(header::CONTENT_TYPE, openapi::V2_CONTENT_TYPE)],
        Body::empty(),
    )
        .into_response()
}

async fn openapi_v3_index(State(app): AppState) -> Response {
    json_response(StatusCode::OK, &openapi::index(&app.registry()))
}

fn openapi_v3_document(app: &App, group: &str, version: &str) -> Response {
    let reg = app.registry();
    if reg.in_group_version(group, version).next().is_none() {
        return ApiError::NoSuchResource.into_response();
    }
    json_response(StatusCode::OK, &openapi::document(&reg, group, version))
}

async fn openapi_v3_core(State(app): AppState, Path(version): Path<String>) -> Response {
    openapi_v3_document(&app, "", &version)
}

async fn openapi_v3_group(
    State(app): AppState,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    openapi_v3_document(&app, &group, &version)
}

async fn core_resource(
    State(app): AppState,
    Path(path): Path<String>,
    Query(query): Params,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    resource(app, "", "v1", &path, query, method, headers, body).await
}

async fn group_resource(
    State(app): AppState,
    Path((group, version, path)): Path<(String, String, String)>,
    Query(query): Params,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    resource(app, &group, &version, &path, query, method, headers, body).await
}

/// (resource, namespace, name, subresource) of a resource path.
type ParsedPath = (
    Arc<crate::registry::ResourceDef>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Splits `[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]` into its parts.
fn parse_path(app: &App, group: &str, version: &str, path: &str) -> Result<ParsedPath, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let reg = app.registry();
    // `namespaces/<ns>/<plural>...` is namespaced unless <plural> is not a namespaced resource
    // (then it is the Namespace object's own subresource, like `namespaces/x/status`).
    if segs.len() >= 3 && segs[0] == "namespaces" {
        if let Some(def) = reg.get(group, version, segs[2]).filter(|d| d.namespaced) {
            if segs.len() > 5 {
                return Err(ApiError::NoSuchResource);
            }
            return Ok((
                def,
                Some(segs[1].to_string()),
                segs.get(3).map(|s| s.to_string()),
                segs.get(4).map(|s| s.to_string()),
            ));
        }
    }
    if segs.is_empty() || segs.len() > 3 {
        return Err(ApiError::NoSuchResource);
    }
    let def = reg
        .get(group, version, segs[0])
        .ok_or(ApiError::NoSuchResource)?;
    Ok((
        def,
        None,
        segs.get(1).map(|s| s.to_string()),
        segs.get(2).map(|s| s.to_string()),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    app: Arc<App>,
    group: &str,
    version: &str,
    path: &str,
    query: HashMap<String, String>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::TooLarge(MAX_BODY_BYTES).into_response()
        }
        Err(rejection) => return ApiError::BadRequest(rejection.body_text()).into_response(),
    };
    let result = if method == Method::GET {
        // Reads are served from memory; watches need the async runtime.
        dispatch(app, group, version, path, query, method, headers, body)
    } else {
        // Writes wait for the store's fsync; keep that off the async workers so watches and
        // reads keep flowing while the disk works.
        let (group, version, path) = (group.to_string(), version.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || {
            dispatch(app, &group, &version, &path, query, method, headers, body)
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::Internal(format!("request handler failed: {e}"))))
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    app: Arc<App>,
    group: &str,
    version: &str,
    path: &str,
    query: HashMap<String, String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (def, namespace, name, subresource) = parse_path(&app, group, version, path)?;
    if let Some(sub) = &subresource {
        if sub != "status" || !def.status_subresource {
            return Err(ApiError::NoSuchResource);
        }
    }
    let is_watch = query.get("watch").and_then(|w| rest::parse_bool(w)) == Some(true);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let req = ResourceRequest {
        def,
        namespace,
        name,
        subresource,
        query,
        headers,
    };
    let body = if matches!(method, Method::POST | Method::PUT) {
        decode_body(&req.def, &content_type, body)?
    } else {
        body
    };
    match (method, req.name.is_some()) {
        (Method::GET, _) if is_watch && req.subresource.is_none() => watch::watch(app, &req),
        (Method::GET, false) => app.list(&req),
        (Method::GET, true) => app.get(&req),
        (Method::POST, false) => app.create(&req, &body),
        (Method::PUT, true) => app.update(&req, &body),
        (Method::PATCH, true) => app.patch(&req, &content_type, &body),
        (Method::DELETE, true) if req.subresource.is_none() => app.delete(&req, &body),
        (Method::DELETE, false) => app.delete_collection(&req, &body),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Create and update bodies are JSON or YAML, or protobuf for the built-in kinds kubectl 1.33
/// encodes that way; anything else is refused with 415 as kube-apiserver does. A missing
/// Content-Type is read as JSON, as curl users expect.
fn decode_body(def: &ResourceDef, content_type: &str, body: Bytes) -> Result<Bytes, ApiError> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" => {
            Ok(body)
        }
        protobuf::MEDIA_TYPE if def.group.is_empty() => {
            let json = protobuf::to_json(&def.kind, &body)?;
            Ok(Bytes::from(json.to_string()))
        }
        _ => Err(ApiError::UnsupportedMediaType(
            "application/json, application/yaml",
        )),
    }
}
