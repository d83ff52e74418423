//! Publish/subscribe: the [`Broker`] on its own (fan-out, matching, queue
//! bounds, slow-consumer policies, edge-triggered readiness), then end to
//! end with several client/server connection pairs sharing one broker
//! through a server-side glue loop written here, over bounded pipes so that
//! a client that stops reading really does fall behind.

mod support;

use std::collections::{BTreeSet, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use support::{Pair, messages};
use wharf_core::broker::{Broker, BrokerConfig, BrokerError, BrokerEvent, Delivery, PublishReport, SubscriberId};
use wharf_core::wire::{Frame, Hello, MAX_VERSION, MIN_VERSION, PREAMBLE};
use wharf_core::{
    AckError, Bytes, BytesMut, Code, Config, Connection, ConnectionError, Event, ProtocolError, PublishId, SendError,
    SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Text,
};

use SlowConsumerPolicy::{Disconnect, DropOldest};

// ----------------------------------------------------------------------
// Broker helpers
// ----------------------------------------------------------------------

fn broker_with(queue_messages: usize, queue_bytes: usize) -> Broker {
    let config = BrokerConfig { queue_messages, queue_bytes, ..BrokerConfig::default() };
    Broker::new(config).unwrap()
}

fn t(s: &str) -> Text {
    Text::from(s.to_string())
}

fn sub(b: &mut Broker, who: u64, id: u64, topic: &str, prefix: bool, policy: SlowConsumerPolicy) {
    b.subscribe(SubscriberId(who), SubscriptionId(id), t(topic), prefix, policy).unwrap();
}

/// Everything queued for one subscriber, in order.
fn drain(b: &mut Broker, who: u64) -> Vec<Delivery> {
    std::iter::from_fn(|| b.next_delivery(SubscriberId(who))).collect()
}

fn message_topics(ds: &[Delivery]) -> Vec<(u64, String)> {
    ds.iter()
        .map(|d| match d {
            Delivery::Message { subscription, topic, .. } => (subscription.0, topic.to_string()),
            other => panic!("expected a message, got {other:?}"),
        })
        .collect()
}

fn broker_events(b: &mut Broker) -> Vec<BrokerEvent> {
    std::iter::from_fn(|| b.poll_event()).collect()
}

/// A payload carrying a sequence number in its first four bytes.
fn numbered(seq: u32, len: usize) -> Bytes {
    let mut v = vec![0xAB; len.max(4)];
    v[..4].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(v)
}

fn seq_of(payload: &Bytes) -> u32 {
    u32::from_le_bytes(payload[..4].try_into().unwrap())
}

// ----------------------------------------------------------------------
// Broker: fan-out and matching
// ----------------------------------------------------------------------

#[test]
fn one_publish_fans_out_to_fifty_subscribers_sharing_one_payload() {
    let mut b = Broker::new(BrokerConfig::default()).unwrap();
    // Subscriber n: every tenth subscribes to everything (empty prefix),
    // other even ones to "room/1" exactly, odd ones to the prefix "room/".
    for n in 1..=50u64 {
        assert!(b.add_subscriber(SubscriberId(n)));
        match n {
            _ if n % 10 == 0 => sub(&mut b, n, 100 + n, "", true, DropOldest),
            _ if n % 2 == 0 => sub(&mut b, n, 100 + n, "room/1", false, DropOldest),
            _ => sub(&mut b, n, 100 + n, "room/", true, DropOldest),
        }
    }
    assert!(!b.add_subscriber(SubscriberId(1)), "adding twice is refused");
    assert_eq!(b.subscriber_count(), 50);

    let payload = Bytes::from(vec![42u8; 10_000]);
    let report = b.publish(&t("room/1"), &payload);
    assert_eq!(report, PublishReport { queued: 50, dropped: 0, disconnected: 0 });
    for n in 1..=50u64 {
        assert_eq!(b.queued(SubscriberId(n)), (1, payload.len() + "room/1".len()));
        match b.next_delivery(SubscriberId(n)) {
            Some(Delivery::Message { subscription, topic, payload: p }) => {
                assert_eq!(subscription, SubscriptionId(100 + n));
                assert_eq!(topic, "room/1");
                assert_eq!(p.as_ptr(), payload.as_ptr(), "subscriber {n} got a copy, not the shared payload");
                assert_eq!(p.len(), payload.len());
            }
            other => panic!("subscriber {n}: {other:?}"),
        }
        assert_eq!(b.next_delivery(SubscriberId(n)), None);
    }
    // 25 odd prefix subscribers plus the 5 catch-alls.
    assert_eq!(b.publish(&t("room/2"), &payload).queued, 30);
    // Only the catch-alls.
    assert_eq!(b.publish(&t("hall"), &payload).queued, 5);
    assert_eq!(b.stats().published, 3);
    assert_eq!(b.stats().queued, 85);
    assert_eq!(b.stats().delivered, 50);
}

#[test]
fn prefix_matching_respects_separators_and_utf8_boundaries() {
    let mut b = Broker::new(BrokerConfig::default()).unwrap();
    let cases: &[(&str, &[(&str, bool)])] = &[
        ("", &[("a", true), ("anything/at/all", true), ("日本", true)]),
        ("a/", &[("a/b", true), ("a/", true), ("a/b/c", true), ("ab", false), ("a", false), ("b/a/", false)]),
        ("日本/", &[("日本/東京", true), ("日本/", true), ("日本", false), ("日", false)]),
        ("é", &[("éa", true), ("é", true), ("è", false), ("e", false)]),
        // A prefix whose length ends inside a multi-byte character of the
        // topic matches nothing (and must not panic on slicing).
        ("ab", &[("a€", false), ("ab€", true)]),
        ("x", &[("€x", false)]),
    ];
    for (i, (prefix, _)) in cases.iter().enumerate() {
        b.add_subscriber(SubscriberId(i as u64));
        sub(&mut b, i as u64, 1, prefix, true, DropOldest);
    }
    for (i, (prefix, topics)) in cases.iter().enumerate() {
        for (topic, should) in topics.iter() {
            b.publish(&t(topic), &Bytes::from_static(b"."));
            let got = drain(&mut b, i as u64);
            let matched = got.iter().any(|d| matches!(d, Delivery::Message { topic: tp, .. } if tp == topic));
            assert_eq!(matched, *should, "prefix {prefix:?} vs topic {topic:?}");
            assert!(got.len() <= 1);
            for j in 0..cases.len() as u64 {
                drain(&mut b, j);
            }
        }
    }
    // Exact subscriptions match only the whole topic.
    b.add_subscriber(SubscriberId(99));
    sub(&mut b, 99, 1, "a/b", false, DropOldest);
    for (topic, should) in [("a/b", true), ("a/b/c", false), ("a/", false), ("a/bc", false)] {
        b.publish(&t(topic), &Bytes::new());
        assert_eq!(!drain(&mut b, 99).is_empty(), should, "exact a/b vs {topic}");
    }
}

#[test]
fn exact_and_prefix_matching_one_subscriber_give_two_deliveries() {
    let mut b = Broker::new(BrokerConfig::default()).unwrap();
    b.add_subscriber(SubscriberId(1));
    sub(&mut b, 1, 11, "s/x", false, DropOldest);
    sub(&mut b, 1, 13, "s/", true, DropOldest);
    sub(&mut b, 1, 15, "", true, DropOldest);
    assert_eq!(b.subscription_count(SubscriberId(1)), 3);
    let report = b.publish(&t("s/x"), &Bytes::from_static(b"p"));
    assert_eq!(report.queued, 3);
    let mut got = message_topics(&drain(&mut b, 1));
    got.sort();
    assert_eq!(got, vec![(11, "s/x".into()), (13, "s/x".into()), (15, "s/x".into())]);
    assert_eq!(b.publish(&t("s/y"), &Bytes::new()).queued, 2);
}

#[test]
fn unsubscribe_removes_queued_messages_and_pending_lag() {
    let mut b = broker_with(4, 1 << 20);
    b.add_subscriber(SubscriberId(1));
    sub(&mut b, 1, 1, "t", false, DropOldest);
    sub(&mut b, 1, 3, "t", true, DropOldest);
    sub(&mut b, 1, 5, "u", false, DropOldest);
    for i in 0..2 {
        b.publish(&t("t"), &numbered(i, 10));
    }
    assert_eq!(b.queued(SubscriberId(1)), (4, 4 * 11));
    // Two more drop the four oldest (two of each subscription).
    b.publish(&t("t"), &numbered(2, 10));
    b.publish(&t("t"), &numbered(3, 10));
    assert_eq!(b.stats().dropped, 4);
    assert!(b.unsubscribe(SubscriberId(1), SubscriptionId(1)));
    assert!(!b.unsubscribe(SubscriberId(1), SubscriptionId(1)), "already gone");
    assert_eq!(b.queued(SubscriberId(1)), (2, 2 * 11));
    let got = drain(&mut b, 1);
    assert_eq!(
        got.iter()
            .map(|d| match d {
                Delivery::Message { subscription, payload, .. } => (subscription.0, Some(seq_of(payload)), 0),
                Delivery::Lagged { subscription, dropped } => (subscription.0, None, *dropped),
            })
            .collect::<Vec<_>>(),
        vec![(3, None, 2), (3, Some(2), 0), (3, Some(3), 0)],
        "no message and no lag report for the removed subscription"
    );
    assert_eq!(b.queued(SubscriberId(1)), (0, 0));
    // Its route is gone too; the other subscriptions are untouched.
    assert_eq!(b.publish(&t("t"), &Bytes::new()).queued, 1);
    assert_eq!(b.publish(&t("u"), &Bytes::new()).queued, 1);
}

#[test]
fn remove_subscriber_cleans_every_route() {
    let mut b = Broker::new(BrokerConfig::default()).unwrap();
    for n in [1, 2] {
        b.add_subscriber(SubscriberId(n));
    }
    sub(&mut b, 1, 1, "x/y", false, DropOldest);
    sub(&mut b, 1, 3, "ab/", true, DropOldest);
    sub(&mut b, 1, 5, "", true, Disconnect);
    // Another subscriber with a prefix of the same length as one removed.
    sub(&mut b, 2, 1, "cd/", true, DropOldest);
    b.publish(&t("x/y"), &Bytes::from_static(b"queued"));
    assert!(b.remove_subscriber(SubscriberId(1)));
    assert!(!b.remove_subscriber(SubscriberId(1)));
    assert_eq!(b.subscriber_count(), 1);
    assert_eq!(b.queued(SubscriberId(1)), (0, 0));
    assert_eq!(b.next_delivery(SubscriberId(1)), None);
    for topic in ["x/y", "ab/z", "anything"] {
        assert_eq!(b.publish(&t(topic), &Bytes::new()), PublishReport::default(), "{topic}");
    }
    assert_eq!(b.publish(&t("cd/1"), &Bytes::new()).queued, 1, "the other subscriber's prefix still routes");
    assert_eq!(
        b.subscribe(SubscriberId(1), SubscriptionId(7), t("x/y"), false, DropOldest),
        Err(BrokerError::UnknownSubscriber(SubscriberId(1)))
    );
    // Re-adding starts from nothing.
    assert!(b.add_subscriber(SubscriberId(1)));
    assert_eq!(b.subscription_count(SubscriberId(1)), 0);
    assert_eq!(b.publish(&t("x/y"), &Bytes::new()).queued, 0);
}

#[test]
fn subscribe_refusals_are_typed_and_counted() {
    let config = BrokerConfig { max_subscriptions: 2, max_topic_len: 8, ..BrokerConfig::default() };
    let mut b = Broker::new(config).unwrap();
    let s = SubscriberId(1);
    b.add_subscriber(s);
    assert_eq!(
        b.subscribe(s, SubscriptionId(1), t(""), false, DropOldest),
        Err(BrokerError::InvalidTopic { len: 0, limit: 8 })
    );
    assert_eq!(
        b.subscribe(s, SubscriptionId(1), t("123456789"), true, DropOldest),
        Err(BrokerError::InvalidTopic { len: 9, limit: 8 })
    );
    b.subscribe(s, SubscriptionId(1), t("12345678"), false, DropOldest).unwrap();
    assert_eq!(
        b.subscribe(s, SubscriptionId(1), t("a"), false, DropOldest),
        Err(BrokerError::DuplicateSubscription { subscriber: s, subscription: SubscriptionId(1) })
    );
    b.subscribe(s, SubscriptionId(3), t(""), true, DropOldest).unwrap();
    assert_eq!(
        b.subscribe(s, SubscriptionId(5), t("a"), false, DropOldest),
        Err(BrokerError::TooManySubscriptions { subscriber: s, limit: 2 })
    );
    assert_eq!(b.stats().subscriptions_refused, 3);
    assert_eq!(
        b.subscribe(SubscriberId(9), SubscriptionId(1), t("a"), false, DropOldest),
        Err(BrokerError::UnknownSubscriber(SubscriberId(9)))
    );
    for field in ["queue_messages", "queue_bytes", "max_subscriptions", "max_topic_len"] {
        let mut c = BrokerConfig::default();
        match field {
            "queue_messages" => c.queue_messages = 0,
            "queue_bytes" => c.queue_bytes = 0,
            "max_subscriptions" => c.max_subscriptions = 0,
            _ => c.max_topic_len = 0,
        }
        assert_eq!(Broker::new(c).unwrap_err().field, field);
    }
}

// ----------------------------------------------------------------------
// Broker: slow subscribers
// ----------------------------------------------------------------------

/// What a subscriber saw, checked against publish order: each `Lagged{n}`
/// must be followed by the message `n` after the last one seen.
#[derive(Default)]
struct Tracker {
    next: u32,
    lagged: u64,
    lag_reports: u32,
    messages: u32,
    pending_lag: bool,
}

impl Tracker {
    fn see(&mut self, d: &Delivery) {
        match d {
            Delivery::Lagged { dropped, .. } => self.lag(*dropped),
            Delivery::Message { payload, .. } => self.message(seq_of(payload)),
        }
    }

    fn lag(&mut self, dropped: u64) {
        assert!(dropped > 0, "a lag report of 0");
        assert!(!self.pending_lag, "two lag reports without a message between them");
        self.next += dropped as u32;
        self.lagged += dropped;
        self.lag_reports += 1;
        self.pending_lag = true;
    }

    fn message(&mut self, seq: u32) {
        assert_eq!(seq, self.next, "expected message {} (lag so far {}), got {seq}", self.next, self.lagged);
        self.next += 1;
        self.messages += 1;
        self.pending_lag = false;
    }
}

#[test]
fn slow_subscriber_drop_oldest_is_bounded_and_told_exactly_what_it_lost() {
    const MSGS: usize = 8;
    const BYTES: usize = 1000;
    let mut b = broker_with(MSGS, BYTES);
    let (fast, slow) = (SubscriberId(1), SubscriberId(2));
    b.add_subscriber(fast);
    b.add_subscriber(slow);
    sub(&mut b, 1, 1, "s/", true, DropOldest);
    sub(&mut b, 2, 1, "s/", true, DropOldest);
    let topic = t("s/x");
    let sizes = [4usize, 150, 60, 10, 149, 33];
    let biggest = sizes.iter().max().unwrap() + topic.len();
    let mut fast_seen = Tracker::default();
    let mut slow_seen = Tracker::default();
    let mut reported_drops = 0u64;
    for seq in 0..300u32 {
        let report = b.publish(&topic, &numbered(seq, sizes[seq as usize % sizes.len()]));
        assert_eq!(report.queued, 2);
        reported_drops += u64::from(report.dropped);
        let (n, bytes) = b.queued(slow);
        assert!(n <= MSGS, "{n} messages queued, limit {MSGS}");
        assert!(bytes <= BYTES + biggest, "{bytes} bytes queued, limit {BYTES} + one message");
        for d in drain(&mut b, 1) {
            assert!(matches!(d, Delivery::Message { .. }), "the fast subscriber lagged: {d:?}");
            fast_seen.see(&d);
        }
        // The slow one takes three items now and then.
        if seq % 37 == 36 {
            for _ in 0..3 {
                if let Some(d) = b.next_delivery(slow) {
                    slow_seen.see(&d);
                }
            }
        }
    }
    for d in drain(&mut b, 2) {
        slow_seen.see(&d);
    }
    assert_eq!(fast_seen.messages, 300);
    assert_eq!(fast_seen.lagged, 0);
    assert_eq!(slow_seen.next, 300, "every message was either delivered or reported lost");
    assert_eq!(u64::from(slow_seen.messages) + slow_seen.lagged, 300);
    assert!(slow_seen.lag_reports >= 2);
    assert_eq!(slow_seen.lagged, b.stats().dropped);
    assert_eq!(reported_drops, b.stats().dropped);

    // One message above queue_bytes is still queued when the queue is empty,
    // and it evicts everything else.
    assert!(b.remove_subscriber(fast));
    b.publish(&topic, &numbered(300, 10));
    b.publish(&topic, &numbered(301, 10));
    let huge = numbered(302, 5000);
    let report = b.publish(&topic, &huge);
    assert_eq!(report.dropped, 2);
    assert_eq!(b.queued(slow), (1, 5000 + topic.len()));
    assert_eq!(
        drain(&mut b, 2),
        vec![
            Delivery::Lagged { subscription: SubscriptionId(1), dropped: 2 },
            Delivery::Message { subscription: SubscriptionId(1), topic: topic.clone(), payload: huge }
        ]
    );
}

#[test]
fn slow_subscriber_disconnect_policy_emits_one_disconnect_and_frees_its_queue() {
    let mut b = broker_with(4, 1 << 20);
    let (fast, slow) = (SubscriberId(1), SubscriberId(2));
    b.add_subscriber(fast);
    b.add_subscriber(slow);
    sub(&mut b, 1, 1, "d", false, Disconnect);
    sub(&mut b, 2, 7, "d", false, Disconnect);
    for seq in 0..4 {
        assert_eq!(b.publish(&t("d"), &numbered(seq, 100)).queued, 2);
        drain(&mut b, 1);
    }
    let evs = broker_events(&mut b);
    assert_eq!(evs.iter().filter(|e| **e == BrokerEvent::Ready(slow)).count(), 1);
    assert!(!evs.iter().any(|e| matches!(e, BrokerEvent::Disconnect { .. })), "a full queue is not yet an overflow");
    let report = b.publish(&t("d"), &numbered(4, 100));
    assert_eq!(report, PublishReport { queued: 1, dropped: 0, disconnected: 1 });
    assert_eq!(
        broker_events(&mut b),
        vec![BrokerEvent::Ready(fast), BrokerEvent::Disconnect { subscriber: slow, subscription: SubscriptionId(7) }]
    );
    assert_eq!(b.queued(slow), (0, 0), "the queue is freed at once");
    assert_eq!(b.next_delivery(slow), None);
    assert_eq!(b.stats().disconnected, 1);
    assert_eq!(b.stats().dropped, 0, "disconnecting drops nothing one by one");
    assert!(
        matches!(drain(&mut b, 1).as_slice(), [Delivery::Message { payload, .. }] if seq_of(payload) == 4),
        "the other subscriber is unaffected"
    );
    // Later publishes skip it, and it is never disconnected twice.
    for seq in 5..20 {
        assert_eq!(b.publish(&t("d"), &numbered(seq, 100)), PublishReport { queued: 1, ..Default::default() });
        let got = drain(&mut b, 1);
        assert_eq!(got.len(), 1);
    }
    assert!(broker_events(&mut b).iter().all(|e| matches!(e, BrokerEvent::Ready(s) if *s == fast)));
    assert_eq!(b.queued(slow), (0, 0));
    assert_eq!(b.stats().disconnected, 1);
    assert_eq!(b.subscribe(slow, SubscriptionId(9), t("e"), false, DropOldest), Err(BrokerError::Disconnected(slow)));
    assert!(b.remove_subscriber(slow));
}

#[test]
fn disconnect_policy_of_the_oldest_queued_message_decides() {
    // One subscriber, two subscriptions: the oldest queued message belongs
    // to a Disconnect subscription, the new one to a DropOldest one.
    let mut b = broker_with(2, 1 << 20);
    b.add_subscriber(SubscriberId(1));
    sub(&mut b, 1, 1, "strict", false, Disconnect);
    sub(&mut b, 1, 3, "lenient", false, DropOldest);
    b.publish(&t("strict"), &Bytes::new());
    b.publish(&t("lenient"), &Bytes::new());
    let report = b.publish(&t("lenient"), &Bytes::new());
    assert_eq!(report.disconnected, 1);
    let evs = broker_events(&mut b);
    assert!(evs.contains(&BrokerEvent::Disconnect { subscriber: SubscriberId(1), subscription: SubscriptionId(1) }));
}

#[test]
fn ready_events_are_edge_triggered() {
    let mut b = Broker::new(BrokerConfig::default()).unwrap();
    let (a, c) = (SubscriberId(1), SubscriberId(2));
    b.add_subscriber(a);
    b.add_subscriber(c);
    sub(&mut b, 1, 1, "r", false, DropOldest);
    sub(&mut b, 2, 1, "r", false, DropOldest);
    assert!(broker_events(&mut b).is_empty());
    b.publish(&t("r"), &Bytes::new());
    assert_eq!(broker_events(&mut b), vec![BrokerEvent::Ready(a), BrokerEvent::Ready(c)]);
    b.publish(&t("r"), &Bytes::new());
    assert!(broker_events(&mut b).is_empty(), "no new Ready while the queue was never emptied");
    // Taking one item (not reaching None) does not re-arm.
    assert!(b.next_delivery(a).is_some());
    b.publish(&t("r"), &Bytes::new());
    assert!(broker_events(&mut b).is_empty());
    // Taking everything, up to None, re-arms (for `a` only).
    assert_eq!(drain(&mut b, 1).len(), 2);
    b.publish(&t("r"), &Bytes::new());
    assert_eq!(broker_events(&mut b), vec![BrokerEvent::Ready(a)]);
    // A publish that matches nobody announces nothing.
    drain(&mut b, 1);
    drain(&mut b, 2);
    b.publish(&t("nobody"), &Bytes::new());
    assert!(broker_events(&mut b).is_empty());
}

#[test]
fn return_delivery_puts_an_item_back_first() {
    let mut b = broker_with(2, 1 << 20);
    let s = SubscriberId(1);
    b.add_subscriber(s);
    sub(&mut b, 1, 1, "q", false, DropOldest);
    for seq in 0..3 {
        b.publish(&t("q"), &numbered(seq, 8));
    }
    // The lag report comes back first when returned.
    let lag = b.next_delivery(s).unwrap();
    assert_eq!(lag, Delivery::Lagged { subscription: SubscriptionId(1), dropped: 1 });
    b.return_delivery(s, lag.clone());
    assert_eq!(b.next_delivery(s), Some(lag));
    let before = (b.queued(s), b.stats().delivered);
    let first = b.next_delivery(s).unwrap();
    assert!(matches!(&first, Delivery::Message { payload, .. } if seq_of(payload) == 1));
    assert_eq!(b.queued(s).0, 1);
    b.return_delivery(s, first.clone());
    assert_eq!((b.queued(s), b.stats().delivered), before, "returning restores the queue and the counter");
    assert_eq!(b.next_delivery(s), Some(first));
    assert!(matches!(b.next_delivery(s), Some(Delivery::Message { payload, .. }) if seq_of(&payload) == 2));
    assert_eq!(b.next_delivery(s), None);

    // A message returned after its subscription ended is dropped.
    b.publish(&t("q"), &numbered(9, 8));
    let d = b.next_delivery(s).unwrap();
    b.unsubscribe(s, SubscriptionId(1));
    b.return_delivery(s, d);
    assert_eq!(b.next_delivery(s), None);
    assert_eq!(b.queued(s), (0, 0));
}

/// `unsubscribe` discards a subscription's queued messages and its pending
/// lag report, and `return_delivery` discards a returned message of an
/// ended subscription; a returned lag report must be discarded the same way.
#[test]
fn a_lag_report_returned_after_its_subscription_ended_is_dropped() {
    let mut b = broker_with(1, 1 << 20);
    let s = SubscriberId(1);
    b.add_subscriber(s);
    sub(&mut b, 1, 1, "q", false, DropOldest);
    b.publish(&t("q"), &numbered(0, 8));
    b.publish(&t("q"), &numbered(1, 8));
    let lag = b.next_delivery(s).unwrap();
    assert_eq!(lag, Delivery::Lagged { subscription: SubscriptionId(1), dropped: 1 });
    // The connection was blocked; meanwhile the client unsubscribed.
    assert!(b.unsubscribe(s, SubscriptionId(1)));
    b.return_delivery(s, lag);
    assert_eq!(b.next_delivery(s), None, "a lag report for an ended subscription");
}

// ----------------------------------------------------------------------
// End to end: a hub of connections sharing one broker
// ----------------------------------------------------------------------

/// Writes what `conn` has queued into `pipe`, never letting the pipe hold
/// more than `cap` bytes (a socket buffer). Returns bytes written.
fn write_bounded(conn: &mut Connection, pipe: &mut VecDeque<u8>, cap: usize, now: Instant) -> usize {
    let mut total = 0;
    loop {
        let room = cap.saturating_sub(pipe.len());
        let mut slices = [IoSlice::new(&[]); 16];
        let n = conn.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            let take = s.len().min(room - written);
            pipe.extend(&s[..take]);
            written += take;
            if written == room {
                break;
            }
        }
        conn.advance_transmit(written, now);
        total += written;
        if written == 0 {
            break;
        }
    }
    total
}

