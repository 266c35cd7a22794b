//! The REST verbs, generic over every served kind.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use crate::cache::{resource_version, Cache};
use crate::cached::Cached;
use crate::error::{ApiError, ApplyConflict, Cause};
use crate::gc::Propagation;
use crate::handlers::{bytes_response, json_response_with_warnings};
use crate::objects::{self, finalizers, is_terminating, meta_mut};
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::StoreError;
use crate::table::{self, IncludeObject, Rendering};
use crate::{ssa, validation};

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
const NAMESPACE_PREFIX: &str = "/registry/namespaces/";

pub struct App {
    pub cache: Cache,
    registry: RwLock<Arc<Registry>>,
    pub token: Option<String>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub bookmark_interval: Duration,
}

/// A parsed request for a resource (collection, object or subresource).
pub struct ResourceRequest {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl ResourceRequest {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    /// A boolean query parameter. kube-apiserver parses these with Go's `strconv.ParseBool`, and
    /// clients rely on it: the Python client sends `watch=True`.
    pub fn flag(&self, k: &str) -> Option<bool> {
        self.param(k).and_then(parse_bool)
    }
    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }
    pub fn rendering(&self) -> Rendering {
        Rendering::from_accept(self.headers.get("accept").and_then(|v| v.to_str().ok()))
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    fn key(&self) -> String {
        self.def.key(self.namespace.as_deref(), self.name())
    }
    fn status_only(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
    /// `fieldManager`, defaulting like upstream to the User-Agent's first word.
    fn manager(&self) -> String {
        if let Some(m) = self.param("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        self.headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }
}

fn map_store_error(def: &ResourceDef, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::AlreadyExists(def.target(name)),
        StoreError::NotFound(_) => ApiError::NotFound(def.target(name)),
        StoreError::Conflict { .. } => ApiError::Conflict(def.target(name)),
        other => ApiError::from(other),
    }
}

/// The object as the client sees it through `def`'s version.
pub fn present(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(def.api_version());
    o
}

/// A cached object as the client sees it through `def`'s version.
pub fn present_cached(def: &ResourceDef, obj: &Cached) -> Value {
    let mut o = obj.value();
    o["apiVersion"] = json!(def.api_version());
    o
}

/// What a write answers with: the stored object, or one built for this reply only (dry runs,
/// writes that changed nothing).
pub(crate) enum Written {
    Stored(Arc<Cached>),
    Built(Value),
}

impl Written {
    fn into_value(self) -> Value {
        match self {
            Written::Stored(obj) => obj.value(),
            Written::Built(obj) => obj,
        }
    }

    fn respond(&self, req: &ResourceRequest, status: StatusCode, warnings: &[String]) -> Response {
        match self {
            Written::Stored(obj) => respond_cached(req, obj, status, warnings),
            Written::Built(obj) => {
                json_response_with_warnings(status, &render_one(req, obj), warnings)
            }
        }
    }
}

/// Answers with one cached object; the common rendering needs no decoding.
fn respond_cached(
    req: &ResourceRequest,
    obj: &Cached,
    status: StatusCode,
    warnings: &[String],
) -> Response {
    match req.rendering() {
        Rendering::Object => bytes_response(status, obj.to_json(&req.def.api_version()), warnings),
        _ => json_response_with_warnings(status, &render_one(req, &obj.value()), warnings),
    }
}

fn render_one(req: &ResourceRequest, obj: &Value) -> Value {
    let obj = present(&req.def, obj);
    match req.rendering() {
        Rendering::Object => obj,
        Rendering::Metadata => table::partial_metadata(&obj),
        Rendering::Table => table::table(
            &req.def,
            &[obj],
            json!({"resourceVersion": ""}),
            IncludeObject::parse(req.param("includeObject")),
            true,
        ),
    }
}

/// Parsed `?labelSelector=&fieldSelector=`, with field labels checked against the kind.
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn from_request(req: &ResourceRequest) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
            .map_err(ApiError::BadRequest)?;
        let mut fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default())
            .map_err(ApiError::BadRequest)?;
        for f in fields.fields() {
            let ok = f == "metadata.name"
                || (f == "metadata.namespace" && req.def.namespaced)
                || req.def.selectable_fields.iter().any(|s| s == f);
            if !ok {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        // A request for one object's collection path (watch on a name) pins the name.
        if let Some(name) = &req.name {
            match fields.pinned_name() {
                Some(n) if n != name => {
                    return Err(ApiError::BadRequest(format!(
                        "fieldSelector metadata.name={n} does not match the name on the URL {name}"
                    )))
                }
                Some(_) => {}
                None => fields.add_name(name),
            }
        }
        Ok(Filter { labels, fields })
    }

    /// The field value every match has, for routing watch events by it.
    pub fn pin(&self) -> Option<crate::routes::Pin> {
        self.fields
            .first_equality()
            .map(|(path, value)| crate::routes::Pin {
                path: path.to_string(),
                value: value.to_string(),
            })
    }

    pub fn matches(&self, obj: &Cached) -> bool {
        self.labels.matches(obj.labels()) && self.fields.matches(|f| obj.field(f))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

impl App {
    pub fn new(
        cache: Cache,
        token: Option<String>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        bookmark_interval: Duration,
    ) -> App {
        let app = App {
            cache,
            registry: RwLock::new(Arc::new(Registry::default())),
            token,
            shutdown,
            bookmark_interval,
        };
        app.rebuild_registry();
        app
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn rebuild_registry(&self) {
        let (_, crds) = self.cache.list(CRD_PREFIX, None);
        let crds: Vec<Value> = crds.into_iter().map(|(_, v)| v.value()).collect();
        let reg = Arc::new(Registry::build(&crds));
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = reg;
    }

    fn builtin(&self, group: &str, plural: &str) -> Result<Arc<ResourceDef>, ApiError> {
        let version = "v1";
        self.registry()
            .get(group, version, plural)
            .ok_or_else(|| ApiError::Internal(format!("built-in {plural} missing")))
    }

    pub fn ensure_namespace(&self, name: &str) -> Result<(), ApiError> {
        let def = self.builtin("", "namespaces")?;
        if self.cache.get(&def.key(None, name)).is_some() {
            return Ok(());
        }
        let mut obj = json!({"metadata": {"name": name}});
        objects::prepare_create(&def, &mut obj, None)?;
        obj["status"] = json!({"phase": "Active"});
        self.cache
            .create(&def.key(None, name), obj)
            .map(|_| ())
            .or_else(|e| match e {
                StoreError::AlreadyExists(_) => Ok(()),
                other => Err(map_store_error(&def, name, other)),
            })
    }

    /// Creates or updates a CRD from `strata up`'s list.
    pub fn install_crd(&self, mut crd: Value) -> Result<(), ApiError> {
        let def = self.builtin("apiextensions.k8s.io", "customresourcedefinitions")?;
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = def.key(None, &name);
        validate_crd(&def, &crd)?;
        match self.cache.get(&key) {
            None => {
                objects::prepare_create(&def, &mut crd, None)?;
                crd_status(&mut crd);
                self.cache
                    .create(&key, crd)
                    .map_err(|e| map_store_error(&def, &name, e))?;
            }
            Some(old) => {
                let old = old.value();
                let mut new = objects::prepare_update(&def, &old, crd, false)?;
                crd_status(&mut new);
                if objects::meaningfully_differs(&old, &new) {
                    self.cache
                        .update(&key, resource_version(&old), new)
                        .map_err(|e| map_store_error(&def, &name, e))?;
                }
            }
        }
        self.rebuild_registry();
        Ok(())
    }

    // ---- reads ----

    pub fn get(&self, req: &ResourceRequest) -> Result<Response, ApiError> {
        let obj = self
            .cache
            .get(&req.key())
            .ok_or_else(|| ApiError::NotFound(req.def.target(req.name())))?;
        Ok(respond_cached(req, &obj, StatusCode::OK, &[]))
    }

    pub fn list(&self, req: &ResourceRequest) -> Result<Response, ApiError> {
        let filter = Filter::from_request(req)?;
        let prefix = req.def.list_prefix(req.namespace.as_deref());
        let limit = req
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let token = match req.param("continue").filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_continue(c)?),
            None => None,
        };
        let after = token.as_ref().map(|t| t.start.clone());
        // Every page of a paginated list shows the state at the first page's revision; so does
        // an explicit resourceVersion with resourceVersionMatch=Exact (or with a limit).
        let requested: Option<u64> = req
            .param("resourceVersion")
            .filter(|rv| !rv.is_empty() && *rv != "0")
            .map(|rv| {
                rv.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))
            })
            .transpose()?;
        let exact = match (req.param("resourceVersionMatch"), limit) {
            (Some("Exact"), _) | (None, Some(_)) => requested,
            _ => None,
        };
        let (list_rev, items) = match token.as_ref().map(|t| t.rv).or(exact) {
            Some(at) => {
                let items = self.cache.list_at(&prefix, after.as_deref(), at).map_err(|_| {
                    if token.is_some() {
                        ApiError::Expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
                    } else {
                        ApiError::Expired(format!("too old resource version: {at}"))
                    }
                })?;
                (at, items)
            }
            None => self.cache.list(&prefix, after.as_deref()),
        };
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        let mut iter = items
            .into_iter()
            .filter(|(_, o)| filter.matches(o))
            .peekable();
        while let Some((key, obj)) = iter.next() {
            out.push(obj);
            if limit.is_some_and(|l| out.len() >= l) && iter.peek().is_some() {
                next = Some(key);
                break;
            }
        }
        let mut list_meta = json!({"resourceVersion": list_rev.to_string()});
        if let Some(start) = next {
            let token = serde_json::to_vec(&ContinueToken {
                rv: list_rev,
                start,
            })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            list_meta["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        }
        let presented = |out: Vec<Arc<Cached>>| -> Vec<Value> {
            out.iter().map(|o| present_cached(&req.def, o)).collect()
        };
        let body = match req.rendering() {
            Rendering::Object => return Ok(list_response(&req.def, &list_meta, out)),
            Rendering::Metadata => table::partial_metadata_list(&presented(out), list_meta),
            Rendering::Table => table::table(
                &req.def,
                &presented(out),
                list_meta,
                IncludeObject::parse(req.param("includeObject")),
                true,
            ),
        };
        Ok(ok(&body))
    }

    // ---- writes ----

    /// Parses a request body (JSON, or YAML for apply), and validates it against the schema.
    /// Returns the warnings for unknown fields when they are not an error.
    /// Defaults, prunes and validates `obj` (structural schema, then CEL rules; `old` is the
    /// stored object on update, for transition rules).
    fn check_schema(
        &self,
        req: &ResourceRequest,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        let (Some(schema), Some(root)) = (&req.def.schema, &req.def.validation_schema) else {
            return Ok(vec![]);
        };
        if let Some(rules) = &req.def.rules {
            rules.apply_defaults(schema, obj);
        }
        let mut outcome = validation::validate(root, obj);
        // CEL rules assume a structurally valid object, as upstream runs them only then.
        if let (true, Some(rules)) = (outcome.causes.is_empty(), &req.def.rules) {
            outcome.causes = rules.validate(schema, obj, old);
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or(req.name())
            .to_string();
        let mode = req.param("fieldValidation").unwrap_or("Warn");
        let mut warnings = Vec::new();
        if !outcome.unknown.is_empty() {
            let msgs: Vec<String> = outcome
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            match mode {
                "Strict" => {
                    return Err(ApiError::BadRequest(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )))
                }
                "Ignore" => {}
                _ => warnings = msgs,
            }
        }
        if !outcome.causes.is_empty() {
            return Err(ApiError::Invalid(req.def.target(&name), outcome.causes));
        }
        Ok(warnings)
    }

    fn require_namespace(&self, req: &ResourceRequest) -> Result<(), ApiError> {
        if let (true, Some(ns)) = (req.def.namespaced, req.namespace.as_deref()) {
            if self.cache.get(&format!("{NAMESPACE_PREFIX}{ns}")).is_none() {
                let def = self.builtin("", "namespaces")?;
                return Err(ApiError::NotFound(def.target(ns)));
            }
        }
        Ok(())
    }

    pub fn create(&self, req: &ResourceRequest, body: &[u8]) -> Result<Response, ApiError> {
        if req.def.namespaced && req.namespace.is_none() {
            return Err(ApiError::MethodNotAllowed);
        }
        let obj = parse_body(body)?;
        let (status, obj, warnings) = self.create_object(req, obj)?;
        Ok(obj.respond(req, status, &warnings))
    }

    fn create_object(
        &self,
        req: &ResourceRequest,
        mut obj: Value,
    ) -> Result<(StatusCode, Written, Vec<String>), ApiError> {
        self.require_namespace(req)?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let generate = obj["metadata"]["generateName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() && generate.is_empty() {
            return Err(ApiError::Invalid(
                req.def.target(""),
                vec![Cause::new(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
        let mut warnings = self.check_schema(req, &mut obj, None)?;
        objects::prepare_create(&req.def, &mut obj, req.namespace.as_deref())?;
        if req.def.kind == "CustomResourceDefinition" {
            validate_crd(&req.def, &obj)?;
            crd_status(&mut obj);
        }
        if req.def.plural == "namespaces" && req.def.group.is_empty() {
            obj["status"] = json!({"phase": "Active"});
        }
        let manager = req.manager();
        let fields = ssa::to_fields_v1(&ssa::set_of(
            req.def.ssa_schema(),
            &ssa::owned_part(&obj, false),
        ));
        objects::record_manager(
            &mut obj,
            &manager,
            "Update",
            &req.def.api_version(),
            None,
            fields,
        );
        // generateName: retry a few random suffixes on collision, as upstream does.
        let attempts = if name.is_empty() { 8 } else { 1 };
        for attempt in 0..attempts {
            let name = if name.is_empty() {
                let base: String = generate.chars().take(58).collect();
                format!("{base}{}", random_suffix())
            } else {
                name.clone()
            };
            meta_mut(&mut obj).insert("name".into(), json!(name));
            objects::validate_metadata(&req.def, &obj)?;
            let key = req.def.key(req.namespace.as_deref(), &name);
            if req.dry_run() {
                if self.cache.get(&key).is_some() {
                    return Err(ApiError::AlreadyExists(req.def.target(&name)));
                }
                return Ok((StatusCode::CREATED, Written::Built(obj), warnings));
            }
            // Only generateName retries need the object again.
            let attempt_obj = if attempt + 1 < attempts {
                obj.clone()
            } else {
                std::mem::take(&mut obj)
            };
            match self.cache.create(&key, attempt_obj) {
                Ok(created) => {
                    self.after_write(&req.def);
                    return Ok((
                        StatusCode::CREATED,
                        Written::Stored(created),
                        std::mem::take(&mut warnings),
                    ));
                }
                Err(StoreError::AlreadyExists(_)) if attempt + 1 < attempts => continue,
                Err(e) => return Err(map_store_error(&req.def, &name, e)),
            }
        }
        Err(ApiError::AlreadyExists(req.def.target(&name)))
    }

    pub fn update(&self, req: &ResourceRequest, body: &[u8]) -> Result<Response, ApiError> {
        let mut new = parse_body(body)?;
        let name = req.name().to_string();
        if let Some(body_name) = new["metadata"]["name"].as_str() {
            if body_name != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        let Some(rv) = new["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        else {
            return Err(ApiError::Invalid(
                req.def.target(&name),
                vec![Cause::new(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )],
            ));
        };
        let expected: u64 = rv
            .parse()
            .map_err(|_| ApiError::Conflict(req.def.target(&name)))?;
        let old = self
            .cache
            .get(&req.key())
            .ok_or_else(|| ApiError::NotFound(req.def.target(&name)))?;
        if old.rev() != expected {
            return Err(ApiError::Conflict(req.def.target(&name)));
        }
        let old = old.value();
        let warnings = self.check_schema(req, &mut new, Some(&old))?;
        let (obj, _) = self.commit_update(req, &old, new, "Update", None)?;
        Ok(obj.respond(req, StatusCode::OK, &warnings))
    }

    /// Validates, records the manager, and writes `new` over `old` with compare-and-swap.
    /// Returns the stored object and whether the write deleted it (last finalizer removed).
    fn commit_update(
        &self,
        req: &ResourceRequest,
        old: &Value,
        new: Value,
        operation: &str,
        apply_fields: Option<Value>,
    ) -> Result<(Written, bool), ApiError> {
        let name = req.name().to_string();
        let mut new = objects::prepare_update(&req.def, old, new, req.status_only())?;
        objects::validate_metadata(&req.def, &new)?;
        if req.def.kind == "CustomResourceDefinition" && !req.status_only() {
            validate_crd(&req.def, &new)?;
            crd_status(&mut new);
        }
        let manager = req.manager();
        let fields = match apply_fields {
            Some(fields) => Some(fields),
            None => self.update_ownership(req, &manager, old, &mut new),
        };
        if let Some(fields) = fields {
            objects::record_manager(
                &mut new,
                &manager,
                operation,
                &req.def.api_version(),
                req.subresource.as_deref(),
                fields,
            );
        }
        let key = req.key();
        let expected = resource_version(old);
        if is_terminating(&new) && finalizers(&new).is_empty() {
            if req.dry_run() {
                return Ok((Written::Built(new), true));
            }
            let gone = self
                .cache
                .delete(&key, expected)
                .map_err(|e| map_store_error(&req.def, &name, e))?;
            self.after_delete(&req.def, &gone.value(), Propagation::Background);
            return Ok((Written::Stored(gone), true));
        }
        if !objects::meaningfully_differs(old, &new) || req.dry_run() {
            // Nothing observable changes: no write, no event, same resourceVersion.
            return Ok((
                Written::Built(if req.dry_run() { new } else { old.clone() }),
                false,
            ));
        }
        let stored = self
            .cache
            .update(&key, expected, new)
            .map_err(|e| map_store_error(&req.def, &name, e))?;
        self.after_write(&req.def);
        Ok((Written::Stored(stored), false))
    }

    pub fn patch(
        &self,
        req: &ResourceRequest,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let patch_type =
            PatchType::from_content_type(content_type).ok_or(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ))?;
        if patch_type != PatchType::Apply && req.param("force").is_some() {
            return Err(ApiError::Invalid(
                req.def.target(req.name()),
                vec![Cause::new(
                    "FieldValueForbidden",
                    "force",
                    "Forbidden: may not be specified for non-apply patch",
                )],
            ));
        }
        let manager = req.param("fieldManager").unwrap_or_default();
        if patch_type == PatchType::Apply && manager.is_empty() {
            return Err(ApiError::Invalid(
                req.def.target(req.name()),
                vec![Cause::new(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                )],
            ));
        }
        // Patches apply to the current object inside a compare-and-swap loop; a conflict just
        // means someone else wrote in between, unless the patch itself pinned a resourceVersion.
        for _ in 0..16 {
            let current = self.cache.get(&req.key());
            let Some(current) = current else {
                if patch_type == PatchType::Apply && !req.status_only() {
                    return self.apply_create(req, body);
                }
                return Err(ApiError::NotFound(req.def.target(req.name())));
            };
            let current = current.value();
            let mut doc = present(&req.def, &current);
            let mut apply_fields = None;
            match patch_type {
                PatchType::Json => patch::apply_json_patch(&mut doc, body).map_err(|e| {
                    ApiError::Invalid(
                        req.def.target(req.name()),
                        vec![Cause::new("FieldValueInvalid", "", e)],
                    )
                })?,
                PatchType::Merge => {
                    patch::apply_merge_patch(&mut doc, body).map_err(ApiError::BadRequest)?
                }
                PatchType::Apply => {
                    let applied = parse_apply(body)?;
                    apply_fields = Some(self.apply(req, manager, &current, &mut doc, &applied)?);
                }
            }
            let pinned = doc["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            if pinned
                .as_deref()
                .is_some_and(|rv| rv != resource_version(&current).to_string())
            {
                return Err(ApiError::Conflict(req.def.target(req.name())));
            }
            let warnings = self.check_schema(req, &mut doc, Some(&current))?;
            let op = if patch_type == PatchType::Apply {
                "Apply"
            } else {
                "Update"
            };
            match self.commit_update(req, &current, doc, op, apply_fields) {
                Ok((obj, _)) => return Ok(obj.respond(req, StatusCode::OK, &warnings)),
                // `pinned` holds the current object's resourceVersion whenever the patch did not
                // set one, so it cannot tell the two apart; the next turn can: a patch that
                // pinned a version now older than the object fails the check above.
                Err(ApiError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Conflict(req.def.target(req.name())))
    }

    /// Server-side apply of an object that does not exist yet creates it.
    fn apply_create(&self, req: &ResourceRequest, body: &[u8]) -> Result<Response, ApiError> {
        let mut obj = parse_apply(body)?;
        let fields = ssa::to_fields_v1(&ssa::set_of(
            req.def.ssa_schema(),
            &ssa::owned_part(&obj, false),
        ));
        if obj["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != req.name())
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                obj["metadata"]["name"].as_str().unwrap_or_default(),
                req.name()
            )));
        }
        meta_mut(&mut obj).insert("name".into(), json!(req.name()));
        let (status, created, warnings) = self.create_object(req, obj)?;
        let mut created = created.into_value();
        // Replace the create's Update entry with the Apply entry.
        let manager = req.manager();
        if let Some(entries) = created["metadata"]["managedFields"].as_array_mut() {
            entries.retain(|e| e["manager"] != json!(manager));
        }
        objects::record_manager(
            &mut created,
            &manager,
            "Apply",
            &req.def.api_version(),
            None,
            fields,
        );
        if req.dry_run() {
            return Ok(Written::Built(created).respond(req, status, &warnings));
        }
        let rv = resource_version(&created);
        let reply = match self.cache.update(&req.key(), rv, created.clone()) {
            Ok(stored) => Written::Stored(stored),
            Err(_) => Written::Built(created),
        };
        Ok(reply.respond(req, status, &warnings))
    }

    pub fn delete(&self, req: &ResourceRequest, body: &[u8]) -> Result<Response, ApiError> {
        let opts = DeleteOptions::parse(req, body)?;
        // Marking or removing the object is a compare-and-swap on the revision read here; a
        // write landing in between (a controller's status update) is not the client's
        // conflict unless its preconditions say so, so read again, as upstream's
        // GuaranteedUpdate does. Without this, deleting a VM its controller was writing
        // failed with 409 about once per thousand deletes.
        let mut attempts = 0;
        let deleted = loop {
            let current = self
                .cache
                .get(&req.key())
                .ok_or_else(|| ApiError::NotFound(req.def.target(req.name())))?;
            if let Some(uid) = &opts.uid {
                if current.uid() != Some(uid.as_str()) {
                    return Err(ApiError::Conflict(req.def.target(req.name())));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if current.rev().to_string() != *rv {
                    return Err(ApiError::Conflict(req.def.target(req.name())));
                }
            }
            let current = current.value();
            match self.delete_object(
                &req.def,
                &req.key(),
                &current,
                opts.dry_run || req.dry_run(),
                opts.policy,
            ) {
                Err(ApiError::Conflict(_)) if attempts < 16 => attempts += 1,
                deleted => break deleted?,
            }
        };
        match deleted {
            Deleted::Marked(obj) => Ok(ok(&render_one(req, &obj))),
            Deleted::Gone(obj) => Ok(ok(&json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": req.name(),
                    "group": req.def.group,
                    "kind": req.def.plural,
                    "uid": obj["metadata"]["uid"],
                },
            }))),
        }
    }

    pub fn delete_collection(
        &self,
        req: &ResourceRequest,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let opts = DeleteOptions::parse(req, body)?;
        let filter = Filter::from_request(req)?;
        let (rev, items) = self
            .cache
            .list(&req.def.list_prefix(req.namespace.as_deref()), None);
        let mut out = Vec::new();
        for (key, obj) in items.into_iter().filter(|(_, o)| filter.matches(o)) {
            match self.delete_object(
                &req.def,
                &key,
                &obj.value(),
                opts.dry_run || req.dry_run(),
                opts.policy,
            ) {
                Ok(Deleted::Marked(o) | Deleted::Gone(o)) => out.push(present(&req.def, &o)),
                // Someone else deleted or changed it meanwhile; that is fine for a collection.
                Err(ApiError::NotFound(_) | ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ok(&json!({
            "apiVersion": req.def.api_version(),
            "kind": req.def.list_kind,
            "metadata": {"resourceVersion": rev.to_string()},
            "items": out,
        })))
    }

    /// Deletes an object, or marks it with deletionTimestamp while finalizers remain; applies
    /// `policy` to its dependents.
    pub(crate) fn delete_object(
        &self,
        def: &Arc<ResourceDef>,
        key: &str,
        current: &Value,
        dry_run: bool,
        policy: Propagation,
    ) -> Result<Deleted, ApiError> {
        if !dry_run && !is_terminating(current) {
            if let Some(uid) = current["metadata"]["uid"].as_str() {
                self.before_owner_delete(uid, policy);
            }
        }
        let name = current["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !finalizers(current).is_empty() {
            if is_terminating(current) {
                return Ok(Deleted::Marked(current.clone()));
            }
            let mut marked = current.clone();
            let gen = marked["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(objects::now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(gen));
            if dry_run {
                return Ok(Deleted::Marked(marked));
            }
            let stored = self
                .cache
                .update(key, resource_version(current), marked)
                .map_err(|e| map_store_error(def, &name, e))?;
            return Ok(Deleted::Marked(stored.value()));
        }
        if dry_run {
            return Ok(Deleted::Gone(current.clone()));
        }
        let gone = self
            .cache
            .delete(key, resource_version(current))
            .map_err(|e| map_store_error(def, &name, e))?
            .value();
        self.after_delete(def, &gone, policy);
        Ok(Deleted::Gone(gone))
    }

    /// Server-side apply of `applied` onto `doc` (the current object): checks conflicts,
    /// moves ownership when forced, merges, and removes what the applier stopped setting.
    /// Returns the applier's new FieldsV1.
    fn apply(
        &self,
        req: &ResourceRequest,
        manager: &str,
        current: &Value,
        doc: &mut Value,
        applied: &Value,
    ) -> Result<Value, ApiError> {
        let schema = req.def.ssa_schema();
        let me = ssa::Manager {
            name: manager,
            operation: "Apply",
            subresource: req.subresource.as_deref(),
        };
        let part = ssa::owned_part(applied, req.status_only());
        let new_set = ssa::set_of(schema, &part);
        let conflicts = ssa::find_conflicts(current, me, &new_set, &part);
        if !conflicts.is_empty() {
            if req.flag("force") != Some(true) {
                let causes = conflicts
                    .iter()
                    .map(|c| {
                        Cause::new(
                            "FieldManagerConflict",
                            ssa::Display(&c.path).to_string(),
                            format!("conflict with {}", c.manager),
                        )
                    })
                    .collect();
                return Err(ApiError::ApplyConflict(Box::new(ApplyConflict {
                    target: req.def.target(req.name()),
                    message: ssa::conflict_message(&conflicts),
                    causes,
                })));
            }
            let taken = conflicts.into_iter().map(|c| c.path).collect();
            ssa::disown(doc, me, &taken);
        }
        let old_set = ssa::owned_by(doc, me);
        let others = ssa::owned_by_others(doc, me);
        ssa::merge(schema, doc, &part);
        ssa::remove_dropped(doc, &old_set, &new_set, &others);
        Ok(ssa::to_fields_v1(&new_set))
    }

    /// An update owns the fields whose values it changed, taken from other managers; fields it
    /// removed leave every manager. Returns the updater's new FieldsV1, `None` if it owns
    /// nothing (then it gets no entry, as upstream).
    fn update_ownership(
        &self,
        req: &ResourceRequest,
        manager: &str,
        old: &Value,
        new: &mut Value,
    ) -> Option<Value> {
        let schema = req.def.ssa_schema();
        let status_only = req.status_only();
        let (taken, gone) = ssa::update_ownership(
            schema,
            &ssa::owned_part(old, status_only),
            &ssa::owned_part(new, status_only),
        );
        let me = ssa::Manager {
            name: manager,
            operation: "Update",
            subresource: req.subresource.as_deref(),
        };
        let mut mine = ssa::owned_by(new, me);
        mine.retain(|p| !gone.iter().any(|g| p.starts_with(g)));
        mine.extend(taken.iter().cloned());
        let mut disowned = taken;
        disowned.extend(gone);
        ssa::disown(new, me, &disowned);
        if mine.is_empty() {
            if let Some(entries) = new["metadata"]["managedFields"].as_array_mut() {
                entries.retain(|e| {
                    !(e["manager"] == manager
                        && e["operation"] == "Update"
                        && e["subresource"].as_str() == req.subresource.as_deref())
                });
            }
            return None;
        }
        Some(ssa::to_fields_v1(&mine))
    }

    fn after_write(&self, def: &ResourceDef) {
        if def.builtin && def.kind == "CustomResourceDefinition" {
            self.rebuild_registry();
        }
    }

    /// Cascades that the API server itself owes: a namespace takes its objects along, and a CRD
    /// takes its custom objects along.
    fn after_delete(&self, def: &ResourceDef, gone: &Value, policy: Propagation) {
        let name = gone["metadata"]["name"].as_str().unwrap_or_default();
        if policy == Propagation::Background {
            if let Some(uid) = gone["metadata"]["uid"].as_str() {
                self.delete_dependents(uid, Propagation::Background);
            }
        }
        if def.builtin && def.kind == "CustomResourceDefinition" {
            let group = gone["spec"]["group"].as_str().unwrap_or_default();
            let plural = gone["spec"]["names"]["plural"].as_str().unwrap_or_default();
            let reg = self.registry();
            if let Some(d) = reg
                .all()
                .find(|d| d.group == group && d.plural == plural && !d.builtin)
                .cloned()
            {
                self.sweep(&d, &d.prefix());
            }
            self.rebuild_registry();
        }
        if def.builtin && def.group.is_empty() && def.plural == "namespaces" {
            let reg = self.registry();
            let mut seen = std::collections::BTreeSet::new();
            for d in reg.all().filter(|d| d.namespaced) {
                if seen.insert(d.prefix()) {
                    self.sweep(d, &d.list_prefix(Some(name)));
                }
            }
        }
    }

    fn sweep(&self, def: &Arc<ResourceDef>, prefix: &str) {
        let (_, items) = self.cache.list(prefix, None);
        for (key, obj) in items {
            if let Err(e) =
                self.delete_object(def, &key, &obj.value(), false, Propagation::Background)
            {
                tracing::warn!(key, error = %e, "cascading delete failed");
            }
        }
    }
}

pub(crate) enum Deleted {
    /// Finalizers keep it; deletionTimestamp is set.
    Marked(Value),
    Gone(Value),
}

struct DeleteOptions {
    dry_run: bool,
    policy: Propagation,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    fn parse(req: &ResourceRequest, body: &[u8]) -> Result<DeleteOptions, ApiError> {
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
        };
        let policy_name = v["propagationPolicy"]
            .as_str()
            .or(req.param("propagationPolicy"));
        let orphan = v["orphanDependents"]
            .as_bool()
            .or(req.flag("orphanDependents"));
        let policy = Propagation::parse(policy_name, orphan).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "propagationPolicy: Unsupported value: {:?}: supported values: \"Foreground\", \"Background\", \"Orphan\"",
                policy_name.unwrap_or_default()
            ))
        })?;
        Ok(DeleteOptions {
            policy,
            dry_run: v["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d == "All")),
            uid: v["preconditions"]["uid"].as_str().map(str::to_string),
            resource_version: v["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        })
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        )),
        Err(json_err) => serde_yaml::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("the request body is not valid JSON: {json_err}"))
            }),
    }
}

fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("apply patch must be an object".into()));
    }
    if v["apiVersion"].as_str().unwrap_or_default().is_empty()
        || v["kind"].as_str().unwrap_or_default().is_empty()
    {
        return Err(ApiError::BadRequest(
            "invalid object type: apiVersion and kind are required for apply".into(),
        ));
    }
    Ok(v)
}

