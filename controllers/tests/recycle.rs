//! The recycle bin (deletion policies Delay and Never) against the in-process control plane
//! with a simulated host: a deleted VM's root volume and addresses are kept, a VM created
//! again under its name gets the same disk, IP and MAC, the `strata.io/recover` annotation
//! recreates it stopped, and the expunge time or deleting the volume releases everything.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::{ANNOTATION_EXPUNGE_AT, ANNOTATION_RECOVER, LABEL_RECYCLED_FROM},
    DeletionPolicy, GlobalConfig, GlobalConfigSpec, IpAddress, RunStrategy, VirtualMachine,
    VirtualMachineSpec, VmNic, VmNicStatus, VmPhase, Volume, VolumePhase,
};

mod common;

use common::*;

const HEARTBEAT: Duration = Duration::from_millis(500);

fn vm(name: &str, policy: DeletionPolicy, ip: Option<&str>) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            instance_offering: Some("small".into()),
            image: "tiny".into(),
            nics: vec![VmNic {
                l3_network: "net-1".into(),
                ip: ip.map(str::to_string),
                ..VmNic::default()
            }],
            deletion_policy: Some(policy),
            ..VirtualMachineSpec::default()
        },
    )
}

struct Bin {
    client: kube::Client,
    vms: Api<VirtualMachine>,
    volumes: Api<Volume>,
    ips: Api<IpAddress>,
}

impl Bin {
    fn new(client: &kube::Client) -> Self {
        Self {
            client: client.clone(),
            vms: Api::namespaced(client.clone(), NS),
            volumes: Api::namespaced(client.clone(), NS),
            ips: Api::all(client.clone()),
        }
    }

    async fn running_nic(&self, name: &str) -> (VirtualMachine, VmNicStatus) {
        let vm = wait_phase(&self.client, name, VmPhase::Running).await;
        let nic = vm.status.as_ref().expect("status").nics[0].clone();
        (vm, nic)
    }