fn read_all(conn: &mut Connection, pipe: &mut VecDeque<u8>, now: Instant) -> usize {
    let mut total = 0;
    while !pipe.is_empty() && conn.wants_read() {
        let n = pipe.len().min(64 * 1024);
        let chunk: Vec<u8> = pipe.drain(..n).collect();
        conn.handle_input(&chunk, now);
        total += n;
    }
    total
}

struct Link {
    client: Connection,
    server: Connection,
    c2s: VecDeque<u8>,
    s2c: VecDeque<u8>,
    client_reading: bool,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
}

/// Several client/server pairs; the server sides share one broker through
/// the glue an application server would run:
/// - `Subscribe` → `broker.subscribe` + `accept_subscription` (topics under
///   `secret/` are refused with `ACCESS_DENIED`);
/// - `Unsubscribe` → `broker.unsubscribe`;
/// - `Publish` → `broker.publish` + `ack_publish(queued)`;
/// - `BrokerEvent::Ready` and `Event::Writable` → drain the broker into the
///   connection with `deliver`/`deliver_lagged`, handing an item back with
///   `return_delivery` on `SendError::Blocked`;
/// - `BrokerEvent::Disconnect` → abort with `SLOW_CONSUMER` (it would not answer a graceful close);
/// - `Event::Closed` → `remove_subscriber`.
struct Hub {
    now: Instant,
    links: Vec<Link>,
    broker: Broker,
    cap: usize,
    ready: BTreeSet<usize>,
    blocked: BTreeSet<usize>,
    disconnects: Vec<BrokerEvent>,
    reports: Vec<PublishReport>,
    blocked_times: usize,
}

