//! OpenAPI: `/openapi/v3` documents built from the CRD schemas (what `kubectl explain` and
//! kubectl's field-validation probe read), and an empty `/openapi/v2` protobuf document, which is
//! all kubectl 1.27/1.28 need to proceed.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::{Registry, ResourceDef};

pub const V2_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";

/// `apis/<g>/<v>` or `api/v1`: the key in the v3 index.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Schema names like kube-openapi's: the group reversed (`strata.io` → `io.strata`).
pub fn schema_name(def: &ResourceDef, kind: &str) -> String {
    if def.group.is_empty() {
        format!("io.k8s.api.core.{}.{kind}", def.version)
    } else {
        let rev: Vec<&str> = def.group.split('.').rev().collect();
        format!("{}.{}.{kind}", rev.join("."), def.version)
    }
}

pub fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

pub fn index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for v in versions {
            let doc = document(reg, &group, &v);
            let p = gv_path(&group, &v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}),
            );
        }
    }
    json!({"paths": paths})
}

fn gvk(def: &ResourceDef, kind: &str) -> Value {
    json!({"group": def.group, "version": def.version, "kind": kind})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn response(name: &str) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference(name)}}},
           "401": {"description": "Unauthorized"}})
}

fn operation(def: &ResourceDef, action: &str, id: &str, schema: &str) -> Value {
    json!({
        "operationId": id,
        "responses": response(schema),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(def, &def.kind),
    })
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn with_body(mut op: Value, schema: &str) -> Value {
    op["requestBody"] = json!({"content": {"application/json": {"schema": reference(schema)}}});
    op["parameters"] = json!([
        query_param("dryRun"),
        query_param("fieldManager"),
        query_param("fieldValidation")
    ]);
    op
}

fn patch_op(def: &ResourceDef, id: &str, schema: &str) -> Value {
    let mut op = operation(def, "patch", id, schema);
    op["parameters"] = json!([
        query_param("dryRun"),
        query_param("fieldManager"),
        query_param("fieldValidation"),
        query_param("force"),
    ]);
    let body = json!({"schema": reference(PATCH)});
    op["requestBody"] = json!({"content": {
        "application/json-patch+json": body,
        "application/merge-patch+json": body,
        "application/apply-patch+yaml": body,
    }});
    op
}

/// The schema of a kind as served: the CRD schema plus the standard envelope.
fn kind_schema(def: &ResourceDef) -> Value {
    let mut s = def
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    s["properties"]["metadata"] =
        json!({"allOf": [reference(OBJECT_META)], "description": "Standard object's metadata."});
    s["type"] = json!("object");
    s["x-kubernetes-group-version-kind"] = json!([gvk(def, &def.kind)]);
    s
}

fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Number of seconds allowed for this object to gracefully terminate."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry.", "x-kubernetes-list-type": "set"},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
        }
    })
}

/// The v3 document for one group-version.
pub fn document(reg: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta());
    schemas.insert(
        LIST_META.into(),
        json!({"type": "object", "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}, "remainingItemCount": {"type": "integer"}}}),
    );
    schemas.insert(PATCH.into(), json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}));
    schemas.insert(
        STATUS.into(),
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    );
    let root = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for def in reg.in_group_version(group, version) {
        let kind = schema_name(def, &def.kind);
        let list = schema_name(def, &def.list_kind);
        schemas.insert(kind.clone(), kind_schema(def));
        schemas.insert(
            list.clone(),
            json!({
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"allOf": [reference(LIST_META)]},
                    "items": {"type": "array", "items": reference(&kind)},
                },
                "x-kubernetes-group-version-kind": [gvk(def, &def.list_kind)],
            }),
        );
        let id = |verb: &str, suffix: &str| format!("{verb}{}{suffix}", def.kind);
        let (collection, params) = if def.namespaced {
            (
                format!("{root}/namespaces/{{namespace}}/{}", def.plural),
                vec![path_param("namespace")],
            )
        } else {
            (format!("{root}/{}", def.plural), vec![])
        };
        let mut list_op = operation(def, "list", &id("list", ""), &list);
        list_op["parameters"] = json!([
            query_param("labelSelector"),
            query_param("fieldSelector"),
            query_param("limit"),
            query_param("continue"),
            query_param("watch"),
            query_param("resourceVersion")
        ]);
        paths.insert(
            collection.clone(),
            json!({
                "get": list_op,
                "post": with_body(operation(def, "post", &id("create", ""), &kind), &kind),
                "delete": operation(def, "deletecollection", &id("deleteCollection", ""), STATUS),
                "parameters": params,
            }),
        );
        let mut item_params = params.clone();
        item_params.push(path_param("name"));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(def, "get", &id("read", ""), &kind),
                "put": with_body(operation(def, "put", &id("replace", ""), &kind), &kind),
                "patch": patch_op(def, &id("patch", ""), &kind),
                "delete": operation(def, "delete", &id("delete", ""), STATUS),
                "parameters": item_params,
            }),
        );
        if def.status_subresource {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(def, "get", &id("read", "Status"), &kind),
                    "put": with_body(operation(def, "put", &id("replace", "Status"), &kind), &kind),
                    "patch": patch_op(def, &id("patch", "Status"), &kind),
                    "parameters": item_params,
                }),
            );
        }
        if def.namespaced {
            let mut all = operation(def, "list", &id("list", "ForAllNamespaces"), &list);
            all["parameters"] = json!([query_param("labelSelector"), query_param("fieldSelector")]);
            paths.insert(format!("{root}/{}", def.plural), json!({"get": all}));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Strata", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_kubectl_looks_for() {
        let crd = json!({"spec": {"group": "strata.io", "scope": "Namespaced",
            "names": {"kind": "VirtualMachine", "plural": "virtualmachines"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "description": "Desired state."}}}}}]}});
        let reg = Registry::build(&[crd]);
        let idx = index(&reg);
        assert!(idx["paths"]["apis/strata.io/v1alpha1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/apis/strata.io/v1alpha1?hash=")));
        assert!(idx["paths"]["api/v1"].is_object());
        let doc = document(&reg, "strata.io", "v1alpha1");
        let item =
            &doc["paths"]["/apis/strata.io/v1alpha1/namespaces/{namespace}/virtualmachines/{name}"];
        assert_eq!(
            item["patch"]["x-kubernetes-group-version-kind"]["kind"],
            "VirtualMachine"
        );
        assert!(item["patch"]["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")));
        assert!(
            item["patch"]["requestBody"]["content"]["application/apply-patch+yaml"].is_object()
        );
        let schema = &doc["components"]["schemas"]["io.strata.v1alpha1.VirtualMachine"];
        assert_eq!(
            schema["properties"]["spec"]["description"],
            "Desired state."
        );
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["version"],
            "v1alpha1"
        );
    }
}
