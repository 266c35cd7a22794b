//! The API's create path against its floor: VM creates through the API server (alone, in its
//! child process) against raw etcd puts of the same bytes, at one client and at `clients`; then
//! gets of the VMs just created, at the same concurrency levels (served from the watch cache).

use std::sync::Arc;

use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use super::etcd::Etcd;
use super::load::{closed_loop, latencies, span, Sample};
use super::progress::Progress;
use super::report::Outcome;
use super::stats::{rate, Latency};
use super::{fixture, Error};

const NAMESPACE: &str = "bench-api";
/// One client is measured on fewer operations: it only needs enough for stable percentiles.
const SEQUENTIAL_OPS: usize = 1_000;

#[derive(Clone, Debug, Serialize)]
pub struct CreatePath {
    /// Size of the stored VM, the value every etcd put writes.
    pub payload_bytes: usize,
    pub api: Vec<Throughput>,
    pub etcd: Outcome<EtcdPuts>,
    /// Gets of the created VMs, at the same concurrency levels as `api`.
    pub gets: Vec<Throughput>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EtcdPuts {
    pub version: String,
    pub runs: Vec<Throughput>,
    /// Per run, at the same concurrency as `api`: how many times an API create costs an etcd put.
    pub api_cost_ratio: Vec<Ratio>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub ops: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub clients: usize,
    /// etcd puts/s ÷ API creates/s.
    pub throughput: f64,
    pub p50: f64,
    pub p99: f64,
}

fn throughput(clients: usize, samples: &[Sample]) -> Throughput {
    let elapsed = span(samples);
    Throughput {
        clients,
        ops: samples.len(),
        seconds: elapsed.as_secs_f64(),
        per_second: rate(samples.len(), elapsed),
        latency: Latency::of(&mut latencies(samples)),
    }
}

/// The concurrency levels and operation counts measured.
fn levels(clients: usize, ops: usize) -> Vec<(usize, usize)> {
    let mut levels = vec![(1, ops.min(SEQUENTIAL_OPS))];
    if clients > 1 {
        levels.push((clients, ops));
    }
    levels
}

pub async fn run(
    api_clients: &[Client],
    ops: usize,
    etcd: Result<&Etcd, String>,
    progress: &Progress,
) -> Result<CreatePath, Error> {
    fixture::namespace(&api_clients[0], NAMESPACE).await?;
    let mut api = Vec::new();
    for (level, (clients, ops)) in levels(api_clients.len(), ops).into_iter().enumerate() {
        let bar = progress.bar(ops, &format!("API create, {clients} clients"));
        let samples = closed_loop(&api_clients[..clients], ops, &bar, move |client, i| {
            create(client, format!("api-{level}-{i}"), i)
        })
        .await?;
        progress.done(bar);
        api.push(throughput(clients, &samples));
    }
    let payload = stored(&api_clients[0], "api-0-0").await?;
    let mut gets = Vec::new();
    for (clients, ops) in levels(api_clients.len(), ops) {
        let bar = progress.bar(ops, &format!("API get, {clients} clients"));
        let samples = closed_loop(&api_clients[..clients], ops, &bar, move |client, i| {
            get(client, format!("api-0-{}", i % ops.min(SEQUENTIAL_OPS)))
        })
        .await?;
        progress.done(bar);
        gets.push(throughput(clients, &samples));
    }

    let etcd = match etcd {
        Err(reason) => Outcome::Skipped { reason },
        Ok(etcd) => Outcome::Measured(puts(etcd, &api, payload.clone(), progress).await?),
    };
    Ok(CreatePath {
        payload_bytes: payload.len(),
        api,
        etcd,
        gets,
    })
}

async fn get(client: Client, name: String) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
    api.get(&name).await.map(drop).map_err(|source| Error::Api {
        action: format!("get vm {name}"),
        source,
    })
}

async fn create(client: Client, name: String, i: usize) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
    api.create(&PostParams::default(), &fixture::vm(NAMESPACE, &name, i, 1))
        .await
        .map(drop)
        .map_err(|source| Error::Api {
            action: format!("create vm {name}"),
            source,
        })
}

/// The object as the API server stores it (JSON with uid, timestamps, managedFields).
async fn stored(client: &Client, name: &str) -> Result<Vec<u8>, Error> {
    let path = format!(
        "/apis/{}/{}/namespaces/{NAMESPACE}/virtualmachines/{name}",
        strata_apis::GROUP,
        strata_apis::VERSION
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(Error::Request)?;
    let text = client
        .request_text(request)
        .await
        .map_err(|source| Error::Api {
            action: format!("get vm {name}"),
            source,
        })?;
    Ok(text.into_bytes())
}

async fn puts(
    etcd: &Etcd,
    api: &[Throughput],
    payload: Vec<u8>,
    progress: &Progress,
) -> Result<EtcdPuts, Error> {
    let payload: Arc<[u8]> = payload.into();
    let mut runs = Vec::new();
    let mut api_cost_ratio = Vec::new();
    for (level, api_run) in api.iter().enumerate() {
        let mut clients = Vec::with_capacity(api_run.clients);
        for _ in 0..api_run.clients {
            clients.push(etcd.client().await.map_err(Error::Etcd)?);
        }
        let bar = progress.bar(
            api_run.ops,
            &format!("etcd put, {} clients", api_run.clients),
        );
        let payload = payload.clone();
        let samples = closed_loop(&clients, api_run.ops, &bar, move |mut client, i| {
            let payload = payload.clone();
            async move {
                let key =
                    format!("/registry/strata.io/virtualmachines/{NAMESPACE}/etcd-{level}-{i}");
                client
                    .put(key, payload.to_vec(), None)
                    .await
                    .map(drop)
                    .map_err(Error::Etcd)
            }
        })
        .await?;
        progress.done(bar);
        let run = throughput(api_run.clients, &samples);
        api_cost_ratio.push(Ratio {
            clients: api_run.clients,
            throughput: divide(run.per_second, api_run.per_second),
            p50: divide(api_run.latency.p50_ms, run.latency.p50_ms),
            p99: divide(api_run.latency.p99_ms, run.latency.p99_ms),
        });
        runs.push(run);
    }
    Ok(EtcdPuts {
        version: etcd.version.clone(),
        runs,
        api_cost_ratio,
    })
}

fn divide(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_runs_at_most_a_thousand_ops() {
        assert_eq!(levels(100, 10_000), vec![(1, 1_000), (100, 10_000)]);
        assert_eq!(levels(1, 50), vec![(1, 50)]);
    }
}