impl Hub {
    fn new(n: usize, client: Config, server: Config, broker: BrokerConfig, cap: usize) -> Hub {
        let now = Instant::now();
        let (client, server) = (Arc::new(client), Arc::new(server));
        let links = (0..n)
            .map(|_| Link {
                client: Connection::client(client.clone(), Bytes::new(), now).unwrap(),
                server: Connection::server(server.clone(), now).unwrap(),
                c2s: VecDeque::new(),
                s2c: VecDeque::new(),
                client_reading: true,
                client_events: Vec::new(),
                server_events: Vec::new(),
            })
            .collect();
        let mut hub = Hub {
            now,
            links,
            broker: Broker::new(broker).unwrap(),
            cap,
            ready: BTreeSet::new(),
            blocked: BTreeSet::new(),
            disconnects: Vec::new(),
            reports: Vec::new(),
            blocked_times: 0,
        };
        hub.drive();
        for (i, l) in hub.links.iter_mut().enumerate() {
            assert!(l.client.is_established() && l.server.is_established(), "link {i}");
            assert!(matches!(l.client_events.as_slice(), [Event::Connected(_)]));
            l.client_events.clear();
            l.server_events.clear();
        }
        assert_eq!(hub.broker.subscriber_count(), n);
        hub
    }

    fn client(&mut self, i: usize) -> &mut Connection {
        &mut self.links[i].client
    }

