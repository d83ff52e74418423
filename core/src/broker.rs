//! [`Broker`]: publish/subscribe fan-out across many connections, sans-IO.
//!
//! The broker holds the subscriptions of every subscriber (normally one per
//! server connection) and a bounded queue per subscriber. A publish is
//! matched against exact topics and prefixes and appended to each matching
//! subscriber's queue; it never waits for anyone. Each connection's driver
//! drains its own queue into its [`Connection`] with
//! [`next_delivery`](Broker::next_delivery) as fast as that connection can
//! write, so a slow subscriber costs only its own queue:
//!
//! - with [`SlowConsumerPolicy::DropOldest`] the oldest queued message is
//!   dropped and the subscriber is told how many it lost
//!   ([`Delivery::Lagged`]) before its next message;
//! - with [`SlowConsumerPolicy::Disconnect`] the broker emits
//!   [`BrokerEvent::Disconnect`] and stops queuing for that subscriber.
//!
//! ```
//! use bytes::Bytes;
//! use wharf_core::broker::{Broker, BrokerConfig, Delivery, SubscriberId};
//! use wharf_core::{SlowConsumerPolicy, SubscriptionId, Text};
//!
//! let mut broker = Broker::new(BrokerConfig::default()).unwrap();
//! let alice = SubscriberId(1);
//! broker.add_subscriber(alice);
//! broker
//!     .subscribe(alice, SubscriptionId(1), Text::from("sensors/"), true, SlowConsumerPolicy::DropOldest)
//!     .unwrap();
//! let report = broker.publish(&Text::from("sensors/t1"), &Bytes::from_static(b"21.5"));
//! assert_eq!(report.queued, 1);
//! match broker.next_delivery(alice) {
//!     Some(Delivery::Message { subscription, topic, payload }) => {
//!         assert_eq!(subscription, SubscriptionId(1));
//!         assert_eq!(topic, "sensors/t1");
//!         assert_eq!(payload, Bytes::from_static(b"21.5"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use bytes::Bytes;

use crate::conn::{Connection, IdHasher, IdMap};
use crate::error::{ConfigError, SendError};
use crate::event::SubscriptionId;
use crate::text::Text;
use crate::wire::{Code, SlowConsumerPolicy};

/// Identifies a subscriber (normally one server connection); chosen by the
/// caller, for example the connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

/// Limits of a [`Broker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Messages queued per subscriber. Default 1024.
    pub queue_messages: usize,
    /// Bytes (payload + topic) queued per subscriber; one message larger
    /// than this may still be queued when the queue is empty. Default 4 MiB.
    pub queue_bytes: usize,
    /// Subscriptions per subscriber. Default 512.
    pub max_subscriptions: usize,
    /// Longest topic. Default 1024 bytes.
    pub max_topic_len: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { queue_messages: 1024, queue_bytes: 4 * 1024 * 1024, max_subscriptions: 512, max_topic_len: 1024 }
    }
}

impl BrokerConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field, v: usize| {
            if v == 0 {
                Err(ConfigError { field, value: "0".into(), requirement: "must be at least 1" })
            } else {
                Ok(())
            }
        };
        positive("queue_messages", self.queue_messages)?;
        positive("queue_bytes", self.queue_bytes)?;
        positive("max_subscriptions", self.max_subscriptions)?;
        positive("max_topic_len", self.max_topic_len)
    }
}

/// A subscription could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The subscriber was never added, or was removed.
    #[error("unknown subscriber {0:?}")]
    UnknownSubscriber(SubscriberId),
    /// This subscription id is already registered for this subscriber.
    #[error("subscriber {subscriber:?} already has subscription {subscription}")]
    DuplicateSubscription {
        /// Subscriber.
        subscriber: SubscriberId,
        /// Subscription id.
        subscription: SubscriptionId,
    },
    /// The subscriber reached [`BrokerConfig::max_subscriptions`].
    #[error("subscriber {subscriber:?} already has {limit} subscriptions")]
    TooManySubscriptions {
        /// Subscriber.
        subscriber: SubscriberId,
        /// The limit.
        limit: usize,
    },
    /// Empty exact topic, or longer than [`BrokerConfig::max_topic_len`].
    #[error("invalid topic of {len} bytes (limit {limit}; exact topics must not be empty)")]
    InvalidTopic {
        /// Topic length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The subscriber was disconnected for being too slow.
    #[error("subscriber {0:?} was disconnected as a slow consumer")]
    Disconnected(SubscriberId),
}

