//! MESSAGES frames (PROTOCOL.md 6.14a): a server connection gathers small
//! deliveries of one subscription and topic into one frame while nothing
//! else is queued after it and nothing was written, and a client connection
//! hands the frame's messages out one `Event::Message` each, with its
//! buffered-bytes accounting back to zero.

mod support;

use support::{Pair, frames_of, messages};
use wharf_core::wire::{Frame, FrameType, MessageBatch};
use wharf_core::{Bytes, Config, Event, SubscribeOptions, SubscriptionId, Text};

/// A connected pair where the client subscribed to each topic exactly and
/// the server accepted each subscription; returns the subscription ids.
fn subscribed(client: Config, topics: &[&str]) -> (Pair, Vec<SubscriptionId>) {
    let mut p = Pair::connected_with(client, Config::default());
    let mut ids = Vec::new();
    for t in topics {
        ids.push(p.client.conn.subscribe(Text::from(t.to_string()), SubscribeOptions::default()).expect("subscribe"));
    }
    p.drive();
    for e in p.server.take() {
        if let Event::Subscribe { id, .. } = e {
            p.server.conn.accept_subscription(id).expect("accept");
        }
    }
    p.drive();
    p.client.take();
    (p, ids)
}

/// The frames the server wrote from byte `from` of its output on.
fn server_frames_since(p: &Pair, from: usize) -> Vec<Frame> {
    let mut all = p.server.wrote[..8].to_vec();
    all.extend_from_slice(&p.server.wrote[from..]);
    frames_of(&all)
}

fn payload(i: u32, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v.truncate(len.max(4));
    Bytes::from(v)
}

/// One MESSAGES frame's shape: subscription, topic, item count.
fn batch_shape(f: &Frame) -> Option<(u64, String, usize)> {
    match f {
        Frame::Messages { subscription, topic, batch } => Some((*subscription, topic.to_string(), batch.len())),
        _ => None,
    }
}

#[test]
fn consecutive_small_deliveries_travel_in_one_frame_and_come_out_one_event_each() {
    let (mut p, ids) = subscribed(Config::default(), &["t"]);
    let topic = Text::from("t");
    let from = p.server.wrote.len();
    let frames_before = p.server.conn.stats().frames_sent;
    let sent: Vec<Bytes> = (0..100).map(|i| payload(i, 64)).collect();
    for b in &sent {
        p.server.conn.deliver(ids[0], &topic, b.clone()).expect("deliver");
    }
    assert_eq!(p.server.conn.stats().frames_sent - frames_before, 1, "one frame for 100 messages");
    p.drive();
    let frames = server_frames_since(&p, from);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(batch_shape(&frames[0]), Some((ids[0].0, "t".into(), 100)));
    let got = messages(&p.client.take());
    assert_eq!(got.len(), 100);
    for (i, (sub, t, b)) in got.iter().enumerate() {
        assert_eq!((*sub, t.as_str(), b), (ids[0], "t", &sent[i]), "message {i}");
    }
    assert_eq!(p.client.conn.inbound_buffered(), 0);
}