    fn take(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.links[i].client_events)
    }

    fn subscribe(&mut self, i: usize, topic: &str, prefix: bool, policy: SlowConsumerPolicy) -> SubscriptionId {
        let id = self.client(i).subscribe(t(topic), SubscribeOptions { prefix, policy }).unwrap();
        self.drive();
        let evs = self.take(i);
        assert_eq!(evs, vec![Event::SubscribeResult { id, result: Ok(()) }]);
        id
    }

    fn drive(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("hub did not become idle");
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            moved |= write_bounded(&mut l.client, &mut l.c2s, self.cap, now) > 0;
            moved |= write_bounded(&mut l.server, &mut l.s2c, self.cap, now) > 0;
            moved |= read_all(&mut l.server, &mut l.c2s, now) > 0;
            if l.client_reading {
                moved |= read_all(&mut l.client, &mut l.s2c, now) > 0;
            }
            while let Some(e) = l.client.poll_event() {
                l.client_events.push(e);
                moved = true;
            }
            while let Some(e) = self.links[i].server.poll_event() {
                moved = true;
                self.glue(i, e);
            }
        }
        while let Some(e) = self.broker.poll_event() {
            moved = true;
            match e {
                BrokerEvent::Ready(s) => {
                    self.ready.insert(s.0 as usize);
                }
                BrokerEvent::Disconnect { subscriber, .. } => {
                    let i = subscriber.0 as usize;
                    self.links[i].server.abort(Code::SLOW_CONSUMER, "slow consumer", now);
                    self.broker.remove_subscriber(subscriber);
                    self.disconnects.push(e);
                }
            }
        }
        moved |= self.pump();
        moved
    }

    fn glue(&mut self, i: usize, e: Event) {
        let sid = SubscriberId(i as u64);
        let server = &mut self.links[i].server;
        match &e {
            Event::HandshakeRequest(_) => server.accept(i as u64 + 1).unwrap(),
            Event::Connected(_) => assert!(self.broker.add_subscriber(sid)),
            Event::Subscribe { id, topic, prefix, policy } => {
                if topic.starts_with("secret/") {
                    server.refuse_subscription(*id, Code::ACCESS_DENIED).unwrap();
                } else {
                    match self.broker.subscribe(sid, *id, topic.clone(), *prefix, *policy) {
                        Ok(()) => server.accept_subscription(*id).unwrap(),
                        Err(BrokerError::TooManySubscriptions { .. }) => {
                            server.refuse_subscription(*id, Code::TOO_MANY_SUBSCRIPTIONS).unwrap()
                        }
                        Err(BrokerError::InvalidTopic { .. }) => {
                            server.refuse_subscription(*id, Code::INVALID_TOPIC).unwrap()
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            Event::Unsubscribe { id } => {
                self.broker.unsubscribe(sid, *id);
            }
            Event::Publish { ack, topic, payload } => {
                let report = self.broker.publish(topic, payload);
                self.reports.push(report);
                if let Some(ack) = ack {
                    server.ack_publish(*ack, Ok(report.queued)).unwrap();
                }
            }
            Event::Writable => {
                self.blocked.remove(&i);
                self.ready.insert(i);
            }
            Event::Closed(_) => {
                self.broker.remove_subscriber(sid);
                self.ready.remove(&i);
            }
            _ => {}
        }
        self.links[i].server_events.push(e);
    }

    /// Drains ready subscribers' broker queues into their connections.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        for i in self.ready.clone() {
            if self.blocked.contains(&i) {
                continue;
            }
            let sid = SubscriberId(i as u64);
            let server = &mut self.links[i].server;
            loop {
                let Some(d) = self.broker.next_delivery(sid) else {
                    self.ready.remove(&i);
                    break;
                };
                let sent = match &d {
                    Delivery::Message { subscription, topic, payload } => {
                        server.deliver(*subscription, topic, payload.clone())
                    }
                    Delivery::Lagged { subscription, dropped } => server.deliver_lagged(*subscription, *dropped),
                };
                match sent {
                    Ok(()) => moved = true,
                    Err(SendError::Blocked { .. }) => {
                        self.broker.return_delivery(sid, d);
                        self.blocked.insert(i);
                        self.blocked_times += 1;
                        break;
                    }
                    // The client ended the subscription; the broker will hear of it.
                    Err(SendError::UnknownCall { .. }) => moved = true,
                    Err(e) => panic!("deliver to link {i}: {e}"),
                }
            }
        }
        moved
    }
}

#[test]
fn publish_with_ack_reports_the_subscriber_count_end_to_end() {
    let mut hub = Hub::new(5, Config::default(), Config::default(), BrokerConfig::default(), 1 << 20);
    let s1 = hub.subscribe(1, "news/today", false, DropOldest);
    let s2 = hub.subscribe(2, "news/", true, DropOldest);
    let s3 = hub.subscribe(3, "", true, DropOldest);
    let s4a = hub.subscribe(4, "news/today", false, DropOldest);
    let s4b = hub.subscribe(4, "news/", true, DropOldest);

    let cases: &[(&str, bool, u32, &[usize])] = &[
        ("news/today", true, 5, &[1, 2, 3, 4, 4]),
        ("news/other", true, 3, &[2, 3, 4]),
        ("weather", false, 1, &[3]),
        ("news", true, 1, &[3]),
    ];
    for (k, (topic, ack, count, receivers)) in cases.iter().enumerate() {
        let payload = Bytes::from(format!("payload {k}"));
        let id = hub.client(0).publish(t(topic), payload.clone(), *ack).unwrap();
        assert_eq!(id.is_some(), *ack);
        hub.drive();
        let evs = hub.take(0);
        match id {
            Some(id) => assert_eq!(evs, vec![Event::PublishResult { id, result: Ok(*count) }], "{topic}"),
            None => assert!(evs.is_empty()),
        }
        assert_eq!(hub.reports.last().unwrap().queued, *count);
        for i in 1..5 {
            let got = messages(&hub.take(i));
            let want = receivers.iter().filter(|&&r| r == i).count();
            assert_eq!(got.len(), want, "{topic}: client {i} got {got:?}");
            for (sub, tp, p) in got {
                assert_eq!(tp, *topic);
                assert_eq!(p, payload);
                let expected: &[SubscriptionId] = match i {
                    1 => &[s1],
                    2 => &[s2],
                    3 => &[s3],
                    _ => &[s4a, s4b],
                };
                assert!(expected.contains(&sub));
            }
        }
    }
    // After an unsubscribe the count drops and nothing more arrives there.
    hub.client(4).unsubscribe(s4a).unwrap();
    hub.drive();
    assert_eq!(hub.take(4), vec![Event::UnsubscribeResult { id: s4a, result: Ok(()) }]);
    let id = hub.client(0).publish(t("news/today"), Bytes::new(), true).unwrap().unwrap();
    hub.drive();
    assert_eq!(hub.take(0), vec![Event::PublishResult { id, result: Ok(4) }]);
    assert_eq!(messages(&hub.take(4)).iter().map(|m| m.0).collect::<Vec<_>>(), vec![s4b]);

    // Without the catch-all, a topic nobody subscribed to is acknowledged with 0.
    hub.client(3).unsubscribe(s3).unwrap();
    hub.drive();
    for i in 1..5 {
        hub.take(i);
    }
    let id = hub.client(0).publish(t("void"), Bytes::new(), true).unwrap().unwrap();
    hub.drive();
    assert_eq!(hub.take(0), vec![Event::PublishResult { id, result: Ok(0) }]);
    for i in 1..5 {
        assert!(hub.take(i).is_empty());
    }
}

#[test]
fn slow_client_lags_under_drop_oldest_while_the_others_keep_up() {
    const OUT: usize = 8 * 1024;
    const QUEUE: usize = 16;
    const N: u32 = 1000;
    let server = config_with(|c| c.max_outbound_buffered = OUT);
    let broker = BrokerConfig { queue_messages: QUEUE, ..BrokerConfig::default() };
    let mut hub = Hub::new(5, Config::default(), server, broker, OUT);
    for i in 1..=4 {
        hub.subscribe(i, "t/", true, DropOldest);
    }
    let slow = 4;
    hub.links[slow].client_reading = false;

    let mut healthy: Vec<Tracker> = (0..4).map(|_| Tracker::default()).collect();
    let frame_len = 16 + 2 + "t/x".len() + 200;
    for seq in 0..N {
        let id = hub.client(0).publish(t("t/x"), numbered(seq, 200), true).unwrap().unwrap();
        hub.drive();
        assert_eq!(hub.take(0), vec![Event::PublishResult { id, result: Ok(4) }]);
        for (i, tracker) in healthy.iter_mut().enumerate().skip(1) {
            for e in hub.take(i) {
                match e {
                    Event::Message { payload, .. } => tracker.message(seq_of(&payload)),
                    other => panic!("healthy client {i} got {other:?}"),
                }
            }
            assert_eq!(tracker.next, seq + 1, "healthy client {i} fell behind");
        }
        // What the slow client costs the server stays bounded.
        let (queued, _) = hub.broker.queued(SubscriberId(slow as u64));
        assert!(queued <= QUEUE);
        assert!(hub.links[slow].server.transmit_len() <= OUT + frame_len);
        assert!(hub.links[slow].s2c.len() <= OUT);
    }
    assert!(hub.blocked_times > 0, "the slow client never blocked its connection");
    assert_eq!(hub.links[slow].server.stats().outbound_blocked, hub.blocked_times as u64);
    assert!(hub.blocked.contains(&slow));
    let dropped = hub.broker.stats().dropped;
    assert!(dropped > 0);
    assert!(hub.disconnects.is_empty());

    // The slow client reads again: what was in flight, one lag report with
    // the exact count, then the newest messages, in order.
    hub.links[slow].client_reading = true;
    hub.drive();
    let mut tracker = Tracker::default();
    for e in hub.take(slow) {
        match e {
            Event::Message { payload, .. } => tracker.message(seq_of(&payload)),
            Event::Lagged { dropped, .. } => tracker.lag(dropped),
            other => panic!("slow client got {other:?}"),
        }
    }
    assert_eq!(tracker.next, N, "the last message arrives");
    assert_eq!(tracker.lag_reports, 1);
    assert_eq!(tracker.lagged, dropped, "the lag report counts exactly what the broker dropped");
    assert_eq!(u64::from(tracker.messages) + tracker.lagged, u64::from(N));
    assert!(hub.links[slow].client.is_established());
    assert!(hub.blocked.is_empty());
}

#[test]
fn slow_client_is_disconnected_under_the_disconnect_policy_while_the_others_keep_up() {
    const OUT: usize = 8 * 1024;
    let server = config_with(|c| c.max_outbound_buffered = OUT);
    let broker = BrokerConfig { queue_messages: 16, ..BrokerConfig::default() };
    let mut hub = Hub::new(4, Config::default(), server, broker, OUT);
    hub.subscribe(1, "t/", true, DropOldest);
    hub.subscribe(2, "t/", true, DropOldest);
    let strict = hub.subscribe(3, "t/x", false, Disconnect);
    let slow = 3;
    hub.links[slow].client_reading = false;

    let mut received = 0;
    let mut acks = Vec::new();
    for seq in 0..300u32 {
        let id = hub.client(0).publish(t("t/x"), numbered(seq, 200), true).unwrap().unwrap();
        hub.drive();
        let Some(Event::PublishResult { id: got, result: Ok(n) }) = hub.take(0).pop() else { panic!() };
        assert_eq!(got, id);
        acks.push(n);
        for i in [1, 2] {
            let m = messages(&hub.take(i));
            assert_eq!(m.len(), 1, "healthy client {i} at message {seq}");
            assert_eq!(seq_of(&m[0].2), seq);
        }
        received += 1;
    }
    assert_eq!(received, 300);
    assert_eq!(
        hub.disconnects,
        vec![BrokerEvent::Disconnect { subscriber: SubscriberId(slow as u64), subscription: strict }]
    );
    assert_eq!(hub.broker.stats().disconnected, 1);
    // Before the disconnect every publish reached three subscriptions; after,
    // two (the slow one is skipped).
    let cut = acks.iter().position(|&n| n == 2).expect("the slow client was never dropped");
    assert!(acks[..cut].iter().all(|&n| n == 3));
    assert!(acks[cut..].iter().all(|&n| n == 2));
    assert!(matches!(
        hub.links[slow].server.error(),
        Some(ConnectionError::LocallyClosed { code, .. }) if *code == Code::SLOW_CONSUMER
    ));
    assert_eq!(hub.broker.subscriber_count(), 3, "the glue removed the subscriber");

    // When the slow client reads again it finds what was in flight, then
    // the GOODBYE with SLOW_CONSUMER.
    hub.links[slow].client_reading = true;
    hub.drive();
    let evs = hub.take(slow);
    assert!(evs.iter().any(|e| matches!(e, Event::GoodbyeReceived { code, .. } if *code == Code::SLOW_CONSUMER)));
    assert!(matches!(
        evs.last(),
        Some(Event::Closed(ConnectionError::PeerClosed { code, .. })) if *code == Code::SLOW_CONSUMER
    ));
    let seqs: Vec<u32> = messages(&evs).iter().map(|m| seq_of(&m.2)).collect();
    assert!(!seqs.is_empty());
    assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "in order, no gap, no lag report");
}

