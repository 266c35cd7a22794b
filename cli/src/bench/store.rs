//! Scale of the store: fill the API server (alone, in its child process) with `hosts` Hosts and
//! `vms` VirtualMachines carrying a Running VM's status, list the VMs whenever the count
//! reaches a checkpoint, and read the server's resident memory along the way.

use std::time::Instant;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use super::child::ApiServer;
use super::load::closed_loop;
use super::machine::Memory;
use super::progress::Progress;
use super::stats::rate;
use super::{fixture, Error};

const NAMESPACE: &str = "bench-store";
/// Lists are timed this many times; the median is reported.
const LIST_REPEATS: usize = 3;

#[derive(Clone, Debug, Serialize)]
pub struct Store {
    pub hosts: usize,
    pub vms: usize,
    /// Before the API phases wrote anything.
    pub memory_empty: Memory,
    /// With `hosts` and `vms` stored (plus the objects of the create-path and fan-out phases).
    pub memory_full: Memory,
    /// Writes per second while filling (each object is a create plus a status patch).
    pub fill_writes_per_second: f64,
    pub lists: Vec<List>,
}

#[derive(Clone, Debug, Serialize)]
pub struct List {
    pub objects: usize,
    /// Median of the timed lists: request until the whole body arrived (not parsed).
    pub seconds: f64,
    pub bytes: usize,
    pub memory_after: Memory,
}

pub struct Fill<'a> {
    pub clients: &'a [Client],
    pub server: &'a ApiServer,
    pub progress: &'a Progress,
}

impl Fill<'_> {
    pub async fn run(
        &self,
        hosts: usize,
        vms: usize,
        list_sizes: &[usize],
        memory_empty: Memory,
    ) -> Result<Store, Error> {
        let started = Instant::now();
        self.hosts(hosts).await?;
        fixture::namespace(&self.clients[0], NAMESPACE).await?;
        let mut checkpoints: Vec<usize> = list_sizes.iter().copied().filter(|&s| s > 0).collect();
        checkpoints.push(vms);
        checkpoints.sort_unstable();
        checkpoints.dedup();
        let mut stored = 0;
        let mut lists = Vec::new();
        for checkpoint in checkpoints {
            self.vms(stored, checkpoint).await?;
            stored = checkpoint;
            if list_sizes.contains(&checkpoint) {
                lists.push(self.list(checkpoint).await?);
            }
        }
        let fill_writes_per_second = rate(2 * (hosts + vms), started.elapsed());
        Ok(Store {
            hosts,
            vms,
            memory_empty,
            memory_full: self.server.memory(),
            fill_writes_per_second,
            lists,
        })
    }

    async fn hosts(&self, n: usize) -> Result<(), Error> {
        let bar = self.progress.bar(n, "store: hosts");
        closed_loop(self.clients, n, &bar, |client, i| async move {
            let api: Api<DynamicObject> = Api::all_with(client, &fixture::host_kind());
            let name = format!("store-host-{i}");
            let mut host = DynamicObject::new(&name, &fixture::host_kind());
            host.data = json!({ "spec": { "cluster": format!("cluster-{}", i % 4) } });
            let status = json!({ "status": {
                "state": "Connected",
                "capacity": { "cpu": 64, "memory": "256Gi" },
                "allocated": { "cpu": 10, "memory": "10Gi" },
                "vmCount": 10,
                "driver": "sim",
            }});
            write(&api, &name, &host, status).await
        })
        .await?;
        self.progress.done(bar);
        Ok(())
    }

    async fn vms(&self, from: usize, to: usize) -> Result<(), Error> {
        let bar = self.progress.bar(to - from, &format!("store: VMs to {to}"));
        closed_loop(self.clients, to - from, &bar, move |client, i| async move {
            let i = from + i;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
            let name = format!("s-{i}");
            write(
                &api,
                &name,
                &fixture::vm(NAMESPACE, &name, i, 1),
                running(i),
            )
            .await
        })
        .await?;
        self.progress.done(bar);
        Ok(())
    }

    async fn list(&self, objects: usize) -> Result<List, Error> {
        let path = format!(
            "/apis/{}/{}/namespaces/{NAMESPACE}/virtualmachines",
            strata_apis::GROUP,
            strata_apis::VERSION
        );
        let mut times = Vec::with_capacity(LIST_REPEATS);
        let mut bytes = 0;
        for _ in 0..LIST_REPEATS {
            let request = http::Request::get(&path)
                .body(Vec::new())
                .map_err(Error::Request)?;
            let started = Instant::now();
            let body = self.clients[0]
                .request_text(request)
                .await
                .map_err(|source| Error::Api {
                    action: format!("list {objects} vms"),
                    source,
                })?;
            times.push(started.elapsed());
            bytes = body.len();
        }
        times.sort_unstable();
        let list = List {
            objects,
            seconds: times[LIST_REPEATS / 2].as_secs_f64(),
            bytes,
            memory_after: self.server.memory(),
        };
        self.progress.note(format!(
            "list {objects} VMs: {:.3} s, {:.1} MiB",
            list.seconds,
            bytes as f64 / 1048576.0
        ));
        Ok(list)
    }
}

/// Creates `object`, then writes `status` through the status subresource, as the controllers
/// and agents would: a stored VM looks like a running one.
async fn write(
    api: &Api<DynamicObject>,
    name: &str,
    object: &DynamicObject,
    status: serde_json::Value,
) -> Result<(), Error> {
    let failed = |action: &str| {
        let action = format!("{action} {name}");
        move |source| Error::Api { action, source }
    };
    api.create(&PostParams::default(), object)
        .await
        .map_err(failed("create"))?;
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(failed("patch status of"))?;
    Ok(())
}

/// The status a Running VM carries.
fn running(i: usize) -> serde_json::Value {
    let now = "2026-01-01T00:00:00Z";
    json!({ "status": {
        "observedGeneration": 1,
        "phase": "Running",
        "host": format!("store-host-{}", i % 10_000),
        "nics": [{
            "l3Network": "bench-net-0",
            "ip": format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256),
            "mac": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
        }],
        "conditions": [
            { "type": "Scheduled", "status": "True", "reason": "Scheduled", "message": "placed", "lastTransitionTime": now, "observedGeneration": 1 },
            { "type": "Ready", "status": "True", "reason": "Running", "message": "the instance is running", "lastTransitionTime": now, "observedGeneration": 1 },
        ],
    }})
}
