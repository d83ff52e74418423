//! Publish/subscribe throughput: one publishing server, `subs=N`
//! subscriber connections in one client process, [`MSG`]-byte payloads.
//!
//! Every payload carries the publisher's sequence number in its first 8
//! bytes (little-endian); each subscriber checks it, so a message lost on
//! the way shows up as a gap whatever the transport says. A client counts,
//! per subscriber, the messages its application code received during the
//! measured period, and reports the total rate, the mean and the slowest
//! subscriber's rate, and the messages lost in that period.
//!
//! - floor (`raw-fanout-*`): the server accepts N std Unix sockets and
//!   writes the same batch of [`FANOUT_BATCH`] length-prefixed messages
//!   (4-byte length, 64 bytes) to each in turn with blocking `write_all`,
//!   forever: a full socket buffer blocks it, so it goes as fast as the
//!   slowest subscriber. Each subscriber is a thread reading into a 256 KiB
//!   buffer and walking the length prefixes.
//! - wharf (`wharf-tokio-*-pubsub-*`): the server publishes with
//!   `Server::publish_raw`, which never waits; the publisher paces itself on
//!   the broker's counters (see [`pub_server`]). Each subscriber is its own
//!   wharf connection with one `subscribe_with` (policy `DropOldest`) read
//!   by its own task.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use wharf::{BrokerConfig, SlowConsumerPolicy, SubscribeOptions, SubscriptionEvent};

use crate::Result;
use crate::raw::MSG;
use crate::role::{Params, server_ready, server_ready_reporting};
use crate::stats::{Metric, Timing};
use crate::tokio_echo::PREFIX;
use crate::wharf_tokio::runtime;

/// Messages in one write of the raw fan-out server (68 bytes each).
pub const FANOUT_BATCH: usize = 128;
/// The topic wharf publishes on.
const TOPIC: &str = "bench";
/// Messages the wharf broker may queue per subscriber, and the client's
/// local buffer per subscription: far above what the publisher lets pile
/// up, so neither ever has to drop.
const QUEUE: usize = 1 << 16;
/// The wharf publisher stops publishing while the broker holds this many
/// messages (all subscribers together); each subscriber's queue then holds
/// at most this many, below [`QUEUE`], so the broker never drops.
const HIGH_WATER: u64 = (QUEUE / 2) as u64;
/// Messages the wharf publisher publishes between two looks at the broker.
const PUBLISH_BATCH: usize = 256;

/// Per-subscriber counters, written by the subscriber and read by the
/// measuring thread.
pub struct Counters {
    /// Messages received, one counter per subscriber.
    pub delivered: Vec<AtomicU64>,
    /// Messages missing from the sequence (all subscribers).
    pub gaps: AtomicU64,
    /// Messages the transport reported lost (wharf's `Lagged` events).
    pub lagged: AtomicU64,
}

impl Counters {
    /// Zeroed counters for `n` subscribers.
    pub fn new(n: usize) -> Arc<Counters> {
        Arc::new(Counters {
            delivered: (0..n).map(|_| AtomicU64::new(0)).collect(),
            gaps: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        })
    }

    fn snapshot(&self) -> (Vec<u64>, u64, u64, Instant) {
        (
            self.delivered.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.gaps.load(Ordering::Relaxed),
            self.lagged.load(Ordering::Relaxed),
            Instant::now(),
        )
    }
}

/// Checks a subscriber's sequence numbers.
#[derive(Default)]
pub struct SeqCheck {
    last: Option<u64>,
}

impl SeqCheck {
    /// Messages missing before `seq` (0 when it follows the last one; the
    /// first message seen never counts as a gap).
    #[inline]
    pub fn gap(&mut self, seq: u64) -> u64 {
        let gap = match self.last {
            Some(last) if seq > last + 1 => seq - last - 1,
            _ => 0,
        };
        self.last = Some(seq);
        gap
    }
}

/// The sequence number a payload carries.
#[inline]
pub fn seq_of(payload: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(b)
}

