//! The watch cache: every current object plus a bounded ring of recent events, in memory.
//!
//! Lists, gets and watches are served from here and never touch the store. The cache follows
//! the store's feed of committed writes on a thread of its own, so its events are exactly the
//! store's revision order, whoever wrote (this server's concurrent requests, or another process
//! sharing the same etcd). Writes go to the store first (so nothing is acknowledged before it is
//! durable) and then wait until the cache has caught up with their revision, so a client that
//! reads after its write sees it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::cached::Cached;
use crate::routes::{Mailbox, Pin, Routes};
use crate::store::{Change, Feed, FeedItem, KeyValue, Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rev: u64,
    pub key: String,
    pub type_: EventType,
    /// The new state; for deletions the last state, with the deletion's resourceVersion.
    pub object: Arc<Cached>,
    /// The state before this event, so watchers can tell selector transitions.
    pub prev: Option<Arc<Cached>>,
    /// The watch frame of this event as most watchers send it (the object as stored, under its
    /// own apiVersion), encoded by the first of them and shared by the rest.
    pub frame: std::sync::OnceLock<Bytes>,
}

/// The requested revision is no longer in the event ring.
#[derive(Debug)]
pub struct TooOld {
    pub requested: u64,
    pub oldest: u64,
}

struct Inner {
    objects: BTreeMap<String, Arc<Cached>>,
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Every event with a revision above this is in `events`.
    history_start: u64,
    rev: u64,
    /// The feed ended (the store closed); writers stop waiting for it.
    closed: bool,
    /// Writers parked until the cache reaches a revision. Each is woken once its revision is
    /// applied, not on every change: with a hundred writers, waking all of them per change
    /// cost more CPU than the writes.
    waiters: Vec<(u64, Thread)>,
    /// The open watches' mailboxes; every applied event is routed here.
    routes: Routes,
}

/// What the cache and its feed thread share.
struct Shared {
    inner: Mutex<Inner>,
    rev_tx: watch::Sender<u64>,
}

/// A feed item decoded outside the lock.
enum Decoded {
    Change {
        rev: u64,
        key: String,
        /// `None` for a deletion.
        object: Option<Arc<Cached>>,
    },
    Resync {
        rev: u64,
        objects: BTreeMap<String, Arc<Cached>>,
    },
    /// A value that is not JSON, which this server never writes: the revision passes, so
    /// writers waiting for it go on, and the rest of the cache keeps serving.
    Undecodable { rev: u64 },
}

/// How many feed items the follower applies under one lock.
const MAX_APPLY: usize = 1024;

pub struct Cache {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
}

pub fn set_resource_version(obj: &mut Value, rev: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The stored form: the object without its resourceVersion (the store keeps the revision).
fn encode(mut obj: Value) -> Result<Vec<u8>, StoreError> {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| StoreError::Backend(Box::new(e)))
}

fn decode(bytes: Vec<u8>, rev: u64) -> Result<Cached, StoreError> {
    Cached::decode(Bytes::from(bytes), rev).map_err(|e| StoreError::Backend(Box::new(e)))
}