#[test]
fn refused_subscription_reports_access_denied() {
    let mut hub = Hub::new(2, Config::default(), Config::default(), BrokerConfig::default(), 1 << 20);
    let id = hub.client(1).subscribe(t("secret/plans"), SubscribeOptions::default()).unwrap();
    assert_eq!(hub.links[1].client.subscription_count(), 1);
    hub.drive();
    assert_eq!(hub.take(1), vec![Event::SubscribeResult { id, result: Err(AckError::Refused(Code::ACCESS_DENIED)) }]);
    assert_eq!(hub.links[1].client.subscription_count(), 0);
    assert_eq!(hub.links[1].server.subscription_count(), 0);
    assert_eq!(hub.broker.subscription_count(SubscriberId(1)), 0);
    let p = hub.client(0).publish(t("secret/plans"), Bytes::new(), true).unwrap().unwrap();
    hub.drive();
    assert_eq!(hub.take(0), vec![Event::PublishResult { id: p, result: Ok(0) }]);
    assert!(hub.take(1).is_empty());
    // Unsubscribing a refused subscription is a local error.
    assert_eq!(hub.client(1).unsubscribe(id), Err(SendError::UnknownCall { id: id.0 }));
}

// ----------------------------------------------------------------------
// Hand-built client frames against a server connection
// ----------------------------------------------------------------------

