//! The wire oracle: everything the connection under test writes is parsed
//! back and checked against the protocol, as the peer would see it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, Bytes, BytesMut};
use wharf_core::wire::{CallKind, Frame, HEADER_LEN, Header, PREAMBLE};
use wharf_core::{PeerLimits, Role};

/// What the oracle needs to know about the session.
pub struct Context<'a> {
    pub role: Role,
    pub peer: PeerLimits,
    /// Our calls and their kinds.
    pub our_calls: &'a BTreeMap<u64, CallKind>,
    /// Calls the peer made that reached the application, and their kinds.
    pub served_kinds: &'a BTreeMap<u64, CallKind>,
    /// Subscriptions the peer made (`None`: unknown, raw bytes were fed).
    pub peer_subs: Option<&'a BTreeSet<u64>>,
    /// Stream credit the peer granted per call beyond the initial window,
    /// when known exactly (`None`: the peer's input was not all structured).
    pub credits: Option<&'a BTreeMap<u64, u64>>,
}

/// Parser and protocol state of our output.
#[derive(Default)]
pub struct Outbound {
    buf: BytesMut,
    preamble: bool,
    frames: usize,
    /// The core dropped queued bytes (transport error, write stall): the
    /// stream may be cut mid-frame, so checking stops.
    pub dead: bool,
    rejected: bool,
    goodbye: bool,
    last_op: u64,
    answered: BTreeSet<u64>,
    cancelled: BTreeSet<u64>,
    ended: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    data_cost: BTreeMap<u64, u64>,
}

impl Outbound {
    /// Bytes the driver wrote (in order).
    pub fn written(&mut self, bytes: &[u8], cx: &Context<'_>) {
        if self.dead || bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if !self.preamble {
            if self.buf.len() < PREAMBLE.len() {
                assert_eq!(&self.buf[..], &PREAMBLE[..self.buf.len()], "output does not start with the preamble");
                return;
            }
            assert_eq!(&self.buf[..PREAMBLE.len()], &PREAMBLE, "output does not start with the preamble");
            self.buf.advance(PREAMBLE.len());
            self.preamble = true;
        }
        while self.buf.len() >= HEADER_LEN {
            let raw: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().unwrap();
            let h = Header::decode(&raw, u32::MAX)
                .unwrap_or_else(|e| panic!("we wrote an invalid frame header {raw:02x?}: {e}"));
            let total = HEADER_LEN + h.len as usize;
            if self.buf.len() < total {
                break;
            }
            let mut body: Bytes = self.buf.split_to(total).freeze();
            body.advance(HEADER_LEN);
            let f = Frame::decode(&h, body).unwrap_or_else(|e| panic!("we wrote an invalid {}: {e}", h.ty));
            self.frame(f, h.len, cx);
        }
    }

    /// At the very end: nothing half-written remains.
    pub fn finish(&self) {
        if !self.dead {
            assert!(self.buf.is_empty(), "the output ends with {} bytes of a partial frame", self.buf.len());
        }
    }

    fn ours(cx: &Context<'_>, id: u64) -> bool {
        (id & 1 == 1) == (cx.role == Role::Client)
    }

    fn op(&mut self, what: &str, id: u64, cx: &Context<'_>) {
        assert!(Self::ours(cx, id), "{what} with id {id} of the peer's parity");
        assert!(id > self.last_op, "{what} id {id} does not increase (last {})", self.last_op);
        self.last_op = id;
    }

