//! CRD `x-kubernetes-validations` (CEL) and schema defaults, enforced by the server on every
//! write, as kube-apiserver does for custom resources.

mod common;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

fn crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.test.strata.io"},
        "spec": {
            "group": "test.strata.io",
            "scope": "Namespaced",
            "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
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
                                "mode": {"type": "string", "default": "auto"}
                            }
                        }
                    }
                }}
            }]
        }
    }))
    .expect("crd")
}

fn gadget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.strata.io/v1",
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("gadget")
}

fn invalid(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) if s.code == 422 => s,
        other => panic!("expected 422 Invalid, got {other}"),
    }
}

#[tokio::test]
async fn cel_rules_and_defaults_apply_on_create_and_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(server.client.clone());
    crds.create(&PostParams::default(), &crd())
        .await
        .expect("install CRD");
    let gvk = GroupVersionKind::gvk("test.strata.io", "v1", "Gadget");
    let api: Api<DynamicObject> = Api::namespaced_with(
        server.client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "gadgets"),
    );

    // A rule that fails: 422, naming the field the rule sits on, and nothing is stored.
    let status = invalid(
        api.create(
            &PostParams::default(),
            &gadget("bad", json!({"min": 5, "max": 1, "zone": "a"})),
        )
        .await
        .expect_err("min > max is refused"),
    );
    assert_eq!(
        status.message,
        "Gadget.test.strata.io \"bad\" is invalid: spec: Invalid value: \"object\": min must not exceed max"
    );
    let causes = status.details.expect("details").causes;
    assert_eq!(causes[0].field, "spec");
    assert!(api.get_opt("bad").await.expect("get").is_none());

    // Defaults fill what the client left out.
    let created = api
        .create(
            &PostParams::default(),
            &gadget("good", json!({"min": 1, "max": 2, "zone": "a"})),
        )
        .await
        .expect("valid create");
    assert_eq!(created.data["spec"]["mode"], "auto");

    // Transition rules see the stored object as oldSelf, on every write path.
    let moved = json!({"spec": {"zone": "b"}});
    let status = invalid(
        api.patch("good", &PatchParams::default(), &Patch::Merge(&moved))
            .await
            .expect_err("zone is immutable"),
    );
    assert!(
        status.message.ends_with("zone is immutable"),
        "{}",
        status.message
    );
    let apply = PatchParams::apply("test").force();
    let applied = json!({"apiVersion": "test.strata.io/v1", "kind": "Gadget", "metadata": {"name": "good"}, "spec": {"min": 1, "max": 2, "zone": "b"}});
    invalid(
        api.patch("good", &apply, &Patch::Apply(&applied))
            .await
            .expect_err("apply is checked too"),
    );
    let fine = json!({"spec": {"max": 9}});
    let patched = api
        .patch("good", &PatchParams::default(), &Patch::Merge(&fine))
        .await
        .expect("a change the rules allow");
    assert_eq!(patched.data["spec"]["max"], 9);
    server.stop().await;
}
