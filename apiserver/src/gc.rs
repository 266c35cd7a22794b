//! Garbage collection of dependents through `metadata.ownerReferences`, run synchronously by the
//! API server when an owner goes away (kube-apiserver leaves this to kube-controller-manager; we
//! have no controller manager, and the semantics clients see are the same).
//!
//! - Background (the default): once the owner is gone, dependents whose owners are all gone are
//!   deleted (their own finalizers still apply).
//! - Foreground: dependents are deleted before the owner. Upstream keeps the owner visible with a
//!   `foregroundDeletion` finalizer meanwhile; here the owner goes right after its dependents.
//! - Orphan: the owner's reference is removed from every dependent, which stays.
//!
//! Finding dependents scans the cache; an owner-uid index is the next step when it shows up in
//! profiles.

use std::collections::HashSet;
use std::sync::Arc;

use crate::cached::Cached;
use crate::registry::ResourceDef;
use crate::rest::App;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(policy: Option<&str>, orphan_dependents: Option<bool>) -> Option<Propagation> {
        match (policy, orphan_dependents) {
            (Some("Background"), _) => Some(Propagation::Background),
            (Some("Foreground"), _) => Some(Propagation::Foreground),
            (Some("Orphan"), _) | (None, Some(true)) => Some(Propagation::Orphan),
            (None, _) => Some(Propagation::Background),
            (Some(_), _) => None,
        }
    }
}

impl App {
    /// The definition that stores `key` (any served version of it).
    fn def_for_key(&self, key: &str) -> Option<Arc<ResourceDef>> {
        let reg = self.registry();
        let found = reg
            .all()
            .filter(|d| key.starts_with(&d.prefix()))
            .max_by_key(|d| d.prefix().len())
            .cloned();
        found
    }

    fn dependents(&self, uid: &str) -> Vec<(String, Arc<Cached>)> {
        let (_, all) = self.cache.list("/registry/", None);
        all.into_iter()
            .filter(|(_, o)| o.owner_uids().any(|u| u == uid))
            .collect()
    }

    /// Applies `policy` to the dependents of the object with `uid`, before the owner is deleted.
    pub(crate) fn before_owner_delete(&self, uid: &str, policy: Propagation) {
        match policy {
            Propagation::Background => {}
            Propagation::Orphan => self.orphan_dependents(uid),
            Propagation::Foreground => self.delete_dependents(uid, Propagation::Foreground),
        }
    }

    /// Deletes the dependents of a deleted owner whose owners are all gone now.
    pub(crate) fn delete_dependents(&self, uid: &str, policy: Propagation) {
        let dependents = self.dependents(uid);
        if dependents.is_empty() {
            return;
        }
        let mut live: Option<HashSet<String>> = None;
        for (key, obj) in dependents {
            let others: Vec<&str> = obj.owner_uids().filter(|u| *u != uid).collect();
            if !others.is_empty() {
                let live = live.get_or_insert_with(|| {
                    let (_, all) = self.cache.list("/registry/", None);
                    all.iter()
                        .filter_map(|(_, o)| o.uid().map(str::to_string))
                        .collect()
                });
                if others.iter().any(|u| live.contains(*u)) {
                    continue;
                }
            }
            let Some(def) = self.def_for_key(&key) else {
                continue;
            };
            if let Err(e) = self.delete_object(&def, &key, &obj.value(), false, policy) {
                tracing::warn!(key, error = %e, "garbage collection failed");
            }
        }
    }

    fn orphan_dependents(&self, uid: &str) {
        for (key, obj) in self.dependents(uid) {
            let mut updated = obj.value();
            let meta = &mut updated["metadata"];
            if let Some(refs) = meta["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
                // Upstream omits an empty list, so clients see "no owner", not "[]".
                if refs.is_empty() {
                    meta.as_object_mut().map(|m| m.remove("ownerReferences"));
                }
            }
            if let Err(e) = self.cache.update(&key, obj.rev(), updated) {
                tracing::warn!(key, error = %e, "orphaning a dependent failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_policy_parsing() {
        assert_eq!(
            Propagation::parse(None, None),
            Some(Propagation::Background)
        );
        assert_eq!(
            Propagation::parse(Some("Foreground"), None),
            Some(Propagation::Foreground)
        );
        assert_eq!(
            Propagation::parse(None, Some(true)),
            Some(Propagation::Orphan)
        );
        assert_eq!(Propagation::parse(Some("Sideways"), None), None);
    }
}
