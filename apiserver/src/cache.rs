//! The watch cache: every current object plus a bounded ring of recent events, in memory.
//!
//! Lists, gets and watches are served from here and never touch the disk. Writes go through the
//! cache, which applies them to the store first (so nothing is acknowledged before it is durable)
//! and then to memory under the same lock, so event order is exactly revision order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

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
    pub object: Arc<Value>,
    /// The state before this event, so watchers can tell selector transitions.
    pub prev: Option<Arc<Value>>,
}

/// The requested revision is no longer in the event ring.
#[derive(Debug)]
pub struct TooOld {
    pub requested: u64,
    pub oldest: u64,
}

struct Inner {
    objects: BTreeMap<String, Arc<Value>>,
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Every event with a revision above this is in `events`.
    history_start: u64,
    rev: u64,
}

pub struct Cache {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    rev_tx: watch::Sender<u64>,
}

pub fn set_resource_version(obj: &mut Value, rev: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The stored form: the object without its resourceVersion (the store keeps the revision).
fn encode(obj: &Value) -> Result<Vec<u8>, StoreError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| StoreError::Backend(Box::new(e)))
}

impl Cache {
    /// Fills the cache from the store. History starts now: older revisions are unknown, so a
    /// watch from before this point is answered with 410 Expired and the client re-lists.
    pub fn load(store: Arc<dyn Store>, capacity: usize) -> Result<Cache, StoreError> {
        let (rev, kvs) = store.snapshot()?;
        let mut objects = BTreeMap::new();
        for kv in kvs {
            let mut obj: Value =
                serde_json::from_slice(&kv.value).map_err(|e| StoreError::Backend(Box::new(e)))?;
            set_resource_version(&mut obj, kv.mod_revision);
            objects.insert(kv.key, Arc::new(obj));
        }
        let (rev_tx, _) = watch::channel(rev);
        Ok(Cache {
            store,
            inner: Mutex::new(Inner {
                objects,
                events: VecDeque::new(),
                capacity: capacity.max(1),
                history_start: rev,
                rev,
            }),
            rev_tx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (each write is a
        // few inserts after the store commit), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects under `prefix` whose key sorts after `after`, with the current revision.
    pub fn list(&self, prefix: &str, after: Option<&str>) -> (u64, Vec<(String, Arc<Value>)>) {
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
    ) -> Result<Vec<(String, Arc<Value>)>, TooOld> {
        let inner = self.lock();
        if rev < inner.history_start {
            return Err(TooOld {
                requested: rev,
                oldest: inner.history_start,
            });
        }
        let mut state: BTreeMap<String, Arc<Value>> = inner
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
        self.rev_tx.subscribe()
    }

    /// Events after `rev`, plus the revision they bring the caller up to.
    pub fn events_since(&self, rev: u64) -> Result<(Vec<Arc<Event>>, u64), TooOld> {
        let inner = self.lock();
        if rev < inner.history_start {
            return Err(TooOld {
                requested: rev,
                oldest: inner.history_start,
            });
        }
        // Events are in revision order; skip the ones already seen.
        let skip = inner.events.partition_point(|e| e.rev <= rev);
        Ok((
            inner.events.iter().skip(skip).cloned().collect(),
            inner.rev.max(rev),
        ))
    }

    fn record(&self, inner: &mut Inner, event: Event) {
        inner.rev = event.rev;
        match event.type_ {
            EventType::Deleted => {
                inner.objects.remove(&event.key);
            }
            _ => {
                inner
                    .objects
                    .insert(event.key.clone(), event.object.clone());
            }
        }
        inner.events.push_back(Arc::new(event));
        while inner.events.len() > inner.capacity {
            if let Some(old) = inner.events.pop_front() {
                inner.history_start = old.rev;
            }
        }
        self.rev_tx.send_replace(inner.rev);
    }

    pub fn create(&self, key: &str, mut obj: Value) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let rev = self.store.create(key, &encode(&obj)?)?;
        set_resource_version(&mut obj, rev);
        let obj = Arc::new(obj);
        let event = Event {
            rev,
            key: key.to_string(),
            type_: EventType::Added,
            object: obj.clone(),
            prev: None,
        };
        self.record(&mut inner, event);
        Ok(obj)
    }

    pub fn update(
        &self,
        key: &str,
        expected: u64,
        mut obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let rev = self.store.update(key, expected, &encode(&obj)?)?;
        set_resource_version(&mut obj, rev);
        let obj = Arc::new(obj);
        let prev = inner.objects.get(key).cloned();
        let event = Event {
            rev,
            key: key.to_string(),
            type_: EventType::Modified,
            object: obj.clone(),
            prev,
        };
        self.record(&mut inner, event);
        Ok(obj)
    }

    /// Deletes and returns the last state, stamped with the deletion's revision.
    pub fn delete(&self, key: &str, expected: u64) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let rev = self.store.delete(key, expected)?;
        let prev = inner.objects.get(key).cloned();
        let mut last = prev.as_deref().cloned().unwrap_or(Value::Null);
        set_resource_version(&mut last, rev);
        let obj = Arc::new(last);
        let event = Event {
            rev,
            key: key.to_string(),
            type_: EventType::Deleted,
            object: obj.clone(),
            prev,
        };
        self.record(&mut inner, event);
        Ok(obj)
    }

    pub fn close(&self) {
        self.store.close();
    }
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
        let rev_a = resource_version(&a);
        let b = cache
            .create("/registry/x/b", json!({"metadata": {"name": "b"}}))
            .expect("b");
        cache.delete("/registry/x/a", rev_a).expect("delete a");
        let (events, _) = cache.events_since(resource_version(&b)).expect("recent");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].type_, EventType::Deleted);
        assert!(resource_version(&events[0].object) > resource_version(&b));
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
        let snapshot = resource_version(&b);
        cache
            .update(
                "/registry/x/a",
                resource_version(&a),
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
        assert_eq!(then[0].1["v"], 1);
        let after_a = cache
            .list_at("/registry/x/", Some("/registry/x/a"), snapshot)
            .expect("page 2");
        assert_eq!(after_a.len(), 1);
        let now = cache
            .list_at("/registry/x/", None, cache.revision())
            .expect("now");
        assert_eq!(now.len(), 2);
    }
}
