//! Object metadata semantics shared by every kind: what the server sets on create, what it carries
//! over on update, when `generation` moves, and how `managedFields` are recorded.

use serde_json::{json, Map, Value};

use crate::error::{ApiError, Cause};
use crate::registry::ResourceDef;

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 1123 subdomain, as upstream requires for most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

pub fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    // Just ensured it is an object.
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_terminating(obj: &Value) -> bool {
    meta(obj)["deletionTimestamp"].is_string()
}

/// The parts of an object that `generation` tracks: everything but metadata (and status, when
/// the status subresource owns it).
fn generation_view(def: &ResourceDef, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if def.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// Checks the metadata a client may set.
pub fn validate_metadata(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let name = meta(obj)["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    let valid = if def.plural == "namespaces" {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !valid {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: {:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                name,
                if def.plural == "namespaces" { "label" } else { "subdomain" }
            ),
        ));
    }
    for field in ["labels", "annotations"] {
        if let Some(map) = meta(obj)[field].as_object() {
            for (k, v) in map {
                if !v.is_string() {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        format!("metadata.{field}"),
                        format!("Invalid value: {v}: {k} must be a string"),
                    ));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(def.target(name), causes))
    }
}

/// Fills in what the server owns on create. `namespace` comes from the URL.
pub fn prepare_create(
    def: &ResourceDef,
    obj: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    let m = meta_mut(obj);
    match (namespace, m.get("namespace").and_then(Value::as_str)) {
        (Some(url), Some(body)) if !body.is_empty() && url != body => {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_string(),
            ));
        }
        _ => {}
    }
    if def.namespaced {
        if let Some(ns) = namespace {
            m.insert("namespace".into(), json!(ns));
        }
    } else {
        m.remove("namespace");
    }
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(k);
    }
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now()));
    m.insert("generation".into(), json!(1));
    if def.status_subresource {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    Ok(())
}

/// Builds the object to store from `old` and the client's `new` for the main resource
/// (`subresource == None`) or `/status`.
pub fn prepare_update(
    def: &ResourceDef,
    old: &Value,
    mut new: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    if !new.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    if status_only {
        // Only status comes from the request.
        let mut merged = old.clone();
        match new.get("status") {
            Some(s) => merged["status"] = s.clone(),
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Some(mf) = new["metadata"].get("managedFields") {
            meta_mut(&mut merged).insert("managedFields".into(), mf.clone());
        }
        new = merged;
    } else {
        keep_managed_fields(old, &mut new);
    }
    if !status_only && def.status_subresource {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    new["apiVersion"] = json!(def.api_version());
    new["kind"] = json!(def.kind);
    let old_meta = meta(old).clone();
    let m = meta_mut(&mut new);
    // Immutable: identity and lifecycle stamps always come from the stored object.
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                m.insert(k.into(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    if is_terminating(old) {
        let before = finalizers(old);
        if let Some(added) = finalizers(&new).into_iter().find(|f| !before.contains(f)) {
            return Err(ApiError::Invalid(
                def.target(old_meta["name"].as_str().unwrap_or_default()),
                vec![Cause::new(
                    "FieldValueForbidden",
                    "metadata.finalizers",
                    format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{added:?}}}"),
                )],
            ));
        }
    }
    if generation_view(def, old) != generation_view(def, &new) {
        let gen = old_meta["generation"].as_i64().unwrap_or(0) + 1;
        meta_mut(&mut new).insert("generation".into(), json!(gen));
    }
    Ok(new)
}

/// As upstream: an update without `managedFields`, or with an empty list, keeps the stored
/// ones (clients unaware of the field never strip it); a list of one empty entry resets them;
/// any other list replaces them (kubectl's client-side to server-side apply migration writes
/// them this way).
fn keep_managed_fields(old: &Value, new: &mut Value) {
    let sent = new["metadata"].get("managedFields").cloned();
    let stored = meta(old).get("managedFields").cloned();
    match sent.as_ref().and_then(Value::as_array).map(Vec::as_slice) {
        None | Some([]) => match stored {
            Some(stored) => {
                meta_mut(new).insert("managedFields".into(), stored);
            }
            None => {
                meta_mut(new).remove("managedFields");
            }
        },
        Some([only]) if only.as_object().is_some_and(Map::is_empty) => {
            meta_mut(new).remove("managedFields");
        }
        Some(_) => {}
    }
}

/// True when writing `b` over `a` would change anything a client can observe: more than the
/// resourceVersion and the times of managedFields entries (a no-op write by the same manager
/// only moves its entry's time; a new manager, or a manager owning other fields, is a change).
pub fn meaningfully_differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            if let Some(Value::Array(mut entries)) = m.remove("managedFields") {
                for e in &mut entries {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("time");
                    }
                }
                entries.sort_by_key(|e| {
                    (
                        e["manager"].to_string(),
                        e["operation"].to_string(),
                        e["subresource"].to_string(),
                    )
                });
                m.insert("managedFields".into(), Value::Array(entries));
            }
        }
        v
    };
    strip(a) != strip(b)
}