/// `Config::default()` with some fields changed.
fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out).expect("encodable test frame");
    }
    out.to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut b = Bytes::copy_from_slice(bytes);
    let mut frames = Vec::new();
    while let Some(f) = Frame::decode_one(&mut b, u32::MAX).expect("the connection wrote a valid frame") {
        frames.push(f);
    }
    assert!(b.is_empty());
    frames
}

struct RawClient {
    server: Connection,
    now: Instant,
}

impl RawClient {
    fn connect(config: Config) -> RawClient {
        let now = Instant::now();
        let mut server = Connection::server(Arc::new(config), now).unwrap();
        let hello = Frame::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            max_frame_size: 1 << 20,
            max_in_flight: 128,
            max_streams: 128,
            initial_stream_window: 1 << 16,
            keepalive_ms: 0,
            client_name: Text::from_static("raw"),
            auth: Bytes::new(),
        });
        let mut input = PREAMBLE.to_vec();
        input.extend(encode(&[hello]));
        server.handle_input(&input, now);
        assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
        server.accept(5).unwrap();
        assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
        let mut raw = RawClient { server, now };
        let out = raw.output();
        assert_eq!(out[..8], PREAMBLE);
        assert!(matches!(decode_all(&out[8..]).as_slice(), [Frame::Welcome(_)]));
        raw
    }

    fn output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = self.server.poll_transmit(self.now) {
            out.extend_from_slice(&chunk);
        }
        out
    }

    fn send(&mut self, frames: &[Frame]) {
        self.server.handle_input(&encode(frames), self.now);
    }

    fn recv(&mut self) -> Vec<Frame> {
        let out = self.output();
        decode_all(&out)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

fn subscribe_frame(id: u64, topic: &str) -> Frame {
    Frame::Subscribe { id, topic: t(topic), prefix: false, policy: DropOldest }
}

#[test]
fn the_513th_subscription_is_refused_by_the_server_with_too_many_subscriptions() {
    let mut raw = RawClient::connect(Config::default());
    let frames: Vec<Frame> = (0..512u64).map(|k| subscribe_frame(2 * k + 1, &format!("topic/{k}"))).collect();
    raw.send(&frames);
    let evs = raw.events();
    assert_eq!(evs.len(), 512);
    for e in evs {
        let Event::Subscribe { id, .. } = e else { panic!("{e:?}") };
        raw.server.accept_subscription(id).unwrap();
    }
    let acks = raw.recv();
    assert_eq!(acks.len(), 512);
    assert!(acks.iter().all(|f| matches!(f, Frame::Ack { status, .. } if *status == Code::OK)));
    assert_eq!(raw.server.subscription_count(), 512);

    raw.send(&[subscribe_frame(1025, "one/too/many")]);
    assert!(raw.events().is_empty(), "the 513th must not reach the application");
    assert_eq!(raw.recv(), vec![Frame::Ack { id: 1025, status: Code::TOO_MANY_SUBSCRIPTIONS, value: 0 }]);
    assert_eq!(raw.server.stats().subscriptions_refused, 1);
    assert!(raw.server.is_established());

    // Room is made by unsubscribing; then a new one is accepted.
    raw.send(&[Frame::Unsubscribe { id: 1027, subscription: 1 }, subscribe_frame(1029, "again")]);
    assert_eq!(
        raw.events(),
        vec![
            Event::Unsubscribe { id: SubscriptionId(1) },
            Event::Subscribe { id: SubscriptionId(1029), topic: t("again"), prefix: false, policy: DropOldest }
        ]
    );
    assert_eq!(raw.recv(), vec![Frame::Ack { id: 1027, status: Code::OK, value: 0 }]);
}

#[test]
fn the_client_api_refuses_subscriptions_past_the_limit() {
    let mut p = Pair::connected();
    for k in 0..512 {
        p.client.conn.subscribe(format!("t/{k}"), SubscribeOptions::default()).unwrap();
    }
    assert_eq!(
        p.client.conn.subscribe("t/512", SubscribeOptions::default()),
        Err(SendError::TooManySubscriptions { limit: 512 })
    );
    assert_eq!(p.client.conn.subscription_count(), 512);

    // The smaller of our limit and the server's announced one applies.
    let server = config_with(|c| c.max_subscriptions = 3);
    let mut p = Pair::connected_with(Config::default(), server);
    assert_eq!(p.client.conn.peer_limits().max_subscriptions, 3);
    for k in 0..3 {
        p.client.conn.subscribe(format!("t/{k}"), SubscribeOptions::default()).unwrap();
    }
    assert_eq!(
        p.client.conn.subscribe("t/3", SubscribeOptions::default()),
        Err(SendError::TooManySubscriptions { limit: 3 })
    );
    // A refused subscription frees its slot.
    p.drive();
    let Some(Event::Subscribe { id, .. }) = p.server.take().into_iter().next() else { panic!() };
    p.server.conn.refuse_subscription(id, Code::ACCESS_DENIED).unwrap();
    p.drive();
    p.client.conn.subscribe("t/3", SubscribeOptions::default()).unwrap();
}

#[test]
fn oversize_topics_are_refused_locally_and_by_the_server() {
    let long = "x".repeat(1025);
    let max = "x".repeat(1024);
    // Locally, with the client's own limit.
    let mut p = Pair::connected();
    assert!(matches!(
        p.client.conn.subscribe(long.clone(), SubscribeOptions::default()),
        Err(SendError::Invalid { what: "topic", .. })
    ));
    assert!(matches!(
        p.client.conn.publish(long.clone(), Bytes::new(), true),
        Err(SendError::Invalid { what: "topic", .. })
    ));
    assert!(matches!(p.client.conn.subscribe("", SubscribeOptions::default()), Err(SendError::Invalid { .. })));
    assert_eq!(p.client.conn.transmit_len(), 0);

    // By the server, from a client that allows longer topics.
    let client = config_with(|c| c.max_topic_len = 2048);
    let mut p = Pair::connected_with(client, Config::default());
    let ok = p.client.conn.subscribe(max.clone(), SubscribeOptions::default()).unwrap();
    let bad = p.client.conn.subscribe(long.clone(), SubscribeOptions::default()).unwrap();
    let pbad = p.client.conn.publish(long.clone(), Bytes::new(), true).unwrap().unwrap();
    p.drive();
    let evs = p.server.take();
    assert!(matches!(evs.as_slice(), [Event::Subscribe { id, .. }] if *id == ok), "{evs:?}");
    assert_eq!(
        p.client.take(),
        vec![
            Event::SubscribeResult { id: bad, result: Err(AckError::Refused(Code::INVALID_TOPIC)) },
            Event::PublishResult { id: pbad, result: Err(AckError::Refused(Code::INVALID_TOPIC)) },
        ]
    );
    assert_eq!(p.server.conn.stats().subscriptions_refused, 1);
    assert_eq!(p.server.conn.stats().publishes_refused, 1);
    assert!(p.server.conn.is_established());
}

#[test]
fn acknowledged_publishes_in_flight_are_bounded_by_max_in_flight() {
    let server = config_with(|c| c.max_in_flight = 2);
    // The server refuses a third unacknowledged PUBLISH with BUSY ...
    let mut raw = RawClient::connect(server.clone());
    let publish = |id| Frame::Publish { id, topic: t("p"), payload: Bytes::new() };
    raw.send(&[publish(1), publish(3), publish(5), publish(0)]);
    let evs = raw.events();
    let acks: Vec<_> = evs
        .iter()
        .map(|e| match e {
            Event::Publish { ack, .. } => *ack,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(acks, vec![Some(PublishId(1)), Some(PublishId(3)), None], "fire-and-forget is not limited");
    assert_eq!(raw.recv(), vec![Frame::Ack { id: 5, status: Code::BUSY, value: 0 }]);
    assert_eq!(raw.server.stats().publishes_refused, 1);
    raw.server.ack_publish(PublishId(1), Ok(0)).unwrap();
    raw.send(&[publish(7)]);
    assert!(matches!(raw.events().as_slice(), [Event::Publish { ack: Some(PublishId(7)), .. }]));
    assert!(raw.server.is_established());

    // ... and the client API does not send it.
    let mut p = Pair::connected_with(Config::default(), server);
    p.client.conn.publish("p", Bytes::new(), true).unwrap();
    p.client.conn.publish("p", Bytes::new(), true).unwrap();
    assert_eq!(p.client.conn.publish("p", Bytes::new(), true), Err(SendError::TooManyInFlight { limit: 2 }));
    assert_eq!(p.client.conn.publish("p", Bytes::new(), false), Ok(None));
}

#[test]
fn unsubscribe_of_an_unknown_id_gets_unknown_subscription() {
    let mut raw = RawClient::connect(Config::default());
    raw.send(&[Frame::Unsubscribe { id: 1, subscription: 99 }]);
    assert!(raw.events().is_empty());
    assert_eq!(raw.recv(), vec![Frame::Ack { id: 1, status: Code::UNKNOWN_SUBSCRIPTION, value: 0 }]);
    assert!(raw.server.is_established());

    // The client API knows its own subscriptions.
    let mut p = Pair::connected();
    assert_eq!(p.client.conn.unsubscribe(SubscriptionId(99)), Err(SendError::UnknownCall { id: 99 }));
    let id = p.client.conn.subscribe("a", SubscribeOptions::default()).unwrap();
    p.client.conn.unsubscribe(id).unwrap();
    assert_eq!(p.client.conn.unsubscribe(id), Err(SendError::UnknownCall { id: id.0 }), "already unsubscribing");
    p.drive();
    assert!(p.client.take().contains(&Event::UnsubscribeResult { id, result: Ok(()) }));
}

#[test]
fn a_message_racing_an_unsubscribe_is_ignored_and_counted() {
    let mut p = Pair::connected();
    let id = p.client.conn.subscribe("race", SubscribeOptions::default()).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Subscribe { .. }]));
    p.server.conn.accept_subscription(id).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::SubscribeResult { id, result: Ok(()) }]);

    // The server delivers while the client's UNSUBSCRIBE is on its way.
    p.client.conn.unsubscribe(id).unwrap();
    p.server.conn.deliver(id, &t("race"), Bytes::from_static(b"crossing")).unwrap();
    p.server.conn.deliver_lagged(id, 3).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::UnsubscribeResult { id, result: Ok(()) }]);
    assert_eq!(p.client.conn.stats().stale_frames_ignored, 2);
    assert_eq!(p.server.take(), vec![Event::Unsubscribe { id }]);
    assert_eq!(p.server.conn.deliver(id, &t("race"), Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));

    // After the acknowledgement, a late MESSAGE is still a tolerated race ...
    let now = p.now;
    p.client
        .conn
        .handle_input(&encode(&[Frame::Message { subscription: id.0, topic: t("race"), payload: Bytes::new() }]), now);
    assert_eq!(p.client.conn.stats().stale_frames_ignored, 3);
    assert!(p.client.conn.is_established());
    // ... but a MESSAGE for a subscription never made is a violation.
    p.client
        .conn
        .handle_input(&encode(&[Frame::Message { subscription: 1001, topic: t("x"), payload: Bytes::new() }]), now);
    p.drive();
    assert!(matches!(p.client.conn.error(), Some(ConnectionError::Protocol(ProtocolError::BadId { id: 1001, .. }))));
}

