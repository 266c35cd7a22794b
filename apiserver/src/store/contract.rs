//! Behaviour every `Store` backend must have. A backend's tests call [`run`] with a factory that
//! opens the backend on the same underlying storage each time (so reopening can be checked).

use std::sync::Arc;
use std::time::Duration;

use super::{Change, Feed, FeedItem, Store, StoreError};

/// The next change on `feed`, skipping changes the snapshot already covered.
fn next_change(feed: &Feed, after: u64) -> Change {
    loop {
        match feed.recv_timeout(Duration::from_secs(10)) {
            Ok(FeedItem::Change(c)) if c.rev > after => return c,
            Ok(FeedItem::Change(_)) => continue,
            Ok(FeedItem::Resync { rev, .. }) => panic!("unexpected resync at {rev}"),
            Err(e) => panic!("feed ended or stalled: {e}"),
        }
    }
}

pub(crate) fn run(open: impl Fn() -> Box<dyn Store>) {
    let store = open();
    let (rev0, all, feed) = store.follow().expect("follow");
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

    // The feed reports exactly the successful writes, in revision order.
    let seen: Vec<Change> = (0..4)
        .scan(rev0, |after, _| {
            let c = next_change(&feed, *after);
            *after = c.rev;
            Some(c)
        })
        .collect();
    let expect = |rev, key: &str, value: Option<&[u8]>| Change {
        rev,
        key: key.to_string(),
        value: value.map(<[u8]>::to_vec),
    };
    assert_eq!(
        seen,
        vec![
            expect(r1, "/registry/g/things/ns/a", Some(b"{\"a\":1}")),
            expect(r2, "/registry/g/things/ns/b", Some(b"{\"b\":1}")),
            expect(r3, "/registry/g/things/ns/a", Some(b"{\"a\":2}")),
            expect(r4, "/registry/g/things/ns/b", None),
        ]
    );

    // Closing releases the backend and ends the feed; reopening finds every object and the
    // revision counter.
    store.close();
    assert!(
        feed.recv_timeout(Duration::from_secs(10)).is_err(),
        "the feed ends when the store closes"
    );
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
    drop(store);

    concurrent_writers(Arc::from(open()));
}

/// Many writers at once (what group commit batches): every write gets its own revision, the
/// feed reports them all in revision order, and a stale compare-and-swap still loses.
fn concurrent_writers(store: Arc<dyn Store>) {
    let (start, _, feed) = store.follow().expect("follow");
    let writers: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let key = format!("/registry/g/many/ns/o{i}");
                let created = store.create(&key, b"{}").expect("create");
                let updated = store.update(&key, created, b"{\"v\":2}").expect("update");
                assert!(matches!(
                    store.update(&key, created, b"{}"),
                    Err(StoreError::Conflict { .. })
                ));
                vec![created, updated]
            })
        })
        .collect();
    let mut revs: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 64, "every write has its own revision");
    let mut after = start;
    for want in &revs {
        let c = next_change(&feed, after);
        assert_eq!(c.rev, *want, "feed in revision order");
        after = c.rev;
    }
    store.close();
}
