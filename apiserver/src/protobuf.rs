//! Protobuf request bodies for built-in kinds.
//!
//! kubectl 1.33 encodes built-in kinds (`kubectl create namespace`) as Kubernetes protobuf and,
//! unlike a 415 for an unknown patch type, does not retry as JSON when the server refuses it. So
//! the kinds Strata serves natively and that users create with typed kubectl commands are
//! decoded here, with the Kubernetes project's own generated messages (k8s-pb), into the JSON the
//! rest of the server handles. Custom resources are never protobuf, as in kube-apiserver.

use k8s_pb::{
    api::core::v1::Namespace,
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, runtime::Unknown},
};
use prost::Message;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// The media type of a protobuf body.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf-encoded object starts with this prefix, then a `runtime.Unknown` envelope.
const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf body of `kind` (in the core group) into its JSON form.
pub fn to_json(kind: &str, body: &[u8]) -> Result<Value, ApiError> {
    if kind != "Namespace" {
        return Err(ApiError::UnsupportedMediaType(
            "application/json, application/yaml",
        ));
    }
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the Kubernetes protobuf prefix"))?;
    let unknown = Unknown::decode(envelope).map_err(|e| bad(&format!("envelope: {e}")))?;
    let sent = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    if sent != kind {
        return Err(bad(&format!("the body holds a {sent:?}, not a {kind}")));
    }
    let namespace = Namespace::decode(unknown.raw.unwrap_or_default().as_slice())
        .map_err(|e| bad(&format!("Namespace: {e}")))?;
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace"});
    object["metadata"] = metadata(namespace.metadata.unwrap_or_default());
    let finalizers = namespace.spec.map(|s| s.finalizers).unwrap_or_default();
    if !finalizers.is_empty() {
        object["spec"] = json!({ "finalizers": finalizers });
    }
    Ok(object)
}

/// The metadata a client may set on create; the server assigns the rest.
fn metadata(meta: ObjectMeta) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_string(), value);
    };
    if let Some(name) = meta.name {
        put("name", name.into());
    }
    if let Some(prefix) = meta.generate_name {
        put("generateName", prefix.into());
    }
    if !meta.labels.is_empty() {
        put("labels", json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        put("annotations", json!(meta.annotations));
    }
    if !meta.finalizers.is_empty() {
        put("finalizers", json!(meta.finalizers));
    }
    Value::Object(out)
}

fn bad(detail: &str) -> ApiError {
    ApiError::BadRequest(format!("the protobuf request body is not valid: {detail}"))
}

#[cfg(test)]
mod tests {
    use k8s_pb::{api::core::v1::NamespaceSpec, apimachinery::pkg::runtime::TypeMeta};

    use super::*;

    /// Encodes the way client-go's protobuf serializer does.
    fn encode(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let envelope = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, &envelope.encode_to_vec()].concat()
    }

    #[test]
    fn a_namespace_decodes_to_its_json_form() {
        let namespace = Namespace {
            metadata: Some(ObjectMeta {
                name: Some("team-a".into()),
                labels: [("env".to_string(), "prod".to_string())].into(),
                ..ObjectMeta::default()
            }),
            spec: Some(NamespaceSpec {
                finalizers: vec!["kubernetes".into()],
            }),
            status: None,
        };
        let json = to_json("Namespace", &encode("Namespace", namespace.encode_to_vec())).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "team-a", "labels": {"env": "prod"}},
                "spec": {"finalizers": ["kubernetes"]},
            })
        );
    }

    #[test]
    fn other_kinds_and_broken_bodies_are_refused() {
        assert_eq!(to_json("Lease", b"k8s\0").unwrap_err().code(), 415);
        assert_eq!(to_json("Namespace", b"{}").unwrap_err().code(), 400);
        let lying = encode("Pod", Vec::new());
        assert_eq!(to_json("Namespace", &lying).unwrap_err().code(), 400);
    }
}