/// One item for a subscriber's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Send with [`Connection::deliver`](crate::Connection::deliver).
    Message {
        /// Subscription it matched.
        subscription: SubscriptionId,
        /// Topic it was published on.
        topic: Text,
        /// Payload (shared by every subscriber, not copied).
        payload: Bytes,
    },
    /// Send with [`Connection::deliver_lagged`](crate::Connection::deliver_lagged).
    Lagged {
        /// Subscription that lost messages.
        subscription: SubscriptionId,
        /// How many.
        dropped: u64,
    },
}

/// What the broker asks of the code around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// This subscriber's queue was empty and now holds something: wake its
    /// connection's driver. Emitted again only after
    /// [`next_delivery`](Broker::next_delivery) has returned `None`.
    Ready(SubscriberId),
    /// This subscriber overflowed a subscription whose policy is
    /// [`SlowConsumerPolicy::Disconnect`]: end its connection with
    /// [`Connection::abort`](crate::Connection::abort) and `SLOW_CONSUMER`
    /// (a graceful close would wait for a peer that is not reading), then
    /// [`remove_subscriber`](Broker::remove_subscriber).
    Disconnect {
        /// The subscriber.
        subscriber: SubscriberId,
        /// The subscription that overflowed.
        subscription: SubscriptionId,
    },
}

/// The result of one [`publish`](Broker::publish).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Subscriptions the message was queued for.
    pub queued: u32,
    /// Older messages dropped from lagging subscribers' queues to make room.
    pub dropped: u32,
    /// Subscribers disconnected by this publish.
    pub disconnected: u32,
}

/// Counters of a broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Publishes.
    pub published: u64,
    /// Messages queued for subscriptions.
    pub queued: u64,
    /// Messages taken off the queues by `next_delivery` (or
    /// `deliver_into`) and not put back: a message returned with
    /// `return_delivery`, or that `deliver_into` could not hand to a
    /// closing connection, is not counted here (the latter is `discarded`).
    /// Lag reports are not messages and are not counted.
    pub delivered: u64,
    /// Messages dropped because a subscriber's queue was full
    /// (`queue_messages` / `queue_bytes`).
    pub dropped: u64,
    /// Subscribers disconnected as slow consumers.
    pub disconnected: u64,
    /// Queued messages thrown away undelivered because their subscription
    /// or subscriber went away (unsubscribed, disconnected, removed).
    /// `queued - delivered - dropped - discarded` is the current backlog.
    pub discarded: u64,
    /// Subscriptions refused (`max_subscriptions`, `max_topic_len`).
    pub subscriptions_refused: u64,
}

#[derive(Debug)]
struct Queued {
    subscription: u64,
    /// The published topic, when it is not the subscription's own (a
    /// prefix subscription's message); `None` for an exact subscription,
    /// whose topic is in its [`SubInfo`] (one reference count less to take
    /// and drop per message).
    topic: Option<Text>,
    payload: Bytes,
    /// Payload and topic bytes, as counted against `queue_bytes`.
    size: usize,
}

impl Queued {
    fn size(&self) -> usize {
        self.size
    }

    /// The message's topic: its own, or its subscription's.
    fn topic<'a>(&'a self, subs: &'a IdMap<SubInfo>) -> Option<&'a Text> {
        self.topic.as_ref().or_else(|| subs.get(&self.subscription).map(|i| &i.topic))
    }
}

#[derive(Debug)]
struct SubInfo {
    topic: Text,
    prefix: bool,
    policy: SlowConsumerPolicy,
}

