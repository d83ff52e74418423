//! Fault scenarios S1, S5, S6, S7, S8, S9 and S11 (keepalive) of the reliability checklist
//! (docs/RELIABILITY.md) on the tokio, smol and async-std adapters, and
//! every server-side one (S1, S5 paced and at a rate, S6, S7, S8's slow
//! loris and flood, S9, S11's server side) on a wharf-mio loop, over Unix
//! sockets (Linux: they read /proc and set RLIMIT_NOFILE). The cases are in
//! `tests/conformance/faults.rs`. (The blocking client's side of S2, S3 and
//! S11 is in `tests/conformance_mio.rs`.)
//!
//! The cases run one at a time (they measure this process's descriptors
//! and memory). The heavy ones are `#[ignore]`d: `tests/faults.sh` runs
//! them all.

#![cfg(target_os = "linux")]

#[macro_use]
mod conformance;

use std::sync::Mutex;
use std::time::Duration;

/// Held by every case: fd and RSS counts must not see another test's.
static SERIAL: Mutex<()> = Mutex::new(());

/// Kills per adapter in the default run, and in the heavy (ignored) one.
const KILLS: usize = 20;
const KILLS_HEAVY: usize = 1000;

/// The heavy kill loop's length: `KILLS_HEAVY`, or `WHARF_FAULT_KILLS`
/// (e.g. 10000, the reference's figure).
fn heavy_kills() -> usize {
    env_or("WHARF_FAULT_KILLS", KILLS_HEAVY)
}

/// The heavy S5 rate case: messages per second, seconds, healthy
/// subscribers (`WHARF_S5_RATE`, `WHARF_S5_SECS`, `WHARF_S5_SUBSCRIBERS`).
fn s5_rate() -> u32 {
    env_or("WHARF_S5_RATE", 1000)
}
fn s5_secs() -> u32 {
    env_or("WHARF_S5_SECS", 60)
}
fn s5_subscribers() -> usize {
    env_or("WHARF_S5_SUBSCRIBERS", 100)
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

macro_rules! fault_case {
    ($(#[$attr:meta])* $name:ident, $adapter:ty, $limit_s:expr, |$env:ident| $body:expr) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            conformance::faults::run::<$adapter>(
                module_path!(),
                stringify!($name),
                Duration::from_secs($limit_s),
                |$env| Box::pin($body),
            );
        }
    };
}

macro_rules! faults {
    ($module:ident, $adapter:ty) => {
        mod $module {
            use super::*;
            use crate::conformance::faults as f;

            fault_case!(killed_clients_leave_no_trace, $adapter, 120, |env| f::killed_clients_leave_no_trace(
                env, KILLS
            ));
            fault_case!(
                #[ignore = "heavy: 1000 kills; tests/faults.sh runs it"]
                killed_clients_leave_no_trace_1000_times,
                $adapter,
                1800,
                |env| f::killed_clients_leave_no_trace(env, heavy_kills())
            );
            fault_case!(emfile_on_accept_backs_off_and_recovers, $adapter, 120, |env| {
                f::emfile_on_accept_backs_off_and_recovers(env)
            });
            fault_case!(slow_loris_handshakes_neither_block_nor_linger, $adapter, 120, |env| {
                f::slow_loris_handshakes_neither_block_nor_linger(env)
            });
            fault_case!(handshake_flood_is_capped_oldest_first, $adapter, 180, |env| {
                f::handshake_flood_is_capped_oldest_first(env)
            });
            fault_case!(keepalive_closes_a_silent_peer_and_keeps_an_idle_one, $adapter, 60, |env| {
                f::keepalive_closes_a_silent_peer_and_keeps_an_idle_one(env)
            });
            fault_case!(keepalive_client_leaves_a_silent_server_and_stays_with_a_live_one, $adapter, 60, |env| {
                f::keepalive_client_leaves_a_silent_server_and_stays_with_a_live_one(env)
            });
            fault_case!(peer_that_never_reads_is_bounded_then_disconnected, $adapter, 120, |env| {
                f::peer_that_never_reads_is_bounded_then_disconnected(env)
            });
            fault_case!(slow_subscriber_leaves_healthy_ones_and_memory_alone, $adapter, 120, |env| {
                f::slow_subscriber_leaves_healthy_ones_and_memory_alone(env, 20_000)
            });
            fault_case!(
                #[ignore = "heavy: 200,000 messages; tests/faults.sh runs it"]
                slow_subscriber_200k_messages,
                $adapter,
                900,
                |env| f::slow_subscriber_leaves_healthy_ones_and_memory_alone(env, 200_000)
            );
            fault_case!(slow_subscriber_at_a_rate, $adapter, 120, |env| {
                f::slow_subscriber_at_a_rate(env, 4000, 3, 4)
            });
            fault_case!(
                #[ignore = "heavy: a minute at the highest rate sustained here; tests/faults.sh runs it"]
                slow_subscriber_at_the_reference_rate,
                $adapter,
                900,
                |env| f::slow_subscriber_at_a_rate(env, s5_rate(), s5_secs(), s5_subscribers())
            );
            fault_case!(
                #[ignore = "heavy: 10,000 connections; tests/faults.sh runs it"]
                ten_thousand_connections,
                $adapter,
                900,
                |env| f::ten_thousand_connections(env)
            );

            /// Not a test: the peer process of the cases, started by them
            /// (does nothing without its environment variables).
            #[test]
            #[ignore = "peer process of the fault cases; they start it"]
            fn peer() {
                conformance::peer_main::<$adapter>(conformance::Transport::Unix, module_path!());
            }
        }
    };
}

