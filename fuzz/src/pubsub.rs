//! `pubsub_fanout`: structure-aware operations on a `Broker`, checked
//! against a reference model after every operation.
//!
//! The model is the documented behaviour: a publish goes to every matching
//! subscription (exact topics first, then prefixes from the shortest, each
//! in subscription order); a full queue drops its oldest message and reports
//! the gap before the next delivery (`DropOldest`), or, if the new or the
//! oldest message belongs to a `Disconnect` subscription, the subscriber is
//! cut off once (`BrokerEvent::Disconnect`) and gets nothing more.
//!
//! Beyond equality with the model, each step checks the stated properties
//! directly: queues never exceed `queue_messages`, nor `queue_bytes` unless
//! they hold a single message; a removed subscriber gets nothing; the stats
//! add up (`queued == delivered + dropped + discarded + still queued`).

use std::collections::{BTreeMap, VecDeque};

use arbitrary::Arbitrary;
use bytes::Bytes;
use wharf_core::broker::{Broker, BrokerConfig, BrokerError, BrokerEvent, Delivery, SubscriberId};
use wharf_core::{SlowConsumerPolicy, SubscriptionId, Text};

/// Topics with shared prefixes and a multi-byte character.
const TOPICS: [&str; 12] =
    ["", "a", "a/", "a/b", "a/bc", "ab", "b", "é", "é/", "é/x", "\u{e9}x", "long/topic/name/xyz"];

#[derive(Arbitrary, Debug, Clone)]
pub struct PubsubInput {
    queue_messages: u8,
    queue_bytes: u16,
    max_subscriptions: u8,
    max_topic_len: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Add(u8),
    Remove(u8),
    Subscribe {
        who: u8,
        sub: u8,
        topic: u8,
        prefix: bool,
        disconnect: bool,
    },
    Unsubscribe {
        who: u8,
        sub: u8,
    },
    Publish {
        topic: u8,
        len: u8,
    },
    /// Take up to `n` deliveries; with `give_back`, the last one is handed
    /// back at once (the connection was blocked), as a driver does.
    Drain {
        who: u8,
        n: u8,
        give_back: bool,
    },
    PollEvents,
}

fn topic(i: u8) -> Text {
    Text::from_static(TOPICS[usize::from(i) % TOPICS.len()])
}

fn who(i: u8) -> SubscriberId {
    SubscriberId(u64::from(i % 6))
}

#[derive(Debug, Clone)]
struct MSub {
    topic: Text,
    prefix: bool,
    policy: SlowConsumerPolicy,
}

#[derive(Debug, Clone, PartialEq)]
struct MQueued {
    sub: u64,
    topic: Text,
    len: usize,
}

#[derive(Debug, Default)]
struct MSubscriber {
    subs: BTreeMap<u64, MSub>,
    queue: VecDeque<MQueued>,
    bytes: usize,
    lag: VecDeque<(u64, u64)>,
    announced: bool,
    disconnected: bool,
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    subscribers: BTreeMap<u64, MSubscriber>,
    /// Every live subscription in the order it was made: (subscriber, id).
    order: Vec<(u64, u64)>,
    events: VecDeque<BrokerEvent>,
    published: u64,
    queued: u64,
    delivered: u64,
    dropped: u64,
    disconnected: u64,
    refused: u64,
    /// Messages that left queues without being delivered or dropped
    /// (unsubscribe, remove_subscriber, disconnect).
    discarded: u64,
}

impl Model {
    fn enqueue(&mut self, cfg: &BrokerConfig, sid: u64, sub: u64, topic: &Text, len: usize) -> (u32, u32, u32) {
        let s = self.subscribers.get_mut(&sid).unwrap();
        if s.disconnected {
            return (0, 0, 0);
        }
        let policy = s.subs[&sub].policy;
        let size = len + topic.len();
        let mut dropped = 0;
        while !s.queue.is_empty() && (s.queue.len() >= cfg.queue_messages || s.bytes + size > cfg.queue_bytes) {
            let victim = s.queue.front().unwrap().sub;
            let victim_policy = s.subs[&victim].policy;
            if policy == SlowConsumerPolicy::Disconnect || victim_policy == SlowConsumerPolicy::Disconnect {
                let culprit = if policy == SlowConsumerPolicy::Disconnect { sub } else { victim };
                s.disconnected = true;
                self.discarded += s.queue.len() as u64;
                s.queue.clear();
                s.bytes = 0;
                s.lag.clear();
                self.disconnected += 1;
                self.events.push_back(BrokerEvent::Disconnect {
                    subscriber: SubscriberId(sid),
                    subscription: SubscriptionId(culprit),
                });
                return (0, dropped, 1);
            }
            let old = s.queue.pop_front().unwrap();
            s.bytes -= old.len + old.topic.len();
            match s.lag.iter_mut().find(|(id, _)| *id == old.sub) {
                Some((_, n)) => *n += 1,
                None => s.lag.push_back((old.sub, 1)),
            }
            self.dropped += 1;
            dropped += 1;
        }
        s.bytes += size;
        s.queue.push_back(MQueued { sub, topic: topic.clone(), len });
        self.queued += 1;
        if !s.announced {
            s.announced = true;
            self.events.push_back(BrokerEvent::Ready(SubscriberId(sid)));
        }
        (1, dropped, 0)
    }

