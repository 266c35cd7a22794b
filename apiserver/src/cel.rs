//! Schema defaults and CEL `x-kubernetes-validations`, as kube-apiserver applies them to custom
//! resources: defaults fill missing fields before validation, and every rule of the CRD's schema
//! runs against the object (transition rules, which use `oldSelf`, only on update). The
//! evaluation is kube-cel's, the Kubernetes CEL libraries ported to Rust.

use std::fmt;

use kube_cel::{CompiledSchema, ErrorKind, ValidationError, Validator};
use serde_json::Value;

use crate::error::Cause;

/// A CRD schema's rules, compiled once when the CRD is loaded.
pub struct Rules {
    compiled: CompiledSchema,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules").finish_non_exhaustive()
    }
}

thread_local! {
    // Building a validator registers every Kubernetes CEL function; do it once per thread.
    static VALIDATOR: Validator = Validator::new();
}

/// True when some node of the schema has rules or defaults (otherwise there is nothing to do).
fn has_work(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => {
            m.contains_key("x-kubernetes-validations")
                || m.contains_key("default")
                || m.values().any(has_work)
        }
        Value::Array(a) => a.iter().any(has_work),
        _ => false,
    }
}

impl Rules {
    /// `None` when the schema has neither rules nor defaults.
    pub fn compile(schema: &Value) -> Option<Rules> {
        has_work(schema).then(|| Rules {
            compiled: kube_cel::compile_schema(schema),
        })
    }

    /// Fills missing fields that have a schema `default`.
    pub fn apply_defaults(&self, schema: &Value, obj: &mut Value) {
        *obj = kube_cel::apply_defaults(schema, obj);
    }

    /// Runs every rule; `old` is the stored object on update (for transition rules).
    pub fn validate(&self, schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let result = VALIDATOR.with(|v| v.validate_compiled(&self.compiled, obj, old));
        match result {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| cause(schema, e)).collect(),
        }
    }
}

/// Upstream's shape: `spec: Invalid value: "object": <message>`, with the rule's reason.
fn cause(schema: &Value, e: &ValidationError) -> Cause {
    let field = e.field_path.trim_start_matches('.').to_string();
    let reason = match e.reason.as_deref() {
        Some("FieldValueForbidden") => "FieldValueForbidden",
        Some("FieldValueRequired") => "FieldValueRequired",
        Some("FieldValueDuplicate") => "FieldValueDuplicate",
        _ => "FieldValueInvalid",
    };
    let message = match e.kind {
        ErrorKind::ValidationFailure => {
            format!(
                "Invalid value: \"{}\": {}",
                type_at(schema, &field),
                e.message
            )
        }
        // A rule that cannot run rejects the object rather than letting it through unchecked.
        _ => format!(
            "Invalid value: \"{}\": rule {:?} could not be evaluated: {}",
            type_at(schema, &field),
            e.rule,
            e.message
        ),
    };
    Cause::new(reason, field, message)
}

/// The schema type of the node at a path like `spec.disks[0].size` (`object` if unknown).
fn type_at<'a>(schema: &'a Value, path: &str) -> &'a str {
    let mut node = schema;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexed) = match seg.find('[') {
            Some(i) => (&seg[..i], true),
            None => (seg, false),
        };
        node = match node["properties"].get(name) {
            Some(child) => child,
            None if node["additionalProperties"].is_object() => &node["additionalProperties"],
            None => return "object",
        };
        if indexed {
            node = &node["items"];
        }
    }
    node["type"].as_str().unwrap_or("object")
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
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                        {"rule": "self.zone == oldSelf.zone", "message": "zone is immutable"}
                    ],
                    "properties": {
                        "min": {"type": "integer"},
                        "max": {"type": "integer"},
                        "zone": {"type": "string"},
                        "mode": {"type": "string", "default": "auto"},
                        "name": {
                            "type": "string",
                            "x-kubernetes-validations": [
                                {"rule": "self.startsWith('vm-')", "message": "must start with vm-", "reason": "FieldValueForbidden"}
                            ]
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn rules_name_the_field_like_upstream() {
        let schema = schema();
        let rules = Rules::compile(&schema).expect("has rules");
        let obj = json!({"spec": {"min": 3, "max": 1, "zone": "a", "name": "x"}});
        let causes = rules.validate(&schema, &obj, None);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(causes[0].field, "spec");
        assert_eq!(
            causes[0].message,
            "Invalid value: \"object\": min must not exceed max"
        );
        assert_eq!(causes[1].field, "spec.name");
        assert_eq!(causes[1].reason, "FieldValueForbidden");
        assert!(causes[1].message.starts_with("Invalid value: \"string\""));
        let ok = json!({"spec": {"min": 1, "max": 3, "zone": "a", "name": "vm-1"}});
        assert!(rules.validate(&schema, &ok, None).is_empty());
    }

    #[test]
    fn transition_rules_run_only_on_update() {
        let schema = schema();
        let rules = Rules::compile(&schema).expect("has rules");
        let old = json!({"spec": {"min": 1, "max": 3, "zone": "a", "name": "vm-1"}});
        let moved = json!({"spec": {"min": 1, "max": 3, "zone": "b", "name": "vm-1"}});
        assert!(rules.validate(&schema, &moved, None).is_empty());
        let causes = rules.validate(&schema, &moved, Some(&old));
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.ends_with("zone is immutable"));
    }

    #[test]
    fn defaults_fill_missing_fields_only() {
        let schema = schema();
        let rules = Rules::compile(&schema).expect("has defaults");
        let mut obj = json!({"spec": {"min": 1}});
        rules.apply_defaults(&schema, &mut obj);
        assert_eq!(obj["spec"]["mode"], "auto");
        let mut set = json!({"spec": {"mode": "manual"}});
        rules.apply_defaults(&schema, &mut set);
        assert_eq!(set["spec"]["mode"], "manual");
        assert!(Rules::compile(&json!({"type": "object"})).is_none());
    }

    #[test]
    fn type_lookup_follows_items_and_maps() {
        let schema = json!({"properties": {"spec": {"properties": {
            "disks": {"type": "array", "items": {"type": "object", "properties": {"size": {"type": "integer"}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
        }}}});
        assert_eq!(type_at(&schema, "spec.disks[0].size"), "integer");
        assert_eq!(type_at(&schema, "spec.disks[0]"), "object");
        assert_eq!(type_at(&schema, "spec.labels.a"), "string");
        assert_eq!(type_at(&schema, "spec.nope"), "object");
    }
}
