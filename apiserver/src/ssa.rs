//! Server-side apply: a scoped port of sigs.k8s.io/structured-merge-diff, typed by the CRD's
//! schema.
//!
//! Every manager owns a set of field paths (stored as FieldsV1 in `managedFields`). Lists follow
//! the schema's `x-kubernetes-list-type`: `atomic` (the default) is one field, `set` owns each
//! value (`v:`), `map` owns each item by its `x-kubernetes-list-map-keys` (`k:`); objects are
//! granular unless `x-kubernetes-map-type: atomic`. An apply merges the applied configuration,
//! conflicts (409) when it changes a value another manager owns unless forced (then ownership
//! moves), and removes the fields the applier owned before and no longer sets, unless someone
//! else still owns them. An update (PUT, merge and JSON patch) takes ownership of exactly the
//! fields whose values it changes.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{json, Map, Value};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Element {
    /// An object field (`f:name`).
    Field(String),
    /// A list-map item, by its key fields (`k:{"name":"a"}`).
    Key(Map<String, Value>),
    /// A list-set value (`v:"a"`).
    Value(Value),
}

/// A path from the object root.
pub type Path = Vec<Element>;

/// A set of owned paths.
pub type FieldSet = BTreeSet<Path>;

/// JSON values ordered by their serialization, so paths can live in a `BTreeSet`.
fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    a.to_string().cmp(&b.to_string())
}

impl PartialOrd for Element {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Element {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use Element::*;
        let rank = |e: &Element| match e {
            Field(_) => 0,
            Key(_) => 1,
            Value(_) => 2,
        };
        match (self, other) {
            (Field(a), Field(b)) => a.cmp(b),
            (Key(a), Key(b)) => order(&json!(a), &json!(b)),
            (Value(a), Value(b)) => order(a, b),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

/// Renders a path as upstream prints it in conflict messages: `.spec.ports[name="a"].port`.
pub struct Display<'a>(pub &'a [Element]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in self.0 {
            match e {
                Element::Field(name) => write!(f, ".{name}")?,
                Element::Key(keys) => {
                    let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))?
                }
                Element::Value(v) => write!(f, "[={v}]")?,
            }
        }
        Ok(())
    }
}

/// How a schema node merges.
enum Shape<'a> {
    /// Replaced as a whole: scalars, atomic lists and atomic maps.
    Atomic,
    Object(&'a Value),
    Set,
    ListMap(Vec<String>, &'a Value),
}

static EMPTY: Value = Value::Null;

/// The schema of `metadata` as far as appliers may own it (upstream's ObjectMeta types).
fn metadata_schema() -> &'static Value {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    META.get_or_init(|| {
        json!({"type": "object", "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "finalizers": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"], "items": {"type": "object"}},
        }})
    })
}

fn child_schema<'a>(schema: &'a Value, field: &str, root: bool) -> &'a Value {
    if root && field == "metadata" {
        return metadata_schema();
    }
    match schema["properties"].get(field) {
        Some(s) => s,
        None if schema["additionalProperties"].is_object() => &schema["additionalProperties"],
        None => &EMPTY,
    }
}

fn shape<'a>(schema: &'a Value, value: &Value) -> Shape<'a> {
    match value {
        Value::Object(_) if schema["x-kubernetes-map-type"] == "atomic" => Shape::Atomic,
        Value::Object(_) => Shape::Object(schema),
        Value::Array(_) => match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => Shape::Set,
            Some("map") => {
                let keys = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                Shape::ListMap(keys, &schema["items"])
            }
            _ => Shape::Atomic,
        },
        _ => Shape::Atomic,
    }
}

fn item_key(keys: &[String], item: &Value) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// The fields `value` sets, as leaf paths (plus list-map items, which are members themselves).
pub fn set_of(schema: &Value, value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(schema, value, &mut Vec::new(), true, &mut out);
    out
}

fn collect(schema: &Value, value: &Value, path: &mut Path, root: bool, out: &mut FieldSet) {
    match shape(schema, value) {
        Shape::Object(schema) => {
            let Some(map) = value.as_object() else { return };
            if map.is_empty() && !root {
                out.insert(path.clone());
            }
            for (k, v) in map {
                path.push(Element::Field(k.clone()));
                collect(child_schema(schema, k, root), v, path, false, out);
                path.pop();
            }
        }
        Shape::Set => {
            for v in value.as_array().into_iter().flatten() {
                path.push(Element::Value(v.clone()));
                out.insert(path.clone());
                path.pop();
            }
        }
        Shape::ListMap(keys, items) => {
            for item in value.as_array().into_iter().flatten() {
                path.push(Element::Key(item_key(&keys, item)));
                out.insert(path.clone());
                collect(items, item, path, false, out);
                path.pop();
            }
        }
        Shape::Atomic => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if present.
pub fn value_at<'a>(value: &'a Value, path: &[Element]) -> Option<&'a Value> {
    let mut cur = value;
    for e in path {
        cur = match e {
            Element::Field(name) => cur.get(name)?,
            Element::Key(key) => cur.as_array()?.iter().find(|i| matches_key(i, key))?,
            Element::Value(v) => cur.as_array()?.iter().find(|i| *i == v)?,
        };
    }
    Some(cur)
}