impl Cache {
    /// Fills the cache from the store and starts following its feed. History starts now: older
    /// revisions are unknown, so a watch from before this point is answered with 410 Expired and
    /// the client re-lists.
    pub fn load(store: Arc<dyn Store>, capacity: usize) -> Result<Cache, StoreError> {
        let (rev, kvs, feed) = store.follow()?;
        let (rev_tx, _) = watch::channel(rev);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                objects: decode_all(kvs)?,
                events: VecDeque::new(),
                capacity: capacity.max(1),
                history_start: rev,
                rev,
                closed: false,
                waiters: Vec::new(),
                routes: Routes::default(),
            }),
            rev_tx,
        });
        let follower = shared.clone();
        std::thread::Builder::new()
            .name("watch-cache".into())
            .spawn(move || follower.follow(feed))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Cache { store, shared })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects under `prefix` whose key sorts after `after`, with the current revision.
    pub fn list(&self, prefix: &str, after: Option<&str>) -> (u64, Vec<(String, Arc<Cached>)>) {
        let inner = self.lock();
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        let items = inner
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (inner.rev, items)
    }

    /// Objects under `prefix` (keys after `after`) as they were at revision `rev`, rebuilt by
    /// undoing the ring's newer events. This is what keeps paginated lists consistent.
    pub fn list_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        rev: u64,
    ) -> Result<Vec<(String, Arc<Cached>)>, TooOld> {
        let inner = self.lock();
        if rev < inner.history_start {
            return Err(TooOld {
                requested: rev,
                oldest: inner.history_start,
            });
        }
        let mut state: BTreeMap<String, Arc<Cached>> = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in inner.events.iter().rev().take_while(|e| e.rev > rev) {
            if !e.key.starts_with(prefix) {
                continue;
            }
            match (&e.type_, &e.prev) {
                (EventType::Added, _) => {
                    state.remove(&e.key);
                }
                (_, Some(prev)) => {
                    state.insert(e.key.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(state
            .into_iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .collect())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.rev_tx.subscribe()
    }

    /// Events after `rev`, plus the revision they bring the caller up to.
    pub fn events_since(&self, rev: u64) -> Result<(Vec<Arc<Event>>, u64), TooOld> {
        self.lock().events_since(rev)
    }

    /// Opens a mailbox for a watch of the objects under `prefix` (only those whose field
    /// `pin.path` is `pin.value`, when pinned); it closes when the subscription drops.
    pub fn subscribe_events(&self, prefix: &str, pin: Option<Pin>) -> Subscription {
        let mailbox = self.lock().routes.open(prefix, pin);
        Subscription {
            shared: self.shared.clone(),
            mailbox,
        }
    }

    /// Blocks until the feed has brought the cache to `rev` (or ended).
    fn wait_for(&self, rev: u64) {
        let mut inner = self.lock();
        while inner.rev < rev && !inner.closed {
            inner.waiters.push((rev, std::thread::current()));
            drop(inner);
            // Unparked by the follower; a spurious wake just registers again.
            std::thread::park();
            inner = self.lock();
        }
    }

    pub fn create(&self, key: &str, obj: Value) -> Result<Arc<Cached>, StoreError> {
        let bytes = encode(obj)?;
        let rev = self.store.create(key, &bytes)?;
        self.written(key, bytes, rev)
    }

    pub fn update(&self, key: &str, expected: u64, obj: Value) -> Result<Arc<Cached>, StoreError> {
        let bytes = encode(obj)?;
        let rev = self.store.update(key, expected, &bytes)?;
        self.written(key, bytes, rev)
    }

    /// Waits for the cache to apply the write at `rev`, and returns what was written: the
    /// cache's own copy while it is still current, so the reply shares its decoding.
    fn written(&self, key: &str, bytes: Vec<u8>, rev: u64) -> Result<Arc<Cached>, StoreError> {
        self.wait_for(rev);
        match self.get(key) {
            Some(current) if current.rev() == rev => Ok(current),
            _ => decode(bytes, rev).map(Arc::new),
        }
    }

    /// Deletes and returns the last state, stamped with the deletion's revision.
    pub fn delete(&self, key: &str, expected: u64) -> Result<Arc<Cached>, StoreError> {
        // The caller read the object at `expected` from here; if the delete succeeds, that is
        // still its last state (a newer write would have failed the compare).
        let last = self.get(key);
        let rev = self.store.delete(key, expected)?;
        self.wait_for(rev);
        let last = match last {
            Some(last) => last.at(rev),
            None => decode(b"{}".to_vec(), rev)?,
        };
        Ok(Arc::new(last))
    }

    pub fn close(&self) {
        self.store.close();
    }
}

/// A watch's feed of events: the ones routed to its mailbox, or the ring's when it lags.
pub struct Subscription {
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// Events after `last` that may concern this watch, plus the revision they bring it up to.
    pub fn take(&self, last: u64) -> Result<(Vec<Arc<Event>>, u64), TooOld> {
        let inner = self.shared.lock();
        match self.mailbox.take() {
            Some(events) => Ok((
                events.into_iter().filter(|e| e.rev > last).collect(),
                inner.rev.max(last),
            )),
            None => inner.events_since(last),
        }
    }

    /// Resolves once events arrived since the last take.
    pub async fn arrived(&self) {
        self.mailbox.arrived().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.lock().routes.close(&self.mailbox);
    }
}

impl Inner {
    fn events_since(&self, rev: u64) -> Result<(Vec<Arc<Event>>, u64), TooOld> {
        if rev < self.history_start {
            return Err(TooOld {
                requested: rev,
                oldest: self.history_start,
            });
        }
        // Events are in revision order; skip the ones already seen.
        let skip = self.events.partition_point(|e| e.rev <= rev);
        Ok((
            self.events.iter().skip(skip).cloned().collect(),
            self.rev.max(rev),
        ))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (each event is a
        // few inserts), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the feed until it ends. A store publishes a commit's changes together, so the
    /// follower takes whatever is queued, decodes it outside the lock, applies it under one
    /// lock, and then wakes watchers and the writers whose revisions it reached.
    fn follow(&self, feed: Feed) {
        while let Ok(first) = feed.recv() {
            let queued = std::iter::from_fn(|| feed.try_recv().ok()).take(MAX_APPLY - 1);
            let batch: Vec<Decoded> = std::iter::once(first)
                .chain(queued)
                .map(decode_item)
                .collect();
            let mut inner = self.lock();
            for item in batch {
                match item {
                    Decoded::Change { rev, key, object } => {
                        Self::apply(&mut inner, rev, key, object)
                    }
                    Decoded::Resync { rev, objects } => Self::resync(&mut inner, rev, objects),
                    Decoded::Undecodable { rev } => inner.rev = inner.rev.max(rev),
                }
            }
            self.rev_tx.send_replace(inner.rev);
            let rev = inner.rev;
            let (ready, waiting) = std::mem::take(&mut inner.waiters)
                .into_iter()
                .partition(|(wanted, _)| *wanted <= rev);
            inner.waiters = waiting;
            drop(inner);
            wake(ready);
        }
        let mut inner = self.lock();
        inner.closed = true;
        let all = std::mem::take(&mut inner.waiters);
        drop(inner);
        wake(all);
    }

    fn apply(inner: &mut Inner, rev: u64, key: String, object: Option<Arc<Cached>>) {
        if rev <= inner.rev {
            // Already in the snapshot the cache was loaded from.
            return;
        }
        inner.rev = rev;
        let prev = inner.objects.get(&key).cloned();
        let event = match (object, prev) {
            (Some(object), prev) => {
                inner.objects.insert(key.clone(), object.clone());
                Event {
                    rev,
                    type_: if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    },
                    key,
                    object,
                    prev,
                    frame: Default::default(),
                }
            }
            (None, Some(prev)) => {
                inner.objects.remove(&key);
                Event {
                    rev,
                    type_: EventType::Deleted,
                    key,
                    object: Arc::new(prev.at(rev)),
                    prev: Some(prev),
                    frame: Default::default(),
                }
            }
            // A deletion of what the cache never held: no watcher saw it, nothing to announce.
            (None, None) => return,
        };
        let event = Arc::new(event);
        inner.routes.route(&event);
        inner.events.push_back(event);
        while inner.events.len() > inner.capacity {
            if let Some(old) = inner.events.pop_front() {
                inner.history_start = old.rev;
            }
        }
    }

    /// The store lost the thread (etcd compaction): start over from its snapshot. Every watch
    /// and paginated list from before gets 410 Expired, so clients re-list, as with
    /// kube-apiserver after a compaction.
    fn resync(inner: &mut Inner, rev: u64, objects: BTreeMap<String, Arc<Cached>>) {
        inner.objects = objects;
        inner.events.clear();
        inner.history_start = rev;
        inner.rev = rev;
        inner.routes.lag_all();
    }
}

fn wake(waiters: Vec<(u64, Thread)>) {
    for (_, thread) in waiters {
        thread.unpark();
    }
}

fn decode_item(item: FeedItem) -> Decoded {
    let (rev, decoded) = match item {
        FeedItem::Change(Change { rev, key, value }) => (
            rev,
            value
                .map(|v| decode(v, rev).map(Arc::new))
                .transpose()
                .map(|object| Decoded::Change { rev, key, object }),
        ),
        FeedItem::Resync { rev, objects } => (
            rev,
            decode_all(objects).map(|objects| Decoded::Resync { rev, objects }),
        ),
    };
    decoded.unwrap_or_else(|error| {
        tracing::error!(%error, rev, "watch cache skipped an undecodable value");
        Decoded::Undecodable { rev }
    })
}

fn decode_all(kvs: Vec<KeyValue>) -> Result<BTreeMap<String, Arc<Cached>>, StoreError> {
    let mut objects = BTreeMap::new();
    for kv in kvs {
        objects.insert(kv.key, Arc::new(decode(kv.value, kv.mod_revision)?));
    }
    Ok(objects)
}

/// The mod revision recorded in an object's metadata.
pub fn resource_version(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use serde_json::json;

    #[test]
    fn ring_keeps_recent_events_and_reports_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let cache = Cache::load(store, 2).expect("load");
        let a = cache
            .create("/registry/x/a", json!({"metadata": {"name": "a"}}))
            .expect("a");
        let rev_a = a.rev();
        let b = cache
            .create("/registry/x/b", json!({"metadata": {"name": "b"}}))
            .expect("b");
        cache.delete("/registry/x/a", rev_a).expect("delete a");
        let (events, _) = cache.events_since(b.rev()).expect("recent");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].type_, EventType::Deleted);
        assert!(events[0].object.rev() > b.rev());
        assert!(
            cache.events_since(0).is_err(),
            "first event fell out of a ring of 2"
        );
        let (_, items) = cache.list("/registry/x/", None);
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn past_states_are_rebuilt_from_the_ring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let cache = Cache::load(store, 100).expect("load");
        let a = cache
            .create("/registry/x/a", json!({"metadata": {"name": "a"}, "v": 1}))
            .expect("a");
        let b = cache
            .create("/registry/x/b", json!({"metadata": {"name": "b"}}))
            .expect("b");
        let snapshot = b.rev();
        cache
            .update(
                "/registry/x/a",
                a.rev(),
                json!({"metadata": {"name": "a"}, "v": 2}),
            )
            .expect("update");
        cache.delete("/registry/x/b", snapshot).expect("delete b");
        cache
            .create("/registry/x/c", json!({"metadata": {"name": "c"}}))
            .expect("c");
        let then = cache
            .list_at("/registry/x/", None, snapshot)
            .expect("in ring");
        let names: Vec<&str> = then.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["/registry/x/a", "/registry/x/b"]);
        assert_eq!(then[0].1.value()["v"], 1);
        let after_a = cache
            .list_at("/registry/x/", Some("/registry/x/a"), snapshot)
            .expect("page 2");
        assert_eq!(after_a.len(), 1);
        let now = cache
            .list_at("/registry/x/", None, cache.revision())
            .expect("now");
        assert_eq!(now.len(), 2);
    }

    #[test]
    fn watches_pinned_to_a_field_value_get_only_their_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let cache = Cache::load(store, 10_000).expect("load");
        let pin = |host: &str| {
            Some(Pin {
                path: "spec.host".into(),
                value: host.into(),
            })
        };
        let start = cache.revision();
        let h1 = cache.subscribe_events("/registry/x/", pin("h1"));
        let h2 = cache.subscribe_events("/registry/x/", pin("h2"));
        let every = cache.subscribe_events("/registry/x/", None);
        let other = cache.subscribe_events("/registry/y/", None);
        // A new subscription reads the ring first, from where its watch starts.
        for sub in [&h1, &h2, &every, &other] {
            assert_eq!(sub.take(start).expect("in ring").0.len(), 0);
        }
        let a = cache
            .create(
                "/registry/x/a",
                json!({"metadata": {"name": "a"}, "spec": {"host": "h1"}}),
            )
            .expect("a");
        cache
            .create(
                "/registry/x/b",
                json!({"metadata": {"name": "b"}, "spec": {"host": "h3"}}),
            )
            .expect("b");
        // a moves to h2: both pinned watches see it, one as leaving and one as arriving.
        cache
            .update(
                "/registry/x/a",
                a.rev(),
                json!({"metadata": {"name": "a"}, "spec": {"host": "h2"}}),
            )
            .expect("move a");
        let keys = |sub: &Subscription| -> Vec<(String, EventType)> {
            let (events, up_to) = sub.take(start).expect("routed");
            assert_eq!(up_to, cache.revision());
            events.iter().map(|e| (e.key.clone(), e.type_)).collect()
        };
        let a_key = "/registry/x/a".to_string();
        assert_eq!(
            keys(&h1),
            vec![
                (a_key.clone(), EventType::Added),
                (a_key.clone(), EventType::Modified)
            ]
        );
        assert_eq!(keys(&h2), vec![(a_key.clone(), EventType::Modified)]);
        assert_eq!(keys(&every).len(), 3);
        assert!(keys(&other).is_empty());
        // A watch that stops taking falls back to the ring, which still has everything.
        let last = cache.revision();
        // Concurrent writers share group commits, so this stays fast.
        std::thread::scope(|s| {
            for t in 0..20 {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..55 {
                        cache
                            .create(
                                &format!("/registry/x/n{t}-{i}"),
                                json!({"metadata": {"name": "n"}}),
                            )
                            .expect("create");
                    }
                });
            }
        });
        let (events, _) = every.take(last).expect("ring");
        assert_eq!(events.len(), 1100);
        drop(h1);
        cache
            .create(
                "/registry/x/c",
                json!({"metadata": {"name": "c"}, "spec": {"host": "h1"}}),
            )
            .expect("c");
        assert_eq!(
            cache.lock().routes.open_count(),
            3,
            "dropping h1 closed its mailbox"
        );
    }
}
