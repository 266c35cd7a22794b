//! Behaviour every `Store` backend must have. A backend's tests call [`run`] with a factory that
//! opens the backend on the same underlying storage each time (so reopening can be checked).

use super::{Store, StoreError};

pub(crate) fn run(open: impl Fn() -> Box<dyn Store>) {
    let store = open();
    let (rev0, all) = store.snapshot().expect("snapshot");
    assert!(all.is_empty(), "a new store is empty");

    // Create is create-if-absent and bumps the global revision.
    let r1 = store
        .create("/registry/g/things/ns/a", b"{\"a\":1}")
        .expect("create a");
    assert!(r1 > rev0);
    assert!(matches!(
        store.create("/registry/g/things/ns/a", b"{}"),
        Err(StoreError::AlreadyExists(_))
    ));
    let r2 = store
        .create("/registry/g/things/ns/b", b"{\"b\":1}")
        .expect("create b");
    assert!(r2 > r1);
    let got = store
        .get("/registry/g/things/ns/a")
        .expect("get")
        .expect("present");
    assert_eq!(got.value, b"{\"a\":1}");
    assert_eq!(got.mod_revision, r1);

    // Compare-and-swap on the mod revision.
    match store.update("/registry/g/things/ns/a", r2, b"{\"a\":2}") {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (r2, r1))
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    let r3 = store
        .update("/registry/g/things/ns/a", r1, b"{\"a\":2}")
        .expect("update");
    assert!(r3 > r2);
    assert!(matches!(
        store.update("/registry/g/things/ns/missing", 1, b"{}"),
        Err(StoreError::NotFound(_))
    ));

    // Delete is compare-and-swap too, and takes a revision of its own.
    assert!(matches!(
        store.delete("/registry/g/things/ns/b", r1),
        Err(StoreError::Conflict { .. })
    ));
    let r4 = store.delete("/registry/g/things/ns/b", r2).expect("delete");
    assert!(r4 > r3);
    assert!(store.get("/registry/g/things/ns/b").expect("get").is_none());
    assert!(matches!(
        store.delete("/registry/g/things/ns/b", r4),
        Err(StoreError::NotFound(_))
    ));

    let (rev, all) = store.snapshot().expect("snapshot");
    assert_eq!(rev, r4, "deletes count as revisions");
    assert_eq!(all.len(), 1);

    // Closing releases the backend; reopening finds every object and the revision counter.
    store.close();
    assert!(matches!(
        store.get("/registry/g/things/ns/a"),
        Err(StoreError::Closed)
    ));
    drop(store);
    let store = open();
    let (rev, all) = store.snapshot().expect("snapshot after reopen");
    assert_eq!(rev, r4);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].key, "/registry/g/things/ns/a");
    assert_eq!(all[0].value, b"{\"a\":2}");
    assert_eq!(all[0].mod_revision, r3);
    let r5 = store
        .create("/registry/g/things/ns/c", b"{}")
        .expect("create after reopen");
    assert!(r5 > r4, "revisions never go backwards across restarts");
    store.close();
}