/// Removes the node at `path` (a field, a list-map item or a set value).
pub fn remove(value: &mut Value, path: &[Element]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = value;
    for e in parents {
        let next = match e {
            Element::Field(name) => cur.get_mut(name),
            Element::Key(key) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| matches_key(i, key))),
            Element::Value(v) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| *i == v)),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Element::Field(name) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(name);
            }
        }
        Element::Key(key) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !matches_key(i, key));
            }
        }
        Element::Value(v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| i != v);
            }
        }
    }
}

/// Merges an applied configuration into `live`: objects and list maps field by field, sets by
/// union, everything else replaced.
pub fn merge(schema: &Value, live: &mut Value, applied: &Value) {
    merge_at(schema, live, applied, true)
}

fn merge_at(schema: &Value, live: &mut Value, applied: &Value, root: bool) {
    match (shape(schema, applied), live.is_array() || live.is_object()) {
        (Shape::Object(schema), _) if live.is_object() => {
            let (Some(l), Some(a)) = (live.as_object_mut(), applied.as_object()) else {
                return;
            };
            for (k, v) in a {
                if v.is_null() {
                    l.remove(k);
                    continue;
                }
                match l.get_mut(k) {
                    Some(existing) => merge_at(child_schema(schema, k, root), existing, v, false),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Shape::Set, _) if live.is_array() => {
            let (Some(l), Some(a)) = (live.as_array_mut(), applied.as_array()) else {
                return;
            };
            for v in a {
                if !l.contains(v) {
                    l.push(v.clone());
                }
            }
        }
        (Shape::ListMap(keys, items), _) if live.is_array() => {
            let (Some(l), Some(a)) = (live.as_array_mut(), applied.as_array()) else {
                return;
            };
            for item in a {
                let key = item_key(&keys, item);
                match l.iter_mut().find(|i| matches_key(i, &key)) {
                    Some(existing) => merge_at(items, existing, item, false),
                    None => l.push(item.clone()),
                }
            }
        }
        _ => *live = applied.clone(),
    }
}

/// FieldsV1 JSON for a set: `{"f:spec":{"f:x":{}}}`, with `.` marking members that also have
/// children.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[Element]) {
        let Some((e, rest)) = path.split_first() else {
            node.insert(".".into(), json!({}));
            return;
        };
        let key = match e {
            Element::Field(n) => format!("f:{n}"),
            Element::Key(k) => format!("k:{}", Value::Object(k.clone())),
            Element::Value(v) => format!("v:{v}"),
        };
        if let Value::Object(child) = node.entry(key).or_insert_with(|| json!({})) {
            insert(child, rest);
        }
    }
    let mut root = Map::new();
    for path in set {
        insert(&mut root, path);
    }
    // A member without children is written `{}` rather than `{".":{}}`.
    fn tidy(v: &mut Value) {
        if let Some(m) = v.as_object_mut() {
            if m.len() == 1 && m.contains_key(".") {
                m.clear();
                return;
            }
            for (k, child) in m.iter_mut() {
                if k != "." {
                    tidy(child);
                }
            }
        }
    }
    let mut out = Value::Object(root);
    if let Some(m) = out.as_object_mut() {
        m.remove(".");
        for child in m.values_mut() {
            tidy(child);
        }
    }
    out
}

/// The set a FieldsV1 tree describes. Unparseable keys are skipped.
pub fn from_fields_v1(fields: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    walk_fields(fields, &mut Vec::new(), &mut out);
    out
}

fn walk_fields(node: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(map) = node.as_object() else { return };
    if !path.is_empty() && (map.is_empty() || map.contains_key(".")) {
        out.insert(path.clone());
    }
    for (k, child) in map {
        let element = if let Some(n) = k.strip_prefix("f:") {
            Element::Field(n.to_string())
        } else if let Some(j) = k.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(j) {
                Ok(key) => Element::Key(key),
                Err(_) => continue,
            }
        } else if let Some(j) = k.strip_prefix("v:") {
            match serde_json::from_str(j) {
                Ok(v) => Element::Value(v),
                Err(_) => continue,
            }
        } else {
            continue;
        };
        path.push(element);
        walk_fields(child, path, out);
        path.pop();
    }
}

/// Paths of `set` present in `obj` whose value differs from `other`'s.
fn changed(set: &FieldSet, obj: &Value, other: &Value) -> FieldSet {
    set.iter()
        .filter(|p| value_at(obj, p) != value_at(other, p))
        .cloned()
        .collect()
}

