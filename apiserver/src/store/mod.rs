//! Durable object storage.
//!
//! The trait is shaped after etcd's KV API so that both backends implement it directly: keys are
//! `/registry/<group>/<plural>/[<namespace>/]<name>`, every write bumps one global revision, and
//! an object's resourceVersion is the revision of its last write (etcd's mod_revision). Values are
//! the object's JSON without `metadata.resourceVersion` (the revision lives beside the value, not
//! in it).
//!
//! Writes are conditional (create-if-absent, compare-and-swap on the mod revision) so callers never
//! need a read-then-write lock, and every write returns only once it is durable. Committed writes
//! also come out of a [`Feed`], in revision order, which is what keeps the watch cache current even
//! when another process writes to the same etcd.

pub mod etcd;
pub mod redb;

#[cfg(test)]
pub(crate) mod contract;

use std::sync::mpsc;

pub use self::etcd::EtcdStore;
pub use self::redb::RedbStore;

/// Every key the server writes starts with this, like kube-apiserver's default `--etcd-prefix`.
pub const PREFIX: &str = "/registry/";

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that produced this value.
    pub mod_revision: u64,
}

/// One committed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: u64,
    pub key: String,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// What a [`Feed`] delivers.
#[derive(Debug)]
pub enum FeedItem {
    Change(Change),
    /// The backend lost the thread (etcd compacted past the feed while it was disconnected):
    /// this is the whole state at `rev`, and the changes in between are gone.
    Resync {
        rev: u64,
        objects: Vec<KeyValue>,
    },
}

/// Committed writes in revision order. It disconnects when the store closes.
pub type Feed = mpsc::Receiver<FeedItem>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {key} is at revision {actual}, not {expected}")]
    Conflict {
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("the store is closed")]
    Closed,
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A revisioned key-value store.
pub trait Store: Send + Sync {
    /// The current revision and every object under [`PREFIX`], read in one consistent snapshot.
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError>;

    /// A snapshot plus the feed of every change after it; the watch cache is filled from this.
    fn follow(&self) -> Result<(u64, Vec<KeyValue>, Feed), StoreError>;

    /// One object, if present.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Writes `value` only if `key` is absent; returns the new revision.
    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError>;

    /// Replaces `value` only if the key's mod revision is `expected`; returns the new revision.
    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError>;

    /// Removes `key` only if its mod revision is `expected`; returns the deletion's revision.
    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError>;

    /// Releases the backend (file locks, connections) and ends feeds. Later calls fail with
    /// `Closed`.
    fn close(&self);
}

/// Which backend [`crate::serve`] opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// One redb file under the data directory.
    #[default]
    Embedded,
    /// An etcd cluster (v3 API), e.g. `http://127.0.0.1:2379`.
    Etcd { endpoints: Vec<String> },
}
