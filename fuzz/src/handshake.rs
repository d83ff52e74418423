//! `handshake_server` / `handshake_client`: raw bytes from a peer into a
//! fresh connection, nothing prepended.
//!
//! The bytes go in with a fixed cycle of read sizes; until the handshake
//! completes, reads stop at the end of the first frame (so a server answers
//! HELLO before anything else arrives, as a real client waits for WELCOME). Between reads the
//! driver polls events and reacts like an eager application (accepts the
//! handshake, answers calls, accepts subscriptions, acknowledges publishes,
//! consumes stream data) and writes everything queued. At the end time moves
//! past every timer and EOF arrives. All `session` invariants are checked
//! after every read.

use wharf_core::Role;

use crate::knobs::handshake_config;
use crate::session::{Advance, Driver, React, Step, Tx};

/// Read sizes once established.
const CHUNKS: [u16; 8] = [16, 1, 64, 3, 4096, 7, 256, 2];

/// Runs one input against a connection with `role`.
pub fn run(role: Role, data: &[u8]) {
    let mut d = Driver::new(role, handshake_config());
    let mut wire = data;
    let mut none: &[u8] = &[];
    let poll = Step::Poll { max: 0, react: React::EAGER.0 };
    let write = Step::Transmit(Tx::All);
    if role == Role::Client {
        // The client's preamble and HELLO.
        d.step(&write, &mut none);
    }
    let mut i = 0;
    while !wire.is_empty() && !d.conn.is_closed() {
        if !d.conn.wants_read() {
            d.step(&poll, &mut none);
            d.step(&write, &mut none);
            if !d.conn.wants_read() {
                break;
            }
        }
        i += 1;
        let mut n = usize::from(CHUNKS[i % CHUNKS.len()]);
        if !d.conn.is_established() {
            // Never past the end of the first frame before the handshake is
            // answered: a real client waits for WELCOME (and a server sends
            // nothing before it).
            let consumed = data.len() - wire.len();
            let end = match data.get(8..12) {
                Some(len) => 24 + u32::from_le_bytes(len.try_into().unwrap()) as usize,
                None => 24,
            };
            n = n.min(end.saturating_sub(consumed)).max(1);
        }
        d.step(&Step::Feed((n - 1) as u16), &mut wire);
        d.step(&poll, &mut none);
        if i % 3 == 0 {
            d.step(&write, &mut none);
        }
    }
    d.step(&Step::Advance(Advance::Secs(30)), &mut none);
    d.step(&poll, &mut none);
    d.finish();
}
