//! Durable object storage.
//!
//! The trait is shaped after etcd's KV API so that an etcd backend can implement it directly:
//! keys are `/registry/<group>/<plural>/[<namespace>/]<name>`, every write bumps one global
//! revision, and an object's resourceVersion is the revision of its last write. Values are the
//! object's JSON without `metadata.resourceVersion` (like etcd's mod_revision, the revision lives
//! beside the value, not in it).
//!
//! Writes are conditional (create-if-absent, compare-and-swap on the mod revision) so callers never
//! need a read-then-write lock, and every write returns only once it is durable.

pub mod redb;

#[cfg(test)]
pub(crate) mod contract;

pub use self::redb::RedbStore;

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that produced this value.
    pub mod_revision: u64,
}

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
    /// The current revision and every object, read in one consistent snapshot. The watch cache is
    /// filled from this at start-up.
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError>;

    /// One object, if present.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Writes `value` only if `key` is absent; returns the new revision.
    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError>;

    /// Replaces `value` only if the key's mod revision is `expected`; returns the new revision.
    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError>;

    /// Removes `key` only if its mod revision is `expected`; returns the deletion's revision.
    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError>;

    /// Releases the backend (file locks, connections). Later calls fail with `Closed`.
    fn close(&self);
}
