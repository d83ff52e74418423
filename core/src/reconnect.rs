//! When a reconnecting client tries again: the policy, the sequence of
//! delays it gives (capped exponential backoff with jitter, never less than
//! the server's hint), and when to stop. Pure arithmetic over a seeded
//! generator: no clock, no sleeping. The clients that reconnect
//! (wharf-async's and wharf-mio's `ReconnectingClient`) measure the time
//! and wait; this module tells them how long.

use std::time::Duration;

use crate::error::ConnectionError;
use crate::wire::Code;

/// How many attempt records a reconnecting client keeps for its
/// `attempts()` (the most recent ones).
pub const KEPT_ATTEMPTS: usize = 64;

/// When and how often a reconnecting client tries to connect again.
///
/// The delay before reconnection attempt `n` (1-based, counted from the
/// moment the connection ended, reset by every successful connection) is
/// `base(n) = min(max_delay, initial_delay × factor^(n-1))`, minus a random
/// share of up to `jitter × base(n)` ("equal jitter": with the default 0.5,
/// a delay lies in `[base/2, base]`), so that many clients of one restarted
/// server do not come back in lockstep. The delay is never less than the
/// `reconnect_after` hint of the server's GOODBYE (or handshake rejection),
/// even when the hint is above `max_delay`.
///
/// Defaults: `initial_delay` 100 ms, `max_delay` 10 s, `factor` 2.0,
/// `jitter` 0.5, no `max_attempts` (try forever), a random seed per client.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The base delay before the first attempt.
    pub initial_delay: Duration,
    /// The cap on the base delay (the hint may exceed it).
    pub max_delay: Duration,
    /// How much the base delay grows per failed attempt (at least 1).
    pub factor: f64,
    /// The share of the base delay that is random, 0 to 1.
    pub jitter: f64,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
    /// The jitter generator's seed (`None`: a different one per client).
    pub seed: Option<u64>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: 0.5,
            max_attempts: None,
            seed: None,
        }
    }
}

impl ReconnectPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the base delay before the first attempt.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the cap on the base delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the growth factor (values below 1 are taken as 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets the random share of each delay (clamped to 0..=1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Gives up after `attempts` failed attempts in a row.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Fixes the jitter generator's seed (for reproducible delays).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The base delay (before jitter) of attempt `attempt` (1-based).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() { self.factor.max(1.0) } else { 1.0 };
        let exp = attempt.saturating_sub(1).min(1024) as i32;
        let secs = self.initial_delay.as_secs_f64() * factor.powi(exp);
        let max = self.max_delay.as_secs_f64();
        if secs.is_finite() && secs < max { Duration::from_secs_f64(secs) } else { self.max_delay }
    }

    /// Whether a client that has failed `failed` attempts in a row stops
    /// (its `max_attempts` reached).
    pub fn gives_up_after(&self, failed: u32) -> bool {
        self.max_attempts.is_some_and(|max| failed >= max)
    }
}

/// The delays of one client's policy: the policy plus its jitter generator.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: ReconnectPolicy,
    rng: SplitMix64,
}

impl Backoff {
    /// The delays of `policy`, its generator seeded with the policy's seed
    /// or, without one, a seed that differs per client and per process.
    pub fn new(policy: ReconnectPolicy) -> Backoff {
        let seed = policy.seed.unwrap_or_else(random_seed);
        Backoff { policy, rng: SplitMix64(seed) }
    }

    /// The policy.
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// The wait before attempt `attempt` (1-based): its base delay, minus
    /// jitter, raised to `hint` (the server's `reconnect_after`) if the
    /// hint is longer. Each call draws from the generator.
    pub fn next(&mut self, attempt: u32, hint: Option<Duration>) -> ReconnectAttempt {
        let base = self.policy.base_delay(attempt);
        let jitter = if self.policy.jitter.is_finite() { self.policy.jitter.clamp(0.0, 1.0) } else { 0.0 };
        let cut = base.as_secs_f64() * jitter * self.rng.next_f64();
        let jittered = base.saturating_sub(Duration::from_secs_f64(cut));
        let delay = match hint {
            Some(h) if h > jittered => h,
            _ => jittered,
        };
        ReconnectAttempt { attempt, base, delay, hint }
    }
}

/// A small, fast, non-cryptographic generator (Steele, Lea, Flood:
/// SplitMix64): enough to spread reconnecting clients apart.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs per client and per process: std's per-process
/// random hash keys (which the core's hash maps use already) and a counter.
/// No clock: the core reads none.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// The most recent reconnection attempts of one client (at most
/// [`KEPT_ATTEMPTS`], oldest first), as its `attempts()` shows them.
#[derive(Clone, Debug, Default)]
pub struct AttemptLog(std::collections::VecDeque<ReconnectAttempt>);

impl AttemptLog {
    /// Records `attempt`, forgetting the oldest one if the log is full.
    pub fn push(&mut self, attempt: ReconnectAttempt) {
        if self.0.len() == KEPT_ATTEMPTS {
            self.0.pop_front();
        }
        self.0.push_back(attempt);
    }

    /// The attempts kept, oldest first.
    pub fn to_vec(&self) -> Vec<ReconnectAttempt> {
        self.0.iter().copied().collect()
    }
}

/// One reconnection attempt's wait, as the policy computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectAttempt {
    /// Which attempt since the connection ended (1-based).
    pub attempt: u32,
    /// The capped exponential delay, before jitter.
    pub base: Duration,
    /// The delay waited before the attempt: `base` minus jitter, raised to
    /// the hint if the hint is longer.
    pub delay: Duration,
    /// The server's `reconnect_after` hint that applied, if any.
    pub hint: Option<Duration>,
}