    fn publish(&mut self, cfg: &BrokerConfig, t: &Text, len: usize) -> (u32, u32, u32) {
        self.published += 1;
        let mut targets = Vec::new();
        for &(sid, sub) in &self.order {
            let m = &self.subscribers[&sid].subs[&sub];
            if !m.prefix && m.topic == *t {
                targets.push((sid, sub));
            }
        }
        let mut lens: Vec<usize> = Vec::new();
        for &(sid, sub) in &self.order {
            let m = &self.subscribers[&sid].subs[&sub];
            if m.prefix && !lens.contains(&m.topic.len()) {
                lens.push(m.topic.len());
            }
        }
        lens.sort_unstable();
        for l in lens {
            for &(sid, sub) in &self.order {
                let m = &self.subscribers[&sid].subs[&sub];
                if m.prefix && m.topic.len() == l && t.as_str().starts_with(m.topic.as_str()) {
                    targets.push((sid, sub));
                }
            }
        }
        let mut report = (0, 0, 0);
        for (sid, sub) in targets {
            let (q, d, x) = self.enqueue(cfg, sid, sub, t, len);
            report.0 += q;
            report.1 += d;
            report.2 += x;
        }
        report
    }
}

fn bounds(broker: &Broker, cfg: &BrokerConfig, sid: SubscriberId) {
    let (n, bytes) = broker.queued(sid);
    assert!(n <= cfg.queue_messages, "{sid:?} holds {n} messages, limit {}", cfg.queue_messages);
    // One message larger than queue_bytes may be queued alone.
    assert!(n <= 1 || bytes <= cfg.queue_bytes, "{sid:?} holds {bytes} bytes in {n} messages");
}