    fn frame(&mut self, f: Frame, len: u32, cx: &Context<'_>) {
        if crate::trace() {
            eprintln!("    wrote: {} ({len} bytes)", f.frame_type());
        }
        let n = self.frames;
        self.frames += 1;
        assert!(!self.rejected, "we wrote {} after REJECT", f.frame_type());
        if n == 0 {
            match (cx.role, &f) {
                (Role::Client, Frame::Hello(_)) | (Role::Server, Frame::Welcome(_)) => {}
                (Role::Server, Frame::Reject(_)) => self.rejected = true,
                _ => panic!("first frame written by the {:?} is {}", cx.role, f.frame_type()),
            }
            return;
        }
        assert!(
            len <= cx.peer.max_frame_size,
            "we wrote a {} of {len} bytes; the peer accepts {}",
            f.frame_type(),
            cx.peer.max_frame_size
        );
        let after_goodbye = self.goodbye;
        let new_op = |what: &str| assert!(!after_goodbye, "we started a {what} after our GOODBYE");
        match f {
            Frame::Hello(_) | Frame::Welcome(_) | Frame::Reject(_) => {
                panic!("we wrote a second handshake frame ({})", f.frame_type())
            }
            Frame::Request(r) => {
                new_op("REQUEST");
                self.op("REQUEST", r.id, cx);
            }
            Frame::Notify(_) => new_op("NOTIFY"),
            Frame::Subscribe { id, .. } => {
                assert_eq!(cx.role, Role::Client, "a server wrote SUBSCRIBE");
                new_op("SUBSCRIBE");
                self.op("SUBSCRIBE", id, cx);
            }
            Frame::Unsubscribe { id, .. } => {
                assert_eq!(cx.role, Role::Client, "a server wrote UNSUBSCRIBE");
                new_op("UNSUBSCRIBE");
                self.op("UNSUBSCRIBE", id, cx);
            }
            Frame::Publish { id, .. } => {
                assert_eq!(cx.role, Role::Client, "a server wrote PUBLISH");
                new_op("PUBLISH");
                if id != 0 {
                    self.op("PUBLISH", id, cx);
                }
            }
            Frame::Response { id, .. } | Frame::Error(wharf_core::wire::ErrorBody { id, .. }) => {
                assert!(!Self::ours(cx, id), "we answered our own call {id}");
                assert!(self.answered.insert(id), "we answered call {id} twice");
            }
            Frame::Cancel { id } => {
                assert!(cx.our_calls.contains_key(&id), "we cancelled call {id}, which we never made");
                assert!(self.cancelled.insert(id), "we cancelled call {id} twice");
            }
            Frame::Data { id, payload } => {
                if Self::ours(cx, id) {
                    let kind = cx.our_calls.get(&id).unwrap_or_else(|| panic!("DATA on call {id} never made"));
                    assert!(kind.caller_sends(), "we sent DATA as the caller of a {kind:?} call {id}");
                    assert!(!self.ended.contains(&id), "we sent DATA on call {id} after END");
                    assert!(!self.cancelled.contains(&id), "we sent DATA on call {id} after CANCEL");
                } else {
                    let kind = cx.served_kinds.get(&id).unwrap_or_else(|| panic!("DATA on peer call {id} never seen"));
                    assert!(kind.callee_sends(), "we sent DATA as the callee of a {kind:?} call {id}");
                    assert!(!self.answered.contains(&id), "we sent DATA on call {id} after answering it");
                }
                let cost = (payload.len() as u64).max(1);
                let sent = self.data_cost.entry(id).or_default();
                if let Some(credits) = cx.credits {
                    let granted = u64::from(cx.peer.initial_stream_window) + credits.get(&id).copied().unwrap_or(0);
                    assert!(
                        *sent < granted,
                        "we sent DATA on call {id} with no credit left ({sent} of {granted} used)"
                    );
                }
                *sent += cost;
            }
            Frame::End { id } => {
                let kind = cx.our_calls.get(&id).unwrap_or_else(|| panic!("END on call {id} never made"));
                assert!(kind.caller_sends(), "we sent END on a {kind:?} call {id}");
                assert!(!self.cancelled.contains(&id), "we sent END on call {id} after CANCEL");
                assert!(self.ended.insert(id), "we sent END twice on call {id}");
            }
            Frame::Credit { .. } | Frame::Ping { .. } | Frame::Pong { .. } => {}
            Frame::Message { subscription, .. }
            | Frame::Messages { subscription, .. }
            | Frame::Lagged { subscription, .. } => {
                assert_eq!(cx.role, Role::Server, "a client delivered");
                if let Some(subs) = cx.peer_subs {
                    assert!(subs.contains(&subscription), "delivery for subscription {subscription} never made");
                }
            }
            Frame::Ack { id, .. } => {
                assert_eq!(cx.role, Role::Server, "a client wrote ACK");
                assert!(!Self::ours(cx, id), "ACK of our own id {id}");
                assert!(self.acked.insert(id), "we acknowledged operation {id} twice");
            }
            Frame::Goodbye(_) => {
                assert!(!self.goodbye, "we wrote GOODBYE twice");
                self.goodbye = true;
            }
        }
    }
}
