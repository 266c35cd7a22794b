//! The image controller against the real API server: an Image is fetched from a local HTTP
//! server (on 127.0.0.1, started here) or a file into a `file:///` BackupStorage, with
//! `status.progress` moving through Downloading and Verifying to Ready; a wrong checksum or a
//! missing file ends Failed with the reason; a controller restart mid-download converges; VMs
//! get the stored copy.

mod common;

use std::{convert::Infallible, path::Path, time::Duration};

use axum::{body::Body, extract::State, http::header, response::Response, routing::get, Router};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::{
    api::ListParams,
    runtime::{watcher, WatchStreamExt},
    Api, Client, ResourceExt,
};
use sha2::{Digest, Sha256};
use strata_apis::{
    condition::READY, image::ImagePhase, BackupStorage, BackupStorageSpec, Image, ImageFormat,
    ImageSpec, ImageStatus, RunStrategy, VirtualMachine, VirtualMachineInstance,
    VirtualMachineSpec, VmNic,
};
use strata_controllers::ControllerOptions;

use common::{create, wait_for, NS};

/// An image served in `chunks` pieces of `CHUNK` bytes, one every `delay`.
#[derive(Clone)]
struct Served {
    bytes: Vec<u8>,
    delay: Duration,
}

const CHUNK: usize = 16 << 10;

/// Serves `image` at `/image.raw` (anything else is 404) on 127.0.0.1; returns its base URL.
async fn serve(image: Served) -> String {
    async fn slowly(State(image): State<Served>) -> Response {
        let length = image.bytes.len();
        let chunks: Vec<Vec<u8>> = image.bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let body = futures::stream::iter(chunks).then(move |chunk| async move {
            tokio::time::sleep(image.delay).await;
            Ok::<_, Infallible>(chunk)
        });
        Response::builder()
            .header(header::CONTENT_LENGTH, length)
            .body(Body::from_stream(body))
            .expect("response")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let app = Router::new()
        .route("/image.raw", get(slowly))
        .with_state(image);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });
    base
}

/// Bytes that no two chunks share, so a copy stitched wrongly fails the checksum.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

async fn store(client: &Client, name: &str, dir: &Path) {
    let spec = BackupStorageSpec {
        url: format!("file://{}", dir.display()),
        ..BackupStorageSpec::default()
    };
    create(&Api::all(client.clone()), BackupStorage::new(name, spec)).await;
}

async fn image(
    client: &Client,
    name: &str,
    url: &str,
    format: ImageFormat,
    checksum: Option<String>,
) {
    let spec = ImageSpec {
        url: url.into(),
        format,
        checksum,
        ..ImageSpec::default()
    };
    create(&Api::all(client.clone()), Image::new(name, spec)).await;
}