/// Where a reconnecting client is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected; `generation` counts connections (1 is the first).
    Connected {
        /// Which connection this is.
        generation: u64,
    },
    /// The connection ended; waiting `delay`, then making attempt `attempt`
    /// (the state stays until that attempt succeeds or the next wait starts).
    Reconnecting {
        /// The attempt number since the connection ended (1-based).
        attempt: u32,
        /// The delay before this attempt.
        delay: Duration,
    },
    /// The policy's `max_attempts` failed in a row (or the server refused
    /// the handshake for good); nothing is retried any more.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The client was closed (or every handle to it was dropped).
    Closed,
}

impl ConnectionState {
    /// Whether it is [`Connected`](Self::Connected).
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// Whether it is final ([`GaveUp`](Self::GaveUp) or [`Closed`](Self::Closed)).
    pub fn is_final(&self) -> bool {
        matches!(self, ConnectionState::GaveUp { .. } | ConnectionState::Closed)
    }
}

/// Whether connecting again cannot help after a connection attempt ended
/// with `error`: the server refused this client's credentials
/// (`AUTH_FAILED`) or shares no protocol version with it. A reconnecting
/// client gives up at once on these.
pub fn is_permanent(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::Rejected { code, .. } => *code == Code::AUTH_FAILED,
        ConnectionError::VersionMismatch { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn base_delays_grow_by_the_factor_up_to_the_cap() {
        let p = ReconnectPolicy::new().initial_delay(ms(10)).max_delay(ms(100)).factor(2.0);
        let bases: Vec<Duration> = (1..=7).map(|a| p.base_delay(a)).collect();
        assert_eq!(bases, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100), ms(100)]);
        // Huge attempt numbers saturate at the cap instead of overflowing.
        assert_eq!(p.base_delay(u32::MAX), ms(100));
        // A factor below 1 is taken as 1.
        assert_eq!(p.clone().factor(0.1).base_delay(5), ms(10));
    }

    #[test]
    fn jittered_sequence_is_deterministic_with_a_seed_and_stays_in_bounds() {
        let p = ReconnectPolicy::new().initial_delay(ms(10)).max_delay(ms(100)).factor(2.0).jitter(0.5).seed(42);
        let run = |p: &ReconnectPolicy| -> Vec<ReconnectAttempt> {
            let mut b = Backoff::new(p.clone());
            (1..=10).map(|a| b.next(a, None)).collect()
        };
        let one = run(&p);
        assert_eq!(one, run(&p), "the same seed gives the same delays");
        assert_ne!(one, run(&p.clone().seed(43)), "another seed gives other delays");
        for r in &one {
            assert_eq!(r.base, p.base_delay(r.attempt));
            assert!(r.delay <= r.base && r.delay <= ms(100), "{r:?}");
            assert!(r.delay >= r.base / 2, "equal jitter keeps at least half: {r:?}");
        }
        // With factor 2 and jitter 0.5 the delays never shrink below the cap.
        for w in one.windows(2).take(3) {
            assert!(w[1].delay >= w[0].delay, "{w:?}");
        }
        assert!(one[3].delay > one[0].delay);
        // The jitter really varies the delays at the cap.
        let capped: std::collections::HashSet<Duration> = one[5..].iter().map(|r| r.delay).collect();
        assert!(capped.len() > 1, "{one:?}");
    }

    #[test]
    fn no_jitter_gives_the_base_and_a_hint_is_a_lower_bound() {
        let p = ReconnectPolicy::new().initial_delay(ms(10)).max_delay(ms(50)).jitter(0.0).seed(1);
        let mut b = Backoff::new(p);
        assert_eq!(b.next(1, None).delay, ms(10));
        assert_eq!(b.next(2, Some(ms(5))).delay, ms(20), "a shorter hint changes nothing");
        let r = b.next(3, Some(ms(700)));
        assert_eq!(
            (r.delay, r.hint, r.base),
            (ms(700), Some(ms(700)), ms(40)),
            "a longer hint wins, even over the cap"
        );
    }

    #[test]
    fn the_attempt_log_keeps_the_most_recent() {
        let mut log = AttemptLog::default();
        let mut b = Backoff::new(ReconnectPolicy::new().seed(7));
        for a in 1..=(KEPT_ATTEMPTS as u32 + 3) {
            log.push(b.next(a, None));
        }
        let kept: Vec<u32> = log.to_vec().iter().map(|r| r.attempt).collect();
        assert_eq!(kept, (4..=KEPT_ATTEMPTS as u32 + 3).collect::<Vec<_>>());
    }

    #[test]
    fn unseeded_clients_get_different_generators() {
        let a = Backoff::new(ReconnectPolicy::new()).rng.0;
        let b = Backoff::new(ReconnectPolicy::new()).rng.0;
        assert_ne!(a, b);
    }

    #[test]
    fn max_attempts_and_permanent_errors_end_the_retries() {
        let p = ReconnectPolicy::new().max_attempts(3);
        assert!(!p.gives_up_after(2) && p.gives_up_after(3));
        assert!(!ReconnectPolicy::new().gives_up_after(u32::MAX), "no max_attempts: never");
        let rejected = |code| ConnectionError::Rejected { code, reason: "no".into(), retry_after: None };
        assert!(is_permanent(&rejected(Code::AUTH_FAILED)));
        assert!(!is_permanent(&rejected(Code::TOO_MANY_CONNECTIONS)), "a full server may have room later");
        assert!(!is_permanent(&ConnectionError::PeerClosed {
            code: Code::SHUTTING_DOWN,
            message: "bye".into(),
            reconnect_after: None
        }));
    }
}
