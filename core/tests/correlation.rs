//! Request/response correlation: ids, ordering, deadlines, cancellation,
//! peer mode, notifications, in-flight limits, and the rule that every call
//! has exactly one outcome. Protocol violations are hand-built frames fed
//! to a lone connection.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Pair, Solo, config, decode_all, encode, frames_of, hello_of, welcome_of};
use wharf_core::wire::{ErrorBody, Frame, FrameType, Goodbye, NO_HINT, Notify, PREAMBLE, Request};
use wharf_core::{
    Bytes, CallError, CallKind, CallOptions, CancelReason, Code, Connection, ConnectionError, Event, Metadata,
    ProtocolError, RequestId, SendError, Text, Timeout,
};

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

/// Deterministic PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn req(id: u64, method: &'static str, payload: &'static [u8]) -> Frame {
    Frame::Request(Request {
        id,
        kind: CallKind::Unary,
        method: Text::from(method),
        deadline_ms: None,
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::from_static(payload),
    })
}

fn resp(id: u64, payload: &'static [u8]) -> Frame {
    Frame::Response { id, payload: Bytes::from_static(payload) }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts that the connection ended (last event) with a protocol error
/// matching `check`, counted it, and sent exactly one GOODBYE
/// PROTOCOL_ERROR. Consumes the events and the frames written.
fn assert_protocol_close(s: &mut Solo, check: impl Fn(&ProtocolError) -> bool) {
    let evs = s.take();
    let Some(Event::Closed(ConnectionError::Protocol(e))) = evs.last() else {
        panic!("expected Closed(Protocol), got {evs:?}")
    };
    assert!(check(e), "unexpected protocol error {e:?}");
    assert!(s.conn.is_closed());
    assert_eq!(s.conn.stats().protocol_errors, 1);
    let sent = s.sent();
    assert!(
        matches!(sent.as_slice(), [Frame::Goodbye(g)] if g.code == Code::PROTOCOL_ERROR),
        "expected one GOODBYE PROTOCOL_ERROR, got {sent:?}"
    );
}

fn bad_id(frame: FrameType, id: u64) -> impl Fn(&ProtocolError) -> bool {
    move |e| matches!(e, ProtocolError::BadId { frame: f, id: i, .. } if *f == frame && *i == id)
}

fn responses(events: &[Event]) -> HashMap<RequestId, Vec<Result<Bytes, CallError>>> {
    let mut m: HashMap<RequestId, Vec<_>> = HashMap::new();
    for e in events {
        if let Event::Response { id, result } = e {
            m.entry(*id).or_default().push(result.clone());
        }
    }
    m
}

// ----------------------------------------------------------------------
// Ordering
// ----------------------------------------------------------------------

fn out_of_order_round(p: &mut Pair, order: impl FnOnce(&mut Vec<RequestId>)) {
    let now = p.now;
    let n = 64;
    let ids: Vec<RequestId> = (0..n)
        .map(|i| p.client.conn.request("echo", Bytes::from(format!("req-{i}")), CallOptions::new(), now).unwrap())
        .collect();
    p.drive();
    let calls: Vec<_> = p
        .server
        .take()
        .into_iter()
        .map(|e| match e {
            Event::Request(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(calls.iter().map(|c| c.id).collect::<Vec<_>>(), ids, "requests arrive in the order they were made");
    let payload_of: HashMap<RequestId, Bytes> = calls.iter().map(|c| (c.id, c.payload.clone())).collect();

    let mut answer = ids.clone();
    order(&mut answer);
    for id in &answer {
        let mut out = b"resp-".to_vec();
        out.extend_from_slice(&payload_of[id]);
        p.server.conn.respond(*id, Bytes::from(out)).unwrap();
    }
    p.drive();
    let evs = p.client.take();
    let got: Vec<RequestId> = evs
        .iter()
        .map(|e| match e {
            Event::Response { id, result: Ok(payload) } => {
                let i = ids.iter().position(|x| x == id).unwrap();
                assert_eq!(payload, &Bytes::from(format!("resp-req-{i}")), "call {id} got another call's payload");
                *id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, answer, "responses are delivered in the order they arrive");
    assert_eq!(p.client.conn.calls_in_flight(), 0);
    assert_eq!(p.server.conn.calls_being_served(), 0);
}

#[test]
fn out_of_order_responses_reach_their_own_callers() {
    let mut p = Pair::connected();
    out_of_order_round(&mut p, |v| v.reverse());
    for seed in 1..=5 {
        let mut rng = Rng(seed);
        out_of_order_round(&mut p, |v| rng.shuffle(v));
    }
}

// ----------------------------------------------------------------------
// Deadlines
// ----------------------------------------------------------------------

#[test]
fn deadline_expiry_times_out_sends_cancel_and_callee_sees_call_cancelled() {
    let mut p = Pair::connected();
    let t0 = p.now;
    // The server reads the call 100 ms late, so its own copy of the deadline
    // (600 ms) is later than the caller's (500 ms): it learns from CANCEL.
    p.server.reading = false;
    let id =
        p.client.conn.request("slow", Bytes::new(), CallOptions::new().timeout(Timeout::After(ms(500))), t0).unwrap();
    p.drive();
    p.advance(ms(100));
    p.server.reading = true;
    p.drive();
    let evs = p.server.take();
    let [Event::Request(call)] = evs.as_slice() else { panic!("{evs:?}") };
    assert_eq!(call.deadline, Some(t0 + ms(600)));
    let c0 = frames_of(&p.client.wrote).len();

    p.advance(ms(399));
    assert_eq!(p.client.take(), vec![]);
    assert_eq!(p.server.take(), vec![]);
    p.advance(ms(1));
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Err(CallError::TimedOut(ms(500))) }]);
    assert_eq!(frames_of(&p.client.wrote)[c0..], [Frame::Cancel { id: id.0 }]);
    assert_eq!(p.server.take(), vec![Event::CallCancelled { id, reason: CancelReason::Peer }]);
    assert_eq!(p.client.conn.stats().calls_timed_out, 1);
    assert_eq!(p.server.conn.respond(id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));

    // The server's own (later) deadline for the call no longer fires.
    p.advance(ms(200));
    assert_eq!(p.server.take(), vec![]);
    assert_eq!(p.client.take(), vec![]);
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
}

#[test]
fn late_response_after_timeout_is_ignored_and_counted() {
    let mut p = Pair::connected();
    let id = p
        .client
        .conn
        .request("slow", Bytes::new(), CallOptions::new().timeout(Timeout::After(ms(500))), p.now)
        .unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Request(_)]));
    p.advance(ms(200));
    // The response is written at 200 ms but the client reads it only after its deadline.
    p.client.reading = false;
    p.server.conn.respond(id, Bytes::from_static(b"too late")).unwrap();
    p.drive();
    p.advance(ms(300));
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Err(CallError::TimedOut(ms(500))) }]);
    assert_eq!(p.server.take(), vec![], "a CANCEL for an answered call is a tolerated race");
    assert_eq!(p.server.conn.stats().stale_frames_ignored, 1);

    p.client.reading = true;
    p.drive();
    assert_eq!(p.client.take(), vec![], "the late response must not produce a second outcome");
    assert_eq!(p.client.conn.stats().late_responses_ignored, 1);
    assert!(p.client.conn.is_established());
}

