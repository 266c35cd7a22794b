//! Watch fan-out: `watchers` clients each watch one namespace while `clients` create `events`
//! VMs in it; every watcher must receive every ADDED event. Measures delivery, not just sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::{DynamicObject, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde::Serialize;

use super::load::closed_loop;
use super::progress::Progress;
use super::stats::{rate, Latency};
use super::{fixture, Error};

const NAMESPACE: &str = "bench-watch";

#[derive(Clone, Debug, Serialize)]
pub struct Fanout {
    pub watchers: usize,
    pub events: usize,
    /// watchers × events, every one received.
    pub delivered: usize,
    /// From the first create until the last watcher received the last event.
    pub wall_seconds: f64,
    pub delivered_per_second: f64,
    /// Per delivery, from the create request until that watcher received the event.
    pub delivery_latency: Latency,
}

pub async fn run(
    writers: &[Client],
    watchers: &[Client],
    events: usize,
    timeout: Duration,
    progress: &Progress,
) -> Result<Fanout, Error> {
    fixture::namespace(&writers[0], NAMESPACE).await?;
    let names: Arc<HashMap<String, usize>> =
        Arc::new((0..events).map(|i| (format!("w-{i}"), i)).collect());
    let delivered_bar = progress.bar(watchers.len() * events, "watch events delivered");
    let mut streams = tokio::task::JoinSet::new();
    for client in watchers {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NAMESPACE, &fixture::vm_kind());
        // Watching from a listed resourceVersion delivers every later event, however long
        // the watch request itself takes to register.
        let version = api
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|source| Error::Api {
                action: format!("list vms in {NAMESPACE}"),
                source,
            })?
            .metadata
            .resource_version
            .unwrap_or_default();
        let stream = api
            .watch(&WatchParams::default().timeout(290), &version)
            .await
            .map_err(|source| Error::Api {
                action: format!("watch vms in {NAMESPACE}"),
                source,
            })?;
        let (names, bar) = (names.clone(), delivered_bar.clone());
        streams.spawn(async move {
            let mut at: Vec<Option<Instant>> = vec![None; names.len()];
            let mut count = 0;
            let mut stream = std::pin::pin!(stream);
            while count < names.len() {
                let event = stream.try_next().await.map_err(|source| Error::Api {
                    action: "receive a watch event".into(),
                    source,
                })?;
                let now = Instant::now();
                match event {
                    Some(WatchEvent::Added(vm)) => {
                        let i = vm.metadata.name.as_ref().and_then(|n| names.get(n));
                        if let Some(&i) = i {
                            if at[i].replace(now).is_none() {
                                count += 1;
                                bar.inc(1);
                            }
                        }
                    }
                    Some(_) => {}
                    None => return Err(Error::WatchEnded),
                }
            }
            Ok(at.into_iter().flatten().collect::<Vec<_>>())
        });
    }

    let create_bar = progress.bar(events, "watch: creates");
    let samples = closed_loop(writers, events, &create_bar, {
        move |client, i| async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
            let name = format!("w-{i}");
            api.create(&PostParams::default(), &fixture::vm(NAMESPACE, &name, i, 1))
                .await
                .map(drop)
                .map_err(|source| Error::Api {
                    action: format!("create vm {name}"),
                    source,
                })
        }
    })
    .await?;
    progress.done(create_bar);

    let started = samples.iter().map(|s| s.issued).min();
    let mut last = started;
    let mut latencies = Vec::with_capacity(watchers.len() * events);
    let collect = async {
        while let Some(joined) = streams.join_next().await {
            let at = joined.map_err(Error::Task)??;
            for (i, received) in at.into_iter().enumerate() {
                latencies.push(received.saturating_duration_since(samples[i].issued));
                last = last.max(Some(received));
            }
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| Error::Timeout {
            phase: "watch fan-out".into(),
            done: delivered_bar.position() as usize,
            total: watchers.len() * events,
        })??;
    progress.done(delivered_bar);
    let wall = match (started, last) {
        (Some(start), Some(end)) => end - start,
        _ => Duration::ZERO,
    };
    Ok(Fanout {
        watchers: watchers.len(),
        events,
        delivered: latencies.len(),
        wall_seconds: wall.as_secs_f64(),
        delivered_per_second: rate(latencies.len(), wall),
        delivery_latency: Latency::of(&mut latencies),
    })
}