/// Runs one input.
pub fn run(input: &PubsubInput) {
    let mut cfg = BrokerConfig::default();
    cfg.queue_messages = 1 + usize::from(input.queue_messages % 8);
    cfg.queue_bytes = 1 + usize::from(input.queue_bytes % 256);
    cfg.max_subscriptions = 1 + usize::from(input.max_subscriptions % 4);
    cfg.max_topic_len = 1 + usize::from(input.max_topic_len % 24);
    let mut broker = Broker::new(cfg.clone()).expect("valid broker config");
    let mut m = Model::default();
    let payloads: Vec<Bytes> = (0..=255usize).step_by(17).map(crate::zeros).collect();

    for op in input.ops.iter().take(2048) {
        match *op {
            Op::Add(i) => {
                let id = who(i);
                let added = broker.add_subscriber(id);
                assert_eq!(added, !m.subscribers.contains_key(&id.0), "add_subscriber({id:?})");
                if added {
                    m.subscribers.insert(id.0, MSubscriber::default());
                    assert_eq!(broker.queued(id), (0, 0), "a new subscriber starts with a queue");
                }
            }
            Op::Remove(i) => {
                let id = who(i);
                let removed = broker.remove_subscriber(id);
                let sub = m.subscribers.remove(&id.0);
                assert_eq!(removed, sub.is_some(), "remove_subscriber({id:?})");
                if let Some(s) = sub {
                    m.discarded += s.queue.len() as u64;
                    m.order.retain(|(sid, _)| *sid != id.0);
                }
                assert_eq!(broker.queued(id), (0, 0), "a removed subscriber keeps a queue");
                assert_eq!(broker.next_delivery(id), None, "a removed subscriber gets deliveries");
                assert_eq!(broker.subscription_count(id), 0);
            }
            Op::Subscribe { who: w, sub, topic: t, prefix, disconnect } => {
                let id = who(w);
                let sub = u64::from(sub % 8);
                let t = topic(t);
                let policy = if disconnect { SlowConsumerPolicy::Disconnect } else { SlowConsumerPolicy::DropOldest };
                let r = broker.subscribe(id, SubscriptionId(sub), t.clone(), prefix, policy);
                // The model's answer.
                let want: Result<(), &str> = if (t.is_empty() && !prefix) || t.len() > cfg.max_topic_len {
                    m.refused += 1;
                    Err("invalid topic")
                } else {
                    match m.subscribers.get_mut(&id.0) {
                        None => Err("unknown"),
                        Some(s) if s.disconnected => Err("disconnected"),
                        Some(s) if s.subs.contains_key(&sub) => Err("duplicate"),
                        Some(s) if s.subs.len() >= cfg.max_subscriptions => {
                            m.refused += 1;
                            Err("too many")
                        }
                        Some(s) => {
                            s.subs.insert(sub, MSub { topic: t.clone(), prefix, policy });
                            m.order.push((id.0, sub));
                            Ok(())
                        }
                    }
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| match e {
                    BrokerError::InvalidTopic { .. } => "invalid topic",
                    BrokerError::UnknownSubscriber(_) => "unknown",
                    BrokerError::Disconnected(_) => "disconnected",
                    BrokerError::DuplicateSubscription { .. } => "duplicate",
                    BrokerError::TooManySubscriptions { .. } => "too many",
                    _ => "other",
                });
                assert_eq!(got, want, "subscribe({id:?}, {sub}, {t:?}, prefix={prefix}) -> {r:?}");
            }
            Op::Unsubscribe { who: w, sub } => {
                let id = who(w);
                let sub = u64::from(sub % 8);
                let before = broker.queued(id).0;
                let ok = broker.unsubscribe(id, SubscriptionId(sub));
                let want = match m.subscribers.get_mut(&id.0) {
                    Some(s) if s.subs.contains_key(&sub) => {
                        s.subs.remove(&sub);
                        let n = s.queue.len();
                        s.queue.retain(|q| q.sub != sub);
                        let gone = n - s.queue.len();
                        s.bytes = s.queue.iter().map(|q| q.len + q.topic.len()).sum();
                        s.lag.retain(|(x, _)| *x != sub);
                        m.discarded += gone as u64;
                        m.order.retain(|x| *x != (id.0, sub));
                        assert_eq!(broker.queued(id).0, before - gone, "unsubscribe freed the wrong messages");
                        true
                    }
                    _ => false,
                };
                assert_eq!(ok, want, "unsubscribe({id:?}, {sub})");
            }
            Op::Publish { topic: t, len } => {
                let t = topic(t);
                let payload = &payloads[usize::from(len) % payloads.len()];
                let r = broker.publish(&t, payload);
                let (q, d, x) = m.publish(&cfg, &t, payload.len());
                assert_eq!((r.queued, r.dropped, r.disconnected), (q, d, x), "publish({t:?}) report");
            }
            Op::Drain { who: w, n, give_back } => {
                let id = who(w);
                let mut last = None;
                for _ in 0..=(n % 16) {
                    let got = broker.next_delivery(id);
                    let want = match m.subscribers.get_mut(&id.0) {
                        None => None,
                        Some(s) => {
                            if let Some((sub, dropped)) = s.lag.pop_front() {
                                Some(Delivery::Lagged { subscription: SubscriptionId(sub), dropped })
                            } else if let Some(q) = s.queue.pop_front() {
                                s.bytes -= q.len + q.topic.len();
                                m.delivered += 1;
                                Some(Delivery::Message {
                                    subscription: SubscriptionId(q.sub),
                                    topic: q.topic,
                                    payload: crate::zeros(q.len),
                                })
                            } else {
                                s.announced = false;
                                None
                            }
                        }
                    };
                    assert_eq!(got, want, "next_delivery({id:?})");
                    if got.is_none() {
                        break;
                    }
                    last = got;
                }
                if give_back && let Some(dl) = last {
                    broker.return_delivery(id, dl.clone());
                    let s = m.subscribers.get_mut(&id.0).unwrap();
                    // (Handed back at once, so its subscription still exists.)
                    match dl {
                        Delivery::Lagged { subscription, dropped } => {
                            if s.subs.contains_key(&subscription.0) {
                                s.lag.push_front((subscription.0, dropped));
                            }
                        }
                        Delivery::Message { subscription, topic, payload } => {
                            m.delivered -= 1;
                            if s.subs.contains_key(&subscription.0) {
                                s.bytes += payload.len() + topic.len();
                                s.queue.push_front(MQueued { sub: subscription.0, topic, len: payload.len() });
                            } else {
                                m.discarded += 1;
                            }
                        }
                    }
                }
            }
            Op::PollEvents => {
                while let Some(e) = broker.poll_event() {
                    assert_eq!(Some(&e), m.events.front(), "broker event");
                    m.events.pop_front();
                }
                assert!(m.events.is_empty(), "missing broker events: {:?}", m.events);
            }
        }

        // After every operation.
        let st = broker.stats();
        assert_eq!(st.published, m.published, "stats.published");
        assert_eq!(st.queued, m.queued, "stats.queued");
        assert_eq!(st.delivered, m.delivered, "stats.delivered");
        assert_eq!(st.dropped, m.dropped, "stats.dropped");
        assert_eq!(st.disconnected, m.disconnected, "stats.disconnected");
        assert_eq!(st.subscriptions_refused, m.refused, "stats.subscriptions_refused");
        assert_eq!(broker.subscriber_count(), m.subscribers.len());
        let mut still = 0u64;
        for i in 0..6u8 {
            let id = who(i);
            bounds(&broker, &cfg, id);
            let (n, bytes) = broker.queued(id);
            match m.subscribers.get(&id.0) {
                Some(s) => {
                    assert_eq!((n, bytes), (s.queue.len(), s.bytes), "queued({id:?})");
                    assert_eq!(broker.subscription_count(id), s.subs.len());
                }
                None => assert_eq!((n, bytes), (0, 0), "queued({id:?}) of an absent subscriber"),
            }
            still += n as u64;
        }
        // Lag accounting: every queued message was delivered, dropped, discarded, or is still queued.
        assert_eq!(
            st.queued,
            st.delivered + st.dropped + m.discarded + still,
            "queued != delivered + dropped + discarded + still queued"
        );
    }
}
