//! Owner-reference garbage collection, consistent pagination and streaming lists.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use strata_apis::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec, VirtualMachineSpec,
};

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

fn owned_vmi(name: &str, owner: &VirtualMachine) -> VirtualMachineInstance {
    let mut vmi = VirtualMachineInstance::new(
        name,
        VirtualMachineInstanceSpec {
            host: "h1".into(),
            cpu: 1,
            memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into()),
            image: "cirros".into(),
            image_url: "http://example/cirros.img".into(),
            ..VirtualMachineInstanceSpec::default()
        },
    );
    vmi.metadata.owner_references = owner.controller_owner_ref(&()).map(|r| vec![r]);
    vmi
}

async fn vm_with_instance(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
) -> VirtualMachine {
    let owner = vms
        .create(&PostParams::default(), &vm(name))
        .await
        .expect("vm");
    vmis.create(&PostParams::default(), &owned_vmi(name, &owner))
        .await
        .expect("vmi");
    owner
}

#[tokio::test]
async fn deleting_an_owner_collects_or_orphans_dependents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(srv.client.clone(), "default");

    // Background (the default).
    vm_with_instance(&vms, &vmis, "bg").await;
    vms.delete("bg", &DeleteParams::background())
        .await
        .expect("delete");
    assert_eq!(
        common::api_code(&vmis.get("bg").await.expect_err("collected")),
        404
    );

    // Foreground.
    vm_with_instance(&vms, &vmis, "fg").await;
    vms.delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete");
    assert_eq!(
        common::api_code(&vmis.get("fg").await.expect_err("collected")),
        404
    );
    assert_eq!(
        common::api_code(&vms.get("fg").await.expect_err("owner gone")),
        404
    );

    // Orphan.
    vm_with_instance(&vms, &vmis, "or").await;
    vms.delete("or", &DeleteParams::orphan())
        .await
        .expect("delete");
    let orphan = vmis.get("or").await.expect("kept");
    assert!(
        orphan.owner_references().is_empty(),
        "owner reference removed"
    );

    // An owner kept by a finalizer keeps its dependents until it is really gone.
    let owner = vm_with_instance(&vms, &vmis, "fin").await;
    let mut with_finalizer = owner.clone();
    with_finalizer.metadata.finalizers = Some(vec!["strata.io/test".into()]);
    let with_finalizer = vms
        .replace("fin", &PostParams::default(), &with_finalizer)
        .await
        .expect("add finalizer");
    vms.delete(
        "fin",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        },
    )
    .await
    .expect("mark");
    vmis.get("fin")
        .await
        .expect("dependent stays while the owner is terminating");
    let mut released = vms.get("fin").await.expect("terminating");
    assert_ne!(
        released.resource_version(),
        with_finalizer.resource_version()
    );
    released.metadata.finalizers = Some(vec![]);
    vms.replace("fin", &PostParams::default(), &released)
        .await
        .expect("release");
    assert_eq!(
        common::api_code(&vmis.get("fin").await.expect_err("collected")),
        404
    );
    srv.stop().await;
}

#[tokio::test]
async fn pages_show_the_first_pages_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    for name in ["a", "b", "c", "d"] {
        vms.create(&PostParams::default(), &vm(name))
            .await
            .expect("create");
    }
    let page1 = vms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    let names: Vec<String> = page1.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, ["a", "b"]);
    // Changes between pages are not seen by later pages.
    vms.delete("c", &DeleteParams::default())
        .await
        .expect("delete c");
    vms.create(&PostParams::default(), &vm("e"))
        .await
        .expect("create e");
    let token = page1.metadata.continue_.clone().expect("token");
    let page2 = vms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    let names: Vec<String> = page2.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(
        page2.metadata.resource_version,
        page1.metadata.resource_version
    );
    // A fresh list sees the present.
    let now = vms.list(&ListParams::default()).await.expect("list");
    let names: Vec<String> = now.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, ["a", "b", "d", "e"]);
    srv.stop().await;
}

#[tokio::test]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("a"))
        .await
        .expect("create");
    vms.create(&PostParams::default(), &vm("b"))
        .await
        .expect("create");
    let mut stream = watcher(vms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event within 10s")
            .expect("stream open")
            .expect("event");
        match ev {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => initial.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["a", "b"]);
    vms.create(&PostParams::default(), &vm("c"))
        .await
        .expect("create");
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event within 10s")
        .expect("stream open")
        .expect("event");
    assert!(matches!(ev, watcher::Event::Apply(o) if o.name_any() == "c"));
    srv.stop().await;
}
