//! Where a retrying tower call finds its policy, once an attempt has failed and not before.
//!
//! A response future that may retry needs the policy's budget and counters, but only when an
//! attempt fails; almost every call succeeds at once and never looks. Holding an `Arc` of the
//! policy in each future would cost two locked atomic operations per call (taken, then let go),
//! more than the rest of the policy put together. So a policy is registered here when it is made,
//! and its futures carry a [`Key`]: a plain copy, looked up on a failure. A policy dropped while
//! calls are still in flight is not found any more, and those calls keep the result they have.

use std::sync::{Arc, PoisonError, RwLock, Weak};

/// A policy's place in a [`Registry`]; `generation` tells the policy a key was made for from a
/// later one given the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    slot: usize,
    generation: u64,
}

/// Policies by [`Key`], held weakly: a registry never keeps a policy alive.
pub(crate) struct Registry<T> {
    slots: RwLock<Slots<T>>,
}

struct Slots<T> {
    entries: Vec<Entry<T>>,
    /// Slots of removed policies, for the next ones.
    free: Vec<usize>,
    /// Never reused: a key outlives any number of policies in its slot.
    next_generation: u64,
}

struct Entry<T> {
    generation: u64,
    policy: Weak<T>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Registry<T> {
        Registry {
            slots: RwLock::new(Slots {
                entries: Vec::new(),
                free: Vec::new(),
                next_generation: 0,
            }),
        }
    }

    /// Registers `policy`; the caller removes it with the key when the policy is dropped.
    pub(crate) fn insert(&self, policy: Weak<T>) -> Key {
        // A panic cannot leave the slots half-updated: every change below is one assignment.
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let generation = slots.next_generation;
        slots.next_generation += 1;
        let entry = Entry { generation, policy };
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.entries[slot] = entry;
                slot
            }
            None => {
                slots.entries.push(entry);
                slots.entries.len() - 1
            }
        };
        Key { slot, generation }
    }

    /// The policy `key` was made for, if it is still alive.
    pub(crate) fn get(&self, key: Key) -> Option<Arc<T>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let entry = slots.entries.get(key.slot)?;
        if entry.generation != key.generation {
            return None;
        }
        entry.policy.upgrade()
    }

    /// Frees the slot of `key`, unless it already went to another policy.
    pub(crate) fn remove(&self, key: Key) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = slots.entries.get_mut(key.slot) else {
            return;
        };
        if entry.generation != key.generation {
            return;
        }
        entry.policy = Weak::new();
        // No key of a later policy can match this generation: the slot reads as empty.
        entry.generation = u64::MAX;
        slots.free.push(key.slot);
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
    fn a_reused_slot_does_not_answer_an_old_key() {
        let registry = Registry::new();
        let a = Arc::new("a");
        let old = registry.insert(Arc::downgrade(&a));
        registry.remove(old);
        let b = Arc::new("b");
        let new = registry.insert(Arc::downgrade(&b));
        assert_eq!(new.slot, old.slot, "the freed slot is reused");
        assert_eq!(registry.get(old), None);
        assert_eq!(registry.get(new).as_deref(), Some(&"b"));
        // Removing by the old key leaves the new policy in place.
        registry.remove(old);
        assert_eq!(registry.get(new).as_deref(), Some(&"b"));
        registry.remove(new);
        assert_eq!(registry.get(new), None);
    }

    #[test]
    fn slots_are_reused_rather_than_grown() {
        let registry = Registry::new();
        let policy = Arc::new(());
        for _ in 0..1000 {
            let key = registry.insert(Arc::downgrade(&policy));
            registry.remove(key);
        }
        let slots = registry.slots.read().unwrap();
        assert_eq!(slots.entries.len(), 1);
    }
}