fn ok(body: &Value) -> Response {
    json_response_with_warnings(StatusCode::OK, body, &[])
}

/// How many items one chunk of a streamed list body carries.
const LIST_CHUNK_ITEMS: usize = 256;

/// A list in the object rendering, encoded while it is sent: items are copied out of their
/// stored bytes a chunk at a time, so a list of 100k objects never exists as one document.
fn list_response(def: &ResourceDef, list_meta: &Value, items: Vec<Arc<Cached>>) -> Response {
    let mut head = serde_json::to_vec(&json!({
        "apiVersion": def.api_version(),
        "kind": def.list_kind,
        "metadata": list_meta,
    }))
    .unwrap_or_default();
    // Reopen the object (its keys are sorted, `items` goes last) to stream the items member.
    head.pop();
    head.extend_from_slice(b",\"items\":[");
    let api_version = def.api_version();
    let mut pending = Some(head);
    let mut items = items.into_iter().enumerate();
    let mut done = false;
    let chunks = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut chunk = pending.take().unwrap_or_default();
        for _ in 0..LIST_CHUNK_ITEMS {
            let Some((i, obj)) = items.next() else {
                chunk.extend_from_slice(b"]}");
                done = true;
                break;
            };
            if i > 0 {
                chunk.push(b',');
            }
            obj.write_json(&mut chunk, &api_version);
        }
        Some(Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from_stream(futures::stream::iter(chunks)))
        .unwrap_or_else(|e| ApiError::Internal(e.to_string()).into_response())
}

/// Minimal structural checks on a CRD so a broken one cannot break discovery.
fn validate_crd(def: &ResourceDef, crd: &Value) -> Result<(), ApiError> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    if group.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.group",
            "Required value",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.names.plural",
            "Required value",
        ));
    }
    if spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.names.kind",
            "Required value",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if spec["versions"].as_array().is_none_or(|v| v.is_empty()) {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(def.target(name), causes))
    }
}

/// CRDs are established as soon as they are stored: there is no naming controller to wait for.
/// Conditions already present keep their transition times, so re-installing an unchanged CRD
/// writes nothing.
fn crd_status(crd: &mut Value) {
    let existing = crd["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let since = |type_: &str| {
        existing
            .iter()
            .find(|c| c["type"] == type_ && c["status"] == "True")
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(objects::now()))
    };
    let (names_since, established_since) = (since("NamesAccepted"), since("Established"));
    let names = crd["spec"]["names"].clone();
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": names_since},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": established_since},
        ],
    });
}
