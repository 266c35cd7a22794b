//! Drives the in-process server with kube-rs, the way Strata's controllers and agents do.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::core::{DynamicObject, GroupVersionKind, PartialObjectMeta, WatchEvent};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use strata_apis::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec, VirtualMachineSpec,
};

use common::{api_code, next, next_change, start, start_with};

fn vm(name: &str) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "cirros".into(),
            ..Default::default()
        },
    )
}

fn vmi(name: &str, host: &str) -> VirtualMachineInstance {
    VirtualMachineInstance::new(
        name,
        VirtualMachineInstanceSpec {
            host: host.into(),
            cpu: 1,
            memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into()),
            image: "cirros".into(),
            image_url: "http://example/cirros.img".into(),
            ..VirtualMachineInstanceSpec::default()
        },
    )
}

/// Waits (bounded) for the next item of a stream; a hang fails the test instead of blocking it.
#[tokio::test]
async fn virtual_machine_crud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");

    let created = vms
        .create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.namespace().as_deref(), Some("default"));

    let err = vms
        .create(&PostParams::default(), &vm("vm1"))
        .await
        .expect_err("duplicate");
    assert_eq!(api_code(&err), 409);

    let got = vms.get("vm1").await.expect("get");
    assert_eq!(got.spec.image, "cirros");
    assert_eq!(got.resource_version(), created.resource_version());

    vms.create(&PostParams::default(), &vm("vm2"))
        .await
        .expect("create vm2");
    let list = vms.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 2);
    assert!(list
        .metadata
        .resource_version
        .is_some_and(|rv| !rv.is_empty()));

    // A label change is metadata: generation stays.
    let labelled = vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(labelled.metadata.generation, Some(1));
    let selected = vms
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("label list");
    assert_eq!(selected.items.len(), 1);
    let selected = vms
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .expect("notin");
    assert_eq!(selected.items.len(), 1);
    assert_eq!(selected.items[0].name_any(), "vm2");

    // A spec change through replace bumps generation.
    let mut changed = labelled.clone();
    changed.spec.image = "debian".into();
    let replaced = vms
        .replace("vm1", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.spec.image, "debian");

    // The old resourceVersion is stale now.
    let err = vms
        .replace("vm1", &PostParams::default(), &changed)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&err), 409);
    if let kube::Error::Api(s) = &err {
        assert_eq!(s.reason, "Conflict");
        assert!(
            s.message.contains("the object has been modified"),
            "{}",
            s.message
        );
    }

    // Pagination hands out continue tokens and keeps going to the end.
    let page = vms
        .list(&ListParams::default().limit(1))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().expect("continue token");
    let page2 = vms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(page2.items.len(), 1);
    assert!(page2.metadata.continue_.is_none_or(|c| c.is_empty()));
    assert_ne!(page.items[0].name_any(), page2.items[0].name_any());

    // Delete without finalizers removes it at once.
    let gone = vms
        .delete("vm2", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(gone.is_right(), "no finalizers: a Status comes back");
    let err = vms.get("vm2").await.expect_err("deleted");
    assert_eq!(api_code(&err), 404);
    if let kube::Error::Api(s) = &err {
        assert_eq!(s.message, "virtualmachines.strata.io \"vm2\" not found");
    }

    // Metadata-only reads, as Controller::owns uses them.
    let metas = vms
        .list_metadata(&ListParams::default())
        .await
        .expect("list_metadata");
    assert_eq!(metas.items.len(), 1);
    let meta: PartialObjectMeta<VirtualMachine> =
        vms.get_metadata("vm1").await.expect("get_metadata");
    assert_eq!(
        meta.metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("web")
    );

    srv.stop().await;
}