fn ready(status: &ImageStatus) -> (String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Follows Image `name` until its Ready reason is `until`; returns every status seen on the way.
async fn follow(client: &Client, name: &str, until: &str) -> Vec<ImageStatus> {
    let api: Api<Image> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut seen = Vec::new();
    let mut stream = watcher(api, config).applied_objects().boxed();
    let end = tokio::time::timeout(common::DEADLINE, async {
        while let Some(image) = stream.next().await {
            let Some(status) = image.expect("watch").status else {
                continue;
            };
            let done = ready(&status).0 == until;
            seen.push(status);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "Image {name} never got to {until}: {seen:#?}");
    seen
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits for Events with each of `reasons` about the object `name`.
async fn wait_events(client: &Client, name: &str, reasons: &[&str]) {
    let events: Api<Event> = Api::all(client.clone());
    wait_for(
        client,
        &format!("Events {reasons:?} about {name}"),
        || async {
            let seen: Vec<String> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .filter_map(|e| e.reason)
                .collect();
            reasons
                .iter()
                .all(|r| seen.iter().any(|s| s == r))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_http_image_downloads_with_progress_then_verifies_and_is_ready() {
    let plane = common::start(&[], Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = pattern(1 << 20);
    let base = serve(Served {
        bytes: bytes.clone(),
        delay: Duration::from_millis(25),
    })
    .await;
    store(&plane.client, "bs", dir.path()).await;
    let url = format!("{base}/image.raw");
    image(
        &plane.client,
        "fetched",
        &url,
        ImageFormat::Raw,
        Some(sha256(&bytes)),
    )
    .await;

    let seen = follow(&plane.client, "fetched", "Stored").await;
    let steps: Vec<(String, i32)> = seen
        .iter()
        .filter_map(|s| s.progress.as_ref().map(|p| (p.step.clone(), p.percent)))
        .collect();
    assert!(
        steps
            .iter()
            .any(|(step, p)| step == "Downloading" && *p > 0 && *p < 90),
        "the bar moves while downloading: {steps:?}"
    );
    assert!(
        steps.iter().any(|(step, _)| step == "Verifying"),
        "then verifies: {steps:?}"
    );
    let download_percents: Vec<i32> = steps.iter().map(|(_, p)| *p).collect();
    assert!(
        download_percents.windows(2).all(|w| w[0] <= w[1]),
        "never goes back: {download_percents:?}"
    );
    assert!(
        steps.len() < 40,
        "progress is throttled, not one write per chunk: {} writes",
        steps.len()
    );

    let done = seen.last().expect("a final status");
    assert_eq!(done.phase, Some(ImagePhase::Ready), "{done:#?}");
    assert_eq!(ready(done).0, "Stored");
    assert_eq!(done.progress, None, "no bar once Ready");
    assert_eq!(done.size.as_ref().map(|q| q.0.as_str()), Some("1Mi"));
    assert_eq!(
        done.virtual_size.as_ref().map(|q| q.0.as_str()),
        Some("1Mi")
    );
    assert_eq!(done.checksum, Some(sha256(&bytes)));
    assert_eq!(done.backup_storage.as_deref(), Some("bs"));
    let copy = done
        .install_url
        .as_deref()
        .and_then(|u| u.strip_prefix("file://"))
        .expect("a file:// copy");
    assert_eq!(std::fs::read(copy).expect("the copy"), bytes);
    assert_eq!(files(&dir.path().join("images")).len(), 1, "no .part left");

    wait_events(
        &plane.client,
        "fetched",
        &["Downloading", "Verifying", "Stored"],
    )
    .await;
}

#[tokio::test]
async fn a_wrong_checksum_or_a_missing_file_fails_with_the_reason() {
    let plane = common::start(&[], Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = pattern(64 << 10);
    let base = serve(Served {
        bytes: bytes.clone(),
        delay: Duration::ZERO,
    })
    .await;
    store(&plane.client, "bs", dir.path()).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    image(
        &plane.client,
        "tampered",
        &format!("{base}/image.raw"),
        ImageFormat::Raw,
        Some(wrong.clone()),
    )
    .await;
    image(
        &plane.client,
        "missing",
        &format!("{base}/nope.raw"),
        ImageFormat::Raw,
        None,
    )
    .await;

    let tampered = follow(&plane.client, "tampered", "ChecksumMismatch").await;
    let done = tampered.last().expect("final");
    assert_eq!(done.phase, Some(ImagePhase::Failed));
    let (reason, message) = ready(done);
    assert_eq!(reason, "ChecksumMismatch");
    assert!(
        message.contains(&wrong) && message.contains(&sha256(&bytes)),
        "names both sums: {message}"
    );
    assert_eq!(done.install_url, None);

    let missing = follow(&plane.client, "missing", "NotFound").await;
    let done = missing.last().expect("final");
    assert_eq!(done.phase, Some(ImagePhase::Failed));
    let (reason, message) = ready(done);
    assert_eq!(reason, "NotFound");
    assert!(message.contains("404"), "{message}");

    assert!(
        files(&dir.path().join("images")).is_empty(),
        "nothing of a failed fetch stays in the store"
    );
    wait_events(&plane.client, "tampered", &["ChecksumMismatch"]).await;
}

#[tokio::test]
async fn a_file_image_is_used_in_place_until_a_store_appears_then_vms_get_the_copy() {
    let plane = common::start(&["host-1"], Duration::from_secs(1)).await;
    common::inventory(&plane.client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&source)
        .arg("64M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success());
    let url = format!("file://{}", source.display());
    image(&plane.client, "local", &url, ImageFormat::Qcow2, None).await;

    let images: Api<Image> = Api::all(plane.client.clone());
    let in_place = wait_for(&plane.client, "the image to be used in place", || async {
        let status = images.get("local").await.ok()?.status?;
        (ready(&status).0 == "UsedInPlace").then_some(status)
    })
    .await;
    assert_eq!(in_place.phase, Some(ImagePhase::Ready));
    assert_eq!(in_place.install_url, None, "not pretending it was fetched");
    let written = images.get("local").await.expect("image").resource_version();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = images.get("local").await.expect("image").resource_version();
    assert_eq!(written, after, "a settled image is not written again");

    // A VM made meanwhile runs from the URL, and moves to the stored copy once there is one.
    let vm = VirtualMachine::new(
        "vm",
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "local".into(),
            nics: vec![VmNic {
                l3_network: "net-1".into(),
                ..VmNic::default()
            }],
            run_strategy: RunStrategy::Always,
            ..VirtualMachineSpec::default()
        },
    );
    create(&Api::namespaced(plane.client.clone(), NS), vm).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(plane.client.clone(), NS);
    let image_url = |url: String| {
        let vmis = vmis.clone();
        async move {
            let vmi = vmis.get_opt("vm").await.ok()??;
            (vmi.spec.image_url == url).then_some(vmi)
        }
    };
    let vmi = wait_for(&plane.client, "the instance to use the URL", || {
        image_url(url.clone())
    })
    .await;
    assert_eq!(vmi.spec.image_checksum, None);

    store(&plane.client, "bs", &dir.path().join("store")).await;
    let seen = follow(&plane.client, "local", "Stored").await;
    let done = seen.last().expect("final");
    assert_eq!(ready(done).0, "Stored", "{done:#?}");
    assert_eq!(
        done.virtual_size.as_ref().map(|q| q.0.as_str()),
        Some("64Mi")
    );
    let size = std::fs::metadata(&source).expect("source").len();
    assert_eq!(
        done.size.as_ref().map(|q| q.0.clone()),
        Some(strata_apis::quantity::format_bytes(size).0)
    );
    let install_url = done.install_url.clone().expect("stored");

    let vmi = wait_for(&plane.client, "the instance to use the stored copy", || {
        image_url(install_url.clone())
    })
    .await;
    assert_eq!(vmi.spec.image_checksum, done.checksum);
}

#[tokio::test]
async fn a_restart_mid_download_starts_again_cleanly_and_converges() {
    let mut plane = common::start(&[], Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = pattern(2 << 20);
    let base = serve(Served {
        bytes: bytes.clone(),
        delay: Duration::from_millis(15),
    })
    .await;
    store(&plane.client, "bs", dir.path()).await;
    image(
        &plane.client,
        "big",
        &format!("{base}/image.raw"),
        ImageFormat::Raw,
        Some(sha256(&bytes)),
    )
    .await;

    let images: Api<Image> = Api::all(plane.client.clone());
    wait_for(&plane.client, "the download to be under way", || async {
        let progress = images.get("big").await.ok()?.status?.progress?;
        (progress.step == "Downloading" && progress.percent >= 10).then_some(())
    })
    .await;
    // The controllers stop mid-download, as in a crash: only the hidden .part exists.
    let controllers = plane.tasks.remove(1);
    controllers.abort();
    let _ = controllers.await;
    let left = files(&dir.path().join("images"));
    assert!(
        left.len() == 1 && left[0].ends_with(".part"),
        "only a partial file: {left:?}"
    );

    let client = plane.client.clone();
    plane.tasks.push(tokio::spawn(async move {
        strata_controllers::run(client, ControllerOptions::default())
            .await
            .expect("controllers run");
    }));
    let done = wait_for(&plane.client, "the image to be Ready", || async {
        let image = images.get("big").await.ok()?;
        let status = image.status?;
        (status.phase == Some(ImagePhase::Ready)).then_some(status)
    })
    .await;
    assert_eq!(ready(&done).0, "Stored");
    let copy = done
        .install_url
        .as_deref()
        .and_then(|u| u.strip_prefix("file://"))
        .expect("copy");
    assert_eq!(
        std::fs::read(copy).expect("copy"),
        bytes,
        "whole, not appended"
    );
    assert_eq!(
        files(&dir.path().join("images")).len(),
        1,
        "the .part is gone"
    );
}
