//! The kinds the server serves, described uniformly as CRD-like definitions.
//!
//! Built-in kinds (Namespace, Lease, Event, CustomResourceDefinition) are written as
//! CustomResourceDefinitions with schemas that preserve unknown fields, so the REST, discovery,
//! OpenAPI and table code has exactly one path for every kind.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cel::Rules;
use crate::error::Target;

/// A printer column (`additionalPrinterColumns[]`).
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served group/version/resource.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub columns: Vec<Column>,
    /// JSONPaths from `selectableFields`, without the leading dot (`spec.host`).
    pub selectable_fields: Vec<String>,
    /// `openAPIV3Schema`; `None` for built-ins, which accept anything.
    pub schema: Option<Value>,
    /// `schema` as objects are validated against it ([`crate::validation::root_schema`]).
    pub validation_schema: Option<Value>,
    /// The schema's CEL rules and defaults, compiled; `None` when it has neither.
    pub rules: Option<Arc<Rules>>,
    /// True for the kinds compiled into the server.
    pub builtin: bool,
}

impl ResourceDef {
    /// The schema server-side apply types fields by; kinds without one are all granular
    /// objects and atomic lists.
    pub fn ssa_schema(&self) -> &Value {
        static NONE: Value = Value::Null;
        self.schema.as_ref().unwrap_or(&NONE)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Store key prefix for every object of this resource (all versions share storage).
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// Prefix for a list: the namespace's objects, or all of them.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/", self.prefix(), ns),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/{}", self.prefix(), ns, name),
            _ => format!("{}{}", self.prefix(), name),
        }
    }

    pub fn target(&self, name: &str) -> Target {
        Target {
            group: self.group.clone(),
            resource: self.plural.clone(),
            kind: self.kind.clone(),
            name: name.to_string(),
        }
    }

    /// Builds one definition per served version of a CRD (given as JSON).
    pub fn from_crd(crd: &Value, builtin: bool) -> Vec<ResourceDef> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        let mut out = Vec::new();
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let columns = match v["additionalPrinterColumns"].as_array() {
                Some(cols) => cols
                    .iter()
                    .map(|c| Column {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        type_: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or_default().to_string(),
                        description: c["description"].as_str().unwrap_or_default().to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect(),
                // Upstream's default when a CRD declares no columns.
                None => vec![age_column()],
            };
            let schema =
                Some(v["schema"]["openAPIV3Schema"].clone()).filter(|s| !builtin && !s.is_null());
            out.push(ResourceDef {
                group: spec["group"].as_str().unwrap_or_default().to_string(),
                version: v["name"].as_str().unwrap_or_default().to_string(),
                plural: plural.clone(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind: kind.clone(),
                list_kind: names["listKind"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{kind}List")),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                status_subresource: v["subresources"]["status"].is_object(),
                columns,
                selectable_fields: v["selectableFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["jsonPath"].as_str())
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect(),
                validation_schema: schema.as_ref().map(crate::validation::root_schema),
                rules: schema.as_ref().and_then(Rules::compile).map(Arc::new),
                schema,
                builtin,
            });
        }
        out
    }
}

fn age_column() -> Column {
    Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }
}

/// The definitions of the built-in kinds, as CRD JSON.
pub fn builtin_crds() -> Vec<Value> {
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd = |group: &str,
               kind: &str,
               plural: &str,
               scope: &str,
               short: Vec<&str>,
               status: bool,
               columns: Value,
               selectable: Vec<&str>| {
        let mut version = json!({
            "name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": open},
            "additionalPrinterColumns": columns,
            "selectableFields": selectable.iter().map(|p| json!({"jsonPath": p})).collect::<Vec<_>>(),
        });
        if status {
            version["subresources"] = json!({"status": {}});
        }
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }},
            "spec": {
                "group": group,
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "shortNames": short, "listKind": format!("{kind}List")},
                "scope": scope,
                "versions": [version],
            }
        })
    };
    let event_cols = json!([
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Note", "type": "string", "jsonPath": ".note"},
    ]);
    let core_event_cols = json!([
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Message", "type": "string", "jsonPath": ".message"},
    ]);
    vec![
        crd(
            "",
            "Namespace",
            "namespaces",
            "Cluster",
            vec!["ns"],
            true,
            json!([{"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                   {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]),
            vec![".status.phase"],
        ),
        crd(
            "",
            "Event",
            "events",
            "Namespaced",
            vec!["ev"],
            false,
            core_event_cols,
            vec![
                ".involvedObject.kind",
                ".involvedObject.name",
                ".involvedObject.namespace",
                ".involvedObject.uid",
                ".reason",
                ".type",
            ],
        ),
        crd(
            "coordination.k8s.io",
            "Lease",
            "leases",
            "Namespaced",
            vec![],
            false,
            json!([{"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"},
                   {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]),
            vec![],
        ),
        crd(
            "events.k8s.io",
            "Event",
            "events",
            "Namespaced",
            vec!["ev"],
            false,
            event_cols,
            vec![
                ".regarding.kind",
                ".regarding.name",
                ".regarding.namespace",
                ".reason",
                ".type",
            ],
        ),
        crd(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            "Cluster",
            vec!["crd", "crds"],
            true,
            json!([{"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]),
            vec![],
        ),
    ]
}

/// An immutable view of every served resource; replaced whole when CRDs change.
#[derive(Default, Debug)]
pub struct Registry {
    /// (group, version, plural) → definition.
    resources: BTreeMap<(String, String, String), Arc<ResourceDef>>,
}

impl Registry {
    /// Built-ins plus the given CRDs. A CRD that clashes with a built-in is ignored.
    pub fn build(crds: &[Value]) -> Registry {
        let mut resources = BTreeMap::new();
        for crd in crds {
            for def in ResourceDef::from_crd(crd, false) {
                if def.group.is_empty() || def.plural.is_empty() || def.kind.is_empty() {
                    continue;
                }
                resources.insert(
                    (def.group.clone(), def.version.clone(), def.plural.clone()),
                    Arc::new(def),
                );
            }
        }
        for crd in builtin_crds() {
            for def in ResourceDef::from_crd(&crd, true) {
                resources.insert(
                    (def.group.clone(), def.version.clone(), def.plural.clone()),
                    Arc::new(def),
                );
            }
        }
        Registry { resources }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.resources
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.resources.values()
    }

    /// Group → versions served, in order.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, v, _) in self.resources.keys() {
            let versions = groups.entry(g.clone()).or_default();
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
        groups
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> + 'a {
        self.resources
            .iter()
            .filter(move |((g, v, _), _)| g == group && v == version)
            .map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_served_and_keyed_like_kube_apiserver() {
        let reg = Registry::build(&[]);
        let ns = reg.get("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert_eq!(ns.key(None, "default"), "/registry/namespaces/default");
        let lease = reg
            .get("coordination.k8s.io", "v1", "leases")
            .expect("leases");
        assert_eq!(
            lease.key(Some("kube-system"), "x"),
            "/registry/coordination.k8s.io/leases/kube-system/x"
        );
        assert!(reg
            .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .is_some());
        assert!(reg.get("events.k8s.io", "v1", "events").is_some());
    }
}