/// Records a write by `manager` in `metadata.managedFields`, replacing that manager's previous
/// entry for the same operation and subresource.
pub fn record_manager(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    fields: Value,
) {
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    let m = meta_mut(obj);
    let mut entries: Vec<Value> = m
        .get("managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            !(e["manager"] == json!(manager)
                && e["operation"] == json!(operation)
                && e["subresource"].as_str() == subresource)
        })
        .collect();
    entries.push(entry);
    cap_update_managers(&mut entries);
    m.insert("managedFields".into(), Value::Array(entries));
}

/// kube-apiserver keeps at most this many `Update` entries per object (apply entries are never
/// capped), so objects written by many controllers do not grow without bound.
const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager the oldest `Update` entries are merged into, as upstream names it.
const ANCIENT_CHANGES: &str = "ancient-changes";

/// Merges the oldest `Update` entries (by time; RFC 3339 strings sort in time order) into one
/// `ancient-changes` entry owning the union of their fields, until at most
/// [`MAX_UPDATE_MANAGERS`] remain.
fn cap_update_managers(entries: &mut Vec<Value>) {
    let is_update = |e: &Value| e["operation"] == "Update";
    let updates = entries.iter().filter(|e| is_update(e)).count();
    if updates <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut oldest: Vec<Value> = entries.iter().filter(|e| is_update(e)).cloned().collect();
    oldest.sort_by(|a, b| {
        let ancient = |e: &Value| e["manager"] != ANCIENT_CHANGES;
        (ancient(a), a["time"].as_str()).cmp(&(ancient(b), b["time"].as_str()))
    });
    // The merged entry takes one of the slots itself.
    oldest.truncate(updates - MAX_UPDATE_MANAGERS + 1);
    let mut fields = crate::ssa::FieldSet::new();
    for entry in &oldest {
        fields.extend(crate::ssa::from_fields_v1(&entry["fieldsV1"]));
    }
    let newest = oldest.last().cloned().unwrap_or_default();
    entries.retain(|e| !oldest.contains(e));
    entries.insert(
        0,
        json!({
            "manager": ANCIENT_CHANGES,
            "operation": "Update",
            "apiVersion": newest["apiVersion"],
            "time": newest["time"],
            "fieldsType": "FieldsV1",
            "fieldsV1": crate::ssa::to_fields_v1(&fields),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(manager: &str, time: &str) -> Value {
        json!({"manager": manager, "operation": "Update", "time": time, "fieldsV1": {"f:spec": {}}})
    }

    #[test]
    fn an_update_keeps_managed_fields_unless_it_sends_others() {
        let old = json!({"metadata": {"name": "x", "managedFields": [entry("a", "t1")]}});
        let kept = |sent: Option<Value>| {
            let mut new = json!({"metadata": {"name": "x"}});
            if let Some(sent) = sent {
                new["metadata"]["managedFields"] = sent;
            }
            keep_managed_fields(&old, &mut new);
            new["metadata"].get("managedFields").cloned()
        };
        assert_eq!(kept(None), Some(json!([entry("a", "t1")])));
        assert_eq!(kept(Some(json!([]))), Some(json!([entry("a", "t1")])));
        assert_eq!(kept(Some(json!([{}]))), None, "one empty entry resets");
        assert_eq!(
            kept(Some(json!([entry("b", "t2")]))),
            Some(json!([entry("b", "t2")]))
        );
    }

    #[test]
    fn only_the_times_of_managed_fields_are_not_a_change() {
        let obj = |entries: Value| json!({"metadata": {"name": "x", "managedFields": entries}});
        let (a, b) = (entry("a", "t1"), entry("b", "t1"));
        assert!(!meaningfully_differs(
            &obj(json!([a.clone(), b.clone()])),
            &obj(json!([b.clone(), entry("a", "t2")]))
        ));
        assert!(meaningfully_differs(
            &obj(json!([a.clone()])),
            &obj(json!([a, b]))
        ));
    }

    #[test]
    fn update_managers_are_capped_into_ancient_changes() {
        let mut obj = json!({"metadata": {"name": "x"}});
        for i in 0..12 {
            record_manager(
                &mut obj,
                &format!("controller-{i:02}"),
                "Update",
                "v1",
                None,
                json!({"f:metadata": {"f:labels": {format!("f:l{i}"): {}}}}),
            );
            // Entries recorded within one second share a time; order them explicitly.
            let entries = obj["metadata"]["managedFields"].as_array_mut().unwrap();
            let last = entries.last_mut().unwrap();
            last["time"] = json!(format!("2026-01-01T00:00:{i:02}Z"));
        }
        record_manager(
            &mut obj,
            "kubectl",
            "Apply",
            "v1",
            None,
            json!({"f:spec": {}}),
        );
        let entries = obj["metadata"]["managedFields"].as_array().unwrap();
        let managers: Vec<&str> = entries
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers.len(),
            11,
            "10 Update entries and the Apply entry: {managers:?}"
        );
        assert_eq!(managers[0], "ancient-changes");
        assert!(!managers.contains(&"controller-00") && !managers.contains(&"controller-02"));
        assert!(managers.contains(&"controller-03") && managers.contains(&"kubectl"));
        let ancient = crate::ssa::from_fields_v1(&entries[0]["fieldsV1"]);
        assert_eq!(
            ancient.len(),
            3,
            "the labels of controller-00..02: {ancient:?}"
        );
    }

    use crate::registry::Registry;

    fn def() -> std::sync::Arc<ResourceDef> {
        let crd = json!({"spec": {"group": "g.io", "scope": "Namespaced",
            "names": {"kind": "Thing", "plural": "things"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
        Registry::build(&[crd])
            .get("g.io", "v1", "things")
            .expect("things")
    }

    #[test]
    fn generation_moves_only_for_spec_changes() {
        let def = def();
        let mut obj = json!({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"s": 1}});
        prepare_create(&def, &mut obj, Some("ns")).expect("create");
        assert_eq!(obj["metadata"]["generation"], 1);
        assert!(obj.get("status").is_none(), "status is dropped on create");
        assert_eq!(obj["metadata"]["namespace"], "ns");

        let mut labels = obj.clone();
        labels["metadata"]["labels"] = json!({"a": "b"});
        let up = prepare_update(&def, &obj, labels, false).expect("labels");
        assert_eq!(up["metadata"]["generation"], 1);

        let mut spec = obj.clone();
        spec["spec"]["x"] = json!(2);
        spec["status"] = json!({"ignored": true});
        let up = prepare_update(&def, &obj, spec, false).expect("spec");
        assert_eq!(up["metadata"]["generation"], 2);
        assert!(
            up.get("status").is_none(),
            "status is ignored on the main resource"
        );

        let mut st = obj.clone();
        st["status"] = json!({"s": 2});
        st["spec"]["x"] = json!(99);
        let up = prepare_update(&def, &obj, st, true).expect("status");
        assert_eq!(up["metadata"]["generation"], 1);
        assert_eq!(up["spec"]["x"], 1, "/status takes only status");
        assert_eq!(up["status"]["s"], 2);
    }

    #[test]
    fn terminating_objects_take_no_new_finalizers() {
        let def = def();
        let old =
            json!({"metadata": {"name": "a", "deletionTimestamp": now(), "finalizers": ["x"]}});
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(["x", "y"]);
        assert!(matches!(
            prepare_update(&def, &old, new, false),
            Err(ApiError::Invalid(..))
        ));
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!([]);
        assert!(prepare_update(&def, &old, new, false).is_ok());
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(is_dns_subdomain("vm-1.example"));
        assert!(!is_dns_subdomain("VM"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_label("a.b"));
    }
}