#[tokio::test]
async fn status_subresource_does_not_bump_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let mut with_status = vm("vm1");
    with_status.status = Some(Default::default());
    let created = vms
        .create(&PostParams::default(), &with_status)
        .await
        .expect("create");
    assert!(created.status.is_none(), "status is dropped on create");

    let patched = vms
        .patch_status(
            "vm1",
            &PatchParams::apply("vm-controller").force(),
            &Patch::Apply(json!({
                "apiVersion": "strata.io/v1alpha1",
                "kind": "VirtualMachine",
                "status": {"phase": "Running", "host": "h1", "observedGeneration": 1}
            })),
        )
        .await
        .expect("apply status");
    assert_eq!(patched.metadata.generation, Some(1));
    let status = patched.status.clone().expect("status");
    assert_eq!(status.host.as_deref(), Some("h1"));
    assert!(patched
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .any(|m| m.manager.as_deref() == Some("vm-controller")
            && m.operation.as_deref() == Some("Apply")
            && m.subresource.as_deref() == Some("status")));

    // Status sent to the main resource is ignored.
    let ignored = vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"host": "h9"}})),
        )
        .await
        .expect("merge on main");
    assert_eq!(ignored.status.and_then(|s| s.host).as_deref(), Some("h1"));

    // Spec sent to /status is ignored too.
    let ignored = vms
        .patch_status(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "x"}})),
        )
        .await
        .expect("merge on status");
    assert_eq!(ignored.spec.image, "cirros");
    assert_eq!(ignored.metadata.generation, Some(1));

    let got = vms.get_status("vm1").await.expect("get_status");
    assert_eq!(got.status.and_then(|s| s.host).as_deref(), Some("h1"));
    srv.stop().await;
}

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

#[tokio::test]
async fn finalizer_flow_like_kube_runtime() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{finalizer, Event};

    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    const NAME: &str = "strata.io/test-cleanup";

    let run = |obj: VirtualMachine| {
        let vms = vms.clone();
        async move {
            let cleaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cleaned.clone();
            finalizer(&vms, NAME, Arc::new(obj), |ev| async move {
                if let Event::Cleanup(_) = ev {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok::<_, Never>(Action::await_change())
            })
            .await
            .expect("finalizer step");
            cleaned.load(std::sync::atomic::Ordering::SeqCst)
        }
    };

    // First pass adds the finalizer (json-patch test-null + add).
    run(vms.get("vm1").await.expect("get")).await;
    let obj = vms.get("vm1").await.expect("get");
    assert_eq!(obj.finalizers(), &[NAME.to_string()]);
    assert!(!run(obj).await, "apply pass");

    // Delete marks the object and keeps it.
    let marked = vms
        .delete("vm1", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = marked.left().expect("object kept while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let obj = vms.get("vm1").await.expect("still there");

    // Cleanup removes the finalizer, which deletes the object.
    assert!(run(obj).await, "cleanup ran");
    assert_eq!(api_code(&vms.get("vm1").await.expect_err("gone")), 404);
    srv.stop().await;
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("before"))
        .await
        .expect("create");

    let mut stream = watcher(vms.clone(), watcher::Config::default()).boxed();
    // Initial list.
    let mut initial = Vec::new();
    loop {
        match next(&mut stream).await.expect("event") {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => initial.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, vec!["before"]);

    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    match next(&mut stream).await.expect("event") {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "vm1"),
        other => panic!("expected Apply, got {other:?}"),
    }
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "x"}})),
    )
    .await
    .expect("patch");
    match next(&mut stream).await.expect("event") {
        watcher::Event::Apply(o) => assert_eq!(o.spec.image, "x"),
        other => panic!("expected Apply, got {other:?}"),
    }
    vms.delete("vm1", &DeleteParams::default())
        .await
        .expect("delete");
    match next(&mut stream).await.expect("event") {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "vm1"),
        other => panic!("expected Delete, got {other:?}"),
    }

    // A raw watch from a resourceVersion sees only later events, DELETED at the delete's RV.
    let rv = vms
        .create(&PostParams::default(), &vm("vm2"))
        .await
        .expect("create")
        .resource_version();
    let rv = rv.expect("rv");
    let mut raw = vms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let deleted_rv = {
        vms.delete("vm2", &DeleteParams::default())
            .await
            .expect("delete");
        match next(&mut raw).await.expect("event") {
            WatchEvent::Deleted(o) => o.resource_version().expect("rv"),
            other => panic!("expected Deleted, got {other:?}"),
        }
    };
    assert!(deleted_rv.parse::<u64>().expect("numeric") > rv.parse::<u64>().expect("numeric"));
    srv.stop().await;
}