#[test]
fn a_batch_ends_at_another_frame_another_subscription_a_large_message_and_a_write() {
    let (mut p, ids) = subscribed(Config::default(), &["t", "u"]);
    let (t, u) = (Text::from("t"), Text::from("u"));
    let from = p.server.wrote.len();
    let s = &mut p.server.conn;
    for i in 0..3 {
        s.deliver(ids[0], &t, payload(i, 10)).unwrap();
    }
    s.deliver_lagged(ids[1], 5).unwrap();
    for i in 3..5 {
        s.deliver(ids[0], &t, payload(i, 10)).unwrap();
    }
    s.deliver(ids[1], &u, payload(5, 10)).unwrap();
    s.deliver(ids[0], &t, payload(6, 2000)).unwrap();
    s.deliver(ids[0], &t, payload(7, 1024)).unwrap();
    s.deliver(ids[0], &t, payload(8, 1025)).unwrap();
    s.deliver(ids[0], &t, payload(9, 0)).unwrap();
    p.drive();
    // A write in between: the next delivery starts a new frame.
    let s = &mut p.server.conn;
    s.deliver(ids[0], &t, payload(10, 10)).unwrap();
    s.deliver(ids[0], &t, payload(11, 10)).unwrap();
    p.drive();

    let frames = server_frames_since(&p, from);
    let shapes: Vec<String> = frames
        .iter()
        .map(|f| match batch_shape(f) {
            Some((sub, topic, n)) => format!("MESSAGES {sub} {topic} x{n}"),
            None => f.frame_type().name().to_string(),
        })
        .collect();
    let (a, b) = (ids[0].0, ids[1].0);
    assert_eq!(
        shapes,
        vec![
            format!("MESSAGES {a} t x3"),
            "LAGGED".into(),
            format!("MESSAGES {a} t x2"),
            format!("MESSAGES {b} u x1"),
            "MESSAGE".into(),
            format!("MESSAGES {a} t x1"),
            "MESSAGE".into(),
            format!("MESSAGES {a} t x1"),
            format!("MESSAGES {a} t x2"),
        ]
    );
    let events = p.client.take();
    let got = messages(&events);
    let order: Vec<u32> = got
        .iter()
        .map(|(_, _, b)| if b.len() >= 4 { u32::from_le_bytes(b[..4].try_into().unwrap()) } else { 9 })
        .collect();
    assert_eq!(order, (0..12).collect::<Vec<u32>>());
    assert_eq!(got[9].2.len(), 4, "payload(9, 0) is four bytes");
    assert!(events.iter().any(|e| matches!(e, Event::Lagged { dropped: 5, .. })));
    assert_eq!(p.client.conn.inbound_buffered(), 0);
}

#[test]
fn batches_stay_within_16_kib_and_the_clients_frame_limit() {
    for (limit, cap) in [(16 * 1024 * 1024, 16 * 1024), (4096, 4096)] {
        let client = Config { max_frame_size: limit, ..Config::default() };
        let (mut p, ids) = subscribed(client, &["topic"]);
        let topic = Text::from("topic");
        let from = p.server.wrote.len();
        for i in 0..200 {
            p.server.conn.deliver(ids[0], &topic, payload(i, 1000)).unwrap();
        }
        p.drive();
        let frames = server_frames_since(&p, from);
        let mut items = 0;
        for f in &frames {
            let body = f.body_len().unwrap() as usize;
            assert!(body <= cap, "a {body}-byte body over {cap} (client limit {limit})");
            items += batch_shape(f).expect("every frame a batch").2;
        }
        assert_eq!(items, 200);
        assert!(frames.len() < 200 / 3, "{} frames for 200 messages: not batched", frames.len());
        assert_eq!(messages(&p.client.take()).len(), 200);
    }
}

#[test]
fn held_bytes_of_a_batch_are_released_message_by_message() {
    let (mut p, ids) = subscribed(Config::default(), &["news"]);
    let topic = Text::from("news");
    let lens = [64usize, 0, 300, 7];
    for (i, len) in lens.iter().enumerate() {
        p.server.conn.deliver(ids[0], &topic, Bytes::from(vec![i as u8; *len])).unwrap();
    }
    // Move the bytes without polling the client's events.
    let mut out = Vec::new();
    while let Some(chunk) = p.server.conn.poll_transmit(p.now) {
        out.extend_from_slice(&chunk);
    }
    p.client.conn.handle_input(&out, p.now);
    let mut held = 64 + "news".len() + lens.iter().map(|l| 4 + l).sum::<usize>();
    assert_eq!(p.client.conn.inbound_buffered(), held);
    for (i, len) in lens.iter().enumerate() {
        match p.client.conn.poll_event() {
            Some(Event::Message { subscription, topic, payload }) => {
                assert_eq!((subscription, topic.as_str(), payload.len()), (ids[0], "news", *len));
                assert!(payload.iter().all(|&b| b == i as u8));
            }
            other => panic!("message {i}: {other:?}"),
        }
        held -= 4 + len;
        if i == lens.len() - 1 {
            held = 0;
        }
        assert_eq!(p.client.conn.inbound_buffered(), held, "after message {i}");
    }
    assert!(p.client.conn.poll_event().is_none());
}

