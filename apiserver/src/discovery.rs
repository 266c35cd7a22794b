//! Legacy (unaggregated) discovery documents, which every kubectl from 1.27 on and kube-rs read.

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::{Registry, ResourceDef};

/// `base64(sha256("<group>/<version>/<Kind>")[:8])`, as kube-apiserver computes it.
pub fn storage_version_hash(def: &ResourceDef) -> String {
    let digest = Sha256::digest(format!("{}/{}/{}", def.group, def.version, def.kind));
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-strata+", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let groups = reg.groups();
    let versions = groups.get(group).filter(|_| !group.is_empty())?;
    let mut g = group_json(group, versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `APIResourceList` for one group-version; `None` if nothing is served there.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for def in reg.in_group_version(group, version) {
        resources.push(json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
            "shortNames": def.short_names,
            "categories": def.categories,
            "storageVersionHash": storage_version_hash(def),
        }));
        if def.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_v1_is_not_empty_and_has_status_entries() {
        let reg = Registry::build(&[]);
        let list = resource_list(&reg, "", "v1").expect("core v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"namespaces"));
        assert!(names.contains(&"namespaces/status"));
        assert!(names.contains(&"events"));
        assert_eq!(list["groupVersion"], "v1");
        let groups = api_group_list(&reg);
        assert!(groups["groups"]
            .as_array()
            .is_some_and(|g| g.iter().all(|g| g["name"] != "")));
    }

    #[test]
    fn storage_version_hash_matches_upstream_rule() {
        let reg = Registry::build(&[]);
        let ns = reg.get("", "v1", "namespaces").expect("namespaces");
        // kube-apiserver reports this value for core/v1 Namespace.
        assert_eq!(storage_version_hash(&ns), "Q3oi5N2YM8M=");
    }
}