/// The backlog (`queued - delivered - dropped - discarded`) returns to zero
/// when queues are thrown away: by an unsubscribe, a removed subscriber and
/// a slow consumer disconnected by its policy. A publisher pacing itself on
/// the backlog would otherwise wait forever after a subscriber left.
#[test]
fn backlog_returns_to_zero_when_queues_are_discarded() {
    let mut b = broker_with(4, 1 << 20);
    for n in 1..=3u64 {
        assert!(b.add_subscriber(SubscriberId(n)));
    }
    sub(&mut b, 1, 11, "a", false, DropOldest);
    sub(&mut b, 2, 21, "a", false, DropOldest);
    sub(&mut b, 3, 31, "a", false, Disconnect);
    let payload = Bytes::from_static(b"x");
    for _ in 0..3 {
        b.publish(&t("a"), &payload);
    }
    assert_eq!(b.backlog(), 9);

    // One delivered, then the rest of subscriber 1's queue unsubscribed away.
    assert!(matches!(b.next_delivery(SubscriberId(1)), Some(Delivery::Message { .. })));
    assert_eq!(b.backlog(), 8);
    assert!(b.unsubscribe(SubscriberId(1), SubscriptionId(11)));
    assert_eq!(b.backlog(), 6);

    // Subscriber 2 leaves with three messages queued.
    assert!(b.remove_subscriber(SubscriberId(2)));
    assert_eq!(b.backlog(), 3);

    // Subscriber 3 overflows its queue of 4 under Disconnect: its queue is
    // thrown away with it.
    b.publish(&t("a"), &payload);
    assert_eq!(b.backlog(), 4);
    let r = b.publish(&t("a"), &payload);
    assert_eq!(r.disconnected, 1);
    assert_eq!(b.backlog(), 0);
    let st = b.stats();
    assert_eq!(st.discarded, 2 + 3 + 4);
    assert_eq!(st.queued, st.delivered + st.dropped + st.discarded);
}

