//! The embedded backend: one redb file, written with group commit.
//!
//! Every write is acknowledged only after the transaction that holds it is committed with fsync
//! (redb's default `Durability::Immediate`). An fsync costs the same for one write as for a
//! hundred, so writers do not commit themselves: they queue their operation for one committer
//! thread, which takes everything queued, applies the operations in order inside one
//! transaction (each successful one takes the next revision), commits once, publishes the
//! changes to the feeds, and only then answers each writer.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, Feed, FeedItem, KeyValue, Store, StoreError};

/// key → (mod revision, object JSON).
const OBJECTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("objects");
/// "revision" → the last revision handed out. Deletes bump it too, so it cannot be derived
/// from the objects table.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// redb's page cache (1 GiB by default). Reads are served by the watch cache, so redb's own
/// cache only speeds up the B-tree walks of writes, and the kernel's page cache holds the file
/// anyway.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Upper bound on one group commit, so one huge burst cannot starve the writers behind it.
const MAX_BATCH: usize = 1024;

enum OpKind {
    Create(Vec<u8>),
    Update { expected: u64, value: Vec<u8> },
    Delete { expected: u64 },
}

struct Op {
    key: String,
    kind: OpKind,
    reply: mpsc::Sender<Result<u64, StoreError>>,
}

/// What the committer thread and readers share.
struct Shared {
    // `None` once closed, so that the file lock is released even while handlers still hold
    // an `Arc` to the store.
    db: RwLock<Option<Database>>,
    feeds: Mutex<Vec<mpsc::Sender<FeedItem>>>,
}

pub struct RedbStore {
    shared: Arc<Shared>,
    /// `None` once closed.
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        // Create the tables up front so that read transactions never see them missing.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(OBJECTS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            if meta.get(REVISION).map_err(backend)?.is_none() {
                meta.insert(REVISION, 0).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            feeds: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel();
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("redb-commit".into())
                .spawn(move || commit_loop(&shared, &rx))
                .map_err(backend)?
        };
        Ok(Self {
            shared,
            queue: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
        })
    }

    fn submit(&self, key: &str, kind: OpKind) -> Result<u64, StoreError> {
        let (reply, answer) = mpsc::channel();
        {
            let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queue.as_ref().ok_or(StoreError::Closed)?;
            queue
                .send(Op {
                    key: key.to_string(),
                    kind,
                    reply,
                })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.shared.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(backend)?;
        f(&txn)
    }
}

/// Runs until every sender of the queue is gone (the store closed), draining what is queued.
fn commit_loop(shared: &Shared, queue: &mpsc::Receiver<Op>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(shared, batch);
    }
}

fn commit_batch(shared: &Shared, batch: Vec<Op>) {
    let guard = shared.db.read().unwrap_or_else(|e| e.into_inner());
    let outcome = match guard.as_ref() {
        None => Err(StoreError::Closed),
        Some(db) => write_batch(db, &batch),
    };
    let results = match outcome {
        Ok((results, changes)) => {
            let mut feeds = shared.feeds.lock().unwrap_or_else(|e| e.into_inner());
            // Publish before answering, so a writer that reads the cache after its write
            // returns can wait for the cache to reach its revision.
            feeds.retain(|feed| {
                changes
                    .iter()
                    .all(|c| feed.send(FeedItem::Change(c.clone())).is_ok())
            });
            results
        }
        // The transaction did not commit, so none of the batch happened.
        Err(e) => {
            let msg = e.to_string();
            batch
                .iter()
                .map(|_| match &e {
                    StoreError::Closed => Err(StoreError::Closed),
                    _ => Err(backend(std::io::Error::other(msg.clone()))),
                })
                .collect()
        }
    };
    for (op, result) in batch.into_iter().zip(results) {
        // A writer that went away does not need its answer.
        let _ = op.reply.send(result);
    }
}

type BatchOutcome = (Vec<Result<u64, StoreError>>, Vec<Change>);

/// One transaction for the whole batch; an operation whose condition fails gets its error and
/// takes no revision, the others are applied in queue order.
fn write_batch(db: &Database, batch: &[Op]) -> Result<BatchOutcome, StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut rev = meta
            .get(REVISION)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        for op in batch {
            let key = op.key.as_str();
            let current = objects.get(key).map_err(backend)?.map(|g| g.value().0);
            let check = match (&op.kind, current) {
                (OpKind::Create(_), Some(_)) => Err(StoreError::AlreadyExists(op.key.clone())),
                (OpKind::Create(_), None) => Ok(()),
                (OpKind::Update { .. } | OpKind::Delete { .. }, None) => {
                    Err(StoreError::NotFound(op.key.clone()))
                }
                (OpKind::Update { expected, .. } | OpKind::Delete { expected }, Some(actual))
                    if actual != *expected =>
                {
                    Err(StoreError::Conflict {
                        key: op.key.clone(),
                        expected: *expected,
                        actual,
                    })
                }
                _ => Ok(()),
            };
            if let Err(e) = check {
                results.push(Err(e));
                continue;
            }
            rev += 1;
            let value = match &op.kind {
                OpKind::Create(value) | OpKind::Update { value, .. } => {
                    objects
                        .insert(key, (rev, value.as_slice()))
                        .map_err(backend)?;
                    Some(value.clone())
                }
                OpKind::Delete { .. } => {
                    objects.remove(key).map_err(backend)?;
                    None
                }
            };
            changes.push(Change {
                rev,
                key: op.key.clone(),
                value,
            });
            results.push(Ok(rev));
        }
        meta.insert(REVISION, rev).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok((results, changes))
}

fn read_snapshot(txn: &redb::ReadTransaction) -> Result<(u64, Vec<KeyValue>), StoreError> {
    let rev = txn
        .open_table(META)
        .map_err(backend)?
        .get(REVISION)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0);
    let objects = txn.open_table(OBJECTS).map_err(backend)?;
    let mut out = Vec::new();
    for entry in objects.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let (mod_revision, value) = v.value();
        out.push(KeyValue {
            key: k.value().to_string(),
            value: value.to_vec(),
            mod_revision,
        });
    }
    Ok((rev, out))
}

impl Store for RedbStore {
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError> {
        self.read(read_snapshot)
    }

    fn follow(&self) -> Result<(u64, Vec<KeyValue>, Feed), StoreError> {
        // Registering under the feeds lock orders this against publication: a batch committed
        // before the snapshot may still be published to the new feed, and its changes carry
        // revisions the snapshot already covers, which the consumer skips; a batch committed
        // after it is published after the registration.
        let mut feeds = self.shared.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let (rev, objects) = self.snapshot()?;
        let (tx, rx) = mpsc::channel();
        feeds.push(tx);
        Ok((rev, objects, rx))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read(|txn| {
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            let found = objects.get(key).map_err(backend)?.map(|g| {
                let (mod_revision, value) = g.value();
                KeyValue {
                    key: key.to_string(),
                    value: value.to_vec(),
                    mod_revision,
                }
            });
            Ok(found)
        })
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.submit(key, OpKind::Create(value.to_vec()))
    }

    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError> {
        self.submit(
            key,
            OpKind::Update {
                expected,
                value: value.to_vec(),
            },
        )
    }

    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError> {
        self.submit(key, OpKind::Delete { expected })
    }

    fn close(&self) {
        // Dropping the queue's sender lets the committer drain what is queued and stop; only
        // then is the file released.
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(committer) = committer {
            let _ = committer.join();
        }
        self.shared
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_passes_the_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        crate::store::contract::run(|| Box::new(RedbStore::open(&path).expect("open store")));
    }
}
