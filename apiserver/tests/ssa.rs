//! Server-side apply through kube-rs: field ownership per manager, conflicts, force, removal of
//! dropped fields, list types from the schema, and `/status`.

mod common;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

fn crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.strata.io"},
        "spec": {
            "group": "test.strata.io",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {
                            "size": {"type": "integer"},
                            "color": {"type": "string"},
                            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name"],
                                "items": {"type": "object", "properties": {
                                    "name": {"type": "string"}, "port": {"type": "integer"}}}}
                        }},
                        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                    }
                }}
            }]
        }
    }))
    .expect("crd")
}

fn widget(spec: Value) -> Value {
    json!({"apiVersion": "test.strata.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})
}

fn managers(obj: &DynamicObject) -> Vec<String> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m.manager.as_deref().unwrap_or_default(),
                m.operation.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test]
async fn apply_tracks_ownership_conflicts_and_removals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start(dir.path()).await;
    Api::<CustomResourceDefinition>::all(server.client.clone())
        .create(&PostParams::default(), &crd())
        .await
        .expect("install CRD");
    let gvk = GroupVersionKind::gvk("test.strata.io", "v1", "Widget");
    let api: Api<DynamicObject> = Api::namespaced_with(
        server.client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let alice = PatchParams::apply("alice");
    let bob = PatchParams::apply("bob");

    // alice creates by applying; bob applies other fields and a second list-map item.
    api.patch(
        "w",
        &alice,
        &Patch::Apply(widget(
            json!({"size": 1, "color": "red", "ports": [{"name": "http", "port": 80}]}),
        )),
    )
    .await
    .expect("alice creates");
    let both = api
        .patch(
            "w",
            &bob,
            &Patch::Apply(widget(json!({"ports": [{"name": "ssh", "port": 22}]}))),
        )
        .await
        .expect("bob adds a port");
    assert_eq!(
        both.data["spec"]["ports"],
        json!([{"name": "http", "port": 80}, {"name": "ssh", "port": 22}]),
        "list maps merge by key"
    );
    assert_eq!(managers(&both), vec!["alice/Apply", "bob/Apply"]);

    // bob changing alice's field conflicts, with upstream's message, and changes nothing.
    let err = api
        .patch(
            "w",
            &bob,
            &Patch::Apply(widget(
                json!({"size": 2, "ports": [{"name": "ssh", "port": 22}]}),
            )),
        )
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(
                s.message,
                "Apply failed with 1 conflict: conflict with \"alice\": .spec.size"
            );
        }
        other => panic!("expected 409, got {other}"),
    }
    // Applying the same value is shared ownership, not a conflict.
    api.patch(
        "w",
        &bob,
        &Patch::Apply(widget(
            json!({"size": 1, "ports": [{"name": "ssh", "port": 22}]}),
        )),
    )
    .await
    .expect("same value");
    // Forced, bob takes the field over.
    let forced = api
        .patch(
            "w",
            &bob.clone().force(),
            &Patch::Apply(widget(
                json!({"size": 3, "ports": [{"name": "ssh", "port": 22}]}),
            )),
        )
        .await
        .expect("forced");
    assert_eq!(forced.data["spec"]["size"], 3);

    // alice stops setting color and the http port: both go (nobody else owns them); size stays,
    // since bob owns it now.
    let dropped = api
        .patch("w", &alice, &Patch::Apply(widget(json!({}))))
        .await
        .expect("alice drops fields");
    assert_eq!(
        dropped.data["spec"],
        json!({"size": 3, "ports": [{"name": "ssh", "port": 22}]})
    );

    // Apply on /status owns status only, under its own entry.
    let status = json!({"apiVersion": "test.strata.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"ready": true}});
    let st = api
        .patch_status(
            "w",
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(status),
        )
        .await
        .expect("status apply");
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(st.data["spec"]["size"], 3);
    let entry = st
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some("ctrl"))
        .expect("ctrl entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));

    // A merge patch takes ownership of what it changes, so a later apply conflicts with it.
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"color": "blue"}})),
    )
    .await
    .expect("merge patch");
    let err = api
        .patch(
            "w",
            &alice,
            &Patch::Apply(widget(json!({"color": "green"}))),
        )
        .await
        .expect_err("conflict with the updater");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.message.contains(".spec.color")),
        "{err}"
    );
    server.stop().await;
}
