//! Live migration and host maintenance on simulated hosts: 100 VMs moved under the concurrency
//! limits, a failed move and one past its timeout that leave the VM on its source, and a
//! Maintenance drain of 30 VMs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::READY, host::DRAINED, GlobalConfig, GlobalConfigSpec, Host, MigrationPhase,
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineMigration,
    VirtualMachineMigrationSpec, VmPhase,
};
use strata_node_agent::SimDriver;

mod common;

use common::*;

/// Long leases: a loaded CI machine must not turn hosts Disconnected (and fence them) mid-test.
const HEARTBEAT: Duration = Duration::from_secs(5);

fn migration(name: &str, vm: &str, target: Option<&str>) -> VirtualMachineMigration {
    VirtualMachineMigration::new(
        name,
        VirtualMachineMigrationSpec {
            virtual_machine: vm.into(),
            target_host: target.map(str::to_string),
        },
    )
}

async fn set_admin(client: &Client, host: &str, state: &str) {
    Api::<Host>::all(client.clone())
        .patch(
            host,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "adminState": state } })),
        )
        .await
        .expect("admin state");
}

async fn wait_hosts(client: &Client, hosts: &[&str]) {
    let api: Api<Host> = Api::all(client.clone());
    for host in hosts {
        wait_for(client, &format!("host {host} to register"), || async {
            api.get_opt(host).await.ok().flatten()
        })
        .await;
    }
}

/// Every VM's `(host, NIC addresses)` once all of `names` run.
async fn running(client: &Client, names: &[String]) -> BTreeMap<String, (String, Vec<String>)> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    wait_for(client, "every VM to run", || async {
        let list = vms.list(&ListParams::default()).await.ok()?;
        let seen: BTreeMap<String, (String, Vec<String>)> = list
            .items
            .iter()
            .filter(|vm| names.contains(&vm.name_any()))
            .filter_map(|vm| {
                let status = vm.status.as_ref()?;
                if status.phase != VmPhase::Running {
                    return None;
                }
                let nics = status
                    .nics
                    .iter()
                    .map(|n| format!("{}/{}", n.ip, n.mac))
                    .collect();
                Some((vm.name_any(), (status.host.clone()?, nics)))
            })
            .collect();
        (seen.len() == names.len()).then_some(seen)
    })
    .await
}

/// Which simulated hosts run `domain` (`<ns>.<vm>`).
fn runners(hosts: &[&str], drivers: &[Arc<SimDriver>], domain: &str) -> Vec<String> {
    hosts
        .iter()
        .zip(drivers)
        .filter(|(_, d)| d.running().iter().any(|r| r == domain))
        .map(|(h, _)| h.to_string())
        .collect()
}

#[derive(Debug, Default)]
struct Peaks {
    cluster: usize,
    per_host: usize,
}

