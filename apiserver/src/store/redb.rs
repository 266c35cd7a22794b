//! The embedded backend: one redb file, committed with fsync on every write.

use std::path::Path;
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{KeyValue, Store, StoreError};

/// key → (mod revision, object JSON).
const OBJECTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("objects");
/// "revision" → the last revision handed out. Deletes bump it too, so it cannot be derived
/// from the objects table.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct RedbStore {
    // `None` once closed, so that the file lock is released even while handlers still hold
    // an `Arc` to the store.
    db: RwLock<Option<Database>>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
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
        Ok(Self {
            db: RwLock::new(Some(db)),
        })
    }

    /// Runs one write transaction that bumps the revision; `f` gets the new revision and
    /// decides whether to write.
    fn write<F>(&self, f: F) -> Result<u64, StoreError>
    where
        F: FnOnce(&mut redb::Table<&str, (u64, &[u8])>, u64) -> Result<(), StoreError>,
    {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_write().map_err(backend)?;
        let rev = {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let rev = meta
                .get(REVISION)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0)
                + 1;
            let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
            // On error the transaction is dropped, which aborts it.
            f(&mut objects, rev)?;
            meta.insert(REVISION, rev).map_err(backend)?;
            rev
        };
        txn.commit().map_err(backend)?;
        Ok(rev)
    }
}

fn current_rev(
    objects: &redb::Table<&str, (u64, &[u8])>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(objects.get(key).map_err(backend)?.map(|g| g.value().0))
}

impl Store for RedbStore {
    fn snapshot(&self) -> Result<(u64, Vec<KeyValue>), StoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(backend)?;
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

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(backend)?;
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
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.write(|objects, rev| {
            if current_rev(objects, key)?.is_some() {
                return Err(StoreError::AlreadyExists(key.to_string()));
            }
            objects.insert(key, (rev, value)).map_err(backend)?;
            Ok(())
        })
    }

    fn update(&self, key: &str, expected: u64, value: &[u8]) -> Result<u64, StoreError> {
        self.write(|objects, rev| {
            match current_rev(objects, key)? {
                None => return Err(StoreError::NotFound(key.to_string())),
                Some(actual) if actual != expected => {
                    return Err(StoreError::Conflict {
                        key: key.to_string(),
                        expected,
                        actual,
                    })
                }
                Some(_) => {}
            }
            objects.insert(key, (rev, value)).map_err(backend)?;
            Ok(())
        })
    }

    fn delete(&self, key: &str, expected: u64) -> Result<u64, StoreError> {
        self.write(|objects, _rev| {
            match current_rev(objects, key)? {
                None => return Err(StoreError::NotFound(key.to_string())),
                Some(actual) if actual != expected => {
                    return Err(StoreError::Conflict {
                        key: key.to_string(),
                        expected,
                        actual,
                    })
                }
                Some(_) => {}
            }
            objects.remove(key).map_err(backend)?;
            Ok(())
        })
    }

    fn close(&self) {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        guard.take();
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
