//! Inbound: preamble check, frame parsing, and what each frame does.

use std::time::Duration;

use bytes::{Buf, Bytes};

use super::{Connection, InCall, Op, RecvWindow, Role, State, SubState};
use crate::config::MIN_KEEPALIVE;
use crate::error::{AckError, CallError, ConnectionError, ProtocolError};
use crate::event::{
    CancelReason, Event, HandshakeRequest, IncomingCall, IncomingNotification, PeerLimits, PublishId, RequestId,
    SubscriptionId,
};
use crate::text::Text;
use crate::wire::{
    Code, ErrorBody, Frame, FrameType, HEADER_LEN, Header, Hello, MAX_FRAME_SIZE_CEILING, MAX_VERSION, MIN_VERSION,
    NO_HINT, Notify, PREAMBLE, Reject, Request, Welcome,
};

use super::MIN_PEER_FRAME;

/// A copy of `t` in an allocation of its own (none if empty), for text
/// kept for the connection's lifetime: a slice of the frame would pin the
/// whole receive block it came in.
fn own_text(t: &Text) -> Text {
    if t.is_empty() { Text::new() } else { Text::from(t.as_str().to_owned()) }
}

fn hint(ms: u32) -> Option<Duration> {
    (ms != NO_HINT).then(|| Duration::from_millis(u64::from(ms)))
}

impl Connection {
    /// Parses and handles every complete frame in the receive buffer.
    pub(super) fn process_input(&mut self) {
        while !self.is_closed() {
            if self.preamble_seen < PREAMBLE.len() {
                if !self.check_preamble() {
                    break;
                }
                continue;
            }
            let header = match self.pending_header {
                Some(h) => h,
                None => {
                    if self.recv.len() < HEADER_LEN {
                        break;
                    }
                    let mut raw = [0u8; HEADER_LEN];
                    raw.copy_from_slice(&self.recv[..HEADER_LEN]);
                    match Header::decode(&raw, self.frame_limit()) {
                        Ok(h) => {
                            self.pending_header = Some(h);
                            h
                        }
                        Err(e) => {
                            self.protocol_error(e);
                            break;
                        }
                    }
                }
            };
            let total = HEADER_LEN + header.len as usize;
            if self.recv.len() < total {
                break;
            }
            self.pending_header = None;
            let body = if header.len == 0 {
                // No body (PING, PONG, CANCEL, ...): nothing is cut from
                // the block, which then stays unshared.
                self.recv.advance(HEADER_LEN);
                Bytes::new()
            } else {
                let mut body = self.recv.split_to(total).freeze();
                body.advance(HEADER_LEN);
                body
            };
            self.stats.frames_received += 1;
            // One entry over the limit is kept so the frame is still
            // refused for it, with memory bounded by the limit.
            let keep = self.config.max_metadata_entries as usize + 1;
            match Frame::decode_keeping(&header, body, keep) {
                Ok(frame) => self.handle_frame(frame),
                Err(e) => self.protocol_error(e),
            }
        }
        if self.is_closed() {
            self.recv.clear();
        }
        self.note_read_pause();
    }

    /// Consumes preamble bytes; false if more are needed or it failed.
    fn check_preamble(&mut self) -> bool {
        let want = &PREAMBLE[self.preamble_seen..];
        let n = want.len().min(self.recv.len());
        if n == 0 {
            return false;
        }
        if let Some(i) = (0..n).find(|&i| self.recv[i] != want[i]) {
            let offset = self.preamble_seen + i;
            let e = ProtocolError::BadPreamble { offset, found: self.recv[i], expected: PREAMBLE[offset] };
            self.stats.protocol_errors = 1;
            tracing::debug!(role = ?self.role, error = %e, "wharf: not a wharf peer");
            // Not a wharf peer: say nothing to it.
            self.fail(ConnectionError::Protocol(e), None);
            return false;
        }
        self.recv.advance(n);
        self.preamble_seen += n;
        self.preamble_seen == PREAMBLE.len()
    }

    fn handle_frame(&mut self, frame: Frame) {
        self.last_recv = self.now;
        self.keepalive_outstanding = false;
        match self.state {
            State::ServerAwaitHello => match frame {
                Frame::Hello(h) => self.on_hello(h),
                other => self.unexpected(other.frame_type(), "the first frame must be HELLO"),
            },
            State::ServerAwaitAccept(_) => {
                self.unexpected(frame.frame_type(), "nothing may follow HELLO before WELCOME")
            }
            State::ClientAwaitWelcome => match frame {
                Frame::Welcome(w) => self.on_welcome(w),
                Frame::Reject(r) => self.on_reject(r),
                other => self.unexpected(other.frame_type(), "expected WELCOME or REJECT"),
            },
            State::Established => self.on_frame(frame),
            State::Closed(_) => {}
        }
    }

