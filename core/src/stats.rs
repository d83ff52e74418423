//! Counters: traffic, and one counter for every limit that was hit.

/// Counters of one connection, read with
/// [`Connection::stats`](crate::Connection::stats).
///
/// The `*_refused`, `*_ignored` and `*_paused` fields count limit hits and
/// tolerated races; each names the limit or rule in its documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames decoded.
    pub frames_received: u64,
    /// Frames queued for sending.
    pub frames_sent: u64,
    /// Bytes handed to the connection by the driver.
    pub bytes_received: u64,
    /// Bytes the driver reported written.
    pub bytes_sent: u64,
    /// Calls we made.
    pub calls_sent: u64,
    /// Calls the peer made that were dispatched to us.
    pub calls_received: u64,
    /// Our calls that hit their deadline.
    pub calls_timed_out: u64,
    /// Peer calls answered `BUSY` (`max_in_flight`).
    pub calls_refused_busy: u64,
    /// Peer streaming calls answered `TOO_MANY_STREAMS` (`max_streams`).
    pub streams_refused: u64,
    /// Peer calls answered `INVALID_REQUEST` (`max_method_len`,
    /// `max_metadata_entries`, empty method).
    pub calls_refused_invalid: u64,
    /// Peer calls answered `SHUTTING_DOWN` because we were closing.
    pub calls_refused_closing: u64,
    /// Subscriptions refused (`max_subscriptions`, `max_topic_len`, closing).
    pub subscriptions_refused: u64,
    /// Publishes refused or dropped (`max_topic_len`, `max_in_flight` acks, closing).
    pub publishes_refused: u64,
    /// Notifications dropped (`max_method_len`, `max_metadata_entries`).
    pub notifications_ignored: u64,
    /// Responses for calls that had already ended (cancelled or timed out).
    pub late_responses_ignored: u64,
    /// Other frames for calls, streams or subscriptions that had already
    /// ended (tolerated races: CANCEL, DATA, CREDIT, MESSAGE, PONG).
    pub stale_frames_ignored: u64,
    /// Times a command returned `Blocked` (`max_outbound_buffered`).
    pub outbound_blocked: u64,
    /// Times reading was paused (`wants_read` turned false): events held
    /// reached `max_inbound_buffered`, or the outbound queue reached twice
    /// `max_outbound_buffered`, whether input or a command filled it.
    pub reads_paused: u64,
    /// Keepalive pings sent.
    pub keepalive_pings: u64,
    /// 1 if the connection ended on a frame above `max_frame_size` or
    /// `max_handshake_size`.
    pub frames_too_large: u64,
    /// 1 if the connection ended on any protocol violation.
    pub protocol_errors: u64,
    /// 1 if the connection ended on the handshake timeout.
    pub handshake_timeouts: u64,
    /// 1 if the connection ended on the keepalive timeout.
    pub keepalive_timeouts: u64,
    /// 1 if the connection ended on the write stall timeout.
    pub write_stalls: u64,
}