#[tokio::test]
async fn watch_follows_selector_transitions_and_sends_bookmarks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = strata_apiserver::Limits {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let srv = start_with(dir.path(), limits).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let created = vms
        .create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    let rv = created.resource_version().expect("rv");
    let wp = WatchParams::default().labels("app=web");
    let mut raw = vms.watch(&wp, &rv).await.expect("watch").boxed();
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .expect("label");
    match next_change(&mut raw).await {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "vm1"),
        other => panic!("entering the selector is ADDED, got {other:?}"),
    }
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .expect("relabel");
    match next_change(&mut raw).await {
        WatchEvent::Deleted(o) => assert_eq!(o.name_any(), "vm1"),
        other => panic!("leaving the selector is DELETED, got {other:?}"),
    }
    // With nothing happening, bookmarks keep coming and carry kind and apiVersion.
    match next(&mut raw).await.expect("event") {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "VirtualMachine");
            assert_eq!(b.types.api_version, "strata.io/v1alpha1");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn field_selector_on_selectable_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(srv.client.clone(), "default");
    vmis.create(&PostParams::default(), &vmi("a", "h1"))
        .await
        .expect("a");
    vmis.create(&PostParams::default(), &vmi("b", "h2"))
        .await
        .expect("b");
    vmis.create(&PostParams::default(), &vmi("c", "h1"))
        .await
        .expect("c");

    let on_h1 = vmis
        .list(&ListParams::default().fields("spec.host=h1"))
        .await
        .expect("list");
    let names: Vec<String> = on_h1.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, vec!["a", "c"]);
    let not_h1 = vmis
        .list(&ListParams::default().fields("spec.host!=h1"))
        .await
        .expect("list");
    assert_eq!(not_h1.items.len(), 1);
    let by_name = vmis
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .expect("list");
    assert_eq!(by_name.items.len(), 1);

    // Across namespaces too, as agents watch all namespaces.
    let all: Api<VirtualMachineInstance> = Api::all(srv.client.clone());
    let on_h2 = all
        .list(&ListParams::default().fields("spec.host=h2"))
        .await
        .expect("list all");
    assert_eq!(on_h2.items.len(), 1);

    let err = vmis
        .list(&ListParams::default().fields("spec.cpu=1"))
        .await
        .expect_err("unknown field");
    assert_eq!(api_code(&err), 400);
    if let kube::Error::Api(s) = &err {
        assert_eq!(s.message, "field label not supported: spec.cpu");
    }

    // A watch with the field selector sees a move onto the host as ADDED.
    let rv = vmis
        .get("c")
        .await
        .expect("c")
        .resource_version()
        .expect("rv");
    let mut w = vmis
        .watch(&WatchParams::default().fields("spec.host=h1"), &rv)
        .await
        .expect("watch")
        .boxed();
    vmis.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"host": "h1"}})),
    )
    .await
    .expect("move");
    match next(&mut w).await.expect("event") {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "b"),
        other => panic!("expected Added, got {other:?}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn too_old_resource_version_is_410_in_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = strata_apiserver::Limits {
        event_ring: 3,
        ..Default::default()
    };
    let srv = start_with(dir.path(), limits).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let first = vms
        .create(&PostParams::default(), &vm("vm0"))
        .await
        .expect("create");
    for i in 1..6 {
        vms.create(&PostParams::default(), &vm(&format!("vm{i}")))
            .await
            .expect("create");
    }
    let old_rv = first.resource_version().expect("rv");
    let mut w = vms
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("HTTP 200")
        .boxed();
    match next(&mut w).await.expect("event") {
        WatchEvent::Error(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    // kube-runtime's watcher recovers by re-listing.
    let mut stream = watcher(vms.clone(), watcher::Config::default()).boxed();
    let mut n = 0;
    loop {
        match next(&mut stream).await.expect("event") {
            watcher::Event::InitApply(_) => n += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(n, 6);
    srv.stop().await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let gvk = GroupVersionKind::gvk("strata.io", "v1alpha1", "VirtualMachineInstance");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "virtualmachineinstances");
    let api: Api<DynamicObject> = Api::namespaced_with(srv.client.clone(), "default", &ar);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "bad"},
        "spec": {"host": "h1", "cpu": "two", "memory": "64Mi", "image": "i", "imageUrl": "u"}
    }))
    .expect("object");
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid");
    assert_eq!(api_code(&err), 422);
    if let kube::Error::Api(s) = &err {
        assert_eq!(s.reason, "Invalid");
        let causes = s
            .details
            .as_ref()
            .map(|d| d.causes.clone())
            .unwrap_or_default();
        assert_eq!(causes[0].field, "spec.cpu");
        assert!(s.message.contains("spec.cpu"), "{}", s.message);
    }
    let missing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "bad"}, "spec": {"host": "h1"}
    }))
    .expect("object");
    let err = api
        .create(&PostParams::default(), &missing)
        .await
        .expect_err("missing fields");
    assert_eq!(api_code(&err), 422);

    // Unknown fields: pruned by default, an error with fieldValidation=Strict.
    let extra = json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "x"},
        "spec": {"host": "h1", "cpu": 1, "memory": "64Mi", "image": "i", "imageUrl": "u", "foo": 1}
    });
    let strict = PatchParams::apply("test").validation_strict();
    let err = api
        .patch("x", &strict, &Patch::Apply(extra.clone()))
        .await
        .expect_err("strict");
    assert_eq!(api_code(&err), 400);
    if let kube::Error::Api(s) = &err {
        assert_eq!(
            s.message,
            "strict decoding error: unknown field \"spec.foo\""
        );
    }
    let created = api
        .patch("x", &PatchParams::apply("test"), &Patch::Apply(extra))
        .await
        .expect("apply");
    assert!(
        created.data["spec"].get("foo").is_none(),
        "unknown field pruned"
    );
    assert_eq!(created.data["spec"]["cpu"], 1);

    // Strategic merge patch is not for custom kinds.
    let err = api
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"cpu": 2}})),
        )
        .await
        .expect_err("smp");
    assert_eq!(api_code(&err), 415);
    srv.stop().await;
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_drops_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let pp = PatchParams::apply("tester");
    let first = json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "vm1", "labels": {"a": "1", "b": "2"}},
        "spec": {"instanceOffering": "small", "image": "cirros", "rootDiskSize": "10Gi"}
    });
    let created = vms
        .patch("vm1", &pp, &Patch::Apply(first))
        .await
        .expect("apply creates");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.spec.root_disk_size.as_ref().map(|q| q.0.as_str()),
        Some("10Gi")
    );
    let second = json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "vm1", "labels": {"a": "1"}},
        "spec": {"instanceOffering": "small", "image": "debian"}
    });
    let updated = vms
        .patch("vm1", &pp, &Patch::Apply(second))
        .await
        .expect("apply updates");
    assert_eq!(updated.spec.image, "debian");
    assert_eq!(
        updated.spec.root_disk_size, None,
        "field dropped from the applied config is removed"
    );
    assert_eq!(updated.labels().get("b"), None);
    assert_eq!(updated.metadata.generation, Some(2));
    let err = vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Apply(json!({"apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine"})),
        )
        .await
        .expect_err("apply needs a field manager");
    assert_eq!(api_code(&err), 422);

    // dryRun never persists.
    let dry = vms
        .patch(
            "vm1",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"image": "dry"}})),
        )
        .await
        .expect("dry run");
    assert_eq!(dry.spec.image, "dry");
    assert_eq!(vms.get("vm1").await.expect("get").spec.image, "debian");
    srv.stop().await;
}