#[test]
fn callee_deadline_is_visible_in_incoming_call_and_enforced() {
    let mut cc = config();
    cc.request_timeout = Some(Duration::from_secs(7));
    let mut p = Pair::connected_with(cc, config());
    let t0 = p.now;
    let short =
        p.client.conn.request("a", Bytes::new(), CallOptions::new().timeout(Timeout::After(ms(300))), t0).unwrap();
    let default = p.client.conn.request("b", Bytes::new(), CallOptions::new(), t0).unwrap();
    let never = p.client.conn.request("c", Bytes::new(), CallOptions::new().timeout(Timeout::Never), t0).unwrap();
    let stream = p.client.conn.request("d", Bytes::new(), CallOptions::new().kind(CallKind::ServerStream), t0).unwrap();
    p.drive();
    let deadlines: Vec<_> = p
        .server
        .take()
        .into_iter()
        .map(|e| match e {
            Event::Request(c) => (c.id, c.deadline),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        deadlines,
        vec![
            (short, Some(t0 + ms(300))),
            (default, Some(t0 + Duration::from_secs(7))),
            (never, None),
            (stream, None), // streaming calls have no default deadline
        ]
    );

    p.advance(ms(299));
    assert_eq!(p.server.take(), vec![]);
    let s0 = frames_of(&p.server.wrote).len();
    p.advance(ms(1));
    assert_eq!(p.server.take(), vec![Event::CallCancelled { id: short, reason: CancelReason::DeadlineExceeded }]);
    assert_eq!(frames_of(&p.server.wrote).len(), s0, "at expiry the callee sends nothing for the call");
    assert_eq!(p.server.conn.stats().stale_frames_ignored, 1, "the caller's CANCEL arrives late");
    assert_eq!(p.client.take(), vec![Event::Response { id: short, result: Err(CallError::TimedOut(ms(300))) }]);
    assert_eq!(p.server.conn.respond(short, Bytes::new()), Err(SendError::UnknownCall { id: short.0 }));
    assert_eq!(p.server.conn.calls_being_served(), 3);
}

// ----------------------------------------------------------------------
// Cancellation
// ----------------------------------------------------------------------

#[test]
fn cancel_racing_an_in_flight_response_has_exactly_one_outcome_cancelled() {
    let mut p = Pair::connected();
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Request(_)]));
    p.client.reading = false;
    p.server.conn.respond(id, Bytes::from_static(b"answer")).unwrap();
    p.drive(); // the response is in the pipe, unread
    let c0 = frames_of(&p.client.wrote).len();
    p.client.conn.cancel(id).unwrap();
    assert_eq!(p.client.conn.cancel(id), Err(SendError::UnknownCall { id: id.0 }));
    p.drive();
    assert_eq!(frames_of(&p.client.wrote)[c0..], [Frame::Cancel { id: id.0 }]);
    p.client.reading = true;
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Err(CallError::Cancelled) }]);
    assert_eq!(p.client.conn.stats().late_responses_ignored, 1);
    assert_eq!(p.server.take(), vec![]);
    assert_eq!(p.server.conn.stats().stale_frames_ignored, 1);
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
}

