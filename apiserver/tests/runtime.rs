//! kube-runtime pieces beyond the plain watcher: the event Recorder, metadata watches (as
//! `Controller::owns` uses them), and Table watches (as `kubectl get -w` uses them).

mod common;

use futures::StreamExt;
use kube::api::{Api, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use common::next;
use strata_apis::{VirtualMachine, VirtualMachineSpec};

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

#[tokio::test]
async fn event_recorder_creates_then_patches_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    let obj = vms
        .create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    let recorder = Recorder::new(
        srv.client.clone(),
        Reporter {
            controller: "vm-controller".into(),
            instance: Some("test".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Scheduled".into(),
        note: Some("placed on h1".into()),
        action: "Schedule".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish creates");
    // The same event again is a patch that bumps the series count.
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish patches");

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(srv.client.clone(), "default");
    let list = events
        .list(&ListParams::default().fields("regarding.name=vm1"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Scheduled"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("vm1")
    );
    assert!(
        e.series.as_ref().is_some_and(|s| s.count >= 2),
        "second publish recorded: {e:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn metadata_watcher_sees_partial_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    // What Controller::owns does: metadata-only list and watch.
    let metas: Api<PartialObjectMeta<VirtualMachine>> =
        Api::namespaced(srv.client.clone(), "default");
    let mut stream = watcher(metas, watcher::Config::default()).boxed();
    loop {
        match next(&mut stream).await.expect("event") {
            watcher::Event::InitApply(m) => assert_eq!(m.name_any(), "vm1"),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    let mut owned = vm("vm2");
    owned.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    vms.create(&PostParams::default(), &owned)
        .await
        .expect("create");
    match next(&mut stream).await.expect("event") {
        watcher::Event::Apply(m) => {
            assert_eq!(m.name_any(), "vm2");
            assert_eq!(m.labels().get("app").map(String::as_str), Some("web"));
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn table_watch_sends_column_definitions_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start(dir.path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(srv.client.clone(), "default");
    vms.create(&PostParams::default(), &vm("vm1"))
        .await
        .expect("create");
    vms.create(&PostParams::default(), &vm("vm2"))
        .await
        .expect("create");
    // The stream ends by itself at timeoutSeconds, so the whole body can be read.
    let req = http::Request::get(
        "/apis/strata.io/v1alpha1/namespaces/default/virtualmachines?watch=true&resourceVersion=0&timeoutSeconds=1",
    )
    .header(http::header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    .body(Vec::new())
    .expect("request");
    let text = srv.client.request_text(req).await.expect("watch body");
    let frames: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(frames.len(), 2, "{text}");
    assert_eq!(frames[0]["type"], "ADDED");
    assert_eq!(frames[0]["object"]["kind"], "Table");
    assert!(frames[0]["object"]["columnDefinitions"].is_array());
    assert_eq!(frames[0]["object"]["rows"][0]["cells"][0], "vm1");
    assert!(frames[1]["object"].get("columnDefinitions").is_none());
    assert_eq!(frames[1]["object"]["rows"][0]["cells"][0], "vm2");
    srv.stop().await;
}
