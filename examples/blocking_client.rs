//! A plain synchronous program talking to a tokio server with wharf's
//! blocking client (`wharf::mio::Client`): no async code on the client
//! side, no runtime, no threads of its own.
//!
//! `cargo run --example blocking_client --features mio` starts a tokio
//! server in this process (on its own runtime threads, standing in for a
//! service written with `wharf::tokio`), then uses it from `main`: a typed
//! call, an error reply, a deadline, a subscription read as an iterator, a
//! publish, a ping and a graceful close.

use std::time::Duration;

use wharf::mio::{Client, Error, Incoming};
use wharf::{Context, Router};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("blocking-demo-{}", std::process::id());

    // The tokio service.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let router = Router::new()
        .unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, wharf::Error>(a + b) })
        .unary("slow", |ms: u64, _: Context| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, wharf::Error>(())
        })
        .unary("announce", |n: u32, ctx: Context| async move {
            for i in 1..=n {
                ctx.publish("news/count", &i)?;
            }
            Ok::<_, wharf::Error>(n)
        });
    let server = runtime.block_on(async { wharf::tokio::server().router(router).bind(name.as_str()).await })?;
    println!("[server] tokio server on {}", server.endpoint());

    // The synchronous client.
    let mut client = Client::builder().call_timeout(Duration::from_secs(5)).connect(&name.parse()?)?;
    println!("[client] connected as connection {}", client.connected().map_or(0, |c| c.connection_id));

    let sum: i64 = client.call("add", &(2i64, 40i64))?;
    println!("[client] add(2, 40) = {sum}");

    match client.call::<_, ()>("divide", &()) {
        Err(e) => println!("[client] divide failed as expected: {e}"),
        Ok(()) => return Err("divide should not exist".into()),
    }

    match client.call_with_timeout::<_, ()>("slow", &2_000u64, Duration::from_millis(100)) {
        Err(e @ Error::TimedOut { .. }) => println!("[client] slow call: {e}"),
        other => return Err(format!("expected a time-out, got {other:?}").into()),
    }

    client.subscribe_prefix("news/")?;
    let n: u32 = client.call("announce", &3u32)?;
    for message in client.incoming().take(n as usize) {
        if let Incoming::Message { topic, .. } = &message? {
            println!("[client] message on {topic}");
        }
    }

    let reached = client.publish("news/from-client", &"hello")?;
    println!("[client] publish reached {reached} subscription(s)");
    println!("[client] ping: {:?}", client.ping()?);

    client.close("bye")?;
    runtime.block_on(server.shutdown("done", None));
    println!("[client] closed; server shut down");
    Ok(())
}