#[derive(Debug, Default)]
struct Subscriber {
    subs: IdMap<SubInfo>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Lag to report, in the order it happened.
    lag: VecDeque<(u64, u64)>,
    announced: bool,
    disconnected: bool,
}

impl Subscriber {
    fn add_lag(&mut self, subscription: u64) {
        match self.lag.iter_mut().find(|(s, _)| *s == subscription) {
            Some((_, n)) => *n += 1,
            None => self.lag.push_back((subscription, 1)),
        }
    }
}

type Routes = HashMap<Text, Vec<(SubscriberId, u64)>>;

/// Subscribers by id. The ids are chosen by the code around the broker
/// (normally connection ids), not by peers, so the cheap deterministic id
/// hasher is safe here; it is looked up once per delivery.
type Subscribers = HashMap<SubscriberId, Subscriber, BuildHasherDefault<IdHasher>>;

/// The pub/sub machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    subscribers: Subscribers,
    exact: Routes,
    prefixes: Routes,
    /// Distinct prefix lengths in use, with how many prefixes have each.
    prefix_lens: BTreeMap<usize, usize>,
    events: VecDeque<BrokerEvent>,
    stats: BrokerStats,
}

impl Broker {
    /// An empty broker.
    pub fn new(config: BrokerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Broker {
            config,
            subscribers: Subscribers::default(),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lens: BTreeMap::new(),
            events: VecDeque::new(),
            stats: BrokerStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &BrokerStats {
        &self.stats
    }

    /// Registers a subscriber; false if it already exists.
    pub fn add_subscriber(&mut self, id: SubscriberId) -> bool {
        if self.subscribers.contains_key(&id) {
            return false;
        }
        self.subscribers.insert(id, Subscriber::default());
        true
    }

    /// Removes a subscriber with its subscriptions and queue; false if unknown.
    pub fn remove_subscriber(&mut self, id: SubscriberId) -> bool {
        let Some(sub) = self.subscribers.remove(&id) else { return false };
        self.stats.discarded += sub.queue.len() as u64;
        for (sid, info) in sub.subs {
            self.unroute(id, sid, &info);
        }
        true
    }

    /// Number of subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Number of subscriptions of one subscriber.
    pub fn subscription_count(&self, id: SubscriberId) -> usize {
        self.subscribers.get(&id).map_or(0, |s| s.subs.len())
    }

    /// Messages queued for all subscribers and not yet delivered.
    pub fn backlog(&self) -> u64 {
        let st = &self.stats;
        st.queued.saturating_sub(st.delivered + st.dropped + st.discarded)
    }

    /// Messages and bytes queued for one subscriber.
    pub fn queued(&self, id: SubscriberId) -> (usize, usize) {
        self.subscribers.get(&id).map_or((0, 0), |s| (s.queue.len(), s.queued_bytes))
    }

    /// Registers a subscription: `topic` exactly, or every topic starting
    /// with it when `prefix` (an empty prefix matches everything).
    pub fn subscribe(
        &mut self,
        subscriber: SubscriberId,
        subscription: SubscriptionId,
        topic: Text,
        prefix: bool,
        policy: SlowConsumerPolicy,
    ) -> Result<(), BrokerError> {
        let limit = self.config.max_topic_len;
        if (topic.is_empty() && !prefix) || topic.len() > limit {
            self.stats.subscriptions_refused += 1;
            return Err(BrokerError::InvalidTopic { len: topic.len(), limit });
        }
        let Some(s) = self.subscribers.get_mut(&subscriber) else {
            return Err(BrokerError::UnknownSubscriber(subscriber));
        };
        if s.disconnected {
            return Err(BrokerError::Disconnected(subscriber));
        }
        if s.subs.contains_key(&subscription.0) {
            return Err(BrokerError::DuplicateSubscription { subscriber, subscription });
        }
        if s.subs.len() >= self.config.max_subscriptions {
            self.stats.subscriptions_refused += 1;
            return Err(BrokerError::TooManySubscriptions { subscriber, limit: self.config.max_subscriptions });
        }
        s.subs.insert(subscription.0, SubInfo { topic: topic.clone(), prefix, policy });
        if prefix {
            *self.prefix_lens.entry(topic.len()).or_default() += 1;
            self.prefixes.entry(topic).or_default().push((subscriber, subscription.0));
        } else {
            self.exact.entry(topic).or_default().push((subscriber, subscription.0));
        }
        Ok(())
    }

    /// Removes a subscription and any messages still queued for it; false if unknown.
    pub fn unsubscribe(&mut self, subscriber: SubscriberId, subscription: SubscriptionId) -> bool {
        let Some(s) = self.subscribers.get_mut(&subscriber) else { return false };
        let Some(info) = s.subs.remove(&subscription.0) else { return false };
        let (mut freed, mut count) = (0, 0u64);
        s.queue.retain(|q| {
            let keep = q.subscription != subscription.0;
            if !keep {
                freed += q.size();
                count += 1;
            }
            keep
        });
        s.queued_bytes -= freed;
        self.stats.discarded += count;
        s.lag.retain(|(id, _)| *id != subscription.0);
        self.unroute(subscriber, subscription.0, &info);
        true
    }

    fn unroute(&mut self, subscriber: SubscriberId, subscription: u64, info: &SubInfo) {
        let routes = if info.prefix { &mut self.prefixes } else { &mut self.exact };
        if let Some(v) = routes.get_mut(info.topic.as_str()) {
            v.retain(|&(s, id)| !(s == subscriber && id == subscription));
            if v.is_empty() {
                routes.remove(info.topic.as_str());
            }
        }
        if info.prefix
            && let Some(n) = self.prefix_lens.get_mut(&info.topic.len())
        {
            *n -= 1;
            if *n == 0 {
                self.prefix_lens.remove(&info.topic.len());
            }
        }
    }

    /// Fans a message out to every matching subscription. Never blocks and
    /// never waits for a subscriber; the payload is shared, not copied.
    pub fn publish(&mut self, topic: &Text, payload: &Bytes) -> PublishReport {
        self.publish_inner(topic, Some(topic), payload)
    }

    /// [`publish`](Self::publish) for a topic the caller holds as a plain
    /// string (a server application publishing): the queued messages share
    /// the broker's own copy of the topic (an exact subscription's), so a
    /// publish allocates nothing for it. Only a topic matched by prefix
    /// subscriptions alone is copied, once per publish.
    pub fn publish_str(&mut self, topic: &str, payload: &Bytes) -> PublishReport {
        self.publish_inner(topic, None, payload)
    }

    fn publish_inner(&mut self, topic: &str, owned: Option<&Text>, payload: &Bytes) -> PublishReport {
        self.stats.published += 1;
        let mut report = PublishReport::default();
        let Broker { config, subscribers, exact, prefixes, prefix_lens, events, stats } = self;
        let mut shared: Option<Text> = owned.cloned();
        let mut deliver = |routes: &[(SubscriberId, u64)], topic: &Text| {
            for &(sid, sub) in routes {
                if let Some(s) = subscribers.get_mut(&sid) {
                    enqueue(config, stats, events, &mut report, sid, s, sub, topic, payload);
                }
            }
        };
        if let Some((key, r)) = exact.get_key_value(topic) {
            let t = shared.get_or_insert_with(|| key.clone());
            deliver(r, t);
        }
        for &len in prefix_lens.keys() {
            if len > topic.len() {
                break;
            }
            if !topic.is_char_boundary(len) {
                continue;
            }
            if let Some(r) = prefixes.get(&topic[..len]) {
                let t = shared.get_or_insert_with(|| Text::from(topic.to_owned()));
                deliver(r, t);
            }
        }
        report
    }

    /// The next item for a subscriber's connection: a lag report first if
    /// messages were dropped, then messages in publish order.
    pub fn next_delivery(&mut self, id: SubscriberId) -> Option<Delivery> {
        let s = self.subscribers.get_mut(&id)?;
        if let Some((sub, dropped)) = s.lag.pop_front() {
            return Some(Delivery::Lagged { subscription: SubscriptionId(sub), dropped });
        }
        loop {
            let Some(q) = s.queue.pop_front() else {
                s.announced = false;
                return None;
            };
            s.queued_bytes -= q.size();
            let Some(topic) = q.topic(&s.subs).cloned() else {
                // Unreachable: a subscription's messages leave with it.
                self.stats.discarded += 1;
                continue;
            };
            self.stats.delivered += 1;
            return Some(Delivery::Message { subscription: SubscriptionId(q.subscription), topic, payload: q.payload });
        }
    }

    /// Puts back an item [`next_delivery`](Self::next_delivery) returned
    /// that the connection could not take (it was blocked); it will be the
    /// next one returned.
    pub fn return_delivery(&mut self, id: SubscriberId, delivery: Delivery) {
        let Some(s) = self.subscribers.get_mut(&id) else { return };
        match delivery {
            Delivery::Lagged { subscription, dropped } => {
                if s.subs.contains_key(&subscription.0) {
                    s.lag.push_front((subscription.0, dropped));
                }
            }
            Delivery::Message { subscription, topic, payload } => {
                self.stats.delivered -= 1;
                if !s.subs.contains_key(&subscription.0) {
                    return;
                }
                let size = payload.len() + topic.len();
                let q = Queued { subscription: subscription.0, topic: Some(topic), payload, size };
                s.queued_bytes += q.size();
                s.queue.push_front(q);
            }
        }
    }

    /// The next request to the code around the broker.
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// Registers a subscription that `conn` (the server connection of
    /// `subscriber`) received as [`Event::Subscribe`](crate::Event::Subscribe),
    /// and answers it on that connection: accepted, or refused with the
    /// code [`refusal_code`](Self::refusal_code) gives. Every driver answers a
    /// SUBSCRIBE this way, so that the code lives once.
    ///
    /// A subscriber not known yet is added first
    /// ([`add_subscriber`](Self::add_subscriber)), so a server need not
    /// register its connections in advance: one that never subscribes
    /// costs the broker nothing. The driver still removes the subscriber
    /// when its connection ends ([`remove_subscriber`](Self::remove_subscriber);
    /// removing one never added is harmless).
    pub fn subscribe_on(
        &mut self,
        subscriber: SubscriberId,
        conn: &mut Connection,
        subscription: SubscriptionId,
        topic: Text,
        prefix: bool,
        policy: SlowConsumerPolicy,
    ) -> Result<(), SendError> {
        self.subscribers.entry(subscriber).or_default();
        match self.subscribe(subscriber, subscription, topic, prefix, policy) {
            Ok(()) => conn.accept_subscription(subscription),
            Err(e) => {
                tracing::debug!(error = %e, "wharf: subscription refused by the broker");
                let code = Self::refusal_code(&e);
                conn.refuse_subscription(subscription, code)
            }
        }
    }

    /// The ACK code [`subscribe_on`](Self::subscribe_on) answers a refusal
    /// with: the broker's own limits (`TOO_MANY_SUBSCRIPTIONS`,
    /// `INVALID_TOPIC`), `SLOW_CONSUMER` for a subscriber being disconnected
    /// as too slow, `UNAVAILABLE` for one the broker does not know (glue
    /// calling [`subscribe`](Self::subscribe) for a connection it already
    /// removed; `subscribe_on` adds unknown subscribers), `INTERNAL` for a subscription id
    /// registered twice (the connection refuses reused ids first, so this
    /// means the driver registered it twice).
    pub fn refusal_code(e: &BrokerError) -> Code {
        match e {
            BrokerError::TooManySubscriptions { .. } => Code::TOO_MANY_SUBSCRIPTIONS,
            BrokerError::InvalidTopic { .. } => Code::INVALID_TOPIC,
            BrokerError::Disconnected(_) => Code::SLOW_CONSUMER,
            BrokerError::UnknownSubscriber(_) => Code::UNAVAILABLE,
            BrokerError::DuplicateSubscription { .. } => Code::INTERNAL,
        }
    }

    /// Moves `subscriber`'s queued deliveries into `conn` while the
    /// connection's transmit queue holds fewer than `limit` bytes (half of
    /// `max_outbound_buffered` is a good choice: the rest stays free for
    /// responses). An item the connection refuses as blocked is put back
    /// and will be the next one. Items for a connection that can no longer
    /// take them (closing, closed) are discarded and counted.
    pub fn deliver_into(&mut self, subscriber: SubscriberId, conn: &mut Connection, limit: usize) -> Pumped {
        let mut pumped = Pumped::default();
        let Some(s) = self.subscribers.get_mut(&subscriber) else {
            pumped.drained = true;
            return pumped;
        };
        while conn.transmit_len() < limit {
            // Lag reports first, then messages in order; each leaves the
            // queue only once the connection took it (or can never take it).
            let (r, message) = if let Some(&(sub, dropped)) = s.lag.front() {
                (conn.deliver_lagged(SubscriptionId(sub), dropped), false)
            } else if let Some(q) = s.queue.front() {
                match q.topic(&s.subs) {
                    Some(topic) => (conn.deliver_ref(SubscriptionId(q.subscription), topic, &q.payload), true),
                    // Unreachable: a subscription's messages leave with it.
                    None => (Err(SendError::UnknownCall { id: q.subscription }), true),
                }
            } else {
                s.announced = false;
                pumped.drained = true;
                break;
            };
            if matches!(r, Err(SendError::Blocked { .. })) {
                break;
            }
            if message {
                if let Some(q) = s.queue.pop_front() {
                    s.queued_bytes -= q.size();
                }
            } else {
                s.lag.pop_front();
            }
            match r {
                Ok(()) => {
                    pumped.moved += 1;
                    if message {
                        self.stats.delivered += 1;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "wharf: delivery dropped");
                    if message {
                        self.stats.discarded += 1;
                    }
                }
            }
        }
        pumped
    }
}

/// What one [`Broker::deliver_into`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Items (messages and lag reports) handed to the connection.
    pub moved: usize,
    /// The subscriber's queue is empty now: a [`BrokerEvent::Ready`] will
    /// announce the next message.
    pub drained: bool,
}

#[allow(clippy::too_many_arguments)]
fn enqueue(
    config: &BrokerConfig,
    stats: &mut BrokerStats,
    events: &mut VecDeque<BrokerEvent>,
    report: &mut PublishReport,
    sid: SubscriberId,
    s: &mut Subscriber,
    sub: u64,
    topic: &Text,
    payload: &Bytes,
) {
    if s.disconnected {
        return;
    }
    let Some((policy, prefix)) = s.subs.get(&sub).map(|i| (i.policy, i.prefix)) else { return };
    let size = payload.len() + topic.len();
    while !s.queue.is_empty() && (s.queue.len() >= config.queue_messages || s.queued_bytes + size > config.queue_bytes)
    {
        let victim_policy = s.queue.front().and_then(|q| s.subs.get(&q.subscription)).map(|i| i.policy);
        if policy == SlowConsumerPolicy::Disconnect || victim_policy == Some(SlowConsumerPolicy::Disconnect) {
            let culprit = if policy == SlowConsumerPolicy::Disconnect {
                sub
            } else {
                s.queue.front().map_or(sub, |q| q.subscription)
            };
            s.disconnected = true;
            stats.discarded += s.queue.len() as u64;
            s.queue.clear();
            s.queued_bytes = 0;
            s.lag.clear();
            stats.disconnected += 1;
            report.disconnected += 1;
            events.push_back(BrokerEvent::Disconnect { subscriber: sid, subscription: SubscriptionId(culprit) });
            return;
        }
        if let Some(old) = s.queue.pop_front() {
            s.queued_bytes -= old.size();
            s.add_lag(old.subscription);
            stats.dropped += 1;
            report.dropped += 1;
        }
    }
    s.queued_bytes += size;
    let topic = prefix.then(|| topic.clone());
    s.queue.push_back(Queued { subscription: sub, topic, payload: payload.clone(), size });
    stats.queued += 1;
    report.queued += 1;
    if !s.announced {
        s.announced = true;
        events.push_back(BrokerEvent::Ready(sid));
    }
}
