//! The etcd backend, laid out and driven exactly like kube-apiserver's: keys under `/registry/`,
//! resourceVersion = mod_revision, and every write one transaction that compares the key's
//! ModRevision (0 for create), so the data stays readable by etcd tooling and kine can stand in.
//!
//! etcd-client is async while [`Store`] is called from blocking threads, so the store owns a
//! small runtime: each call is spawned there and waited for on a plain channel, which works the
//! same from any thread (inside or outside another runtime).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{Change, Feed, FeedItem, KeyValue, Store, StoreError, PREFIX};

/// How long one etcd call may take before the request fails (instead of hanging on a dead
/// cluster).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many keys one range request of a snapshot reads; bounded so a large store never exceeds
/// gRPC's message size limit.
const PAGE: i64 = 500;
/// Like kube-apiserver's `--etcd-compaction-interval`: history older than this is compacted, so
/// etcd does not grow without bound. The watch cache, not etcd, serves old revisions to clients.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
/// Back-off before re-establishing a broken watch.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("failed to build the etcd client runtime")]
    Runtime(#[source] std::io::Error),
    #[error("failed to connect to etcd at {endpoints:?}")]
    Connect {
        endpoints: Vec<String>,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd request failed")]
    Request(#[source] etcd_client::Error),
    #[error("etcd answered without a response header")]
    NoHeader,
    #[error("etcd returned a key that is not UTF-8")]
    Key(#[source] std::str::Utf8Error),
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

pub struct EtcdStore {
    client: Client,
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    closed: AtomicBool,
    /// Feed and compaction loops, stopped on close.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, EtcdError> {
    header
        .map(|h| h.revision().max(0) as u64)
        .ok_or(EtcdError::NoHeader)
}

/// The key right after every key that starts with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec()).map_err(|e| EtcdError::Key(e.utf8_error()))?,
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision().max(0) as u64,
    })
}

/// Every key under [`PREFIX`] at one revision, read in pages.
async fn snapshot(client: &Client) -> Result<(u64, Vec<KeyValue>), EtcdError> {
    let mut kv = client.kv_client();
    let end = prefix_end(PREFIX);
    let mut start = PREFIX.as_bytes().to_vec();
    let mut rev = 0i64;
    let mut out = Vec::new();
    loop {
        // Revision 0 reads the newest state; later pages pin the first page's revision.
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(rev);
        let resp = kv
            .get(start.clone(), Some(opts))
            .await
            .map_err(EtcdError::Request)?;
        if rev == 0 {
            rev = revision(resp.header())? as i64;
        }
        for kv in resp.kvs() {
            out.push(key_value(kv)?);
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok((rev as u64, out)),
        }
    }
}

/// Forwards every change after `after` into `tx` until the receiver goes away, re-watching
/// after errors; if etcd compacted past the feed meanwhile, sends a fresh snapshot instead.
async fn feed_loop(client: Client, mut after: u64, tx: mpsc::Sender<FeedItem>) {
    let mut watch_client = client.watch_client();
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after as i64 + 1);
        let mut stream = match watch_client.watch(PREFIX, Some(opts)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "etcd watch failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "etcd watch broke; re-watching");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "etcd compacted past the watch cache; reloading"
                );
                match snapshot(&client).await {
                    Ok((rev, objects)) => {
                        after = rev;
                        if tx.send(FeedItem::Resync { rev, objects }).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "etcd reload failed; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
                break;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = match kv.key_str() {
                    Ok(k) => k.to_string(),
                    Err(_) => continue,
                };
                let rev = kv.mod_revision().max(0) as u64;
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                after = rev;
                if tx
                    .send(FeedItem::Change(Change { rev, key, value }))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Compacts, every interval, up to the revision seen one interval earlier.
async fn compaction_loop(client: Client) {
    let mut kv = client.kv_client();
    let mut maintenance = client.maintenance_client();
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(COMPACTION_INTERVAL).await;
        if let Some(rev) = previous {
            if let Err(error) = kv.compact(rev, None).await {
                tracing::debug!(%error, rev, "etcd compaction skipped");
            }
        }
        previous = match maintenance.status().await {
            Ok(status) => status.header().map(|h| h.revision()),
            Err(_) => None,
        };
    }
}

/// Retries until etcd answers a status call (a client connects lazily) or the time is up.
async fn connect_loop(
    eps: Vec<String>,
    options: ConnectOptions,
    connect_timeout: Duration,
) -> Result<Client, EtcdError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    loop {
        // A client connects lazily; a status call proves etcd answers.
        let attempt = async {
            let mut client = Client::connect(&eps, Some(options.clone())).await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(client),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(EtcdError::Connect {
                    endpoints: eps.clone(),
                    source,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl EtcdStore {
    /// Connects (waiting up to `connect_timeout` for etcd to come up) and starts compaction.
    pub fn connect(endpoints: &[String], connect_timeout: Duration) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(EtcdError::Runtime)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT);
        let eps = endpoints.to_vec();
        // Not `block_on`: that panics when the caller is itself on an async runtime.
        let (tx, rx) = mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(connect_loop(eps, options, connect_timeout).await);
        });
        let client = rx.recv().map_err(|_| StoreError::Closed)??;
        let compactor = runtime.spawn(compaction_loop(client.clone()));
        Ok(Self {
            client,
            runtime: Some(runtime),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(vec![compactor]),
        })
    }

    fn runtime(&self) -> Result<&Runtime, StoreError> {
        match &self.runtime {
            Some(rt) if !self.closed.load(Ordering::SeqCst) => Ok(rt),
            _ => Err(StoreError::Closed),
        }
    }

    /// Runs `f` with a client on the store's runtime and waits for it.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self.runtime()?;
        let (tx, rx) = mpsc::channel();
        let fut = f(self.client.clone());
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// A compare-and-swap transaction: `then` if the key's ModRevision is `expected`, else read
    /// the key to tell "missing" from "changed".
    fn cas(&self, key: &str, expected: u64, then: TxnOp) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.call(move |mut client| async move {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    expected as i64,
                )])
                .and_then([then])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = client.txn(txn).await.map_err(EtcdError::Request)?;
            if resp.succeeded() {
                return Ok(revision(resp.header())?);
            }
            let actual = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            });
            Err(match (expected, actual) {
                // ModRevision == 0 only fails when the key exists (if the read finds it gone,
                // it was deleted in between, and still existed when the create was judged).
                (0, _) => StoreError::AlreadyExists(key),
                (_, None) => StoreError::NotFound(key),
                (_, Some(actual)) => StoreError::Conflict {
                    key,
                    expected,
                    actual: actual.max(0) as u64,
                },
            })
        })
    }
}

