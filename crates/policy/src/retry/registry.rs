//! Where a retrying tower call finds its policy, once an attempt has failed and not before.
//!
//! A response future that may retry needs the policy's budget and counters, but only when an
//! attempt fails; almost every call succeeds at once and never looks. Holding an `Arc` of the
//! policy in each future would cost two locked atomic operations per call (taken, then let go),
//! more than the rest of the policy put together. So a policy is registered here when it is made,
//! and the futures of calls made while it has other handles carry a [`Key`]: a plain copy, looked
//! up on a failure. A policy dropped while such calls are in flight is not found any more, and
//! those calls keep the result they have.
//!
//! A call made through a service that is its policy's last handle holds the policy instead, and
//! pays the count: the service may be dropped while the call is in flight, and nothing would be
//! left to find.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};

/// A policy's number in a [`Registry`], never given to another: a key made for a policy that is
/// gone finds nothing. One word, so that a future carrying it stays small enough to be passed
/// in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(u64);

/// Policies by [`Key`], held weakly: a registry never keeps a policy alive.
pub(crate) struct Registry<T> {
    policies: RwLock<Policies<T>>,
}

struct Policies<T> {
    /// Live policies only: each is removed when it is dropped.
    by_key: BTreeMap<Key, Weak<T>>,
    /// The next policy's key.
    next: u64,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Registry<T> {
        Registry {
            policies: RwLock::new(Policies {
                by_key: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    /// Registers `policy`; the caller removes it with the key when the policy is dropped.
    pub(crate) fn insert(&self, policy: Weak<T>) -> Key {
        // A panic cannot leave the map half-updated: the key is taken before the insertion,
        // and an unused key is only a number skipped.
        let mut policies = self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = Key(policies.next);
        policies.next += 1;
        policies.by_key.insert(key, policy);
        key
    }

    /// The policy `key` was made for, if it is still alive.
    pub(crate) fn get(&self, key: Key) -> Option<Arc<T>> {
        let policies = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        policies.by_key.get(&key)?.upgrade()
    }

    /// Forgets the policy of `key`.
    pub(crate) fn remove(&self, key: Key) {
        let mut policies = self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        policies.by_key.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_live_policy_and_not_a_dropped_one() {
        let registry = Registry::new();
        let policy = Arc::new("a");
        let key = registry.insert(Arc::downgrade(&policy));
        assert_eq!(registry.get(key).as_deref(), Some(&"a"));
        drop(policy);
        assert_eq!(registry.get(key), None, "a registry keeps nothing alive");
    }

    #[test]
    fn an_old_key_finds_nothing_after_its_policy_is_removed() {
        let registry = Registry::new();
        let a = Arc::new("a");
        let old = registry.insert(Arc::downgrade(&a));
        registry.remove(old);
        let b = Arc::new("b");
        let new = registry.insert(Arc::downgrade(&b));
        assert_ne!(new, old, "keys are never given twice");
        assert_eq!(registry.get(old), None);
        assert_eq!(registry.get(new).as_deref(), Some(&"b"));
        // Removing by the old key leaves the new policy in place.
        registry.remove(old);
        assert_eq!(registry.get(new).as_deref(), Some(&"b"));
        registry.remove(new);
        assert_eq!(registry.get(new), None);
    }

    #[test]
    fn removed_policies_leave_nothing_behind() {
        let registry = Registry::new();
        let policy = Arc::new(());
        for _ in 0..1000 {
            let key = registry.insert(Arc::downgrade(&policy));
            registry.remove(key);
        }
        let policies = registry.policies.read().unwrap();
        assert!(policies.by_key.is_empty());
    }
}
