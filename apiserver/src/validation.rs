//! Validation of custom objects against a CRD's structural `openAPIV3Schema`, with pruning of
//! unknown fields (the default) or reporting them (`fieldValidation=Strict`).

use serde_json::{Map, Value};

use crate::error::Cause;

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Dotted paths of fields the schema does not know (removed from the object).
    pub unknown: Vec<String>,
    pub causes: Vec<Cause>,
}

/// The schema objects are validated against: the CRD's, with apiVersion, kind and metadata left
/// to the server. Built once per served version ([`crate::registry::ResourceDef`]): cloning a
/// large CRD schema on every write was a good part of the create path's cost.
pub fn root_schema(schema: &Value) -> Value {
    let mut root = schema.clone();
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        for k in ["apiVersion", "kind", "metadata"] {
            props.insert(
                k.into(),
                serde_json::json!({"x-kubernetes-preserve-unknown-fields": true}),
            );
        }
    } else if !preserves(schema) {
        root["properties"] = serde_json::json!({
            "apiVersion": {"x-kubernetes-preserve-unknown-fields": true},
            "kind": {"x-kubernetes-preserve-unknown-fields": true},
            "metadata": {"x-kubernetes-preserve-unknown-fields": true},
        });
    }
    root
}

/// Validates `obj` in place against `root` (from [`root_schema`]): unknown fields and
/// non-nullable nulls are removed.
pub fn validate(root: &Value, obj: &mut Value) -> Outcome {
    let mut out = Outcome::default();
    let Some(map) = obj.as_object_mut() else {
        out.causes
            .push(Cause::new("FieldValueInvalid", "", "must be an object"));
        return out;
    };
    validate_object(root, map, "", &mut out);
    out
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn validate_object(schema: &Value, map: &mut Map<String, Value>, path: &str, out: &mut Outcome) {
    let props = schema["properties"].as_object();
    let additional = &schema["additionalProperties"];
    // Nulls on non-nullable fields are dropped before validation, as upstream prunes them.
    let null_keys: Vec<String> = map
        .iter()
        .filter(|(k, v)| {
            v.is_null()
                && props
                    .and_then(|p| p.get(k.as_str()))
                    .or(additional.as_object().map(|_| additional))
                    .is_some_and(|s| s["nullable"].as_bool() != Some(true))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in null_keys {
        map.remove(&k);
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = join(path, &key);
        let child_schema = match props.and_then(|p| p.get(&key)) {
            Some(s) => Some(s),
            None if additional.is_object() => Some(additional),
            None if additional.as_bool() == Some(true) || preserves(schema) => None,
            None => {
                out.unknown.push(child_path);
                map.remove(&key);
                continue;
            }
        };
        if let (Some(s), Some(v)) = (child_schema, map.get_mut(&key)) {
            validate_value(s, v, &child_path, out);
        }
    }
    for req in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(req) {
            out.causes.push(Cause::new(
                "FieldValueRequired",
                join(path, req),
                "Required value",
            ));
        }
    }
    if let Some(min) = schema["minProperties"].as_u64() {
        if (map.len() as u64) < min {
            out.causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("{path} in body should have at least {min} properties"),
            ));
        }
    }
}