    fn unexpected(&mut self, frame: FrameType, reason: &'static str) {
        self.protocol_error(ProtocolError::UnexpectedFrame { frame, reason });
    }

    fn bad_id(&mut self, frame: FrameType, id: u64, reason: &'static str) {
        self.protocol_error(ProtocolError::BadId { frame, id, reason });
    }

    fn check_limits(&mut self, frame: FrameType, max_frame_size: u32, window: u32) -> bool {
        if max_frame_size < MIN_PEER_FRAME {
            self.protocol_error(ProtocolError::Malformed { frame, reason: "max_frame_size below 1024" });
            return false;
        }
        if window == 0 || window > i32::MAX as u32 {
            self.protocol_error(ProtocolError::Malformed {
                frame,
                reason: "initial_stream_window outside 1..=2147483647",
            });
            return false;
        }
        true
    }

    fn on_hello(&mut self, h: Hello) {
        if !self.check_limits(FrameType::Hello, h.max_frame_size, h.initial_stream_window) {
            return;
        }
        let lo = h.min_version.max(MIN_VERSION);
        let hi = h.max_version.min(MAX_VERSION);
        if h.min_version > h.max_version || lo > hi {
            self.send_reject(Code::VERSION_MISMATCH, "no common protocol version", NO_HINT);
            self.fail(
                ConnectionError::VersionMismatch {
                    our_min: MIN_VERSION,
                    our_max: MAX_VERSION,
                    peer_min: h.min_version,
                    peer_max: h.max_version,
                },
                None,
            );
            return;
        }
        self.version = hi;
        self.keepalive = self.config.keepalive_interval.map(|ours| {
            let asked = Duration::from_millis(u64::from(h.keepalive_ms));
            if h.keepalive_ms > 0 && asked < ours { asked.max(MIN_KEEPALIVE) } else { ours }
        });
        self.peer = PeerLimits {
            max_frame_size: h.max_frame_size.min(MAX_FRAME_SIZE_CEILING),
            max_in_flight: h.max_in_flight,
            max_streams: h.max_streams,
            max_subscriptions: 0,
            initial_stream_window: h.initial_stream_window,
        };
        self.state = State::ServerAwaitAccept(own_text(&h.client_name));
        self.emit(Event::HandshakeRequest(HandshakeRequest {
            version: hi,
            client_name: h.client_name,
            auth: h.auth,
            limits: self.peer,
        }));
    }

    fn on_welcome(&mut self, w: Welcome) {
        if !self.check_limits(FrameType::Welcome, w.max_frame_size, w.initial_stream_window) {
            return;
        }
        if w.version < MIN_VERSION || w.version > MAX_VERSION {
            self.protocol_error(ProtocolError::Malformed {
                frame: FrameType::Welcome,
                reason: "the server chose a version we did not offer",
            });
            return;
        }
        self.version = w.version;
        self.connection_id = w.connection_id;
        self.keepalive =
            (w.keepalive_ms > 0).then(|| Duration::from_millis(u64::from(w.keepalive_ms)).max(MIN_KEEPALIVE));
        self.peer = PeerLimits {
            max_frame_size: w.max_frame_size.min(MAX_FRAME_SIZE_CEILING),
            max_in_flight: w.max_in_flight,
            max_streams: w.max_streams,
            max_subscriptions: w.max_subscriptions,
            initial_stream_window: w.initial_stream_window,
        };
        self.establish(own_text(&w.server_name));
    }

    fn on_reject(&mut self, r: Reject) {
        let err = if r.code == Code::VERSION_MISMATCH {
            ConnectionError::VersionMismatch {
                our_min: MIN_VERSION,
                our_max: MAX_VERSION,
                peer_min: r.min_version,
                peer_max: r.max_version,
            }
        } else {
            ConnectionError::Rejected {
                code: r.code,
                reason: r.reason.to_string(),
                retry_after: hint(r.retry_after_ms),
            }
        };
        self.fail(err, None);
    }

