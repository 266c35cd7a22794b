//! Which changes of other objects are worth waking VMs for. Watches deliver every write, and
//! most writes are status updates that change nothing a VM waits on; waking every VM that
//! refers to the object each time made bursts of creates quadratic.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// An object's identity and spec version: `(metadata.uid, metadata.generation)`.
type Version = (Option<String>, Option<i64>);

/// The last [`Version`] seen of each object of a kind, by name, to tell a new object or a new
/// spec from a status write.
#[derive(Debug, Default)]
pub(crate) struct Generations(Mutex<HashMap<String, Version>>);

impl Generations {
    /// Records the object `name` as seen; whether it is new or its spec changed. A deletion
    /// repeats the last one seen, so it wakes nobody: a VM that needs the deleted object finds
    /// out on its own retry.
    pub fn changed(&self, name: &str, uid: Option<String>, generation: Option<i64>) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (uid, generation);
        seen.insert(name.to_string(), now.clone()).as_ref() != Some(&now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_objects_and_new_generations_count() {
        let seen = Generations::default();
        let uid = |u: &str| Some(u.to_string());
        assert!(seen.changed("net", uid("a"), Some(1)), "new");
        assert!(!seen.changed("net", uid("a"), Some(1)), "a status write");
        assert!(seen.changed("net", uid("a"), Some(2)), "a spec change");
        assert!(!seen.changed("net", uid("a"), Some(2)));
        assert!(
            seen.changed("net", uid("b"), Some(1)),
            "deleted and created again under the same name"
        );
        assert!(seen.changed("other", uid("c"), Some(2)), "names are apart");
    }
}