#[test]
fn cancel_after_the_response_was_processed_is_refused_and_outcome_stays_ok() {
    let mut p = Pair::connected();
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.drive();
    p.server.take();
    p.server.conn.respond(id, Bytes::from_static(b"answer")).unwrap();
    p.drive();
    assert_eq!(p.client.conn.cancel(id), Err(SendError::UnknownCall { id: id.0 }));
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"answer")) }]);
}

#[test]
fn response_for_a_cancelled_id_is_ignored() {
    let mut s = Solo::client(config());
    let id = s.conn.request("m", Bytes::new(), CallOptions::new(), s.now).unwrap();
    s.conn.cancel(id).unwrap();
    s.pump();
    assert_eq!(s.take(), vec![Event::Response { id, result: Err(CallError::Cancelled) }]);
    assert_eq!(s.sent(), vec![req_like(id.0), Frame::Cancel { id: id.0 }]);
    s.feed(&[resp(id.0, b"late")]);
    s.feed(&[Frame::Error(ErrorBody {
        id: id.0,
        code: Code::CANCELLED,
        message: Text::from("x"),
        data: Bytes::new(),
    })]);
    assert_eq!(s.take(), vec![]);
    assert_eq!(s.conn.stats().late_responses_ignored, 2);
    assert!(s.conn.is_established());
    assert!(s.sent().is_empty());
}

/// The REQUEST frame a default unary call with empty payload to "m" encodes to.
fn req_like(id: u64) -> Frame {
    Frame::Request(Request {
        id,
        kind: CallKind::Unary,
        method: Text::from("m"),
        deadline_ms: Some(25_000),
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::new(),
    })
}

#[test]
fn duplicate_response_for_one_call_gives_one_outcome() {
    let mut s = Solo::client(config());
    let id = s.conn.request("m", Bytes::new(), CallOptions::new(), s.now).unwrap();
    s.pump();
    s.feed(&[resp(id.0, b"first"), resp(id.0, b"second")]);
    assert_eq!(s.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"first")) }]);
    assert_eq!(s.conn.stats().late_responses_ignored, 1);
}

#[test]
fn cancel_frames_for_finished_calls_are_ignored_for_never_made_calls_fatal() {
    let mut s = Solo::server(config());
    s.feed(&[req(1, "m", b"")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(_)]));
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[Frame::Cancel { id: 1 }]);
    assert_eq!(s.take(), vec![]);
    assert_eq!(s.conn.stats().stale_frames_ignored, 1);
    assert!(s.conn.is_established());
    s.feed(&[Frame::Cancel { id: 9 }]);
    assert_protocol_close(&mut s, bad_id(FrameType::Cancel, 9));

    // A CANCEL naming a call of the receiver's own parity (only callers cancel).
    let mut s = Solo::server(config());
    let id = s.conn.request("m", Bytes::new(), CallOptions::new(), s.now).unwrap();
    s.pump();
    s.sent();
    s.feed(&[Frame::Cancel { id: id.0 }]);
    assert_protocol_close(&mut s, bad_id(FrameType::Cancel, id.0));
}

// ----------------------------------------------------------------------
// Id rules
// ----------------------------------------------------------------------

