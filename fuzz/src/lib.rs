//! Harness code shared by the `wharf-core` fuzz targets in `fuzz_targets/`.
//!
//! Each target is a thin `fuzz_target!` wrapper around one `run` function
//! here, so the same logic can be replayed from tests (`tests/replay.rs`)
//! and seed inputs can be generated from the same definitions
//! (`examples/gen_seeds.rs`).

// `Config` and `BrokerConfig` are `#[non_exhaustive]`: outside the core they
// can only be built from `Default` and then assigned.
#![allow(clippy::field_reassign_with_default)]

pub mod frame;
pub mod handshake;
pub mod knobs;
pub mod outbound;
pub mod peer;
pub mod pubsub;
pub mod session;

use std::sync::OnceLock;
use std::time::Instant;

/// One fixed origin of time per process, so runs differ only by their input.
pub fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// 64 KiB of zeros: payloads are slices of it (no allocation per step).
pub static ZEROS: [u8; 65536] = [0; 65536];

/// A payload of `len` zero bytes (capped at 64 KiB).
pub fn zeros(len: usize) -> bytes::Bytes {
    bytes::Bytes::from_static(&ZEROS[..len.min(ZEROS.len())])
}

/// `WHARF_FUZZ_LAX=1` turns off the stricter, design-level checks (the
/// "shadow" accounting of bytes held by undelivered events, see
/// `session::Driver`), so a long run can keep searching for other bugs once
/// that finding is known.
pub fn lax() -> bool {
    static LAX: OnceLock<bool> = OnceLock::new();
    *LAX.get_or_init(|| std::env::var_os("WHARF_FUZZ_LAX").is_some_and(|v| v != "0"))
}

/// `WHARF_FUZZ_TRACE=1` prints every step and event (for reading a crash).
pub fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("WHARF_FUZZ_TRACE").is_some_and(|v| v != "0"))
}
