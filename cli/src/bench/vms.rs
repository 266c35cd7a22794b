//! ZStack's table: create N VMs through the API with `clients` concurrent clients, wait until
//! every one reports Running, then delete them and wait until every one is gone. One watch sees
//! every transition (no polling per VM), and stamps it the moment it arrives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::load::{closed_loop, latencies, span};
use super::progress::Progress;
use super::stats::{rate, Latency};
use super::{fixture, Error};

/// The namespace every VM of the VM rounds lives in.
pub const NAMESPACE: &str = "bench";

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct VmRound {
    pub vms: usize,
    pub clients: usize,
    pub create: Converge,
    pub delete: Converge,
}

/// One direction of a round: the API calls, and the wait until the system has converged.
#[derive(Clone, Debug, Serialize)]
pub struct Converge {
    /// From the first request until every VM reached the goal (Running, or gone): the figure
    /// to set beside ZStack's.
    pub wall_seconds: f64,
    /// From the first request until the last one returned.
    pub api_seconds: f64,
    pub api_per_second: f64,
    /// Latency of the API call alone.
    pub api_latency: Latency,
    /// Per VM, from its request until the watch saw it reach the goal.
    pub to_goal: Latency,
}

/// What the watch saw happen to a VM.
enum Seen {
    Running(String, Instant),
    Gone(String, Instant),
}

pub struct Rounds<'a> {
    pub clients: &'a [Client],
    pub watch_client: Client,
    pub networks: usize,
    pub timeout: Duration,
    pub progress: &'a Progress,
}

impl Rounds<'_> {
    pub async fn run(&self, round: usize, n: usize) -> Result<VmRound, Error> {
        let names: Vec<String> = (0..n).map(|i| format!("vm-{round}-{i}")).collect();
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let (tx, mut seen) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let watch = tokio::spawn(watch_vms(self.watch_client.clone(), tx, ready_tx));
        let result = async {
            ready_rx.await.map_err(|_| Error::WatchEnded)?;
            let create = self
                .converge(n, &names, &index, &mut seen, Goal::Running)
                .await?;
            // Said now, so the figure survives a delete phase that fails or times out.
            self.progress.note(format!(
                "{n} VMs: all Running in {:.3} s (p99 {:.0} ms)",
                create.wall_seconds, create.to_goal.p99_ms
            ));
            let delete = self
                .converge(n, &names, &index, &mut seen, Goal::Gone)
                .await?;
            Ok(VmRound {
                vms: n,
                clients: self.clients.len().min(n),
                create,
                delete,
            })
        }
        .await;
        watch.abort();
        result
    }

    async fn converge(
        &self,
        n: usize,
        names: &[String],
        index: &HashMap<&str, usize>,
        seen: &mut mpsc::UnboundedReceiver<Seen>,
        goal: Goal,
    ) -> Result<Converge, Error> {
        let requests = self.progress.bar(n, &format!("{n} VMs: {}", goal.verb()));
        let reached = self.progress.bar(n, &format!("{n} VMs: {}", goal.state()));
        let started = Instant::now();
        let networks = self.networks;
        let names_for_ops: std::sync::Arc<[String]> = names.into();
        let ops = closed_loop(self.clients, n, &requests, move |client, i| {
            let names = names_for_ops.clone();
            async move {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
                let name = &names[i];
                let result = match goal {
                    Goal::Running => api
                        .create(
                            &PostParams::default(),
                            &fixture::vm(NAMESPACE, name, i, networks),
                        )
                        .await
                        .map(drop),
                    Goal::Gone => api.delete(name, &DeleteParams::default()).await.map(drop),
                };
                result.map_err(|source| Error::Api {
                    action: format!("{} vm {name}", goal.verb()),
                    source,
                })
            }
        });
        let mut at: Vec<Option<Instant>> = vec![None; n];
        let mut count = 0;
        let wait = async {
            while count < n {
                let (name, when) = match seen.recv().await {
                    Some(Seen::Running(name, when)) if goal == Goal::Running => (name, when),
                    Some(Seen::Gone(name, when)) if goal == Goal::Gone => (name, when),
                    Some(_) => continue,
                    None => return Err(Error::WatchEnded),
                };
                if let Some(&i) = index.get(name.as_str()) {
                    if at[i].is_none() {
                        at[i] = Some(when);
                        count += 1;
                        reached.inc(1);
                    }
                }
            }
            Ok(())
        };
        let (ops, waited) = tokio::join!(ops, tokio::time::timeout(self.timeout, wait));
        let ops = ops?;
        self.progress.done(requests);
        self.progress.done(reached);
        waited.map_err(|_| Error::Timeout {
            phase: format!("{n} VMs {}", goal.state()),
            done: count,
            total: n,
        })??;

        let last = at.iter().flatten().max().copied().unwrap_or(started);
        let mut to_goal: Vec<Duration> = ops
            .iter()
            .zip(&at)
            .filter_map(|(op, at)| at.map(|at| at.saturating_duration_since(op.issued)))
            .collect();
        let api_seconds = span(&ops);
        Ok(Converge {
            wall_seconds: (last - started).as_secs_f64(),
            api_seconds: api_seconds.as_secs_f64(),
            api_per_second: rate(n, api_seconds),
            api_latency: Latency::of(&mut latencies(&ops)),
            to_goal: Latency::of(&mut to_goal),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    Running,
    Gone,
}

impl Goal {
    fn verb(self) -> &'static str {
        match self {
            Goal::Running => "create",
            Goal::Gone => "delete",
        }
    }

    fn state(self) -> &'static str {
        match self {
            Goal::Running => "Running",
            Goal::Gone => "gone",
        }
    }
}

/// Watches the bench namespace and reports each VM's first Running and its deletion, stamped
/// on arrival. Signals `ready` once the initial list is in, so no event is missed.
async fn watch_vms(client: Client, seen: mpsc::UnboundedSender<Seen>, ready: oneshot::Sender<()>) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &fixture::vm_kind());
    let mut ready = Some(ready);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let sent = match event {
            Ok(watcher::Event::InitDone) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                Ok(())
            }
            Ok(watcher::Event::Apply(vm)) if fixture::phase(&vm) == Some("Running") => {
                seen.send(Seen::Running(vm.metadata.name.unwrap_or_default(), now))
            }
            Ok(watcher::Event::Delete(vm)) => {
                seen.send(Seen::Gone(vm.metadata.name.unwrap_or_default(), now))
            }
            Ok(_) => Ok(()),
            // The watcher re-lists by itself; a VM deleted meanwhile is then missed and the
            // round times out naming how many it saw, rather than reporting a wrong figure.
            Err(error) => {
                tracing::warn!(error = %error, "bench watch failed");
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}