/// `subscribe_on` answers each broker refusal with its own ACK code, over a
/// real connection pair: the broker's topic and count limits and a
/// subscriber already cut off as a slow consumer; a subscriber the broker
/// does not know yet is added at its first subscription.
#[test]
fn subscribe_on_answers_each_refusal_with_its_code() {
    let config = BrokerConfig { max_subscriptions: 1, max_topic_len: 4, queue_messages: 1, ..BrokerConfig::default() };
    let mut b = Broker::new(config).unwrap();
    let mut p = Pair::connected();
    let who = SubscriberId(7);
    b.add_subscriber(who);
    fn ask(
        p: &mut Pair,
        b: &mut Broker,
        who: SubscriberId,
        topic: &str,
        policy: SlowConsumerPolicy,
    ) -> Result<(), AckError> {
        let options = SubscribeOptions { prefix: false, policy };
        let id = p.client.conn.subscribe(t(topic), options).unwrap();
        p.drive();
        let (sid, topic, prefix, policy) = p
            .server
            .take()
            .into_iter()
            .find_map(|e| match e {
                Event::Subscribe { id, topic, prefix, policy } => Some((id, topic, prefix, policy)),
                _ => None,
            })
            .expect("the server saw the SUBSCRIBE");
        b.subscribe_on(who, &mut p.server.conn, sid, topic, prefix, policy).unwrap();
        p.drive();
        p.client
            .take()
            .into_iter()
            .find_map(|e| match e {
                Event::SubscribeResult { id: r, result } if r == id => Some(result),
                _ => None,
            })
            .expect("an answer")
    }
    assert_eq!(ask(&mut p, &mut b, who, "toolong", Disconnect), Err(AckError::Refused(Code::INVALID_TOPIC)));
    assert_eq!(ask(&mut p, &mut b, who, "a", Disconnect), Ok(()));
    assert_eq!(ask(&mut p, &mut b, who, "b", Disconnect), Err(AckError::Refused(Code::TOO_MANY_SUBSCRIPTIONS)));
    // Overflow the one-message queue: the Disconnect policy cuts it off.
    b.publish(&t("a"), &Bytes::from_static(b"1"));
    b.publish(&t("a"), &Bytes::from_static(b"2"));
    assert!(broker_events(&mut b).iter().any(|e| matches!(e, BrokerEvent::Disconnect { .. })));
    assert_eq!(ask(&mut p, &mut b, who, "c", DropOldest), Err(AckError::Refused(Code::SLOW_CONSUMER)));
    assert_eq!(b.subscriber_count(), 1);
    assert_eq!(ask(&mut p, &mut b, SubscriberId(99), "d", DropOldest), Ok(()));
    assert_eq!((b.subscriber_count(), b.subscription_count(SubscriberId(99))), (2, 1));
    assert_eq!(b.publish(&t("d"), &Bytes::from_static(b"3")).queued, 1);
    // The code for a subscriber unknown to `subscribe` (glue that removed it).
    assert_eq!(Broker::refusal_code(&BrokerError::UnknownSubscriber(SubscriberId(5))), Code::UNAVAILABLE);
}
