//! Connection configurations chosen by the fuzz input, always valid and
//! small, so every limit is reachable with a few KiB of input.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use wharf_core::{Config, Text};

/// The fixed configuration of the `handshake_*` targets: defaults, with
/// limits shrunk so a fuzz input can reach every one of them.
pub fn handshake_config() -> Arc<Config> {
    let mut c = Config::default();
    c.name = Text::from_static("fuzz");
    c.max_frame_size = 4096;
    c.max_handshake_size = 4096;
    c.max_in_flight = 4;
    c.max_streams = 2;
    c.max_subscriptions = 4;
    c.max_method_len = 64;
    c.max_topic_len = 64;
    c.max_metadata_entries = 4;
    c.initial_stream_window = 1024;
    c.max_inbound_buffered = 8192;
    c.max_outbound_buffered = 4096;
    c.validate().expect("handshake_config is valid");
    Arc::new(c)
}

/// Limits and timeouts of the local connection in the `session_*` targets.
#[derive(Arbitrary, Debug, Clone)]
pub struct Knobs {
    frame_kib: u8,
    handshake_kib: u8,
    in_flight: u8,
    streams: u8,
    subscriptions: u8,
    method_len: u8,
    topic_len: u8,
    metadata: u8,
    window: u16,
    inbound: u16,
    outbound: u16,
    request_timeout_ms: Option<u16>,
    keepalive_ms: Option<u16>,
    close_timeout_ms: u16,
    write_stall_ms: u16,
    handshake_timeout_ms: u16,
    name_len: u8,
    /// Also check that a name ending with NUL is refused.
    name_nul: bool,
}

impl Knobs {
    /// Roomy limits (for scripted inputs and seeds): 8 KiB frames, 8 calls,
    /// 4 streams, 8 subscriptions, 64-byte names, 4 metadata entries, 16 KiB
    /// buffers, 1 s request timeout, 1 s keepalive.
    pub fn roomy() -> Knobs {
        Knobs {
            frame_kib: 7,
            handshake_kib: 0,
            in_flight: 7,
            streams: 4,
            subscriptions: 8,
            method_len: 63,
            topic_len: 63,
            metadata: 4,
            window: 4095,
            inbound: 16383,
            outbound: 16383,
            request_timeout_ms: Some(999),
            keepalive_ms: Some(900),
            close_timeout_ms: 999,
            write_stall_ms: 4999,
            handshake_timeout_ms: 999,
            name_len: 4,
            name_nul: false,
        }
    }

    /// The configuration these knobs describe (always valid).
    pub fn config(&self) -> Arc<Config> {
        let mut c = Config::default();
        let name = "n".repeat(usize::from(self.name_len % 32));
        if self.name_nul {
            // A NUL would make every peer refuse our HELLO / WELCOME: the
            // configuration must be refused (fixed in 413cd60).
            let mut bad = Config::default();
            bad.name = Text::from(format!("{name}\0"));
            assert!(bad.validate().is_err(), "Config::validate accepts a name containing NUL");
        }
        c.name = Text::from(name);
        c.max_frame_size = 1024 * (1 + u32::from(self.frame_kib % 8));
        c.max_handshake_size = 4096 + 1024 * u32::from(self.handshake_kib % 13);
        c.max_in_flight = 1 + u32::from(self.in_flight % 8);
        c.max_streams = u32::from(self.streams % 5);
        c.max_subscriptions = u32::from(self.subscriptions % 9);
        c.max_method_len = 1 + u16::from(self.method_len % 64);
        c.max_topic_len = 1 + u16::from(self.topic_len % 64);
        c.max_metadata_entries = u16::from(self.metadata % 5);
        c.initial_stream_window = 1 + u32::from(self.window % 4096);
        c.max_inbound_buffered = 1 + usize::from(self.inbound % 16384);
        c.max_outbound_buffered = 1 + usize::from(self.outbound % 16384);
        c.request_timeout = self.request_timeout_ms.map(|ms| Duration::from_millis(1 + u64::from(ms)));
        c.keepalive_interval = self.keepalive_ms.map(|ms| Duration::from_millis(100 + u64::from(ms % 5000)));
        c.close_timeout = Duration::from_millis(1 + u64::from(self.close_timeout_ms));
        c.write_stall_timeout = Duration::from_millis(1 + u64::from(self.write_stall_ms));
        c.handshake_timeout = Duration::from_millis(1 + u64::from(self.handshake_timeout_ms));
        c.validate().expect("knobs always give a valid config");
        Arc::new(c)
    }
}