#[test]
fn duplicate_request_id_in_flight_is_a_protocol_error() {
    let mut s = Solo::server(config());
    s.feed(&[req(1, "m", b"first")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(c)] if c.id == RequestId(1)));
    s.feed(&[req(1, "m", b"duplicate")]);
    let evs = s.events.clone();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(
        matches!(&evs[0], Event::CallCancelled { id, reason: CancelReason::ConnectionLost(ConnectionError::Protocol(_)) } if *id == RequestId(1)),
        "the original call ends once, with the connection: {evs:?}"
    );
    assert_protocol_close(&mut s, bad_id(FrameType::Request, 1));
}

#[test]
fn non_increasing_request_ids_are_a_protocol_error() {
    // Smaller than the last one, while nothing is in flight.
    let mut s = Solo::server(config());
    s.feed(&[req(1, "m", b""), req(5, "m", b"")]);
    assert_eq!(s.take().len(), 2);
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.conn.respond(RequestId(5), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[req(3, "m", b"")]);
    assert_protocol_close(&mut s, bad_id(FrameType::Request, 3));

    // Reusing a finished id.
    let mut s = Solo::server(config());
    s.feed(&[req(1, "m", b"")]);
    s.take();
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[req(1, "m", b"")]);
    assert_protocol_close(&mut s, bad_id(FrameType::Request, 1));
}

#[test]
fn wrong_parity_request_ids_are_a_protocol_error() {
    // A client may only use odd ids.
    let mut s = Solo::server(config());
    s.feed(&[req(2, "m", b"")]);
    assert_protocol_close(&mut s, bad_id(FrameType::Request, 2));
    // A server may only use even ids.
    let mut c = Solo::client(config());
    c.feed(&[req(3, "m", b"")]);
    assert_protocol_close(&mut c, bad_id(FrameType::Request, 3));
    // Id 0 is never valid for a REQUEST (refused from the header).
    let mut s = Solo::server(config());
    s.feed(&[req(0, "m", b"")]);
    assert_protocol_close(&mut s, bad_id(FrameType::Request, 0));
}

#[test]
fn response_for_an_id_never_issued_is_a_protocol_error() {
    // Our parity, never issued.
    let mut c = Solo::client(config());
    let id = c.conn.request("m", Bytes::new(), CallOptions::new(), c.now).unwrap();
    c.pump();
    c.sent();
    c.feed(&[resp(99, b"who?")]);
    let evs = c.events.clone();
    assert!(
        matches!(&evs[0], Event::Response { id: i, result: Err(CallError::ConnectionLost(ConnectionError::Protocol(_))) } if *i == id),
        "the pending call fails with the connection, once: {evs:?}"
    );
    assert_eq!(evs.len(), 2);
    assert_protocol_close(&mut c, bad_id(FrameType::Response, 99));

    // ERROR for a never-issued id.
    let mut c = Solo::client(config());
    c.feed(&[Frame::Error(ErrorBody { id: 51, code: Code::INTERNAL, message: Text::from("x"), data: Bytes::new() })]);
    assert_protocol_close(&mut c, bad_id(FrameType::Error, 51));

    // The peer's parity: a "response" to a call we never could have made.
    let mut c = Solo::client(config());
    c.feed(&[resp(2, b"")]);
    assert_protocol_close(&mut c, bad_id(FrameType::Response, 2));

    // Same on a server (a client answering a call the server never made).
    let mut s = Solo::server(config());
    s.feed(&[resp(4, b"")]);
    assert_protocol_close(&mut s, bad_id(FrameType::Response, 4));
}

// ----------------------------------------------------------------------
// Peer mode and notifications
// ----------------------------------------------------------------------

#[test]
fn server_calls_the_client_and_the_client_answers() {
    let mut p = Pair::connected();
    let t0 = p.now;
    let a = p.server.conn.request("client.status", Bytes::from_static(b"?"), CallOptions::new(), t0).unwrap();
    let b = p.server.conn.request("client.fail", Bytes::new(), CallOptions::new(), t0).unwrap();
    assert_eq!((a, b), (RequestId(2), RequestId(4)), "servers use even ids, from 2");
    let cid = p.client.conn.request("server.x", Bytes::new(), CallOptions::new(), t0).unwrap();
    assert_eq!(cid, RequestId(1), "clients use odd ids, from 1");
    p.drive();
    let evs = p.client.take();
    let [Event::Request(ca), Event::Request(cb)] = evs.as_slice() else { panic!("{evs:?}") };
    assert_eq!((ca.id, ca.method.as_str(), &ca.payload[..]), (a, "client.status", &b"?"[..]));
    assert_eq!(ca.kind, CallKind::Unary);
    assert_eq!(ca.deadline, Some(t0 + Duration::from_secs(25)));
    assert_eq!(cb.id, b);

    p.client.conn.respond(a, Bytes::from_static(b"fine")).unwrap();
    p.client.conn.respond_error(b, Code(1234), "nope", Bytes::from_static(b"detail")).unwrap();
    assert_eq!(p.client.conn.respond(a, Bytes::new()), Err(SendError::UnknownCall { id: a.0 }));
    p.drive();
    let evs = p.server.take();
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert!(matches!(&evs[0], Event::Request(c) if c.id == cid));
    assert_eq!(evs[1], Event::Response { id: a, result: Ok(Bytes::from_static(b"fine")) });
    assert_eq!(
        evs[2],
        Event::Response {
            id: b,
            result: Err(CallError::Remote {
                code: Code(1234),
                message: Text::from("nope"),
                data: Bytes::from_static(b"detail")
            })
        }
    );
    assert_eq!(p.server.conn.calls_in_flight(), 0);
}

