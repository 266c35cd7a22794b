//! Real VMs against raw virsh: a VM applied through the API on this machine's libvirt host,
//! timed from the create request until its status says Running, against `virsh define` +
//! `virsh start` of the very domain XML Strata generated for it (renamed, on a fresh
//! copy-on-write disk over the same cached image): the floor any control plane pays. The
//! first VM is a warm-up (the image is fetched and verified once per host); then each run
//! creates one VM, copies its domain raw, and deletes both.
//!
//! Needs libvirtd (started if it does not answer, as `strata up --driver libvirt` does) and the
//! test guest that `hack/build-test-image.sh` builds into target/test-image.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use strata_apis::{
    Cluster, ClusterSpec, DirectBoot, Image, ImageFormat, ImageSpec, InstanceOffering,
    InstanceOfferingSpec, VirtualMachine, VirtualMachineSpec, VmPhase, Zone, ZoneSpec,
};

use super::stats::Latency;
use super::{progress::Progress, Error};
use crate::up::{self, ControlPlaneOptions, LibvirtHost};

const NAMESPACE: &str = "bench-libvirt";
const URI: &str = "qemu:///system";

/// What the phase measured.
#[derive(Clone, Debug, Serialize)]
pub struct Libvirt {
    pub runs: usize,
    /// Create through the API → VM `Running`, per run.
    pub strata: Latency,
    /// `virsh define` + `virsh start` of the same domain, per run.
    pub raw_virsh: Latency,
    /// Strata's median over raw virsh's median (target ≤ 1.2).
    pub ratio_p50: f64,
    /// The first VM (image fetched and verified into the host's cache), not in the figures.
    pub warm_up_seconds: f64,
    /// The libvirt domain type the driver chose (`qemu`: TCG, no usable KVM here).
    pub domain_type: String,
}

/// Runs the phase on the test guest in `image` (a directory with disk.qcow2, its .sha256,
/// vmlinuz and initrd.img).
pub async fn run(
    work: &Path,
    image: &Path,
    runs: usize,
    timeout: Duration,
    progress: &Progress,
) -> Result<Libvirt, Error> {
    let image = image.canonicalize().map_err(|source| Error::Write {
        path: image.to_owned(),
        source,
    })?;
    let dir = work.join("libvirt");
    // QEMU runs as another user and must reach the volumes under the temp dir.
    for path in [work, dir.as_path()] {
        std::fs::create_dir_all(path)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            })?;
    }
    let host = LibvirtHost {
        name: format!("bench-libvirt-{}", std::process::id()),
        cluster: "cluster-1".into(),
        uri: None,
        state_dir: dir.join("agent"),
        storage_dir: None,
        vtep: std::net::Ipv4Addr::LOCALHOST,
        host_netns: None,
    };
    let plane = up::start_with_libvirt(
        ControlPlaneOptions {
            data_dir: dir.join("plane"),
            listen: "127.0.0.1:0".into(),
            hosts: Vec::new(),
            host_capacity: strata_apis::HostCapacity::default(),
            heartbeat: Duration::from_secs(2),
            host_lease_timeout: Duration::from_secs(8),
            store: strata_apiserver::StoreConfig::Embedded,
        },
        Some(host),
    )
    .await
    .map_err(Error::Start)?;
    let result = async {
        let client = up::client(&plane.kubeconfig).await.map_err(Error::Start)?;
        install(&client, &image).await?;
        super::hosts_connected(&client, 1, timeout, progress).await?;
        let vms: Api<VirtualMachine> = Api::namespaced(client, NAMESPACE);
        let warm_up_seconds = strata_start(&vms, "warm-up", timeout).await?.as_secs_f64();
        delete(&vms, "warm-up", timeout).await?;
        let bar = progress.bar(runs, "real VMs: Strata, then raw virsh");
        let (mut strata, mut raw, mut domain_type) = (Vec::new(), Vec::new(), String::new());
        for i in 0..runs {
            let name = format!("vm-{i}");
            strata.push(strata_start(&vms, &name, timeout).await?);
            let domain = format!("{NAMESPACE}.{name}");
            let (seconds, kind) = raw_start(&domain, &dir.join(format!("raw-{i}"))).await?;
            raw.push(seconds);
            domain_type = kind;
            delete(&vms, &name, timeout).await?;
            bar.set_position(i as u64 + 1);
        }
        progress.done(bar);
        let (strata, raw_virsh) = (Latency::of(&mut strata), Latency::of(&mut raw));
        Ok(Libvirt {
            runs,
            ratio_p50: strata.p50_ms / raw_virsh.p50_ms,
            strata,
            raw_virsh,
            warm_up_seconds,
            domain_type,
        })
    }
    .await;
    plane.stop().await.map_err(Error::Start)?;
    result
}

