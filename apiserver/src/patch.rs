//! Patch application: JSON Patch (with evanphx/json-patch semantics) and JSON merge patch.
//! Server-side apply is in [`crate::ssa`].

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

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
}
