//! Fault scenario S4, "never lose an acknowledged message": the server is
//! crashed at every point of its work and the client's view is checked.
//!
//! A client makes calls and acknowledged publishes, interleaved. The server
//! application works one action at a time: *take* an event from its
//! connection (the frame is decoded but not yet handled), *dispatch* it
//! (the handler sees the call; the broker accepts the publish), *answer*
//! it (`respond` / `ack_publish`). The crash comes after `k` actions, for
//! every `k`, and the client then receives only the first `b` bytes of
//! what the server had written, for every `b`, followed by end of stream
//! (a crash can cut a frame anywhere). For every `(k, b)`:
//!
//! - every call and publish ends in exactly one outcome on the client;
//! - an `Ok` outcome (a response, a publish acknowledgement) means the
//!   handler or the broker saw that message exactly once: there is no
//!   acknowledgement without acceptance;
//! - everything else fails with a connection error, never as a success
//!   (and nothing is silently retried: the core never re-sends).

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use support::Pair;
use wharf_core::{CallError, CallOptions, Event, PublishId, RequestId};

const CALLS: usize = 3;
const PUBLISHES: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Call(u64),
    Publish(u64),
}

/// What the server application had done when it crashed.
#[derive(Default)]
struct ServerLog {
    /// Times each operation was dispatched (handler / broker).
    dispatched: HashMap<Op, usize>,
}

/// Starts the client's operations; returns them in the order sent.
fn start(p: &mut Pair) -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 0..CALLS.max(PUBLISHES) {
        if i < CALLS {
            let payload = Bytes::from(format!("call {i}"));
            let id = p.client.conn.request("work", payload, CallOptions::new(), p.now).expect("request");
            ops.push(Op::Call(id.0));
        }
        if i < PUBLISHES {
            let payload = Bytes::from(format!("message {i}"));
            let id = p.client.conn.publish("topic", payload, true).expect("publish").expect("an ack id");
            ops.push(Op::Publish(id.0));
        }
    }
    ops
}

/// Runs the server for `k` actions; returns its log and the bytes it wrote.
fn run_server(p: &mut Pair, k: usize) -> (ServerLog, Vec<u8>) {
    // Everything the client sent reaches the server's socket buffer.
    let mut c2s = Vec::new();
    while let Some(chunk) = p.client.conn.poll_transmit(p.now) {
        c2s.extend_from_slice(&chunk);
    }
    p.server.conn.handle_input(&c2s, p.now);

    let mut log = ServerLog::default();
    let mut wrote = Vec::new();
    // The event taken and not yet dispatched, and the one dispatched and
    // not yet answered.
    let mut taken: Option<Event> = None;
    let mut to_answer: Option<Op> = None;
    let mut actions = 0;
    while actions < k {
        if let Some(op) = to_answer.take() {
            match op {
                Op::Call(id) => p.server.conn.respond(RequestId(id), Bytes::from_static(b"done")).expect("respond"),
                Op::Publish(id) => p.server.conn.ack_publish(PublishId(id), Ok(1)).expect("ack"),
            }
        } else if let Some(e) = taken.take() {
            let op = match e {
                Event::Request(call) => Op::Call(call.id.0),
                Event::Publish { ack: Some(id), .. } => Op::Publish(id.0),
                other => panic!("unexpected server event {other:?}"),
            };
            *log.dispatched.entry(op).or_default() += 1;
            to_answer = Some(op);
        } else if let Some(e) = p.server.conn.poll_event() {
            taken = Some(e);
        } else {
            break; // nothing left to do: the crash comes after all of it
        }
        actions += 1;
        while let Some(chunk) = p.server.conn.poll_transmit(p.now) {
            wrote.extend_from_slice(&chunk);
        }
    }
    (log, wrote)
}

/// The client's outcomes after `bytes` and then end of stream.
fn client_outcomes(p: &mut Pair, bytes: &[u8]) -> Vec<(Op, bool)> {
    p.client.conn.handle_input(bytes, p.now);
    p.client.conn.handle_eof(p.now);
    let mut out = Vec::new();
    while let Some(e) = p.client.conn.poll_event() {
        match e {
            Event::Response { id, result } => {
                if let Err(e) = &result {
                    assert!(matches!(e, CallError::ConnectionLost(_)), "a call failed otherwise: {e:?}");
                }
                out.push((Op::Call(id.0), result.is_ok()));
            }
            Event::PublishResult { id, result } => out.push((Op::Publish(id.0), result.is_ok())),
            Event::Closed(_) => {}
            other => panic!("unexpected client event {other:?}"),
        }
    }
    out
}

#[test]
fn no_acknowledgement_without_acceptance_at_any_crash_point() {
    // How many actions a full run takes (3 per operation).
    let full = 3 * (CALLS + PUBLISHES);
    let mut checked = 0usize;
    let mut acked_total = 0usize;
    for k in 0..=full + 1 {
        let total_bytes = {
            let mut p = Pair::connected();
            start(&mut p);
            run_server(&mut p, k).1.len()
        };
        for b in 0..=total_bytes {
            let mut p = Pair::connected();
            let ops = start(&mut p);
            let (log, wrote) = run_server(&mut p, k);
            assert_eq!(wrote.len(), total_bytes, "the server's run is deterministic");
            let outcomes = client_outcomes(&mut p, &wrote[..b]);

            // Exactly one outcome per operation.
            for op in &ops {
                let n = outcomes.iter().filter(|(o, _)| o == op).count();
                assert_eq!(n, 1, "k={k} b={b}: {op:?} had {n} outcomes: {outcomes:?}");
            }
            assert_eq!(outcomes.len(), ops.len(), "k={k} b={b}: outcomes for unknown operations");
            // An acknowledgement only for what was accepted, once.
            for (op, ok) in &outcomes {
                let seen = log.dispatched.get(op).copied().unwrap_or(0);
                assert!(seen <= 1, "k={k} b={b}: {op:?} dispatched {seen} times");
                if *ok {
                    assert_eq!(seen, 1, "k={k} b={b}: {op:?} acknowledged but never accepted");
                    acked_total += 1;
                }
            }
            // Nothing outstanding on the client afterwards.
            assert_eq!(p.client.conn.calls_in_flight(), 0, "k={k} b={b}");
            checked += 1;
        }
    }
    // The sweep covers the extremes: nothing acknowledged (k = 0) and
    // everything acknowledged (a complete run, every byte delivered).
    assert!(acked_total > 0 && checked > 100, "checked {checked} crash points, {acked_total} acknowledgements");
    let mut p = Pair::connected();
    let ops = start(&mut p);
    let (_, wrote) = run_server(&mut p, full);
    let outcomes = client_outcomes(&mut p, &wrote);
    assert!(outcomes.iter().all(|(_, ok)| *ok) && outcomes.len() == ops.len(), "{outcomes:?}");
    eprintln!("S4: {checked} crash points checked, {acked_total} acknowledgements, each backed by one acceptance");
}