faults!(tokio, conformance::adapters::Tokio);
faults!(smol, conformance::adapters::Smol);
faults!(async_std, conformance::adapters::AsyncStd);

/// The cases that need a server of their own kind, on a wharf-mio loop:
/// the server runs on a thread of the test process (S1, S5, S6, S8, S9,
/// S11) or in a peer process (S7); its clients are tokio clients (their own
/// processes for S1, S5's healthy subscribers at a rate and S6) and
/// bare-core ones (S5's slow subscriber, S8's dribblers and stalled
/// connections, S9's writer, S11's silent peer).
mod wharf_mio {
    use super::*;
    use crate::conformance::faults as f;

    fault_case!(killed_clients_leave_no_trace, conformance::adapters::Tokio, 120, |env| {
        f::mio_killed_clients_leave_no_trace(env, KILLS)
    });
    fault_case!(
        #[ignore = "heavy: 1000 kills; tests/faults.sh runs it"]
        killed_clients_leave_no_trace_1000_times,
        conformance::adapters::Tokio,
        1800,
        |env| f::mio_killed_clients_leave_no_trace(env, heavy_kills())
    );
    fault_case!(emfile_on_accept_backs_off_and_recovers, conformance::adapters::Tokio, 120, |env| {
        f::mio_emfile_on_accept_backs_off_and_recovers(env)
    });
    fault_case!(slow_loris_handshakes_neither_block_nor_linger, conformance::adapters::Tokio, 120, |env| {
        f::mio_slow_loris_handshakes_neither_block_nor_linger(env)
    });
    fault_case!(handshake_flood_is_capped_oldest_first, conformance::adapters::Tokio, 180, |env| {
        f::mio_handshake_flood_is_capped_oldest_first(env)
    });
    fault_case!(keepalive_closes_a_silent_peer_and_keeps_an_idle_one, conformance::adapters::Tokio, 60, |env| {
        f::mio_keepalive_closes_a_silent_peer_and_keeps_an_idle_one(env)
    });
    fault_case!(peer_that_never_reads_is_bounded_then_disconnected, conformance::adapters::Tokio, 120, |env| {
        f::mio_peer_that_never_reads_is_bounded_then_disconnected(env)
    });
    fault_case!(slow_subscriber_leaves_healthy_ones_and_memory_alone, conformance::adapters::Tokio, 120, |env| {
        f::mio_slow_subscriber_leaves_healthy_ones_and_memory_alone(env, 20_000)
    });
    fault_case!(
        #[ignore = "heavy: 200,000 messages; tests/faults.sh runs it"]
        slow_subscriber_200k_messages,
        conformance::adapters::Tokio,
        900,
        |env| f::mio_slow_subscriber_leaves_healthy_ones_and_memory_alone(env, 200_000)
    );
    fault_case!(slow_subscriber_at_a_rate, conformance::adapters::Tokio, 120, |env| {
        f::mio_slow_subscriber_at_a_rate(env, 4000, 3, 4)
    });
    fault_case!(
        #[ignore = "heavy: a minute at the highest rate sustained here; tests/faults.sh runs it"]
        slow_subscriber_at_the_reference_rate,
        conformance::adapters::Tokio,
        900,
        |env| f::mio_slow_subscriber_at_a_rate(env, s5_rate(), s5_secs(), s5_subscribers())
    );
    fault_case!(
        #[ignore = "heavy: 10,000 connections; tests/faults.sh runs it"]
        ten_thousand_connections,
        conformance::adapters::Tokio,
        900,
        |env| f::mio_ten_thousand_connections(env)
    );

    /// Not a test: the peer process of these cases (tokio clients, or the
    /// fd-limited mio loop), started by them.
    #[test]
    #[ignore = "peer process of the fault cases; they start it"]
    fn peer() {
        conformance::peer_main::<conformance::adapters::Tokio>(conformance::Transport::Unix, module_path!());
    }
}
