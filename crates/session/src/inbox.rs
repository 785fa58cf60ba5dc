//! Inbox: remembers the ids of recently executed commands so that a QoS 1
//! redelivery (same command, new PUBLISH) is acknowledged but not executed a
//! second time. Bounded: the oldest id is forgotten first.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxSnapshot {
    pub ids: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Inbox {
    capacity: usize,
    ids: VecDeque<String>,
}

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            capacity: capacity.max(1),
            ids: VecDeque::new(),
        }
    }

    pub fn restore(capacity: usize, snap: InboxSnapshot) -> Self {
        let mut i = Inbox::new(capacity);
        for id in snap.ids {
            i.remember(id);
        }
        i
    }

    pub fn snapshot(&self) -> InboxSnapshot {
        InboxSnapshot {
            ids: self.ids.iter().cloned().collect(),
        }
    }

    pub fn seen(&self, id: &str) -> bool {
        self.ids.iter().any(|s| s == id)
    }

    /// Returns false if the id was already known.
    pub fn remember(&mut self, id: String) -> bool {
        if self.seen(&id) {
            return false;
        }
        if self.ids.len() >= self.capacity {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
        true
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    #[test]
    fn dedupes_and_forgets_oldest() {
        let mut i = Inbox::new(2);
        assert!(i.remember("a".into()));
        assert!(!i.remember("a".into()));
        assert!(i.remember("b".into()));
        assert!(i.remember("c".into()));
        assert!(!i.seen("a"));
        let r = Inbox::restore(2, i.snapshot());
        assert!(r.seen("b") && r.seen("c"));
    }

    proptest! {
        #[test]
        fn bounded_and_recent_ids_always_known(cap in 1usize..32, ids in proptest::collection::vec(0u32..50, 0..300)) {
            let mut i = Inbox::new(cap);
            for (n, id) in ids.iter().enumerate() {
                let key = format!("{}", id);
                i.remember(key.clone());
                prop_assert!(i.len() <= cap);
                prop_assert!(i.seen(&key));
                let _ = n;
            }
        }
    }
}
