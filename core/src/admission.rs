//! Server-wide admission limits shared by every server loop:
//! [`HandshakeGate`], a bound on connections that were accepted but have
//! not sent their HELLO yet, and [`PerUserLimit`], a bound on one local
//! user's connections.
//!
//! A peer that connects and then sends nothing (or dribbles its HELLO a
//! byte at a time) costs the server a descriptor and a connection until
//! `handshake_timeout`. Without a bound, a flood of such peers holds as
//! many descriptors as the process may open. The gate counts the peers
//! still owing their HELLO; when one more arrives while `limit` are
//! waiting, the gate names the **oldest** waiting one, which the server
//! closes. The newcomer is kept: a legitimate local client sends its HELLO
//! within microseconds of connecting, so it leaves the gate long before it
//! could become the oldest, while stalled peers age and are evicted first.
//! Peers past the HELLO (waiting for an auth hook, or established) are not
//! counted: they are bounded by `max_connections`.
//!
//! The key is the server's own connection key (a connection id, a token).
//!
//! ```
//! use wharf_core::HandshakeGate;
//!
//! let mut gate = HandshakeGate::new(2);
//! assert_eq!(gate.accepted(1), None);
//! assert_eq!(gate.accepted(2), None);
//! gate.hello_received(2); // 2 is past its HELLO: no longer counted
//! assert_eq!(gate.accepted(3), None);
//! assert_eq!(gate.accepted(4), Some(1)); // the oldest stalled peer goes
//! assert_eq!(gate.waiting(), 2);
//! assert_eq!(gate.evicted(), 1);
//! ```

use std::collections::VecDeque;

/// The default bound on a server's connections (each server loop's
/// `max_connections`): an idle connection costs a few KiB, so the bound
/// mostly guards file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16 * 1024;

/// The default bound on connections owing their HELLO (see [`HandshakeGate`]).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;

/// Tracks accepted connections that have not sent their HELLO yet, oldest
/// first, and picks which one to close when more than the limit wait.
///
/// Every operation is `O(limit)` at worst; the gate never holds more than
/// `limit` keys.
#[derive(Clone, Debug)]
pub struct HandshakeGate<K> {
    limit: usize,
    waiting: VecDeque<K>,
    evicted: u64,
}

impl<K: Copy + PartialEq> HandshakeGate<K> {
    /// A gate letting at most `limit` connections wait for their HELLO at
    /// once (a `limit` of 0 is taken as 1: the newest always stays).
    pub fn new(limit: usize) -> Self {
        HandshakeGate { limit: limit.max(1), waiting: VecDeque::new(), evicted: 0 }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A connection was accepted. Returns the key of the oldest waiting
    /// connection if the gate was full: the server must close it (it is
    /// no longer tracked).
    pub fn accepted(&mut self, key: K) -> Option<K> {
        let evict = if self.waiting.len() >= self.limit {
            self.evicted += 1;
            self.waiting.pop_front()
        } else {
            None
        };
        self.waiting.push_back(key);
        evict
    }

    /// The connection's HELLO arrived: it no longer counts. Unknown keys
    /// are ignored.
    pub fn hello_received(&mut self, key: K) {
        self.forget(key);
    }

    /// The connection ended (before or after its HELLO). Unknown keys are
    /// ignored.
    pub fn forget(&mut self, key: K) {
        if let Some(i) = self.waiting.iter().position(|k| *k == key) {
            self.waiting.remove(i);
        }
    }

    /// Whether `key` is still owing its HELLO.
    pub fn is_waiting(&self, key: K) -> bool {
        self.waiting.contains(&key)
    }

    /// Connections owing their HELLO now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Connections named for eviction since the gate was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Counts a server's established connections per user (the uid the
/// kernel reports for a Unix-socket peer) and refuses one more past the
/// limit: one local user cannot take every connection slot from the
/// others. Peers without a uid (TCP, named pipes) are not counted.
///
/// ```
/// use wharf_core::PerUserLimit;
///
/// let mut per_user = PerUserLimit::new(2);
/// assert!(per_user.try_admit(Some(1000)));
/// assert!(per_user.try_admit(Some(1000)));
/// assert!(!per_user.try_admit(Some(1000)), "a third for uid 1000 is refused");
/// assert!(per_user.try_admit(Some(1001)), "another user still gets in");
/// per_user.release(Some(1000));
/// assert!(per_user.try_admit(Some(1000)));
/// assert!(per_user.try_admit(None), "no uid: not counted");
/// ```
#[derive(Clone, Debug)]
pub struct PerUserLimit {
    limit: usize,
    counts: std::collections::HashMap<u32, usize>,
}

impl PerUserLimit {
    /// At most `limit` connections per uid.
    pub fn new(limit: usize) -> Self {
        PerUserLimit { limit, counts: std::collections::HashMap::new() }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts one more connection of `uid` if it is under the limit;
    /// `false` (nothing counted) if it is not. `None` is always admitted
    /// and not counted.
    pub fn try_admit(&mut self, uid: Option<u32>) -> bool {
        let Some(uid) = uid else { return true };
        let n = self.counts.entry(uid).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                self.counts.remove(&uid);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// One connection of `uid` that [`try_admit`](Self::try_admit)
    /// counted has ended.
    pub fn release(&mut self, uid: Option<u32>) {
        let Some(uid) = uid else { return };
        if let Some(n) = self.counts.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&uid);
            }
        }
    }

    /// Connections counted for `uid` now.
    pub fn count(&self, uid: u32) -> usize {
        self.counts.get(&uid).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_waiting_only_when_full() {
        let mut g = HandshakeGate::new(3);
        for k in 0..3 {
            assert_eq!(g.accepted(k), None);
        }
        g.forget(0);
        assert_eq!(g.accepted(3), None, "room was made by a close");
        assert_eq!(g.accepted(4), Some(1));
        assert_eq!(g.accepted(5), Some(2));
        assert!(!g.is_waiting(1) && g.is_waiting(5));
        assert_eq!((g.waiting(), g.evicted()), (3, 2));
        g.hello_received(42); // unknown: ignored
        assert_eq!(g.waiting(), 3);
    }

    #[test]
    fn per_user_counts_return_to_zero() {
        let mut p = PerUserLimit::new(1);
        assert!(p.try_admit(Some(5)));
        assert!(!p.try_admit(Some(5)));
        p.release(Some(5));
        assert_eq!(p.count(5), 0);
        assert!(p.counts.is_empty(), "no entry left for a user with no connection");
        let mut zero = PerUserLimit::new(0);
        assert!(!zero.try_admit(Some(1)));
        assert!(zero.counts.is_empty());
        p.release(Some(99)); // unknown: ignored
    }

    #[test]
    fn a_zero_limit_still_keeps_the_newest() {
        let mut g = HandshakeGate::new(0);
        assert_eq!(g.limit(), 1);
        assert_eq!(g.accepted(7), None);
        assert_eq!(g.accepted(8), Some(7));
        assert!(g.is_waiting(8));
    }
}
