//! Figures from samples: round-trip percentiles, calls per second, and the
//! summary of one figure across rounds.

use std::time::{Duration, Instant};

/// One named figure a client reports, e.g. `("p50_ns", 9_812.0)`.
pub type Metric = (String, f64);

/// Round-trip times of one client's measured calls, one after another.
pub struct Latencies {
    samples: Vec<u64>,
    start: Instant,
    last: Instant,
}

impl Latencies {
    /// Starts the measured period now.
    pub fn start() -> Self {
        let now = Instant::now();
        Latencies { samples: Vec::with_capacity(1 << 20), start: now, last: now }
    }

    /// Records one call that began at `t0` and ended at `t1`.
    #[inline]
    pub fn record(&mut self, t0: Instant, t1: Instant) {
        self.samples.push((t1 - t0).as_nanos() as u64);
        self.last = t1;
    }

    /// p50, p99, p99.9 and the maximum in nanoseconds, the number of
    /// calls, and calls per second over the measured period (first call's
    /// start to last call's end: back to back, so one call in flight).
    pub fn finish(mut self) -> Vec<Metric> {
        self.samples.sort_unstable();
        let s = &self.samples;
        let elapsed = (self.last - self.start).as_secs_f64();
        let rate = if elapsed > 0.0 { s.len() as f64 / elapsed } else { 0.0 };
        vec![
            ("p50_ns".into(), percentile(s, 0.50)),
            ("p99_ns".into(), percentile(s, 0.99)),
            ("p999_ns".into(), percentile(s, 0.999)),
            ("max_ns".into(), s.last().copied().unwrap_or(0) as f64),
            ("calls".into(), s.len() as f64),
            ("calls_per_s".into(), rate),
        ]
    }
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Calls counted between two instants.
pub fn rate(calls: u64, from: Instant, to: Instant) -> Vec<Metric> {
    let secs = (to - from).as_secs_f64();
    vec![("calls".into(), calls as f64), ("calls_per_s".into(), if secs > 0.0 { calls as f64 / secs } else { 0.0 })]
}

/// Payload MiB per second from a client's `calls_per_s`, with
/// `bytes_per_call` payload bytes moved per call.
pub fn mib_per_s(metrics: &[Metric], bytes_per_call: usize) -> Metric {
    let calls = metrics.iter().find(|(k, _)| k == "calls_per_s").map_or(0.0, |(_, v)| *v);
    ("mib_per_s".into(), calls * bytes_per_call as f64 / (1024.0 * 1024.0))
}

/// How long a client warms up and then measures.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Calls made before measuring (connection set up, caches and
    /// allocator warm, CPU frequency settled).
    pub warmup: Duration,
    /// The measured period.
    pub measure: Duration,
}

/// One figure across rounds.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Median of the rounds (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
    /// Rounds that produced the figure.
    pub n: usize,
}

impl Spread {
    /// Summarises `values` (NaNs ignored); `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1], n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&s, 0.5), 500.0);
        assert_eq!(percentile(&s, 0.99), 990.0);
        assert_eq!(percentile(&s, 0.999), 999.0);
        assert_eq!(percentile(&s, 1.0), 1000.0);
        assert_eq!(percentile(&[7], 0.999), 7.0);
    }

    #[test]
    fn spread() {
        let s = Spread::of(&[3.0, 1.0, f64::NAN, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert!(Spread::of(&[f64::NAN]).is_none());
    }
}