/// Samples the instances every 20 ms and records the most migrations seen at once, in the
/// cluster and out of one host.
fn watch_concurrency(client: Client) -> (Arc<Mutex<Peaks>>, tokio::task::JoinHandle<()>) {
    let peaks = Arc::new(Mutex::new(Peaks::default()));
    let seen = peaks.clone();
    let task = tokio::spawn(async move {
        let api: Api<VirtualMachineInstance> = Api::namespaced(client, NS);
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                let mut out: HashMap<String, usize> = HashMap::new();
                for vmi in list.items.iter().filter(|i| i.spec.migration.is_some()) {
                    *out.entry(vmi.spec.host.clone()).or_default() += 1;
                }
                let mut peaks = seen.lock().expect("peaks");
                peaks.cluster = peaks.cluster.max(out.values().sum());
                peaks.per_host = peaks.per_host.max(out.values().copied().max().unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peaks, task)
}

async fn migration_phase(
    api: Api<VirtualMachineMigration>,
    name: String,
) -> Option<VirtualMachineMigration> {
    let m = api.get_opt(&name).await.ok()??;
    matches!(
        m.status.as_ref()?.phase,
        MigrationPhase::Succeeded | MigrationPhase::Failed
    )
    .then_some(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_vms_move_under_the_limits_and_a_failure_stays_on_the_source() {
    let hosts = ["h1", "h2", "h3", "h4", "h5", "h6"];
    let plane = start_sized(&hosts, HEARTBEAT, capacity(8, "8Gi")).await;
    let client = plane.client.clone();
    shared_inventory(&client).await;
    wait_hosts(&client, &hosts).await;
    for driver in &plane.drivers {
        driver.set_migration_time(Duration::from_millis(300));
    }
    // KubeVirt's defaults, written out so the test says what it checks.
    let mut config = GlobalConfigSpec::default();
    config.migration.parallel_migrations_per_cluster = 5;
    config.migration.parallel_outbound_migrations_per_host = 2;
    create(
        &Api::all(client.clone()),
        GlobalConfig::new("default", config),
    )
    .await;

    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..100).map(|i| format!("vm-{i:03}")).collect();
    for name in &names {
        create(&vms, tiny_vm(name)).await;
    }
    let before = running(&client, &names).await;

    let (peaks, sampler) = watch_concurrency(client.clone());
    let migrations: Api<VirtualMachineMigration> = Api::namespaced(client.clone(), NS);
    let started = tokio::time::Instant::now();
    for name in &names {
        create(&migrations, migration(&format!("mig-{name}"), name, None)).await;
    }
    for name in &names {
        let done = wait_for(&client, &format!("mig-{name} to finish"), || {
            migration_phase(migrations.clone(), format!("mig-{name}"))
        })
        .await;
        let status = done.status.expect("status");
        assert_eq!(
            status.phase,
            MigrationPhase::Succeeded,
            "{name}: {status:?}"
        );
        assert_eq!(status.progress.map(|p| p.percent), Some(100));
    }
    let took = started.elapsed();
    sampler.abort();
    let after = running(&client, &names).await;
    for name in &names {
        let (old_host, old_nics) = &before[name];
        let (new_host, new_nics) = &after[name];
        assert_ne!(old_host, new_host, "{name} moved");
        assert_eq!(old_nics, new_nics, "{name} keeps its IPs and MACs");
        let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .expect("instance");
        assert_eq!(&vmi.spec.host, new_host);
        assert_eq!(vmi.spec.migration, None);
        assert_eq!(
            runners(&hosts, &plane.drivers, &format!("{NS}.{name}")),
            std::slice::from_ref(new_host),
            "{name} runs once, on its new host"
        );
    }
    let peaks = std::mem::take(&mut *peaks.lock().expect("peaks"));
    eprintln!("100 migrations in {took:?}; most at once: {peaks:?}");
    assert!(peaks.cluster <= 5, "cluster limit: {peaks:?}");
    assert!(peaks.per_host <= 2, "per-host limit: {peaks:?}");
    assert!(peaks.cluster >= 2, "migrations ran in parallel: {peaks:?}");

    // A move the hypervisor fails leaves the VM running where it was, with the reason.
    let (host, _) = after["vm-000"].clone();
    let source = hosts.iter().position(|h| *h == host).expect("a known host");
    plane.drivers[source].fail_migrations(true);
    create(&migrations, migration("mig-fails", "vm-000", None)).await;
    let failed = wait_for(&client, "mig-fails to finish", || {
        migration_phase(migrations.clone(), "mig-fails".into())
    })
    .await;
    let status = failed.status.expect("status");
    assert_eq!(status.phase, MigrationPhase::Failed);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .expect("Ready");
    assert_eq!(ready.reason, "HypervisorError", "{}", ready.message);
    assert!(
        ready.message.contains("simulated failure"),
        "{}",
        ready.message
    );
    let vm = wait_phase(&client, "vm-000", VmPhase::Running).await;
    assert_eq!(vm.status.and_then(|s| s.host), Some(host.clone()));
    assert_eq!(
        runners(&hosts, &plane.drivers, &format!("{NS}.vm-000")),
        std::slice::from_ref(&host)
    );

    // A move slower than the GlobalConfig allows (1 s per GiB here) is aborted by the source:
    // the VM keeps running there and the migration says why.
    plane.drivers[source].fail_migrations(false);
    plane.drivers[source].set_migration_time(Duration::from_secs(60));
    Api::<GlobalConfig>::all(client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "migration": { "completionTimeoutPerGiB": 1 } } })),
        )
        .await
        .expect("config");
    let asked = tokio::time::Instant::now();
    create(&migrations, migration("mig-slow", "vm-000", None)).await;
    let timed_out = wait_for(&client, "mig-slow to finish", || {
        migration_phase(migrations.clone(), "mig-slow".into())
    })
    .await;
    let status = timed_out.status.expect("status");
    assert_eq!(status.phase, MigrationPhase::Failed);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .expect("Ready");
    assert_eq!(ready.reason, "MigrationTimeout", "{}", ready.message);
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "aborted at its deadline, not after the copy: {:?}",
        asked.elapsed()
    );
    let vm = wait_phase(&client, "vm-000", VmPhase::Running).await;
    assert_eq!(vm.status.and_then(|s| s.host), Some(host.clone()));
    assert_eq!(
        runners(&hosts, &plane.drivers, &format!("{NS}.vm-000")),
        std::slice::from_ref(&host)
    );

    // Requests that cannot be carried out say why.
    create(
        &migrations,
        migration("mig-same", "vm-001", Some(&after["vm-001"].0)),
    )
    .await;
    create(&migrations, migration("mig-none", "no-such-vm", None)).await;
    for (name, reason) in [
        ("mig-same", "TargetIsSource"),
        ("mig-none", "VirtualMachineNotFound"),
    ] {
        let done = wait_for(&client, name, || {
            migration_phase(migrations.clone(), name.into())
        })
        .await;
        let status = done.status.expect("status");
        assert_eq!(status.phase, MigrationPhase::Failed);
        assert_eq!(status.conditions[0].reason, reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_drains_thirty_vms_and_takes_no_new_ones() {
    let hosts = ["h1", "h2", "h3"];
    let plane = start_sized(&hosts, HEARTBEAT, capacity(8, "8Gi")).await;
    let client = plane.client.clone();
    shared_inventory(&client).await;
    wait_hosts(&client, &hosts).await;
    for driver in &plane.drivers {
        driver.set_migration_time(Duration::from_millis(200));
    }
    // Everything lands on h1 first.
    set_admin(&client, "h2", "Disabled").await;
    set_admin(&client, "h3", "Disabled").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..30).map(|i| format!("vm-{i:02}")).collect();
    for name in &names {
        create(&vms, tiny_vm(name)).await;
    }
    let before = running(&client, &names).await;
    assert!(before.values().all(|(host, _)| host == "h1"));
    // Two VMs are paused: not running, so they cannot be live-migrated and are stopped.
    let paused = ["vm-00", "vm-01"];
    for name in paused {
        vms.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "paused": true } })),
        )
        .await
        .expect("pause");
        wait_phase(&client, name, VmPhase::Paused).await;
    }
    set_admin(&client, "h2", "Enabled").await;
    set_admin(&client, "h3", "Enabled").await;

    set_admin(&client, "h1", "Maintenance").await;
    let host_api: Api<Host> = Api::all(client.clone());
    let percents = Arc::new(Mutex::new(BTreeSet::new()));
    let drained = wait_for(&client, "h1 to be drained", || async {
        let host = host_api.get("h1").await.ok()?;
        let status = host.status.clone()?;
        if let Some(p) = &status.progress {
            if percents.lock().expect("percents").insert(p.percent) {
                eprintln!("TIMING {:?} {:?}", std::time::SystemTime::now(), p);
            }
        }
        let done = status
            .conditions
            .iter()
            .any(|c| c.type_ == DRAINED && c.status == "True");
        done.then_some(status)
    })
    .await;
    let progress = drained.progress.expect("progress");
    assert_eq!((progress.percent, progress.step.as_str()), (100, "Drained"));
    assert_eq!(drained.drain_total, Some(30));
    assert_eq!(drained.vm_count, Some(0));
    let percents = percents.lock().expect("percents").clone();
    assert!(
        percents.len() >= 2,
        "progress was reported on the way: {percents:?}"
    );

    let moved: Vec<String> = names
        .iter()
        .filter(|n| !paused.contains(&n.as_str()))
        .cloned()
        .collect();
    let after = running(&client, &moved).await;
    for name in &moved {
        assert_ne!(after[name].0, "h1", "{name} left h1");
        assert_eq!(after[name].1, before[name].1, "{name} keeps its addresses");
    }
    for name in paused {
        let vm = wait_phase(&client, name, VmPhase::Stopped).await;
        assert_eq!(vm.spec.run_strategy, RunStrategy::Halted, "{name} stopped");
    }
    assert!(plane.drivers[0].running().is_empty(), "h1 runs nothing");

    // Spread would pick the empty h1; Maintenance keeps it out of placement.
    create(&vms, tiny_vm("vm-new")).await;
    let new = wait_phase(&client, "vm-new", VmPhase::Running).await;
    assert_ne!(new.status.and_then(|s| s.host).as_deref(), Some("h1"));

    set_admin(&client, "h1", "Enabled").await;
    wait_for(&client, "h1's drain status to clear", || async {
        let status = host_api.get("h1").await.ok()?.status?;
        (status.progress.is_none() && !status.conditions.iter().any(|c| c.type_ == DRAINED))
            .then_some(())
    })
    .await;
}