#[test]
fn a_batch_for_a_subscription_the_client_ended_is_ignored_and_counted() {
    let (mut p, ids) = subscribed(Config::default(), &["t"]);
    p.client.conn.unsubscribe(ids[0]).expect("unsubscribe");
    // The server has not seen the UNSUBSCRIBE yet: its MESSAGES cross it.
    let topic = Text::from("t");
    for i in 0..3 {
        p.server.conn.deliver(ids[0], &topic, payload(i, 8)).unwrap();
    }
    let mut out = Vec::new();
    while let Some(chunk) = p.server.conn.poll_transmit(p.now) {
        out.extend_from_slice(&chunk);
    }
    let ignored = p.client.conn.stats().stale_frames_ignored;
    p.client.conn.handle_input(&out, p.now);
    assert_eq!(p.client.conn.stats().stale_frames_ignored, ignored + 1, "one frame ignored");
    let events: Vec<Event> = std::iter::from_fn(|| p.client.conn.poll_event()).collect();
    assert!(messages(&events).is_empty(), "{events:?}");
    assert_eq!(p.client.conn.inbound_buffered(), 0);
}

#[test]
fn message_batches_round_trip_and_refuse_malformed_items() {
    let batch = MessageBatch::from_payloads([&b"a"[..], b"", b"ccc"]).unwrap();
    assert_eq!(batch.len(), 3);
    let items: Vec<Bytes> = batch.iter().collect();
    assert_eq!(items, vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"ccc")]);
    assert_eq!(MessageBatch::new(batch.as_bytes().clone()).unwrap(), batch);
    assert!(MessageBatch::from_payloads(std::iter::empty::<&[u8]>()).is_none());
    for bad in [&b""[..], &[1, 0, 0][..], &[2, 0, 0, 0, b'x'][..], &[0, 0, 0, 0, 9][..]] {
        let err = MessageBatch::new(Bytes::copy_from_slice(bad)).unwrap_err();
        assert!(
            matches!(err, wharf_core::ProtocolError::Malformed { frame: FrameType::Messages, .. }),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn no_message_joins_a_batch_after_its_subscription_ended_or_the_connection_closed() {
    let (mut p, ids) = subscribed(Config::default(), &["t"]);
    let topic = Text::from("t");
    p.server.conn.deliver(ids[0], &topic, payload(1, 8)).unwrap();
    // The client's UNSUBSCRIBE reaches the server while the batch is open.
    p.client.conn.unsubscribe(ids[0]).unwrap();
    let mut c2s = Vec::new();
    while let Some(chunk) = p.client.conn.poll_transmit(p.now) {
        c2s.extend_from_slice(&chunk);
    }
    p.server.conn.handle_input(&c2s, p.now);
    assert_eq!(
        p.server.conn.deliver(ids[0], &topic, payload(2, 8)),
        Err(wharf_core::SendError::UnknownCall { id: ids[0].0 })
    );

    // A closed connection takes nothing, open batch or not.
    let (mut p, ids) = subscribed(Config::default(), &["t"]);
    p.server.conn.deliver(ids[0], &topic, payload(1, 8)).unwrap();
    p.server.conn.handle_eof(p.now);
    assert!(matches!(p.server.conn.deliver(ids[0], &topic, payload(2, 8)), Err(wharf_core::SendError::Closed(_))));
}

#[test]
fn one_subscription_batches_per_published_topic() {
    let (mut p, ids) = subscribed(Config::default(), &["news/"]);
    let from = p.server.wrote.len();
    // Deliveries to one subscription under several topics (as a prefix
    // subscription gets them; prefix matching itself is the broker's, in
    // pubsub.rs): the server batches on the subscription and the topic.
    let topics = ["news/ab", "news/ac", "news/ac", "news/a", "news/ab", "news/ab"];
    for (i, t) in topics.iter().enumerate() {
        p.server.conn.deliver(ids[0], &Text::from(t.to_string()), payload(i as u32, 8)).unwrap();
    }
    p.drive();
    let shapes: Vec<(String, usize)> =
        server_frames_since(&p, from).iter().filter_map(batch_shape).map(|(_, t, n)| (t, n)).collect();
    assert_eq!(shapes, vec![("news/ab".into(), 1), ("news/ac".into(), 2), ("news/a".into(), 1), ("news/ab".into(), 2)]);
    let got: Vec<String> = messages(&p.client.take()).into_iter().map(|(_, t, _)| t).collect();
    assert_eq!(got, topics.iter().map(|t| t.to_string()).collect::<Vec<_>>());
}