/// What an update (not an apply) makes its manager own: the fields whose values it changed.
/// Fields it removed are removed from every manager.
pub fn update_ownership(schema: &Value, old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let new_set = set_of(schema, new);
    let old_set = set_of(schema, old);
    let taken = changed(&new_set, new, old);
    let gone = old_set.difference(&new_set).cloned().collect();
    (taken, gone)
}

/// One conflicting path and the manager that owns it.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    /// The manager as upstream prints it (`"kubectl" using v1 at ...` for updaters).
    pub manager: String,
    pub path: Path,
}

/// Paths of `applied_set` that `owner` also owns, where the applied value differs from the live
/// one (the same value is shared ownership, not a conflict).
pub fn conflicts(
    applied_set: &FieldSet,
    applied: &Value,
    live: &Value,
    owner: &FieldSet,
) -> Vec<Path> {
    applied_set
        .intersection(owner)
        .filter(|p| {
            // Membership of a list-map item is not a value; its fields are compared instead.
            let container = applied_set
                .iter()
                .any(|q| q.len() > p.len() && q.starts_with(p));
            !container && value_at(applied, p) != value_at(live, p)
        })
        .cloned()
        .collect()
}

/// Upstream's message, e.g. `Apply failed with 1 conflict: conflict with "mgr": .spec.x`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager,
            Display(&one.path)
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort_unstable();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", Display(&c.path)));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// The part of an object appliers and updaters own: for the main resource everything but
/// `status` and the server-controlled metadata; for `/status` only `status` (upstream's reset
/// fields).
pub fn owned_part(obj: &Value, status_only: bool) -> Value {
    if status_only {
        return match obj.get("status") {
            Some(status) => json!({"status": status}),
            None => json!({}),
        };
    }
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            m.remove(k);
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
        if m.get("metadata")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            m.remove("metadata");
        }
    }
    o
}

/// One `metadata.managedFields` entry's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manager<'a> {
    pub name: &'a str,
    /// `Apply` or `Update`.
    pub operation: &'a str,
    pub subresource: Option<&'a str>,
}

impl Manager<'_> {
    fn is(&self, entry: &Value) -> bool {
        entry["manager"] == self.name
            && entry["operation"] == self.operation
            && entry["subresource"].as_str() == self.subresource
    }
}

/// How upstream names an entry in conflict messages.
fn describe(entry: &Value) -> String {
    let mut s = format!("{:?}", entry["manager"].as_str().unwrap_or_default());
    if let Some(sub) = entry["subresource"].as_str().filter(|s| !s.is_empty()) {
        s = format!("{s} with subresource {sub:?}");
    }
    if entry["operation"] == "Update" {
        let api = entry["apiVersion"].as_str().unwrap_or_default();
        s = match entry["time"].as_str() {
            Some(t) => format!("{s} using {api} at {t}"),
            None => format!("{s} using {api}"),
        };
    }
    s
}

fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The set `me` owns in `obj`.
pub fn owned_by(obj: &Value, me: Manager<'_>) -> FieldSet {
    entries(obj)
        .iter()
        .find(|e| me.is(e))
        .map(|e| from_fields_v1(&e["fieldsV1"]))
        .unwrap_or_default()
}

