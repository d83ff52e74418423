//! Connection configuration: every limit, with a safe default.

use std::time::Duration;

use crate::error::ConfigError;
use crate::text::Text;
use crate::wire::MAX_FRAME_SIZE_CEILING;

/// Smallest keepalive interval a server will agree to.
pub const MIN_KEEPALIVE: Duration = Duration::from_millis(100);

/// Longest timeout accepted anywhere (365 days); longer call timeouts are
/// shortened to this, longer configured ones are refused.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Limits and timeouts of one connection. Each side enforces its own limits
/// on what it receives and announces them in the handshake, so a
/// well-behaved peer never exceeds them and the local API refuses (with
/// [`SendError`](crate::SendError)) what the peer would refuse.
///
/// Defaults follow `reliability-security.md` §1 of the design notes; each
/// field's documentation states its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Name sent in the handshake (client name or server name), for the
    /// peer's logs. Default: empty. At most 1024 bytes.
    pub name: Text,
    /// Largest frame body accepted, checked from the header before any
    /// allocation. Default 16 MiB; at most 128 MiB.
    pub max_frame_size: u32,
    /// Largest HELLO (and so auth payload) a server accepts, and the frame
    /// limit in force until the handshake completes. Default 64 KiB; at
    /// least 4 KiB.
    pub max_handshake_size: u32,
    /// Time from creation until the handshake must be complete. Default 10 s.
    pub handshake_timeout: Duration,
    /// Calls from the peer served concurrently; more are answered `BUSY`
    /// without being dispatched. Default 128.
    pub max_in_flight: u32,
    /// Streaming calls from the peer open concurrently (they also count as
    /// calls in flight); more are answered `TOO_MANY_STREAMS`. Default 128.
    pub max_streams: u32,
    /// Subscriptions per connection. A server refuses more with
    /// `TOO_MANY_SUBSCRIPTIONS`; a client refuses to open more. Default 512.
    pub max_subscriptions: u32,
    /// Longest method name accepted. Default 1024 bytes.
    pub max_method_len: u16,
    /// Longest topic accepted. Default 1024 bytes.
    pub max_topic_len: u16,
    /// Most metadata entries on one call. Default 64.
    pub max_metadata_entries: u16,
    /// Credit granted to the peer on each new stream, in bytes. Default 256 KiB.
    pub initial_stream_window: u32,
    /// Received payload bytes waiting in the event queue above which
    /// [`Connection::wants_read`](crate::Connection::wants_read) turns false
    /// (the adapter stops reading: backpressure). Default 32 MiB.
    pub max_inbound_buffered: usize,
    /// Bytes queued for sending above which commands return
    /// [`SendError::Blocked`](crate::SendError::Blocked). At twice this,
    /// reading from the peer pauses too. Default 8 MiB.
    pub max_outbound_buffered: usize,
    /// Default deadline of a unary call (a call may override it; streaming
    /// calls have none unless given one). Default 25 s.
    pub request_timeout: Option<Duration>,
    /// Keepalive: after this long without receiving anything, send PING;
    /// after three times this long, declare the peer dead. A server's value
    /// (or a shorter one the client asks for, never below 100 ms) is used by
    /// both sides; `None` on the server turns keepalive off. Default 10 s.
    pub keepalive_interval: Option<Duration>,
    /// Longest a graceful close waits for in-flight work to drain. Default 5 s.
    pub close_timeout: Duration,
    /// With bytes queued for the peer and none written for this long, the
    /// connection fails with `PeerNotReading`; after the connection ended,
    /// output still queued is dropped after this long without progress.
    /// Default 30 s.
    pub write_stall_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: Text::new(),
            max_frame_size: 16 * 1024 * 1024,
            max_handshake_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_in_flight: 128,
            max_streams: 128,
            max_subscriptions: 512,
            max_method_len: 1024,
            max_topic_len: 1024,
            max_metadata_entries: 64,
            initial_stream_window: 256 * 1024,
            max_inbound_buffered: 32 * 1024 * 1024,
            max_outbound_buffered: 8 * 1024 * 1024,
            request_timeout: Some(Duration::from_secs(25)),
            keepalive_interval: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(5),
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

fn err(field: &'static str, value: impl ToString, requirement: &'static str) -> ConfigError {
    ConfigError { field, value: value.to_string(), requirement }
}

impl Config {
    /// Checks every value; connections refuse to start with an invalid config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.len() > 1024 {
            return Err(err("name", self.name.len(), "must be at most 1024 bytes"));
        }
        if self.name.contains('\0') {
            return Err(err("name", format!("{:?}", self.name), "must not contain NUL"));
        }
        if self.max_frame_size < 1024 || self.max_frame_size > MAX_FRAME_SIZE_CEILING {
            return Err(err("max_frame_size", self.max_frame_size, "must be in 1024..=134217728 (128 MiB)"));
        }
        // A WELCOME or REJECT carries a name or reason of up to 1024 bytes;
        // 4 KiB leaves room for them and a modest auth payload.
        if self.max_handshake_size < 4096 || self.max_handshake_size > MAX_FRAME_SIZE_CEILING {
            return Err(err("max_handshake_size", self.max_handshake_size, "must be in 4096..=134217728"));
        }
        for (field, d) in [
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("close_timeout", Some(self.close_timeout)),
            ("write_stall_timeout", Some(self.write_stall_timeout)),
            ("request_timeout", self.request_timeout),
        ] {
            if let Some(d) = d
                && d > MAX_TIMEOUT
            {
                return Err(err(field, format!("{d:?}"), "must be at most 365 days"));
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(err("handshake_timeout", "0", "must be positive"));
        }
        if self.max_in_flight == 0 {
            return Err(err("max_in_flight", 0, "must be at least 1"));
        }
        if self.max_method_len == 0 {
            return Err(err("max_method_len", 0, "must be at least 1"));
        }
        if self.max_topic_len == 0 {
            return Err(err("max_topic_len", 0, "must be at least 1"));
        }
        if self.initial_stream_window == 0 || self.initial_stream_window > i32::MAX as u32 {
            return Err(err("initial_stream_window", self.initial_stream_window, "must be in 1..=2147483647"));
        }
        if self.max_inbound_buffered == 0 {
            return Err(err("max_inbound_buffered", 0, "must be positive"));
        }
        if self.max_outbound_buffered == 0 {
            return Err(err("max_outbound_buffered", 0, "must be positive"));
        }
        if self.request_timeout.is_some_and(|d| d.is_zero()) {
            return Err(err("request_timeout", "0", "must be positive or None"));
        }
        if let Some(k) = self.keepalive_interval {
            if k < MIN_KEEPALIVE {
                return Err(err("keepalive_interval", format!("{k:?}"), "must be at least 100 ms or None"));
            }
            if duration_ms(k) == u32::MAX {
                return Err(err("keepalive_interval", format!("{k:?}"), "must be below 49 days"));
            }
        }
        if self.close_timeout.is_zero() {
            return Err(err("close_timeout", "0", "must be positive"));
        }
        if self.write_stall_timeout.is_zero() {
            return Err(err("write_stall_timeout", "0", "must be positive"));
        }
        Ok(())
    }
}

/// Milliseconds in `d`, saturating at `u32::MAX`, rounding up so that a
/// non-zero duration never becomes 0.
pub(crate) fn duration_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}