#[test]
fn notifications_flow_both_ways_without_outcomes() {
    let mut p = Pair::connected();
    let mut md = Metadata::new();
    md.insert("k", Bytes::from_static(b"v"));
    let trace = [9u8; 16];
    p.client
        .conn
        .notify("log", Bytes::from_static(b"up"), CallOptions::new().metadata(md.clone()).trace_id(trace))
        .unwrap();
    p.server.conn.notify("tick", Bytes::from_static(b"down"), CallOptions::new()).unwrap();
    let (c0, s0) = (frames_of(&p.client.wrote).len(), frames_of(&p.server.wrote).len());
    p.drive();
    let sev = p.server.take();
    let [Event::Notification(n)] = sev.as_slice() else { panic!("{sev:?}") };
    assert_eq!((n.method.as_str(), &n.payload[..]), ("log", &b"up"[..]));
    assert_eq!(n.metadata, md);
    assert_eq!(n.trace_id, Some(trace));
    let cev = p.client.take();
    let [Event::Notification(n)] = cev.as_slice() else { panic!("{cev:?}") };
    assert_eq!((n.method.as_str(), &n.payload[..]), ("tick", &b"down"[..]));
    assert!(n.metadata.is_empty() && n.trace_id.is_none());
    assert_eq!(frames_of(&p.client.wrote)[c0..].iter().map(Frame::frame_type).collect::<Vec<_>>(), [FrameType::Notify]);
    assert_eq!(frames_of(&p.server.wrote)[s0..].iter().map(Frame::frame_type).collect::<Vec<_>>(), [FrameType::Notify]);
    assert_eq!(p.client.conn.calls_in_flight() + p.server.conn.calls_in_flight(), 0);
}

// ----------------------------------------------------------------------
// In-flight limits
// ----------------------------------------------------------------------

#[test]
fn local_api_refuses_calls_beyond_the_peers_max_in_flight() {
    let mut sc = config();
    sc.max_in_flight = 4;
    let mut p = Pair::connected_with(config(), sc);
    let now = p.now;
    let ids: Vec<_> =
        (0..4).map(|_| p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).unwrap()).collect();
    assert_eq!(
        p.client.conn.request("m", Bytes::new(), CallOptions::new(), now),
        Err(SendError::TooManyInFlight { limit: 4 })
    );
    p.drive();
    assert_eq!(p.server.take().len(), 4);
    assert_eq!(p.server.conn.stats().calls_refused_busy, 0);
    p.server.conn.respond(ids[0], Bytes::new()).unwrap();
    p.drive();
    assert_eq!(p.client.take().len(), 1);
    assert!(p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).is_ok(), "a slot was freed");
}

#[test]
fn peer_exceeding_max_in_flight_gets_busy_without_dispatch() {
    let mut sc = config();
    sc.max_in_flight = 4;
    let mut s = Solo::server(sc);
    s.feed(&[req(1, "m", b""), req(3, "m", b""), req(5, "m", b""), req(7, "m", b"")]);
    assert_eq!(s.take().len(), 4);
    s.feed(&[req(9, "m", b""), req(11, "m", b"")]);
    assert_eq!(s.take(), vec![], "calls over the limit are never dispatched");
    let sent = s.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (f, id) in sent.iter().zip([9, 11]) {
        assert!(matches!(f, Frame::Error(e) if e.id == id && e.code == Code::BUSY), "{f:?}");
    }
    assert_eq!(s.conn.stats().calls_refused_busy, 2);
    assert!(s.conn.is_established());
    assert_eq!(s.conn.calls_being_served(), 4);

    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[req(13, "m", b"")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(c)] if c.id == RequestId(13)));
}

// ----------------------------------------------------------------------
// Exactly one outcome
// ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    RemoteError,
    CancelBeforeSent,
    CancelRacingResponse,
    CancelAfterDispatch,
    TimedOut,
    LostAtEof,
}

