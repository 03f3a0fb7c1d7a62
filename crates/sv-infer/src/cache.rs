//! A content-hash cache of answers: SHA-256 of the image bytes → answer, with a time to live
//! and a size bound (the oldest entry goes first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded TTL cache keyed by content hash.
pub struct ScoreCache<V: Clone> {
    ttl: Duration,
    max: usize,
    inner: Mutex<(HashMap<[u8; 32], (V, Instant)>, VecDeque<([u8; 32], Instant)>)>,
}

impl<V: Clone> ScoreCache<V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max, inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// The cached value of `key`, if present and younger than the TTL.
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let g = self.inner.lock().unwrap();
        g.0.get(key).filter(|(_, t)| t.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }

    /// Insert, evicting expired entries and then the oldest beyond the bound.
    pub fn put(&self, key: [u8; 32], v: V) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap();
        let (map, order) = &mut *g;
        map.insert(key, (v, now));
        order.push_back((key, now));
        while let Some(&(k, t)) = order.front() {
            let stale = t.elapsed() >= self.ttl;
            if !(stale || map.len() > self.max) {
                break;
            }
            order.pop_front();
            // Only drop the map entry if this queue slot is its latest insertion.
            if map.get(&k).is_some_and(|(_, ti)| *ti == t) {
                map.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_and_ttl_hold() {
        let c = ScoreCache::new(Duration::from_millis(50), 2);
        c.put([1; 32], 0.1f32);
        c.put([2; 32], 0.2);
        c.put([3; 32], 0.3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 32]), None, "oldest evicted");
        assert_eq!(c.get(&[3; 32]), Some(0.3));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&[3; 32]), None, "expired");
        c.put([4; 32], 0.4);
        assert_eq!(c.len(), 1, "expired entries are dropped on insert");
    }
}
