//! A small bounded LRU cache keyed by host offset, with dirty tracking.

use std::collections::HashMap;

/// One cached table.
#[derive(Debug)]
pub struct Slot<T> {
    pub val: T,
    pub dirty: bool,
    used: u64,
}

/// Bounded LRU cache. Eviction is the owner's job (it must write dirty victims first).
#[derive(Debug)]
pub struct Lru<T> {
    map: HashMap<u64, Slot<T>>,
    cap: usize,
    tick: u64,
}

impl<T> Lru<T> {
    pub fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            cap: cap.max(2),
            tick: 0,
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Slot<T>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.map.get_mut(&key)?;
        slot.used = tick;
        Some(slot)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    pub fn insert(&mut self, key: u64, val: T, dirty: bool) {
        self.tick += 1;
        self.map.insert(
            key,
            Slot {
                val,
                dirty,
                used: self.tick,
            },
        );
    }

    /// The least recently used key, if the cache is full.
    pub fn victim(&self) -> Option<u64> {
        if self.map.len() < self.cap {
            return None;
        }
        self.map.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
    }

    pub fn remove(&mut self, key: u64) -> Option<Slot<T>> {
        self.map.remove(&key)
    }

    /// Keys of dirty entries, in ascending order (sequential writes).
    pub fn dirty_keys(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn any_dirty(&self) -> bool {
        self.map.values().any(|s| s.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut c = Lru::new(2);
        c.insert(1, "a", false);
        c.insert(2, "b", false);
        assert!(c.get_mut(1).is_some());
        assert_eq!(c.victim(), Some(2));
        c.remove(2);
        assert_eq!(c.victim(), None);
    }
}