    /// Deletes VM `name`, waits until it is gone and returns its root volume once recycled.
    async fn delete_and_recycle(&self, name: &str) -> Volume {
        self.vms
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the VM");
        wait_for(&self.client, &format!("{name} to be gone"), || async {
            self.vms.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        let root = format!("{name}-root");
        wait_for(&self.client, &format!("{root} to be Recycled"), || async {
            let volume = self.volumes.get_opt(&root).await.ok()??;
            (volume.status.as_ref()?.phase == Some(VolumePhase::Recycled)).then_some(volume)
        })
        .await
    }

    async fn address(&self, ip: &str) -> Option<IpAddress> {
        let name = IpAddress::object_name("net-1", ip.parse().expect("an IPv4 address"));
        self.ips.get_opt(&name).await.expect("read the address")
    }

    async fn wait_released(&self, ip: &str) {
        wait_for(&self.client, &format!("{ip} to be released"), || async {
            self.address(ip).await.is_none().then_some(())
        })
        .await;
    }
}

fn owner_uid(volume: &Volume) -> Option<String> {
    volume.owner_references().first().map(|o| o.uid.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_keeps_disk_and_addresses_until_recovered_or_expunged() {
    let plane = start(&["host-1"], HEARTBEAT).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let bin = Bin::new(&client);

    // Deleted under Delay: the VM goes, its root volume and address stay, held by the volume.
    create(&bin.vms, vm("web", DeletionPolicy::Delay, None)).await;
    let (first, nic) = bin.running_nic("web").await;
    let root = bin.delete_and_recycle("web").await;
    let disk = root.uid();
    assert!(root.owner_references().is_empty(), "{root:?}");
    assert_eq!(root.labels().get(LABEL_RECYCLED_FROM).unwrap(), "web");
    let expunge_at: Timestamp = root.annotations()[ANNOTATION_EXPUNGE_AT]
        .parse()
        .expect("an RFC 3339 expunge time");
    assert!(
        expunge_at > Timestamp::now() + SignedDuration::from_hours(24 * 6),
        "expunged after GlobalConfig's week, not at {expunge_at}"
    );
    let kept = bin.address(&nic.ip).await.expect("the address is kept");
    assert_eq!(kept.spec.owner, format!("{NS}/web-root"));
    assert_eq!(Some(kept.spec.owner_uid.clone()), root.uid());
    assert_ne!(Some(kept.spec.owner_uid), first.uid());

    // Nobody else gets the kept address.
    create(&bin.vms, vm("thief", DeletionPolicy::Direct, Some(&nic.ip))).await;
    let message = wait_pending_with(&client, "thief", "IPConflict").await;
    assert!(message.contains("web-root"), "{message}");
    bin.vms
        .delete("thief", &DeleteParams::default())
        .await
        .expect("delete thief");

    // Created again under its name: the same disk, IP and MAC.
    create(&bin.vms, vm("web", DeletionPolicy::Delay, None)).await;
    let (second, again) = bin.running_nic("web").await;
    assert_eq!((&again.ip, &again.mac), (&nic.ip, &nic.mac));
    let root = bin.volumes.get("web-root").await.expect("root volume");
    assert_eq!(owner_uid(&root), second.uid(), "the new VM owns the disk");
    assert_eq!(root.uid(), disk, "the same volume, not a new one");
    assert!(!root.labels().contains_key(LABEL_RECYCLED_FROM));
    assert!(!root.annotations().contains_key(ANNOTATION_EXPUNGE_AT));
    let held = bin.address(&nic.ip).await.expect("address");
    assert_eq!(Some(held.spec.owner_uid), second.uid());

    // Recovered by annotation: recreated stopped from the kept spec, then started.
    let recycled = bin.delete_and_recycle("web").await;
    assert_eq!(recycled.uid(), disk, "still the same disk");
    bin.volumes
        .patch(
            "web-root",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_RECOVER: "yes"}}})),
        )
        .await
        .expect("ask for recovery");
    let recovered = wait_phase(&client, "web", VmPhase::Stopped).await;
    assert_eq!(recovered.spec.run_strategy, RunStrategy::Halted);
    assert_eq!(recovered.spec.deletion_policy, Some(DeletionPolicy::Delay));
    wait_for(&client, "the recovered VM to own its disk", || async {
        let root = bin.volumes.get("web-root").await.ok()?;
        (owner_uid(&root) == recovered.uid()
            && !root.annotations().contains_key(ANNOTATION_RECOVER))
        .then_some(())
    })
    .await;
    bin.vms
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
        )
        .await
        .expect("start the recovered VM");
    let (_, after) = bin.running_nic("web").await;
    assert_eq!((&after.ip, &after.mac), (&nic.ip, &nic.mac));

    // Expunged when its time comes: the disk goes and the address is released.
    let mut config = GlobalConfigSpec::default();
    config.vm.expunge_period_seconds = 1;
    create(
        &Api::all(client.clone()),
        GlobalConfig::new("default", config),
    )
    .await;
    bin.delete_and_recycle("web").await;
    wait_for(&client, "web-root to be expunged", || async {
        bin.volumes
            .get_opt("web-root")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    bin.wait_released(&nic.ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_keeps_them_until_the_volume_is_deleted() {
    let plane = start(&["host-1"], HEARTBEAT).await;
    let client = plane.client.clone();
    inventory(&client).await;
    let mut config = GlobalConfigSpec::default();
    config.vm.expunge_period_seconds = 0;
    config.vm.deletion_policy = DeletionPolicy::Never;
    create(
        &Api::all(client.clone()),
        GlobalConfig::new("default", config),
    )
    .await;
    let bin = Bin::new(&client);

    // The policy comes from GlobalConfig when the VM sets none.
    let mut db = vm("db", DeletionPolicy::Never, None);
    db.spec.deletion_policy = None;
    create(&bin.vms, db).await;
    let (_, nic) = bin.running_nic("db").await;
    let root = bin.delete_and_recycle("db").await;
    assert!(
        !root.annotations().contains_key(ANNOTATION_EXPUNGE_AT),
        "Never has no expunge time: {root:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(bin.volumes.get_opt("db-root").await.unwrap().is_some());
    assert!(bin.address(&nic.ip).await.is_some());

    // Deleting the volume is the explicit expunge.
    bin.volumes
        .delete("db-root", &DeleteParams::default())
        .await
        .expect("expunge");
    bin.wait_released(&nic.ip).await;
    wait_for(&client, "db-root to be gone", || async {
        bin.volumes
            .get_opt("db-root")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}