const FATES: [Fate; 7] = [
    Fate::Ok,
    Fate::RemoteError,
    Fate::CancelBeforeSent,
    Fate::CancelRacingResponse,
    Fate::CancelAfterDispatch,
    Fate::TimedOut,
    Fate::LostAtEof,
];

#[test]
fn every_call_has_exactly_one_outcome_over_a_mixed_batch() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed);
        let mut p = Pair::connected();
        let now = p.now;
        let mut fates: Vec<(RequestId, Fate)> = Vec::new();
        for i in 0..120 {
            let fate = FATES[rng.below(FATES.len())];
            let timeout = if fate == Fate::TimedOut { Timeout::After(ms(100)) } else { Timeout::Never };
            let payload = Bytes::from(vec![i as u8; rng.below(2000)]);
            let id = p.client.conn.request("m", payload, CallOptions::new().timeout(timeout), now).unwrap();
            if fate == Fate::CancelBeforeSent {
                p.client.conn.cancel(id).unwrap();
            }
            fates.push((id, fate));
        }
        p.drive();
        let fate_of: HashMap<RequestId, Fate> = fates.iter().copied().collect();
        let mut server_events = p.server.take();

        // The server answers some; the client's reading pauses so that the
        // racing cancels meet responses already in the pipe.
        p.client.reading = false;
        for &(id, fate) in &fates {
            match fate {
                Fate::Ok | Fate::CancelRacingResponse => {
                    p.server.conn.respond(id, Bytes::from(format!("ok-{id}"))).unwrap()
                }
                Fate::RemoteError => p.server.conn.respond_error(id, Code(1000), "no", Bytes::new()).unwrap(),
                _ => {}
            }
        }
        p.drive();
        for &(id, fate) in &fates {
            if matches!(fate, Fate::CancelRacingResponse | Fate::CancelAfterDispatch) {
                p.client.conn.cancel(id).unwrap();
            }
        }
        p.client.reading = true;
        p.drive();
        p.advance(ms(100));
        server_events.extend(p.server.take());
        p.server_eof();
        p.client_eof();
        server_events.extend(p.server.take());

        let evs = p.client.take();
        assert!(matches!(evs.last(), Some(Event::Closed(_))), "{evs:?}");
        let outcomes = responses(&evs);
        assert_eq!(outcomes.len(), fates.len(), "seed {seed}: some call had no outcome");
        for (id, results) in &outcomes {
            assert_eq!(results.len(), 1, "seed {seed}: call {id} had {} outcomes: {results:?}", results.len());
            let r = &results[0];
            let ok = match fate_of[id] {
                Fate::Ok => r == &Ok(Bytes::from(format!("ok-{id}"))),
                Fate::RemoteError => matches!(r, Err(CallError::Remote { code, .. }) if *code == Code(1000)),
                Fate::CancelBeforeSent | Fate::CancelRacingResponse | Fate::CancelAfterDispatch => {
                    r == &Err(CallError::Cancelled)
                }
                Fate::TimedOut => r == &Err(CallError::TimedOut(ms(100))),
                Fate::LostAtEof => matches!(r, Err(CallError::ConnectionLost(ConnectionError::UnexpectedEof { .. }))),
            };
            assert!(ok, "seed {seed}: call {id} ({:?}) ended with {r:?}", fate_of[id]);
        }

        // Server side: each dispatched call ends once: answered by us, or cancelled.
        let mut dispatched = HashMap::new();
        let mut cancelled: HashMap<RequestId, usize> = HashMap::new();
        for e in &server_events {
            match e {
                Event::Request(c) => *dispatched.entry(c.id).or_insert(0) += 1,
                Event::CallCancelled { id, .. } => *cancelled.entry(*id).or_insert(0) += 1,
                _ => {}
            }
        }
        assert_eq!(dispatched.len(), fates.len());
        assert!(dispatched.values().all(|n| *n == 1));
        for &(id, fate) in &fates {
            let answered = matches!(fate, Fate::Ok | Fate::RemoteError | Fate::CancelRacingResponse);
            let c = cancelled.get(&id).copied().unwrap_or(0);
            assert_eq!(c, usize::from(!answered), "seed {seed}: server-side call {id} ({fate:?}) cancelled {c} times");
        }
        assert_eq!(p.client.conn.calls_in_flight(), 0);
        assert_eq!(p.server.conn.calls_being_served(), 0);
    }
}