#[tokio::test]
async fn objects_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    let last = vms
        .create(&PostParams::default(), &vm("vm2"))
        .await
        .expect("create");
    // An open watch must not hold up shutdown.
    let mut w = vms
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        next(&mut w).await.expect("event"),
        WatchEvent::Added(_)
    ));
    let crds: Api<CustomResourceDefinition> = Api::all(srv.client.clone());
    let crd_rv = crds
        .get("virtualmachines.strata.io")
        .await
        .expect("crd")
        .resource_version();
    srv.stop().await;

    let srv = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(srv.client.clone());
    let again = crds
        .get("virtualmachines.strata.io")
        .await
        .expect("crd")
        .resource_version();
    assert_eq!(
        again, crd_rv,
        "re-installing an unchanged CRD writes nothing"
    );
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let list = vms.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 2);
    let vm2 = vms.get("vm2").await.expect("vm2");
    assert_eq!(vm2.resource_version(), last.resource_version());
    assert_eq!(vm2.metadata.uid, last.metadata.uid);
    let next_rv = vms
        .create(&PostParams::default(), &vm("vm3"))
        .await
        .expect("create")
        .resource_version();
    assert!(
        next_rv.expect("rv").parse::<u64>().expect("n")
            > last
                .resource_version()
                .expect("rv")
                .parse::<u64>()
                .expect("n"),
        "revisions continue after a restart"
    );
    srv.stop().await;
}