/// Figures of the measured period between two snapshots.
fn figures(
    before: &(Vec<u64>, u64, u64, Instant),
    after: &(Vec<u64>, u64, u64, Instant),
    with_lag: bool,
) -> Vec<Metric> {
    let secs = (after.3 - before.3).as_secs_f64();
    let per: Vec<f64> = after.0.iter().zip(&before.0).map(|(a, b)| (a - b) as f64 / secs).collect();
    let total: f64 = per.iter().sum();
    let mut m = vec![
        ("msgs".into(), per.iter().map(|r| r * secs).sum::<f64>()),
        ("msgs_per_s".into(), total),
        ("per_sub_msgs_per_s".into(), total / per.len().max(1) as f64),
        ("min_sub_msgs_per_s".into(), per.iter().copied().fold(f64::INFINITY, f64::min)),
        ("lost".into(), (after.1 - before.1) as f64),
    ];
    if with_lag {
        m.push(("lagged".into(), (after.2 - before.2) as f64));
    }
    m
}

/// Raw fan-out server: accepts `subs=N` connections, then writes batches of
/// [`FANOUT_BATCH`] messages to each in turn until a subscriber leaves.
pub fn raw_fanout_server(p: &Params) -> Result<()> {
    let subs: usize = p.get("subs")?;
    let listener = UnixListener::bind(p.socket()?)?;
    server_ready()?;
    let mut conns = Vec::with_capacity(subs);
    for _ in 0..subs {
        conns.push(listener.accept()?.0);
    }
    const FRAME: usize = PREFIX + MSG;
    let mut batch = vec![0x5Au8; FANOUT_BATCH * FRAME];
    for f in batch.chunks_exact_mut(FRAME) {
        f[..PREFIX].copy_from_slice(&(MSG as u32).to_le_bytes());
    }
    let mut seq = 0u64;
    loop {
        for f in batch.chunks_exact_mut(FRAME) {
            seq += 1;
            f[PREFIX..PREFIX + 8].copy_from_slice(&seq.to_le_bytes());
        }
        for s in &mut conns {
            match s.write_all(&batch) {
                Ok(()) => {}
                // The client has measured and gone.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Raw fan-out subscribers: `subs=N` connections, a reader thread each.
pub fn raw_fanout_client(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let subs: usize = p.get("subs")?;
    let socket = p.socket()?;
    let counters = Counters::new(subs);
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    let mut readers = Vec::new();
    for i in 0..subs {
        let s = UnixStream::connect(&socket)?;
        conns.push(s.try_clone()?);
        let (counters, stop) = (counters.clone(), stop.clone());
        readers.push(
            std::thread::Builder::new()
                .name(format!("sub-{i}"))
                .spawn(move || raw_subscriber(s, i, &counters, &stop))?,
        );
    }
    let m = measure_sleeping(&counters, timing, false, std::thread::sleep);
    stop.store(true, Ordering::Relaxed);
    for s in &conns {
        let _ = s.shutdown(Shutdown::Both);
    }
    for r in readers {
        r.join().map_err(|_| "subscriber thread panicked")??;
    }
    Ok(m)
}

fn raw_subscriber(mut s: UnixStream, i: usize, counters: &Counters, stop: &AtomicBool) -> Result<()> {
    const FRAME: usize = PREFIX + MSG;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut have, mut count) = (0usize, 0u64);
    let mut seq = SeqCheck::default();
    loop {
        let n = match s.read(&mut buf[have..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        have += n;
        let mut at = 0;
        let mut gaps = 0;
        while have - at >= FRAME {
            let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            if len != MSG {
                return Err(format!("fan-out message of {len} bytes, expected {MSG}").into());
            }
            gaps += seq.gap(seq_of(&buf[at + PREFIX..]));
            count += 1;
            at += FRAME;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        counters.delivered[i].store(count, Ordering::Relaxed);
        if gaps > 0 {
            counters.gaps.fetch_add(gaps, Ordering::Relaxed);
        }
    }
}

/// Warm-up, then the measured period, with `sleep`; the figures.
pub fn measure_sleeping(counters: &Counters, timing: Timing, with_lag: bool, sleep: fn(Duration)) -> Vec<Metric> {
    sleep(timing.warmup);
    let before = counters.snapshot();
    sleep(timing.measure);
    let after = counters.snapshot();
    figures(&before, &after, with_lag)
}

/// wharf publisher: a server whose broker queues up to [`QUEUE`] messages
/// per subscriber, and a task publishing [`MSG`]-byte payloads on one topic
/// with `publish_raw`, [`PUBLISH_BATCH`] at a time, as fast as the
/// subscribers take them. `publish_raw` never waits, so the task paces
/// itself: before each batch it reads the broker's counters and, while the
/// broker holds [`HIGH_WATER`] messages or more (queued − delivered −
/// dropped, all subscribers together), sleeps 1 ms instead; with no
/// subscriber it sleeps too. On exit the server reports the broker's
/// counters for the whole run (`srv_published`, `srv_dropped`,
/// `srv_disconnected`).
pub fn pub_server(p: &Params) -> Result<()> {
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let broker = BrokerConfig { queue_messages: QUEUE, queue_bytes: QUEUE * 256, ..BrokerConfig::default() };
        let server = wharf::tokio::server().broker_config(broker).bind(socket).await?;
        let stats = server.clone();
        server_ready_reporting(move || {
            let s = stats.broker_stats();
            vec![
                ("srv_published".into(), s.published as f64),
                ("srv_dropped".into(), s.dropped as f64),
                ("srv_disconnected".into(), s.disconnected as f64),
            ]
        })?;
        let mut payload = [0x5Au8; MSG];
        // Payloads are cut from one buffer, as an application publishing
        // many small messages would do: no allocation per message.
        let mut block = BytesMut::new();
        let mut seq = 0u64;
        loop {
            let s = server.broker_stats();
            if s.queued.saturating_sub(s.delivered + s.dropped) >= HIGH_WATER {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let mut queued = 0;
            for _ in 0..PUBLISH_BATCH {
                seq += 1;
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                if block.capacity() < MSG {
                    block.reserve(MSG * PUBLISH_BATCH);
                }
                block.extend_from_slice(&payload);
                queued += server.publish_raw(TOPIC, block.split().freeze()).queued;
            }
            if queued == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    })
}

/// wharf subscribers: `subs=N` connections, each with a [`QUEUE`]-message
/// local buffer and one exact-topic subscription (`DropOldest`), each read
/// by its own task that checks the sequence and counts. Also reports the
/// messages `Lagged` events said were lost during the measured period.
pub fn sub_client(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let subs: usize = p.get("subs")?;
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let counters = Counters::new(subs);
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..subs {
            let client = wharf::tokio::client().subscription_buffer(QUEUE).connect(&socket).await?;
            let opts = SubscribeOptions { prefix: false, policy: SlowConsumerPolicy::DropOldest };
            let mut sub = client.subscribe_raw(TOPIC, opts).await?;
            let counters = counters.clone();
            tasks.push(tokio::spawn(async move {
                let (mut count, mut seq) = (0u64, SeqCheck::default());
                while let Some(ev) = sub.next().await {
                    match ev? {
                        SubscriptionEvent::Message { value, .. } => {
                            if value.len() != MSG {
                                return Err(format!("a message of {} bytes, not {MSG}", value.len()).into());
                            }
                            let gap = seq.gap(seq_of(&value));
                            if gap > 0 {
                                counters.gaps.fetch_add(gap, Ordering::Relaxed);
                            }
                            count += 1;
                            counters.delivered[i].store(count, Ordering::Relaxed);
                        }
                        SubscriptionEvent::Lagged(n) => {
                            counters.lagged.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                }
                Ok::<(), crate::BoxError>(())
            }));
            clients.push(client);
        }
        tokio::time::sleep(timing.warmup).await;
        let before = counters.snapshot();
        tokio::time::sleep(timing.measure).await;
        let after = counters.snapshot();
        for t in tasks {
            if t.is_finished() {
                let why = match t.await {
                    Ok(Ok(())) => "the stream ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(format!("a subscription ended during the run: {why}").into());
            }
        }
        Ok(figures(&before, &after, true))
    })
}
