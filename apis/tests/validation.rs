//! Every validation rule of the kinds, held to a YAML fixture without a server: the fixtures in
//! `manifests/examples/invalid/` must each be refused with the field and message their header
//! states, and the examples in `manifests/examples/` must be accepted.
//!
//! An object is checked the way the API server checks it: against the CRD's OpenAPI schema (with
//! the server's own validator) and against the CEL rules (`x-kubernetes-validations`, with
//! kube's client-side evaluator). A fixture of two documents is an update: the first is the
//! stored object, the second the change, so transition rules (`oldSelf`) run.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use kube::core::cel::Validator;
use serde::Deserialize;
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The `openAPIV3Schema` of the Strata kind `object` claims to be.
fn schema(object: &Value) -> &'static Value {
    static SCHEMAS: OnceLock<HashMap<String, Value>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        strata_apis::crds()
            .into_iter()
            .map(|crd| {
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref());
                let schema = serde_json::to_value(schema.expect("every CRD has a schema"));
                (crd.spec.names.kind, schema.expect("schema serializes"))
            })
            .collect()
    });
    let kind = object["kind"].as_str().expect("object has a kind");
    schemas
        .get(kind)
        .unwrap_or_else(|| panic!("{kind} is not a Strata kind"))
}

/// Everything the API server would refuse `new` for, as `field: message` lines.
fn refusals(old: Option<&Value>, new: &Value) -> Vec<String> {
    let schema = schema(new);
    let mut pruned = new.clone();
    let root = strata_apiserver::validation::root_schema(schema);
    let outcome = strata_apiserver::validation::validate(&root, &mut pruned);
    let mut found: Vec<String> = outcome
        .causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .chain(
            outcome
                .unknown
                .iter()
                .map(|f| format!("{f}: unknown field")),
        )
        .collect();
    if let Err(errors) = Validator::new().validate(schema, new, old) {
        found.extend(errors.iter().map(ToString::to_string));
    }
    found
}

/// The value of the `# key: value` header line of a fixture.
fn header(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    let prefix = format!("# {key}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{} has no `{prefix}` line", path.display()))
}

#[test]
fn every_invalid_fixture_is_refused_naming_its_field() {
    let fixtures = yaml_files(&examples().join("invalid"));
    assert!(fixtures.len() >= 40, "one fixture per rule");
    let mut wrong = Vec::new();
    for path in &fixtures {
        let docs = documents(path);
        let (old, new) = match docs.as_slice() {
            [new] => (None, new),
            [old, new] => {
                let before = refusals(None, old);
                assert!(
                    before.is_empty(),
                    "{}: first document refused: {before:?}",
                    path.display()
                );
                (Some(old), new)
            }
            _ => panic!("{}: one document, or two for an update", path.display()),
        };
        let (field, message) = (header(path, "field"), header(path, "message"));
        let found = refusals(old, new);
        if !found
            .iter()
            .any(|r| r.starts_with(&field) && r.contains(&message))
        {
            wrong.push(format!(
                "{}: want {field}: {message}, got {found:?}",
                path.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_example_is_accepted_and_can_be_applied_again() {
    let mut count = 0;
    for path in yaml_files(&examples()) {
        // Namespaces and other built-in kinds are the server's business.
        let strata = documents(&path).into_iter().filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("strata.io/"))
        });
        for doc in strata {
            let name = &doc["metadata"]["name"];
            let found = refusals(None, &doc);
            assert!(
                found.is_empty(),
                "{}: {name} refused: {found:?}",
                path.display()
            );
            let found = refusals(Some(&doc), &doc);
            assert!(
                found.is_empty(),
                "{}: re-applying {name} refused: {found:?}",
                path.display()
            );
            count += 1;
        }
    }
    assert!(count > 0);
}

#[test]
fn every_cel_rule_compiles() {
    for crd in strata_apis::crds() {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let schema = serde_json::to_value(schema).expect("schema serializes");
        let compiled = kube::core::cel::compile_schema(&schema);
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", crd.spec.names.kind);
    }
}
