//! What the reconnecting clients' cases (S3) share, async and blocking:
//! the policy they reconnect with and the check of the waits it recorded.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::time::Duration;

use wharf::core::{ReconnectAttempt, ReconnectPolicy};

/// Short waits (10 ms, doubling, capped at 80 ms, half random) from a
/// fixed seed.
pub fn restart_policy() -> ReconnectPolicy {
    ReconnectPolicy::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(80))
        .factor(2.0)
        .jitter(0.5)
        .seed(7)
}

/// The backoff `policy` recorded over one outage of at least 5 failed
/// attempts: attempts 1..n, each base the capped exponential one, growing
/// until the cap, each delay within [base/2, base].
pub fn assert_backoff_grows_under_the_cap(attempts: &[ReconnectAttempt], policy: &ReconnectPolicy) {
    assert!(attempts.len() >= 5, "{attempts:?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.attempt as usize, i + 1, "{attempts:?}");
        assert_eq!(a.base, policy.base_delay(a.attempt), "{a:?}");
        assert!(a.delay <= a.base && a.base <= policy.max_delay, "over the cap: {a:?}");
        assert!(a.delay >= a.base / 2, "{a:?}");
    }
    for w in attempts.windows(2) {
        assert!(w[1].base > w[0].base || w[1].base == policy.max_delay, "the base delay must grow: {w:?}");
    }
    assert!(attempts[4].delay > attempts[0].delay, "{attempts:?}");
}
