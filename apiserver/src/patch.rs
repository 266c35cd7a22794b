//! Patch application: JSON Patch (with evanphx/json-patch semantics), JSON merge patch, and a
//! first cut of server-side apply that merges the applied configuration and tracks ownership in
//! `managedFields` as FieldsV1 trees (lists are treated as atomic).

use json_patch::{Patch, PatchOperation};
use serde_json::{Map, Value};

/// The patch types the server accepts for every kind, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies an RFC 6902 patch. Like evanphx/json-patch (which kube-apiserver uses), a `test` of
/// a missing path against `null` succeeds; kube-runtime's finalizer helper relies on that.
pub fn apply_json_patch(doc: &mut Value, body: &[u8]) -> Result<(), String> {
    let patch: Patch =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON Patch: {e}"))?;
    let mut work = doc.clone();
    for op in patch.0 {
        if let PatchOperation::Test(t) = &op {
            if t.value.is_null() && work.pointer(t.path.as_str()).is_none() {
                continue;
            }
        }
        json_patch::patch(&mut work, std::slice::from_ref(&op)).map_err(|e| e.to_string())?;
    }
    *doc = work;
    Ok(())
}

pub fn apply_merge_patch(doc: &mut Value, body: &[u8]) -> Result<(), String> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| format!("error decoding merge patch: {e}"))?;
    if !patch.is_object() {
        return Err("merge patch must be a JSON object".into());
    }
    json_patch::merge(doc, &patch);
    Ok(())
}

/// A FieldsV1 tree of the fields `obj` sets: `{"f:spec":{"f:cpu":{}}}`. Lists are atomic.
pub fn fields_of(obj: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            let child = match v {
                Value::Object(m) if !m.is_empty() => {
                    let mut c = fields_of(v);
                    if let Value::Object(cm) = &mut c {
                        cm.insert(".".into(), Value::Object(Map::new()));
                    }
                    c
                }
                _ => Value::Object(Map::new()),
            };
            out.insert(format!("f:{k}"), child);
        }
    }
    Value::Object(out)
}

/// The fields a manager owns: the object's fields minus what the server controls.
pub fn managed_fields_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    fields_of(&o)
}

/// Deep-merges an applied configuration into `target`; maps merge, everything else replaces.
pub fn merge_applied(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_applied(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

fn contains_path(tree: &Value, path: &[String]) -> bool {
    let mut cur = tree;
    for seg in path {
        match cur.get(seg.as_str()) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// Leaf paths (`f:` segments) of a FieldsV1 tree.
fn leaves(tree: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(map) = tree.as_object() else { return };
    let children: Vec<_> = map.iter().filter(|(k, _)| k.starts_with("f:")).collect();
    if children.is_empty() && !prefix.is_empty() {
        out.push(prefix.clone());
    }
    for (k, v) in children {
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

/// Removes from `obj` the fields `old` (the manager's previous apply) owned that `new` no longer
/// sets, unless one of `others` still owns them.
pub fn remove_dropped_fields(obj: &mut Value, old: &Value, new: &Value, others: &[&Value]) {
    let mut old_leaves = Vec::new();
    leaves(old, &mut Vec::new(), &mut old_leaves);
    for path in old_leaves {
        if contains_path(new, &path) || others.iter().any(|o| contains_path(o, &path)) {
            continue;
        }
        let keys: Vec<&str> = path.iter().map(|s| s.trim_start_matches("f:")).collect();
        if keys.first() == Some(&"metadata") && keys.len() < 3 {
            continue;
        }
        let (last, parents) = match keys.split_last() {
            Some(x) => x,
            None => continue,
        };
        let pointer: String = parents
            .iter()
            .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
            .collect();
        if let Some(m) = obj.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            m.remove(*last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_of_missing_path_against_null_succeeds() {
        // What kube-runtime's finalizer() sends to add the first finalizer.
        let mut doc = json!({"metadata": {"name": "a"}});
        let body = br#"[{"op":"test","path":"/metadata/finalizers","value":null},
                       {"op":"add","path":"/metadata/finalizers","value":["x"]}]"#;
        apply_json_patch(&mut doc, body).expect("patch");
        assert_eq!(doc["metadata"]["finalizers"], json!(["x"]));
        // Now the list exists, so the same test fails and nothing changes.
        let before = doc.clone();
        assert!(apply_json_patch(&mut doc, body).is_err());
        assert_eq!(doc, before);
        // Removal as the helper does it.
        let rm = br#"[{"op":"test","path":"/metadata/finalizers/0","value":"x"},
                     {"op":"remove","path":"/metadata/finalizers/0"}]"#;
        apply_json_patch(&mut doc, rm).expect("remove");
        assert_eq!(doc["metadata"]["finalizers"], json!([]));
        // A test of a missing path against a non-null value still fails.
        assert!(
            apply_json_patch(&mut doc, br#"[{"op":"test","path":"/nope","value":1}]"#).is_err()
        );
    }

    #[test]
    fn merge_patch_null_deletes() {
        let mut doc = json!({"spec": {"a": 1, "b": 2}});
        apply_merge_patch(&mut doc, br#"{"spec":{"a":null,"c":3}}"#).expect("merge");
        assert_eq!(doc, json!({"spec": {"b": 2, "c": 3}}));
        assert!(apply_merge_patch(&mut doc, b"[1]").is_err());
    }

    #[test]
    fn apply_merges_and_drops_fields_the_manager_stopped_setting() {
        let mut obj = json!({"spec": {"a": 1, "b": 2, "list": [1, 2]}, "status": {"x": 1}});
        let first = json!({"spec": {"a": 1, "b": 2}});
        let second = json!({"spec": {"a": 5, "list": [3]}});
        merge_applied(&mut obj, &second);
        assert_eq!(obj["spec"], json!({"a": 5, "b": 2, "list": [3]}));
        remove_dropped_fields(&mut obj, &fields_of(&first), &fields_of(&second), &[]);
        assert_eq!(obj["spec"], json!({"a": 5, "list": [3]}));
        assert_eq!(obj["status"], json!({"x": 1}));
        // Another manager's ownership keeps a field alive.
        let mut obj = json!({"spec": {"a": 1, "b": 2}});
        let other = fields_of(&json!({"spec": {"b": 2}}));
        remove_dropped_fields(
            &mut obj,
            &fields_of(&first),
            &fields_of(&json!({"spec": {"a": 1}})),
            &[&other],
        );
        assert_eq!(obj["spec"], json!({"a": 1, "b": 2}));
    }
}