#[test]
fn callee_deadline_never_passes_before_the_callers_even_beyond_u32_milliseconds() {
    // 60 days: more milliseconds than a u32 deadline_ms can carry (49.7 days).
    let mut sc = config();
    sc.keepalive_interval = None;
    let mut p = Pair::connected_with(config(), sc);
    let t0 = p.now;
    let long = Duration::from_secs(60 * 86_400);
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new().timeout(Timeout::After(long)), t0).unwrap();
    p.drive();
    let evs = p.server.take();
    let [Event::Request(call)] = evs.as_slice() else { panic!("{evs:?}") };
    if let Some(d) = call.deadline {
        // When the callee gives up (silently, per the protocol), the caller must have its outcome.
        p.advance(d - t0);
        assert_eq!(p.server.take(), vec![Event::CallCancelled { id, reason: CancelReason::DeadlineExceeded }]);
        let cev = p.client.take();
        assert!(
            matches!(cev.as_slice(), [Event::Response { id: i, result: Err(CallError::TimedOut(_)) }] if *i == id),
            "the callee abandoned the call after {:?} but the caller still waits (deadline {long:?}): {cev:?}",
            d - t0
        );
    }
}

// ----------------------------------------------------------------------
// Rules added after the first protocol review
// ----------------------------------------------------------------------

#[test]
fn notify_after_the_peers_goodbye_is_a_protocol_error() {
    let mut s = Solo::server(config());
    s.feed(&[Frame::Goodbye(Goodbye { code: Code::OK, reconnect_after_ms: NO_HINT, message: Text::new() })]);
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::GoodbyeReceived { .. }, Event::Closed(_)]), "{evs:?}");
    // With nothing in flight both goodbyes end it at once; a fresh one shows
    // the rule while a call keeps the connection draining.
    let mut s = Solo::server(config());
    s.feed(&[req(1, "work", b"")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(_)]));
    s.sent();
    s.feed(&[
        Frame::Goodbye(Goodbye { code: Code::OK, reconnect_after_ms: NO_HINT, message: Text::new() }),
        Frame::Notify(Notify {
            method: Text::from("late"),
            trace_id: None,
            metadata: Default::default(),
            payload: Bytes::new(),
        }),
    ]);
    let evs = s.take();
    assert!(matches!(evs[0], Event::GoodbyeReceived { .. }), "{evs:?}");
    assert!(
        matches!(evs.last(), Some(Event::Closed(ConnectionError::Protocol(ProtocolError::UnexpectedFrame { frame, .. })))
            if *frame == FrameType::Notify),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, Event::Notification(_))), "the late NOTIFY was delivered");
}

#[test]
fn credit_for_a_direction_without_data_is_a_protocol_error() {
    // The caller of a unary call never sends DATA, so it must never get CREDIT.
    let mut s = Solo::client(config());
    let id = s.conn.request("m", Bytes::new(), CallOptions::new(), s.now).unwrap();
    s.pump();
    s.sent();
    s.feed(&[Frame::Credit { id: id.0, increment: 10 }]);
    assert_protocol_close(&mut s, |e| matches!(e, ProtocolError::Stream { id: i, .. } if *i == id.0));

    // The caller of a server-stream call receives DATA; it does not send it.
    let mut s = Solo::client(config());
    let opts = CallOptions::new().kind(CallKind::ServerStream);
    let id = s.conn.request("m", Bytes::new(), opts, s.now).unwrap();
    s.pump();
    s.sent();
    s.feed(&[Frame::Credit { id: id.0, increment: 10 }]);
    assert_protocol_close(&mut s, |e| matches!(e, ProtocolError::Stream { .. }));

    // The callee of a client-stream call receives DATA; it does not send it.
    let mut s = Solo::server(config());
    let mut r = req(1, "m", b"");
    if let Frame::Request(ref mut q) = r {
        q.kind = CallKind::ClientStream;
    }
    s.feed(&[r]);
    s.take();
    s.feed(&[Frame::Credit { id: 1, increment: 10 }]);
    assert_protocol_close(&mut s, |e| matches!(e, ProtocolError::Stream { id: 1, .. }));

    // Where DATA flows, CREDIT is fine: the caller of a client-stream call.
    let mut s = Solo::client(config());
    let id = s.conn.request("m", Bytes::new(), CallOptions::new().kind(CallKind::ClientStream), s.now).unwrap();
    s.pump();
    s.feed(&[Frame::Credit { id: id.0, increment: 10 }]);
    assert!(s.conn.is_established());
}

#[test]
fn a_peer_announcing_more_than_the_ceiling_is_held_to_the_ceiling() {
    let now = Instant::now();
    let mut conn = Connection::client(Arc::new(config()), Bytes::new(), now).unwrap();
    let mut w = welcome_of(&config());
    if let Frame::Welcome(ref mut w) = w {
        w.max_frame_size = u32::MAX;
    }
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[w]));
    conn.handle_input(&input, now);
    assert!(conn.is_established());
    assert_eq!(conn.peer_limits().max_frame_size, wharf_core::wire::MAX_FRAME_SIZE_CEILING);
    let big = Bytes::from(vec![0u8; wharf_core::wire::MAX_FRAME_SIZE_CEILING as usize]);
    assert!(matches!(
        conn.request("m", big, CallOptions::new(), now),
        Err(SendError::TooLarge { limit, .. }) if limit == wharf_core::wire::MAX_FRAME_SIZE_CEILING
    ));
}