/// Every other manager's conflicts with an apply of `applied_set`.
pub fn find_conflicts(
    obj: &Value,
    me: Manager<'_>,
    applied_set: &FieldSet,
    applied: &Value,
) -> Vec<Conflict> {
    entries(obj)
        .iter()
        .filter(|e| !me.is(e))
        .flat_map(|e| {
            let owner = from_fields_v1(&e["fieldsV1"]);
            conflicts(applied_set, applied, obj, &owner)
                .into_iter()
                .map(|path| Conflict {
                    manager: describe(e),
                    path,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The union of every other manager's set.
pub fn owned_by_others(obj: &Value, me: Manager<'_>) -> FieldSet {
    entries(obj)
        .iter()
        .filter(|e| !me.is(e))
        .flat_map(|e| from_fields_v1(&e["fieldsV1"]))
        .collect()
}

/// Takes `paths` (and everything under them) away from every manager but `me`, dropping
/// entries left empty.
pub fn disown(obj: &mut Value, me: Manager<'_>, paths: &FieldSet) {
    if paths.is_empty() {
        return;
    }
    let kept: Vec<Value> = entries(obj)
        .into_iter()
        .filter_map(|mut e| {
            if me.is(&e) {
                return Some(e);
            }
            let set: FieldSet = from_fields_v1(&e["fieldsV1"])
                .into_iter()
                .filter(|p| !paths.iter().any(|q| p.starts_with(q)))
                .collect();
            if set.is_empty() {
                return None;
            }
            e["fieldsV1"] = to_fields_v1(&set);
            Some(e)
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("managedFields".into(), Value::Array(kept));
    }
}

/// Removes from `obj` the fields the applier owned before (`old`) and no longer sets (`new`),
/// unless another manager still owns them or something under them.
pub fn remove_dropped(obj: &mut Value, old: &FieldSet, new: &FieldSet, others: &FieldSet) {
    for path in old.difference(new) {
        let still_used = |set: &FieldSet| set.iter().any(|q| q.starts_with(path));
        if !still_used(others) && !still_used(new) {
            remove(obj, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "replicas": {"type": "integer"},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
            "selector": {"type": "object", "x-kubernetes-map-type": "atomic"}
        }}}})
    }

    #[test]
    fn field_sets_follow_list_types() {
        let obj = json!({"spec": {"replicas": 1, "tags": ["a"], "args": ["x", "y"],
            "ports": [{"name": "http", "port": 80}], "selector": {"a": "b"}},
            "metadata": {"labels": {"l": "v"}, "finalizers": ["f"]}});
        let fields = to_fields_v1(&set_of(&schema(), &obj));
        assert_eq!(
            fields,
            json!({
                "f:metadata": {"f:labels": {"f:l": {}}, "f:finalizers": {"v:\"f\"": {}}},
                "f:spec": {
                    "f:args": {},
                    "f:ports": {"k:{\"name\":\"http\"}": {".": {}, "f:name": {}, "f:port": {}}},
                    "f:replicas": {},
                    "f:selector": {},
                    "f:tags": {"v:\"a\"": {}}
                }
            })
        );
        assert_eq!(
            from_fields_v1(&fields),
            set_of(&schema(), &obj),
            "round trip"
        );
    }

    #[test]
    fn merge_follows_list_types() {
        let mut live = json!({"spec": {"tags": ["a"], "args": ["x"], "selector": {"a": "b"},
            "ports": [{"name": "http", "port": 80}, {"name": "ssh", "port": 22}]}});
        let applied = json!({"spec": {"tags": ["b"], "args": ["y"], "selector": {"c": "d"},
            "ports": [{"name": "http", "port": 8080}]}});
        merge(&schema(), &mut live, &applied);
        assert_eq!(
            live["spec"],
            json!({"tags": ["a", "b"], "args": ["y"], "selector": {"c": "d"},
                "ports": [{"name": "http", "port": 8080}, {"name": "ssh", "port": 22}]})
        );
    }

    #[test]
    fn conflicts_only_where_values_differ() {
        let s = schema();
        let live = json!({"spec": {"replicas": 1, "ports": [{"name": "http", "port": 80}]}});
        let other = set_of(&s, &live);
        let same = json!({"spec": {"replicas": 1}});
        assert!(conflicts(&set_of(&s, &same), &same, &live, &other).is_empty());
        let changed = json!({"spec": {"replicas": 2, "ports": [{"name": "http", "port": 81}]}});
        let found = conflicts(&set_of(&s, &changed), &changed, &live, &other);
        let shown: Vec<String> = found.iter().map(|p| Display(p).to_string()).collect();
        assert_eq!(
            shown,
            vec![".spec.ports[name=\"http\"].port", ".spec.replicas"]
        );
        let msg = conflict_message(&[Conflict {
            manager: "\"a\"".into(),
            path: found[1].clone(),
        }]);
        assert_eq!(
            msg,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
    }

    #[test]
    fn removal_handles_items_and_values() {
        let mut obj = json!({"spec": {"tags": ["a", "b"], "ports": [{"name": "http"}, {"name": "ssh"}], "x": 1}});
        remove(
            &mut obj,
            &[
                Element::Field("spec".into()),
                Element::Field("tags".into()),
                Element::Value(json!("a")),
            ],
        );
        let key: Map<String, Value> = [("name".to_string(), json!("ssh"))].into_iter().collect();
        remove(
            &mut obj,
            &[
                Element::Field("spec".into()),
                Element::Field("ports".into()),
                Element::Key(key),
            ],
        );
        remove(
            &mut obj,
            &[Element::Field("spec".into()), Element::Field("x".into())],
        );
        assert_eq!(
            obj,
            json!({"spec": {"tags": ["b"], "ports": [{"name": "http"}]}})
        );
    }

    #[test]
    fn updates_own_what_they_change() {
        let s = schema();
        let old = json!({"spec": {"replicas": 1, "args": ["a"]}});
        let new = json!({"spec": {"replicas": 2}});
        let (taken, gone) = update_ownership(&s, &old, &new);
        let show = |set: &FieldSet| {
            set.iter()
                .map(|p| Display(p).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&taken), vec![".spec.replicas"]);
        assert_eq!(show(&gone), vec![".spec.args"]);
    }
}