impl Store for EtcdStore {
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError> {
        self.call(|client| async move { Ok(snapshot(&client).await?) })
    }

    fn follow(&self) -> Result<(u64, Vec<KeyValue>, Feed), StoreError> {
        let (rev, objects) = self.snapshot()?;
        let (tx, rx) = mpsc::channel();
        let task = self
            .runtime()?
            .spawn(feed_loop(self.client.clone(), rev, tx));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok((rev, objects, rx))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.call(move |mut client| async move {
            let resp = client.get(key, None).await.map_err(EtcdError::Request)?;
            Ok(resp.kvs().first().map(key_value).transpose()?)
        })
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.cas(key, 0, TxnOp::put(key, value, None))
    }

    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError> {
        if expected == 0 {
            return Err(StoreError::NotFound(key.to_string()));
        }
        self.cas(key, expected, TxnOp::put(key, value, None))
    }

    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError> {
        if expected == 0 {
            return Err(StoreError::NotFound(key.to_string()));
        }
        self.cas(key, expected, TxnOp::delete(key, None))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Aborting the feed tasks drops their senders, which ends the feeds.
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.close();
        // The store may be dropped on an async worker, where a blocking runtime shutdown panics.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Etcd;

    #[test]
    fn etcd_passes_the_store_contract() {
        let etcd = Etcd::start();
        let endpoints = vec![etcd.endpoint.clone()];
        crate::store::contract::run(|| {
            Box::new(EtcdStore::connect(&endpoints, Duration::from_secs(10)).expect("connect"))
        });
    }

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let etcd = Etcd::start();
        let store = EtcdStore::connect(
            std::slice::from_ref(&etcd.endpoint),
            Duration::from_secs(10),
        )
        .expect("connect");
        let rev = store
            .create("/registry/strata.io/zones/z1", b"{}")
            .expect("create");
        let kv = store
            .get("/registry/strata.io/zones/z1")
            .expect("get")
            .expect("present");
        assert_eq!(
            kv.mod_revision, rev,
            "resourceVersion is etcd's mod_revision"
        );
        // Keys outside /registry/ (another tool sharing the cluster) never reach the cache.
        store
            .call(|mut c| async move {
                c.put("/other/x", "1", None)
                    .await
                    .map_err(EtcdError::Request)?;
                Ok(())
            })
            .expect("foreign put");
        let (_, all) = store.snapshot().expect("snapshot");
        assert_eq!(all.len(), 1);
        assert_eq!(prefix_end("/registry/"), b"/registry0".to_vec());
        store.close();
    }
}