#[test]
fn goodbye_and_reject_text_fit_the_smallest_frame_limit_a_peer_may_announce() {
    let mut s = Solo::server(config());
    let long = "é".repeat(2000); // 4000 bytes, 2-byte characters
    s.conn.close(Code::OK, &long, None, s.now);
    s.pump();
    let sent = s.sent();
    let [Frame::Goodbye(g)] = sent.as_slice() else { panic!("{sent:?}") };
    assert!(g.message.len() <= 1000 && g.message.len() >= 999, "{}", g.message.len());
    assert!(Frame::Goodbye(g.clone()).body_len().unwrap() <= 1024);

    let now = Instant::now();
    let mut server = Connection::server(Arc::new(config()), now).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[hello_of(&config())]));
    server.handle_input(&input, now);
    server.reject(Code::AUTH_FAILED, &long, None).unwrap();
    let mut out = Vec::new();
    while let Some(c) = server.poll_transmit(now) {
        out.extend_from_slice(&c);
    }
    let frames = decode_all(&out[8..]);
    let [Frame::Reject(r)] = frames.as_slice() else { panic!("{frames:?}") };
    assert!(r.reason.len() <= 1000);
    assert!(Frame::Reject(r.clone()).body_len().unwrap() <= 1024);
}

#[test]
fn keepalive_does_not_blame_the_peer_while_we_are_the_ones_not_reading() {
    let mut cfg = config();
    cfg.keepalive_interval = Some(ms(1000));
    cfg.max_inbound_buffered = 4096;
    let mut p = Pair::connected_with(cfg.clone(), cfg);
    // The server's application stops taking events: enough notifications
    // fill its inbound budget and it stops reading.
    for _ in 0..8 {
        p.client.conn.notify("n", Bytes::from(vec![0u8; 1000]), CallOptions::new()).unwrap();
    }
    p.server.reading = false;
    // Deliver by hand without polling the server's events.
    let now = p.now;
    while let Some(c) = p.client.conn.poll_transmit(now) {
        p.server.conn.handle_input(&c, now);
    }
    assert!(!p.server.conn.wants_read());
    for _ in 0..10 {
        p.now += ms(1000);
        p.server.conn.handle_timeout(p.now);
    }
    assert!(!p.server.conn.is_closed(), "declared the peer dead for our own backlog: {:?}", p.server.conn.error());
    assert_eq!(p.server.conn.stats().keepalive_timeouts, 0);
}

/// Text the application supplies (error messages, goodbye messages, reject
/// reasons) may contain NUL, which the wire forbids in strings: it is
/// replaced, so the peer never sees a malformed frame because of it.
#[test]
fn nul_in_application_text_never_reaches_the_wire() {
    let mut p = Pair::connected();
    let now = p.now;
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    let evs = p.server.take();
    let [Event::Request(call)] = evs.as_slice() else { panic!("{evs:?}") };
    p.server.conn.respond_error(call.id, Code(1000), "bad\0thing", Bytes::new()).unwrap();
    p.drive();
    let evs = p.client.take();
    assert!(
        matches!(&evs[..], [Event::Response { id: i, result: Err(CallError::Remote { message, .. }) }]
            if *i == id && message.as_str() == "bad\u{FFFD}thing"),
        "{evs:?}"
    );
    p.server.conn.close(Code::OK, "bye\0bye", None, now);
    p.drive();
    assert!(matches!(
        p.client.conn.error(),
        Some(ConnectionError::PeerClosed { message, .. }) if message == "bye\u{FFFD}bye"
    ));
    assert_eq!(p.client.conn.stats().protocol_errors, 0);

    // A reject reason with NUL.
    let mut p = Pair::new(config(), config());
    p.auto_accept = None;
    p.drive();
    p.server.conn.reject(Code::AUTH_FAILED, "no\0way", None).unwrap();
    p.drive();
    assert!(matches!(
        p.client.conn.error(),
        Some(ConnectionError::Rejected { reason, .. }) if reason == "no\u{FFFD}way"
    ));

    // A name with NUL is refused by the config; a topic with NUL by deliver.
    let mut c = config();
    c.name = Text::from("a\0b".to_string());
    assert!(c.validate().is_err());
}