#[tokio::test]
async fn namespaces_crds_and_discovery() {
    use k8s_openapi::api::core::v1::Namespace;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;

    // Discovery finds the built-ins and Strata's kinds.
    let discovery = kube::Discovery::new(srv.client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "strata.io",
            "v1alpha1",
            "VirtualMachine",
        ))
        .expect("VirtualMachine discovered");
    assert_eq!(ar.plural, "virtualmachines");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .is_some());
    assert!(discovery
        .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
        .is_some());

    // The standard namespaces exist; a new one works; objects need an existing namespace.
    let nss: Api<Namespace> = Api::all(srv.client.clone());
    for ns in ["default", "kube-system", "strata-system"] {
        nss.get(ns).await.expect("standard namespace");
    }
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "team-a");
    assert_eq!(
        api_code(
            &vms.create(&PostParams::default(), &vm("vm1"))
                .await
                .expect_err("no ns")
        ),
        404
    );
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-a"}})).expect("ns");
    nss.create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create in team-a");
    nss.delete("team-a", &DeleteParams::default())
        .await
        .expect("delete ns");
    assert_eq!(
        api_code(&vms.get("vm1").await.expect_err("swept with its namespace")),
        404
    );

    // A CRD created through the API is served right away, with events for its objects.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(srv.client.clone());
    let widget: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
        }))
        .expect("crd");
    let created = crds
        .create(&PostParams::default(), &widget)
        .await
        .expect("create crd");
    let established = created
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::all_with(srv.client.clone(), &ar);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}})).expect("w");
    widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    assert_eq!(
        widgets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .expect("delete crd");
    let (code, _) = srv
        .get_json("/apis/example.com/v1/widgets", "application/json")
        .await;
    assert_eq!(code, 404);

    // Leases and events are plain namespaced kinds.
    let leases: Api<DynamicObject> = Api::namespaced_with(
        srv.client.clone(),
        "strata-system",
        &kube::api::ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
            "leases",
        ),
    );
    let lease: DynamicObject = serde_json::from_value(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "h1"}, "spec": {"holderIdentity": "h1", "leaseDurationSeconds": 40}})).expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    srv.stop().await;
}

#[tokio::test]
async fn tables_metadata_and_auth_over_raw_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    vms.patch_status(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "host": "h1", "conditions": [
            {"type": "Ready", "status": "False", "reason": "Booting", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}})),
    )
    .await
    .expect("status");

    let table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let (code, t) = srv
        .get_json(
            "/apis/strata.io/v1alpha1/namespaces/default/virtualmachines?limit=500",
            table_accept,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols[..4], ["Name", "Phase", "Host", "IP"]);
    let row = &t["rows"][0];
    assert_eq!(row["cells"][0], "vm1");
    assert_eq!(row["cells"][1], "Running");
    assert_eq!(row["cells"][2], "h1");
    assert_eq!(row["cells"][3], serde_json::Value::Null);
    let reason_col = cols
        .iter()
        .position(|c| *c == "Reason")
        .expect("Reason column");
    assert_eq!(row["cells"][reason_col], "Booting");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "vm1");

    let (_, one) = srv
        .get_json(
            "/apis/strata.io/v1alpha1/namespaces/default/virtualmachines/vm1?includeObject=Object",
            table_accept,
        )
        .await;
    assert_eq!(one["rows"][0]["object"]["kind"], "VirtualMachine");

    // Discovery and OpenAPI shapes kubectl relies on.
    let (_, api) = srv.get_json("/api", "application/json").await;
    assert_eq!(api["versions"][0], "v1");
    let (_, gv) = srv
        .get_json("/apis/strata.io/v1alpha1", "application/json")
        .await;
    let vm_res = gv["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "virtualmachines")
        .expect("vm")
        .clone();
    assert_eq!(vm_res["shortNames"], json!(["vm", "vms"]));
    assert!(gv["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .any(|r| r["name"] == "virtualmachines/status"));
    let (_, idx) = srv.get_json("/openapi/v3", "application/json").await;
    let url = idx["paths"]["apis/strata.io/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .expect("url")
        .to_string();
    let (code, doc) = srv.get_json(&url, "application/json").await;
    assert_eq!(code, 200);
    assert!(
        doc["components"]["schemas"]["io.strata.v1alpha1.VirtualMachine"]["properties"]["spec"]
            ["properties"]["image"]["description"]
            .is_string()
    );

    // Without the token: 401 Status; health checks stay open.
    let anon = common::client(&srv.url, None);
    let anon_vms: Api<VirtualMachine> = Api::namespaced(anon.clone(), "default");
    assert_eq!(
        api_code(
            &anon_vms
                .list(&ListParams::default())
                .await
                .expect_err("401")
        ),
        401
    );
    let health = anon
        .request_text(
            http::Request::get("/healthz")
                .body(Vec::new())
                .expect("req"),
        )
        .await
        .expect("healthz");
    assert_eq!(health, "ok");
    srv.stop().await;
}