fn validate_value(schema: &Value, v: &mut Value, path: &str, out: &mut Outcome) {
    if v.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    let actual = type_name(v);
    let type_ok = if int_or_string {
        matches!(actual, "integer" | "string")
    } else {
        match schema["type"].as_str() {
            None => true,
            Some("number") => matches!(actual, "integer" | "number"),
            Some("integer") => actual == "integer" || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            Some(t) => t == actual,
        }
    };
    if !type_ok {
        let want = if int_or_string {
            "integer or string"
        } else {
            schema["type"].as_str().unwrap_or("")
        };
        out.causes.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: \"{actual}\": {path} in body must be of type {want}: \"{actual}\""
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            out.causes.push(Cause::new(
                "FieldValueNotSupported",
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    render(v),
                    list.join(", ")
                ),
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        let exclusive_min = schema["exclusiveMinimum"].as_bool() == Some(true);
        let exclusive_max = schema["exclusiveMaximum"].as_bool() == Some(true);
        if let Some(min) = schema["minimum"].as_f64() {
            if n < min || (exclusive_min && n == min) {
                let rel = if exclusive_min {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {v}: {path} in body should be {rel} {}",
                        schema["minimum"]
                    ),
                ));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            if n > max || (exclusive_max && n == max) {
                let rel = if exclusive_max {
                    "less than"
                } else {
                    "less than or equal to"
                };
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {v}: {path} in body should be {rel} {}",
                        schema["maximum"]
                    ),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|m| len < *m) {
            out.causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {v}: {path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|m| len > *m) {
            out.causes.push(Cause::new(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be longer than {max}"),
            ));
        }
    }
    // An object that preserves unknown fields and declares none has nothing to check.
    let opaque = int_or_string || (preserves(schema) && schema["properties"].is_null());
    match v {
        Value::Object(map) if !opaque => {
            validate_object(schema, map, path, out);
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema["minItems"].as_u64().filter(|m| len < *m) {
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema["maxItems"].as_u64().filter(|m| len > *m) {
                out.causes.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    validate_value(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cpu", "image"],
                    "properties": {
                        "cpu": {"type": "integer", "minimum": 1, "maximum": 64},
                        "image": {"type": "string"},
                        "mode": {"type": "string", "enum": ["Always", "Halted"]},
                        "memory": {"x-kubernetes-int-or-string": true},
                        "host": {"type": "string", "nullable": true},
                        "nics": {"type": "array", "items": {"type": "object", "properties": {"ip": {"type": "string"}}}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn accepts_a_valid_object_untouched() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "x": 1},
            "spec": {"cpu": 2, "image": "i", "mode": "Always", "memory": "1Gi", "host": null,
                     "nics": [{"ip": "1.2.3.4"}], "extra": {"anything": [1]}, "labels": {"a": "b"}}});
        let before = obj.clone();
        assert_eq!(
            validate(&root_schema(&schema()), &mut obj),
            Outcome::default()
        );
        assert_eq!(obj, before);
    }

    #[test]
    fn prunes_and_reports_unknown_fields() {
        let mut obj = json!({"spec": {"cpu": 2, "image": "i", "foo": 1, "nics": [{"ip": "x", "bar": 2}]}, "other": {}});
        let out = validate(&root_schema(&schema()), &mut obj);
        let mut unknown = out.unknown.clone();
        unknown.sort();
        assert_eq!(unknown, vec!["other", "spec.foo", "spec.nics[0].bar"]);
        assert!(out.causes.is_empty());
        assert_eq!(
            obj,
            json!({"spec": {"cpu": 2, "image": "i", "nics": [{"ip": "x"}]}})
        );
    }

    #[test]
    fn reports_type_required_enum_and_range_errors_by_field() {
        let mut obj = json!({"spec": {"cpu": "two", "mode": "Sometimes", "labels": {"a": 1}}});
        let out = validate(&root_schema(&schema()), &mut obj);
        let mut found: Vec<(&str, &str)> = out
            .causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("spec.cpu", "FieldValueTypeInvalid"),
                ("spec.image", "FieldValueRequired"),
                ("spec.labels.a", "FieldValueTypeInvalid"),
                ("spec.mode", "FieldValueNotSupported"),
            ]
        );
        let mut obj = json!({"spec": {"cpu": 0, "image": "i"}});
        let out = validate(&root_schema(&schema()), &mut obj);
        assert_eq!(out.causes.len(), 1);
        assert_eq!(
            out.causes[0].message,
            "Invalid value: 0: spec.cpu in body should be greater than or equal to 1"
        );
        // A null on a non-nullable field is pruned, then the field counts as missing.
        let mut obj = json!({"spec": {"cpu": 1, "image": null}});
        let out = validate(&root_schema(&schema()), &mut obj);
        assert_eq!(out.causes[0].field, "spec.image");
    }
}
