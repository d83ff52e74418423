//! Pub/sub with slow subscribers: a slow subscriber never slows the
//! publisher or anyone else; it loses messages and is told exactly how many.
//!
//! `cargo run --example slow_subscriber` runs a server and five subscribers
//! (each its own connection) in one process. The server publishes 5000
//! messages quickly, and each subscriber reports what it got:
//!
//! - `fast-1`, `fast-2` keep up and receive everything, in order;
//! - `slow` sleeps between reads. Its client keeps reading the socket (so
//!   that calls on the same connection are not held up) into a bounded
//!   per-subscription buffer (`ClientBuilder::subscription_buffer`); when
//!   that overflows, the oldest messages are dropped and each gap arrives
//!   as `SubscriptionEvent::Lagged(n)`;
//! - `hung-drop` and `hung-disconnect` stop reading their socket altogether
//!   (like a hung process), so their queue in the server's broker fills up
//!   and their subscription's policy applies: with
//!   `SlowConsumerPolicy::DropOldest` the broker drops the oldest messages
//!   and reports the gap, with `SlowConsumerPolicy::Disconnect` it
//!   disconnects the subscriber.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use wharf::{
    BrokerConfig, Client, Code, Config, ConnectionError, Endpoint, SlowConsumerPolicy, SubscribeOptions, Subscription,
    SubscriptionEvent,
};

const MESSAGES: u32 = 5000;
const TOPIC: &str = "sensors/temperature";

/// One published message, about 200 bytes.
#[derive(Serialize, Deserialize)]
struct Reading {
    seq: u32,
    samples: Vec<u8>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let endpoint = Endpoint::named("wharf-slow-subscriber")?;
    let server = wharf::tokio::server()
        // Small limits, so that the effects show quickly: at most 512
        // messages wait in the broker for each subscriber...
        .broker_config(BrokerConfig { queue_messages: 512, ..BrokerConfig::default() })
        // ...and a connection takes more from its broker queue only while
        // less than 32 KiB (half of this) waits to be written to it.
        .config(Config { max_outbound_buffered: 64 * 1024, ..Config::default() })
        .on_disconnect(|info, why| {
            if let ConnectionError::LocallyClosed { code: Code::SLOW_CONSUMER, .. } = why {
                println!("[server] disconnected {:?}: {why}", info.client_name);
            }
        })
        .bind(&endpoint)
        .await?;

    // Subscribers reading on this runtime; `slow` sleeps 2 ms per message
    // and buffers at most 16 messages on its side.
    let fast_1 = reader(&endpoint, "fast-1", 1024, Duration::ZERO).await?;
    let fast_2 = reader(&endpoint, "fast-2", 1024, Duration::ZERO).await?;
    let slow = reader(&endpoint, "slow", 16, Duration::from_millis(2)).await?;
    // Subscribers that stop reading until `resume` fires.
    let (resume, _) = broadcast::channel(1);
    let hung_drop = hung(&endpoint, "hung-drop", SlowConsumerPolicy::DropOldest, resume.subscribe()).await?;
    let hung_disconnect =
        hung(&endpoint, "hung-disconnect", SlowConsumerPolicy::Disconnect, resume.subscribe()).await?;

    // Publish in bursts of 25, as a sensor feed might. `publish` only
    // queues: it never waits for a subscriber. (Without the pauses this
    // loop outruns even the fast subscribers: queues absorb bursts, not a
    // publisher that is faster than every reader.)
    let start = Instant::now();
    for seq in 0..MESSAGES {
        server.publish(TOPIC, &Reading { seq, samples: vec![0; 200] })?;
        if seq % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!("[server] published {MESSAGES} messages in {} ms", start.elapsed().as_millis());
    let _ = resume.send(());

    for tally in [fast_1.await?, fast_2.await?, slow.await?, hung_drop.await?, hung_disconnect.await?] {
        tally.print();
    }
    let stats = server.broker_stats();
    println!(
        "[server] broker: {} published, {} queued, {} delivered, {} dropped, {} disconnected",
        stats.published, stats.queued, stats.delivered, stats.dropped, stats.disconnected
    );
    server.shutdown("done", None).await;
    Ok(())
}

/// What one subscriber saw.
struct Tally {
    name: &'static str,
    received: u64,
    lost: u64,
    lag_reports: Vec<u64>,
    in_order: bool,
    error: Option<wharf::Error>,
}

impl Tally {
    fn print(&self) {
        let Tally { name, received, lost, .. } = self;
        let order = if self.in_order { "in order" } else { "OUT OF ORDER" };
        print!("[{name}] received {received} ({order})");
        if let Some(e) = &self.error {
            println!(", then: {e}");
        } else if *lost == 0 {
            println!(", lost none");
        } else {
            let first: Vec<String> = self.lag_reports.iter().take(5).map(u64::to_string).collect();
            let more = if self.lag_reports.len() > 5 { ", ..." } else { "" };
            println!(", lost {lost} in {} gap(s): {}{more}", self.lag_reports.len(), first.join(", "));
            println!("[{name}]   {received} received + {lost} reported lost = {}", received + lost);
        }
    }
}

/// Reads until the last message (or the end), checking that every gap is
/// exactly what `Lagged` said, then closes the connection.
async fn read(client: Client, mut sub: Subscription<Reading>, name: &'static str, pause: Duration) -> Tally {
    let mut t = Tally { name, received: 0, lost: 0, lag_reports: Vec::new(), in_order: true, error: None };
    let mut expected = 0;
    while let Some(event) = sub.next().await {
        match event {
            Ok(SubscriptionEvent::Message { value, .. }) => {
                t.received += 1;
                t.in_order &= value.seq == expected;
                expected = value.seq + 1;
                if expected == MESSAGES {
                    break;
                }
            }
            Ok(SubscriptionEvent::Lagged(n)) => {
                t.lost += n;
                t.lag_reports.push(n);
                expected += n as u32;
            }
            Err(e) => {
                t.error = Some(e);
                break;
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    if t.error.is_none() {
        client.close("done").await;
    }
    t
}

/// A subscriber reading on the current runtime.
async fn reader(
    endpoint: &Endpoint,
    name: &'static str,
    buffer: usize,
    pause: Duration,
) -> Result<tokio::task::JoinHandle<Tally>> {
    let client = wharf::tokio::client().name(name).subscription_buffer(buffer).connect(endpoint).await?;
    let sub = client.subscribe(TOPIC).await?;
    Ok(tokio::spawn(read(client, sub, name, pause)))
}

/// A subscriber whose process stops reading its socket until `resume`
/// fires: it has a thread and a runtime of its own, and nothing runs that
/// runtime while it hangs. Returns once it has subscribed.
async fn hung(
    endpoint: &Endpoint,
    name: &'static str,
    policy: SlowConsumerPolicy,
    mut resume: broadcast::Receiver<()>,
) -> Result<oneshot::Receiver<Tally>> {
    let (subscribed_tx, subscribed) = oneshot::channel();
    let (tally_tx, tally) = oneshot::channel();
    let endpoint = endpoint.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let (client, sub) = rt.block_on(async {
            let client = wharf::tokio::client().name(name).connect(&endpoint).await.expect("connect");
            let options = SubscribeOptions { prefix: false, policy };
            let sub = client.subscribe_with(TOPIC, options).await.expect("subscribe");
            (client, sub)
        });
        let _ = subscribed_tx.send(());
        let _ = resume.blocking_recv(); // hang
        let _ = tally_tx.send(rt.block_on(read(client, sub, name, Duration::ZERO)));
    });
    subscribed.await?;
    Ok(tally)
}