    /// An operation id from the peer: right parity, strictly increasing.
    fn accept_peer_op(&mut self, frame: FrameType, id: u64) -> bool {
        if self.is_ours(id) {
            self.bad_id(frame, id, "wrong parity for the sender's role");
            return false;
        }
        if id <= self.last_peer_op {
            self.bad_id(frame, id, "operation ids must increase");
            return false;
        }
        self.last_peer_op = id;
        true
    }

    /// Whether `id` (one of ours) was ever issued.
    fn issued_by_us(&self, id: u64) -> bool {
        self.is_ours(id) && id < self.next_op
    }

    /// Whether `id` (one of the peer's) was ever received.
    fn issued_by_peer(&self, id: u64) -> bool {
        !self.is_ours(id) && id <= self.last_peer_op
    }

    /// The peer sent GOODBYE and must start nothing new.
    fn peer_said_goodbye(&self) -> bool {
        self.close.as_ref().is_some_and(|c| c.received.is_some())
    }

    /// We sent GOODBYE: new peer operations are answered `SHUTTING_DOWN`.
    fn we_said_goodbye(&self) -> bool {
        self.close.as_ref().is_some_and(|c| c.goodbye_sent)
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Hello(_) | Frame::Welcome(_) | Frame::Reject(_) => {
                self.unexpected(frame.frame_type(), "the handshake happens once")
            }
            Frame::Request(r) => self.on_request(r),
            Frame::Response { id, payload } => self.on_outcome(FrameType::Response, id, Ok(payload)),
            Frame::Error(ErrorBody { id, code, message, data }) => {
                self.on_outcome(FrameType::Error, id, Err(CallError::Remote { code, message, data }))
            }
            Frame::Notify(n) => self.on_notify(n),
            Frame::Cancel { id } => self.on_cancel(id),
            Frame::Data { id, payload } => self.on_data(id, payload),
            Frame::End { id } => self.on_end(id),
            Frame::Credit { id, increment } => self.on_credit(id, increment),
            Frame::Subscribe { id, topic, prefix, policy } => {
                if self.role != Role::Server {
                    return self.unexpected(FrameType::Subscribe, "only clients subscribe");
                }
                if !self.accept_peer_op(FrameType::Subscribe, id) {
                    return;
                }
                if self.peer_said_goodbye() {
                    return self.unexpected(FrameType::Subscribe, "sent after GOODBYE");
                }
                let refuse = if self.we_said_goodbye() {
                    Some(Code::SHUTTING_DOWN)
                } else if (topic.is_empty() && !prefix) || topic.len() > self.config.max_topic_len as usize {
                    Some(Code::INVALID_TOPIC)
                } else if self.subs().len() >= self.config.max_subscriptions as usize {
                    Some(Code::TOO_MANY_SUBSCRIPTIONS)
                } else {
                    None
                };
                if let Some(code) = refuse {
                    self.stats.subscriptions_refused += 1;
                    self.enqueue(&Frame::Ack { id, status: code, value: 0 });
                    return;
                }
                let p = self.pubsub();
                p.subs.insert(id, SubState::Pending);
                p.ops.insert(id, Op::Subscribe);
                self.emit(Event::Subscribe { id: SubscriptionId(id), topic, prefix, policy });
            }
            Frame::Unsubscribe { id, subscription } => {
                if self.role != Role::Server {
                    return self.unexpected(FrameType::Unsubscribe, "only clients unsubscribe");
                }
                if !self.accept_peer_op(FrameType::Unsubscribe, id) {
                    return;
                }
                // A batch for it must not grow past this point.
                self.out.end_batch();
                let status = match self.remove_sub(subscription) {
                    Some(state) => {
                        if state == SubState::Pending && self.remove_op(subscription).is_some() {
                            // The application never answered the SUBSCRIBE:
                            // acknowledge it now so each operation gets one ACK.
                            self.enqueue(&Frame::Ack { id: subscription, status: Code::OK, value: 0 });
                        }
                        self.emit(Event::Unsubscribe { id: SubscriptionId(subscription) });
                        Code::OK
                    }
                    None => Code::UNKNOWN_SUBSCRIPTION,
                };
                self.enqueue(&Frame::Ack { id, status, value: 0 });
                self.maybe_finish_close();
            }
            Frame::Publish { id, topic, payload } => {
                if self.role != Role::Server {
                    return self.unexpected(FrameType::Publish, "only clients publish over the wire");
                }
                if id != 0 && !self.accept_peer_op(FrameType::Publish, id) {
                    return;
                }
                if self.peer_said_goodbye() {
                    return self.unexpected(FrameType::Publish, "sent after GOODBYE");
                }
                let refuse = if self.we_said_goodbye() {
                    Some(Code::SHUTTING_DOWN)
                } else if topic.is_empty() || topic.len() > self.config.max_topic_len as usize {
                    Some(Code::INVALID_TOPIC)
                } else if id != 0 && self.pending_publishes >= self.config.max_in_flight {
                    Some(Code::BUSY)
                } else {
                    None
                };
                if let Some(code) = refuse {
                    self.stats.publishes_refused += 1;
                    if id != 0 {
                        self.enqueue(&Frame::Ack { id, status: code, value: 0 });
                    }
                    return;
                }
                let ack = (id != 0).then(|| {
                    self.pubsub().ops.insert(id, Op::Publish);
                    self.pending_publishes += 1;
                    PublishId(id)
                });
                self.emit(Event::Publish { ack, topic, payload });
            }
            Frame::Message { subscription, topic, payload } => {
                if let Some(sub) = self.client_sub(FrameType::Message, subscription) {
                    self.emit(Event::Message { subscription: sub, topic, payload });
                }
            }
            Frame::Messages { subscription, topic, batch } => {
                if let Some(sub) = self.client_sub(FrameType::Messages, subscription) {
                    self.emit_batch(sub, topic, batch);
                }
            }
            Frame::Lagged { subscription, dropped } => {
                if let Some(sub) = self.client_sub(FrameType::Lagged, subscription) {
                    self.emit(Event::Lagged { subscription: sub, dropped });
                }
            }
            Frame::Ack { id, status, value } => self.on_ack(id, status, value),
            Frame::Ping { id } => self.enqueue(&Frame::Pong { id }),
            Frame::Pong { id } if id != 0 && id == self.keepalive_ping => self.keepalive_ping = 0,
            Frame::Pong { id } => match self.pings.iter().position(|p| p.id == id) {
                Some(i) => {
                    if let Some(p) = self.pings.remove(i) {
                        self.emit(Event::Pong { id, rtt: self.now.saturating_duration_since(p.sent) });
                    }
                }
                None => self.stats.stale_frames_ignored += 1,
            },
            Frame::Goodbye(g) => {
                if self.peer_said_goodbye() {
                    return self.unexpected(FrameType::Goodbye, "GOODBYE sent twice");
                }
                let reconnect_after = hint(g.reconnect_after_ms);
                let received = Some((g.code, g.message.clone(), reconnect_after));
                let answer = match &mut self.close {
                    Some(c) => {
                        c.received = received;
                        !std::mem::replace(&mut c.goodbye_sent, true)
                    }
                    None => {
                        self.close = Some(Box::new(super::Closing {
                            initiated_locally: false,
                            goodbye_sent: true,
                            local: None,
                            received,
                            deadline: self.now + self.config.close_timeout,
                        }));
                        true
                    }
                };
                if answer {
                    // Answer with our own GOODBYE: everything we sent before it
                    // was sent before we knew, and the peer answers it.
                    self.enqueue(&Frame::Goodbye(crate::wire::Goodbye {
                        code: Code::OK,
                        reconnect_after_ms: NO_HINT,
                        message: Text::new(),
                    }));
                }
                self.emit(Event::GoodbyeReceived { code: g.code, message: g.message, reconnect_after });
                self.maybe_finish_close();
            }
        }
    }

    /// Client: the subscription a MESSAGE or LAGGED is for, or `None` if it
    /// is a tolerated race (already unsubscribed).
    fn client_sub(&mut self, frame: FrameType, id: u64) -> Option<SubscriptionId> {
        if self.role != Role::Client {
            self.unexpected(frame, "only servers deliver");
            return None;
        }
        match self.subs().get(&id) {
            Some(SubState::Pending | SubState::Active) => Some(SubscriptionId(id)),
            _ if self.issued_by_us(id) => {
                self.stats.stale_frames_ignored += 1;
                None
            }
            _ => {
                self.bad_id(frame, id, "no such subscription was ever made");
                None
            }
        }
    }

    fn on_request(&mut self, r: Request) {
        let id = r.id;
        if !self.accept_peer_op(FrameType::Request, id) {
            return;
        }
        if self.peer_said_goodbye() {
            return self.unexpected(FrameType::Request, "sent after GOODBYE");
        }
        let refuse = if self.we_said_goodbye() {
            self.stats.calls_refused_closing += 1;
            Some((Code::SHUTTING_DOWN, "the server is shutting down; the call was not processed"))
        } else if r.method.is_empty() || r.method.len() > self.config.max_method_len as usize {
            self.stats.calls_refused_invalid += 1;
            Some((Code::INVALID_REQUEST, "method name empty or longer than the receiver allows"))
        } else if r.metadata.len() > self.config.max_metadata_entries as usize {
            self.stats.calls_refused_invalid += 1;
            Some((Code::INVALID_REQUEST, "more metadata entries than the receiver allows"))
        } else if self.incoming.len() >= self.config.max_in_flight as usize {
            self.stats.calls_refused_busy += 1;
            Some((Code::BUSY, "too many calls in flight; the call was not processed"))
        } else if r.kind.is_stream() && self.in_streams >= self.config.max_streams {
            self.stats.streams_refused += 1;
            Some((Code::TOO_MANY_STREAMS, "too many streams open; the call was not processed"))
        } else {
            None
        };
        if let Some((code, message)) = refuse {
            self.enqueue(&Frame::Error(ErrorBody {
                id,
                code,
                message: Text::from_static(message),
                data: Bytes::new(),
            }));
            return;
        }
        let deadline = r.deadline_ms.map(|ms| self.now + Duration::from_millis(u64::from(ms)));
        if let Some(d) = deadline {
            self.push_timer(d, id);
        }
        if r.kind.is_stream() {
            self.in_streams += 1;
        }
        self.incoming.insert(
            id,
            InCall {
                kind: r.kind,
                deadline,
                peer_ended: false,
                send_credit: i64::from(self.peer.initial_stream_window),
                send_blocked: false,
                recv: RecvWindow { credit: i64::from(self.config.initial_stream_window), held: 0, grant: 0 },
            },
        );
        self.stats.calls_received += 1;
        self.emit(Event::Request(IncomingCall {
            id: RequestId(id),
            kind: r.kind,
            method: r.method,
            payload: r.payload,
            metadata: r.metadata,
            trace_id: r.trace_id,
            deadline,
        }));
    }

    fn on_outcome(&mut self, frame: FrameType, id: u64, result: Result<Bytes, CallError>) {
        if !self.is_ours(id) {
            return self.bad_id(frame, id, "answers a call the receiver never made");
        }
        if self.remove_outgoing(id).is_some() {
            self.emit(Event::Response { id: RequestId(id), result });
            self.maybe_finish_close();
        } else if self.issued_by_us(id) {
            // The call already ended here (cancelled or timed out): a race.
            self.stats.late_responses_ignored += 1;
        } else {
            self.bad_id(frame, id, "answers a call the receiver never made");
        }
    }

    fn on_notify(&mut self, n: Notify) {
        if self.peer_said_goodbye() {
            return self.unexpected(FrameType::Notify, "sent after GOODBYE");
        }
        if n.method.is_empty()
            || n.method.len() > self.config.max_method_len as usize
            || n.metadata.len() > self.config.max_metadata_entries as usize
        {
            self.stats.notifications_ignored += 1;
            return;
        }
        self.emit(Event::Notification(IncomingNotification {
            method: n.method,
            payload: n.payload,
            metadata: n.metadata,
            trace_id: n.trace_id,
        }));
    }

    fn on_cancel(&mut self, id: u64) {
        if self.remove_incoming(id).is_some() {
            self.emit(Event::CallCancelled { id: RequestId(id), reason: CancelReason::Peer });
            self.maybe_finish_close();
        } else if self.issued_by_peer(id) {
            self.stats.stale_frames_ignored += 1;
        } else {
            self.bad_id(FrameType::Cancel, id, "cancels a call that was never made");
        }
    }

    fn on_data(&mut self, id: u64, payload: Bytes) {
        let cost = (payload.len() as i64).max(1);
        let (by_us, by_peer) = (self.issued_by_us(id), self.issued_by_peer(id));
        let recv = if self.is_ours(id) {
            match self.outgoing.get_mut(&id) {
                Some(c) if c.kind.callee_sends() => &mut c.recv,
                Some(_) => {
                    return self.protocol_error(ProtocolError::Stream { id, reason: "the callee may not send DATA" });
                }
                None if by_us => {
                    self.stats.stale_frames_ignored += 1;
                    return;
                }
                None => return self.bad_id(FrameType::Data, id, "no such stream was ever opened"),
            }
        } else {
            match self.incoming.get_mut(&id) {
                Some(c) if c.peer_ended => {
                    return self.protocol_error(ProtocolError::Stream { id, reason: "DATA after END" });
                }
                Some(c) if c.kind.caller_sends() => &mut c.recv,
                Some(_) => {
                    return self.protocol_error(ProtocolError::Stream { id, reason: "the caller may not send DATA" });
                }
                None if by_peer => {
                    self.stats.stale_frames_ignored += 1;
                    return;
                }
                None => return self.bad_id(FrameType::Data, id, "no such stream was ever opened"),
            }
        };
        if recv.credit <= 0 {
            return self.protocol_error(ProtocolError::CreditExceeded { id });
        }
        recv.credit -= cost;
        recv.held += cost as u64;
        self.emit(Event::StreamData { id: RequestId(id), payload });
    }

    fn on_end(&mut self, id: u64) {
        if self.is_ours(id) {
            return self.protocol_error(ProtocolError::Stream { id, reason: "only the caller sends END" });
        }
        let by_peer = self.issued_by_peer(id);
        match self.incoming.get_mut(&id) {
            Some(c) if !c.kind.caller_sends() => self
                .protocol_error(ProtocolError::Stream { id, reason: "END on a call where the caller sends nothing" }),
            Some(c) if c.peer_ended => self.protocol_error(ProtocolError::Stream { id, reason: "END sent twice" }),
            Some(c) => {
                c.peer_ended = true;
                self.emit(Event::StreamEnd { id: RequestId(id) });
            }
            None if by_peer => self.stats.stale_frames_ignored += 1,
            None => self.bad_id(FrameType::End, id, "no such stream was ever opened"),
        }
    }

    fn on_credit(&mut self, id: u64, increment: u32) {
        // CREDIT is for the direction we send in: a caller that sends
        // (client-stream, bidi) or a callee that sends (server-stream, bidi).
        let sends = match (self.outgoing.get(&id), self.incoming.get(&id)) {
            (Some(c), _) => Some(c.kind.caller_sends()),
            (_, Some(c)) => Some(c.kind.callee_sends()),
            _ => None,
        };
        if sends == Some(false) {
            return self
                .protocol_error(ProtocolError::Stream { id, reason: "CREDIT for a direction that carries no DATA" });
        }
        let (credit, blocked) = if let Some(c) = self.outgoing.get_mut(&id) {
            (&mut c.send_credit, &mut c.send_blocked)
        } else if let Some(c) = self.incoming.get_mut(&id) {
            (&mut c.send_credit, &mut c.send_blocked)
        } else if self.issued_by_us(id) || self.issued_by_peer(id) {
            self.stats.stale_frames_ignored += 1;
            return;
        } else {
            return self.bad_id(FrameType::Credit, id, "no such stream was ever opened");
        };
        let was = *credit;
        *credit += i64::from(increment);
        if *credit > i64::from(i32::MAX) {
            return self.protocol_error(ProtocolError::CreditOverflow { id });
        }
        if was <= 0 && *credit > 0 && *blocked {
            *blocked = false;
            self.emit(Event::StreamWritable { id: RequestId(id) });
        }
    }

    fn on_ack(&mut self, id: u64, status: Code, value: u32) {
        if self.role != Role::Client {
            return self.unexpected(FrameType::Ack, "only servers acknowledge");
        }
        let Some(op) = self.remove_op(id) else {
            return self.bad_id(FrameType::Ack, id, "acknowledges no pending operation");
        };
        let ok = status == Code::OK;
        let result = if ok { Ok(()) } else { Err(AckError::Refused(status)) };
        match op {
            Op::Subscribe => {
                if ok {
                    if let Some(s) = self.pubsub_mut().and_then(|p| p.subs.get_mut(&id))
                        && *s == SubState::Pending
                    {
                        *s = SubState::Active;
                    }
                } else if self.subs().get(&id) == Some(&SubState::Pending) {
                    self.remove_sub(id);
                }
                self.emit(Event::SubscribeResult { id: SubscriptionId(id), result });
            }
            Op::Unsubscribe(sub) => {
                self.remove_sub(sub);
                self.emit(Event::UnsubscribeResult { id: SubscriptionId(sub), result });
            }
            Op::Publish => {
                self.pending_publishes -= 1;
                self.emit(Event::PublishResult { id: PublishId(id), result: result.map(|()| value) });
            }
        }
        self.maybe_finish_close();
    }
}
