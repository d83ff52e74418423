//! Writes the committed seed inputs under `fuzz/seeds/<target>/`.
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds`. Only the byte-level
//! targets get seeds; the structure-aware ones (`session_*`, which can start
//! from a valid handshake on their own, and `pubsub_fanout`) do not need any.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use wharf_core::Text;
use wharf_core::wire::{
    CallKind, Code, ErrorBody, Frame, Goodbye, Hello, Metadata, NO_HINT, Notify, PREAMBLE, Reject, Request,
    SlowConsumerPolicy, Welcome,
};

fn hello() -> Frame {
    Frame::Hello(Hello {
        min_version: 1,
        max_version: 1,
        max_frame_size: 65536,
        max_in_flight: 8,
        max_streams: 4,
        initial_stream_window: 4096,
        keepalive_ms: 1000,
        client_name: Text::from_static("seed-client"),
        auth: Bytes::from_static(b"token"),
    })
}

fn welcome() -> Frame {
    Frame::Welcome(Welcome {
        connection_id: 42,
        version: 1,
        max_frame_size: 65536,
        max_in_flight: 8,
        max_streams: 4,
        max_subscriptions: 8,
        initial_stream_window: 4096,
        keepalive_ms: 1000,
        server_name: Text::from_static("seed-server"),
    })
}

fn request(id: u64, kind: CallKind, method: &'static str, payload: &'static [u8]) -> Frame {
    let mut metadata = Metadata::new();
    if id % 4 == 3 {
        metadata.insert("k", Bytes::from_static(b"v"));
    }
    Frame::Request(Request {
        id,
        kind,
        method: Text::from_static(method),
        deadline_ms: id.is_multiple_of(3).then_some(500),
        trace_id: id.is_multiple_of(5).then_some([3; 16]),
        metadata,
        payload: Bytes::from_static(payload),
    })
}

fn goodbye() -> Frame {
    Frame::Goodbye(Goodbye { code: Code::OK, reconnect_after_ms: 250, message: Text::from_static("bye") })
}

/// Frames a client sends after the handshake.
fn client_frames() -> Vec<Frame> {
    vec![
        Frame::Ping { id: 1 },
        request(1, CallKind::Unary, "echo", b"hello"),
        Frame::Notify(Notify {
            method: Text::from_static("log"),
            trace_id: None,
            metadata: Metadata::new(),
            payload: Bytes::from_static(b"n"),
        }),
        Frame::Subscribe {
            id: 3,
            topic: Text::from_static("news/"),
            prefix: true,
            policy: SlowConsumerPolicy::DropOldest,
        },
        Frame::Publish { id: 5, topic: Text::from_static("news/a"), payload: Bytes::from_static(b"p") },
        Frame::Publish { id: 0, topic: Text::from_static("news/b"), payload: Bytes::new() },
        request(7, CallKind::Bidi, "stream", b""),
        Frame::Data { id: 7, payload: Bytes::from_static(b"chunk") },
        Frame::Credit { id: 7, increment: 100 },
        Frame::End { id: 7 },
        request(9, CallKind::ClientStream, "upload", b""),
        Frame::Cancel { id: 9 },
        Frame::Unsubscribe { id: 11, subscription: 3 },
        request(13, CallKind::ServerStream, "watch", b"w"),
        Frame::Pong { id: 1 },
        goodbye(),
    ]
}

/// Frames a server sends after the handshake (the client under test made no calls).
fn server_frames() -> Vec<Frame> {
    vec![
        Frame::Ping { id: 9 },
        Frame::Notify(Notify {
            method: Text::from_static("tick"),
            trace_id: Some([1; 16]),
            metadata: Metadata::new(),
            payload: Bytes::from_static(b"t"),
        }),
        request(2, CallKind::Unary, "status", b"?"),
        request(4, CallKind::ServerStream, "feed", b""),
        Frame::Data { id: 4, payload: Bytes::from_static(b"d") },
        Frame::Error(ErrorBody { id: 4, code: Code::INTERNAL, message: Text::from_static("oops"), data: Bytes::new() }),
        Frame::Pong { id: 1 },
        goodbye(),
    ]
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&f.to_bytes().expect("seed frame encodes"));
    }
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    // frame_decode: selector byte 3 (64 KiB limit), then frames.
    let mut all = client_frames();
    all.extend(server_frames());
    all.extend([
        hello(),
        welcome(),
        Frame::Reject(Reject {
            code: Code::VERSION_MISMATCH,
            retry_after_ms: NO_HINT,
            min_version: 1,
            max_version: 1,
            reason: Text::from_static("no"),
        }),
        Frame::Response { id: 1, payload: Bytes::from_static(b"r") },
        Frame::Message { subscription: 3, topic: Text::from_static("news/a"), payload: Bytes::from_static(b"m") },
        Frame::Lagged { subscription: 3, dropped: 2 },
        Frame::Ack { id: 3, status: Code::OK, value: 1 },
    ]);
    for (i, f) in all.iter().enumerate() {
        let mut seed = vec![3u8];
        seed.extend_from_slice(&f.to_bytes().unwrap());
        write("frame_decode", &format!("{i:02}-{}", f.frame_type().name().to_lowercase()), &seed);
    }
    let mut seed = vec![3u8];
    seed.extend_from_slice(&encode(&all));
    write("frame_decode", "all-frames", &seed);

    // handshake_server: preamble + HELLO, then a client's traffic.
    let mut hs = PREAMBLE.to_vec();
    hs.extend_from_slice(&encode(&[hello()]));
    write("handshake_server", "hello", &hs);
    let mut full = hs.clone();
    full.extend_from_slice(&encode(&client_frames()));
    write("handshake_server", "hello-session", &full);

    // handshake_client: preamble + WELCOME (or REJECT), then a server's traffic.
    let mut hc = PREAMBLE.to_vec();
    hc.extend_from_slice(&encode(&[welcome()]));
    write("handshake_client", "welcome", &hc);
    let mut full = hc.clone();
    full.extend_from_slice(&encode(&server_frames()));
    write("handshake_client", "welcome-session", &full);
    let mut rj = PREAMBLE.to_vec();
    rj.extend_from_slice(&encode(&[Frame::Reject(Reject {
        code: Code::TOO_MANY_CONNECTIONS,
        retry_after_ms: 1000,
        min_version: 1,
        max_version: 1,
        reason: Text::from_static("busy"),
    })]));
    write("handshake_client", "reject", &rj);
}