/// The namespace, zone, cluster, test image and a 1-CPU, 128Mi offering.
async fn install(client: &Client, image: &Path) -> Result<(), Error> {
    let sha = std::fs::read_to_string(image.join("disk.qcow2.sha256")).map_err(|source| {
        Error::Write {
            path: image.join("disk.qcow2.sha256"),
            source,
        }
    })?;
    let sha = sha.split_whitespace().next().unwrap_or_default();
    let file = |name: &str| format!("file://{}", image.join(name).display());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    create(&Api::all(client.clone()), namespace).await?;
    create(
        &Api::all(client.clone()),
        Zone::new("zone-1", ZoneSpec::default()),
    )
    .await?;
    let cluster = ClusterSpec {
        zone: "zone-1".into(),
        ..ClusterSpec::default()
    };
    create(
        &Api::all(client.clone()),
        Cluster::new("cluster-1", cluster),
    )
    .await?;
    let spec = ImageSpec {
        url: file("disk.qcow2"),
        format: ImageFormat::Qcow2,
        checksum: Some(format!("sha256:{sha}")),
        direct_boot: Some(DirectBoot {
            kernel_url: file("vmlinuz"),
            initrd_url: Some(file("initrd.img")),
            cmdline: Some("console=ttyS0 quiet strata.dhcp_tries=1".into()),
        }),
        ..ImageSpec::default()
    };
    create(&Api::all(client.clone()), Image::new("guest", spec)).await?;
    let offering = InstanceOfferingSpec {
        cpu: 1,
        memory: Quantity("128Mi".into()),
        ..InstanceOfferingSpec::default()
    };
    create(
        &Api::all(client.clone()),
        InstanceOffering::new("tiny", offering),
    )
    .await
}

async fn create<K>(api: &Api<K>, object: K) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &object)
        .await
        .map(|_| ())
        .map_err(|source| Error::Api {
            action: format!("create {name}"),
            source,
        })
}

/// Creates VM `name` and returns the time until its status says Running.
async fn strata_start(
    vms: &Api<VirtualMachine>,
    name: &str,
    timeout: Duration,
) -> Result<Duration, Error> {
    let vm = VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("tiny".into()),
            image: "guest".into(),
            ..VirtualMachineSpec::default()
        },
    );
    let started = Instant::now();
    create(vms, vm).await?;
    wait(vms, name, timeout, |vm| {
        vm.and_then(|vm| vm.status)
            .is_some_and(|s| s.phase == VmPhase::Running)
    })
    .await?;
    Ok(started.elapsed())
}

async fn delete(vms: &Api<VirtualMachine>, name: &str, timeout: Duration) -> Result<(), Error> {
    vms.delete(name, &DeleteParams::default())
        .await
        .map_err(|source| Error::Api {
            action: format!("delete {name}"),
            source,
        })?;
    wait(vms, name, timeout, |vm| vm.is_none()).await
}

/// Polls VM `name` every 10 ms until `done` holds.
async fn wait(
    vms: &Api<VirtualMachine>,
    name: &str,
    timeout: Duration,
    done: impl Fn(Option<VirtualMachine>) -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let vm = vms.get_opt(name).await.map_err(|source| Error::Api {
            action: format!("read {name}"),
            source,
        })?;
        if done(vm) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                phase: format!("real VM {name}"),
                done: 0,
                total: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Defines and starts a copy of `domain` named after `base` on a new overlay of its root
/// disk's backing image; returns how long `virsh define` + `virsh start` took and the domain
/// type. The copy is destroyed and its files removed afterwards.
async fn raw_start(domain: &str, base: &Path) -> Result<(Duration, String), Error> {
    let name = base
        .file_name()
        .map(|n| format!("bench-{}", n.to_string_lossy()))
        .unwrap_or_default();
    let xml = virsh(&["dumpxml", domain]).await?;
    let root = attribute_after(&xml, "<source file=", "-root")
        .ok_or_else(|| raw_failed(domain, "no root disk in its XML"))?;
    let backing = backing_file(&root).await?;
    let disk = base.with_extension("qcow2");
    let log = base.with_extension("log");
    command(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &backing,
            &path(&disk),
        ],
    )
    .await?;
    let copy = rename(&xml, domain, &name)
        .replace(&root, &path(&disk))
        .replace(&console_log(&xml).unwrap_or_default(), &path(&log));
    let definition = base.with_extension("xml");
    std::fs::write(&definition, copy).map_err(|source| Error::Write {
        path: definition.clone(),
        source,
    })?;

    let started = Instant::now();
    virsh(&["define", &path(&definition)]).await?;
    virsh(&["start", &name]).await?;
    let took = started.elapsed();

    virsh(&["destroy", &name]).await?;
    virsh(&["undefine", &name]).await?;
    for file in [&disk, &log, &definition] {
        let _ = std::fs::remove_file(file);
    }
    let kind = attribute_after(&xml, "<domain type=", "").unwrap_or_default();
    Ok((took, kind))
}

/// The domain XML with another name and no uuid (libvirt gives the copy one of its own).
fn rename(xml: &str, from: &str, to: &str) -> String {
    let mut out = xml.replace(
        &format!("<name>{from}</name>"),
        &format!("<name>{to}</name>"),
    );
    if let (Some(start), Some(end)) = (out.find("<uuid>"), out.find("</uuid>")) {
        out.replace_range(start..end + "</uuid>".len(), "");
    }
    out
}

/// The serial console's log file, if the domain writes one.
fn console_log(xml: &str) -> Option<String> {
    let at = xml.find("<log file=")?;
    attribute_after(&xml[at..], "<log file=", "")
}

/// The quoted value right after the first `marker` whose value contains `containing`.
fn attribute_after(xml: &str, marker: &str, containing: &str) -> Option<String> {
    xml.match_indices(marker).find_map(|(at, _)| {
        let rest = &xml[at + marker.len()..];
        let quote = rest.chars().next()?;
        let value = rest[1..].split(quote).next()?;
        value.contains(containing).then(|| value.to_string())
    })
}

async fn backing_file(disk: &str) -> Result<String, Error> {
    let info = command("qemu-img", &["info", "-U", "--output", "json", disk]).await?;
    serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["full-backing-filename"].as_str().map(str::to_string))
        .ok_or_else(|| raw_failed(disk, "its root disk has no backing image"))
}

async fn virsh(args: &[&str]) -> Result<String, Error> {
    let mut full = vec!["-c", URI];
    full.extend_from_slice(args);
    command("virsh", &full).await
}

async fn command(program: &str, args: &[&str]) -> Result<String, Error> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(Error::Child)?;
    if !output.status.success() {
        return Err(raw_failed(
            &format!("{program} {}", args.join(" ")),
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn raw_failed(what: &str, why: &str) -> Error {
    Error::Raw {
        what: what.to_string(),
        why: why.to_string(),
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Where `strata bench --libvirt` looks for the test guest by default.
pub fn default_image() -> PathBuf {
    PathBuf::from("target/test-image")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'><name>ns.vm-0</name><uuid>abc</uuid>\
        <devices><disk><source file='/s/ns.vm-0-root.qcow2'/></disk>\
        <serial><log file='/a/console.log' append='on'/></serial></devices></domain>";

    #[test]
    fn the_raw_copy_is_renamed_without_a_uuid_and_its_files_are_found() {
        let copy = rename(XML, "ns.vm-0", "bench-raw-0");
        assert!(copy.contains("<name>bench-raw-0</name>") && !copy.contains("uuid"));
        assert_eq!(
            attribute_after(XML, "<source file=", "-root").as_deref(),
            Some("/s/ns.vm-0-root.qcow2")
        );
        assert_eq!(console_log(XML).as_deref(), Some("/a/console.log"));
    }
}
