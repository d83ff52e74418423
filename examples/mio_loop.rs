//! A hand-written mio event loop that serves wharf calls and publishes,
//! with no async runtime: `wharf::mio::Server` registered with the
//! program's own `mio::Poll`, next to a timer of the program's own.
//!
//! `cargo run --example mio_loop --features mio` serves on a private
//! per-user endpoint and starts a blocking client (on a thread) that calls
//! `add`, subscribes to the clock and asks the server to stop after three
//! ticks; the loop then shuts down gracefully and returns.
//! `cargo run --example mio_loop --features mio -- serve` only serves,
//! until Ctrl-C.

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use wharf::core::{Bytes, Code, Event};
use wharf::mio::{Client, Endpoint, Server, ServerOptions};

const LISTENER: Token = Token(0);
/// Connections get tokens 1..=4096; the program keeps the rest.
const CONNECTIONS: std::ops::Range<usize> = 1..4097;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_only = std::env::args().nth(1).as_deref() == Some("serve");
    let endpoint = Endpoint::parse(&format!("mio-loop-demo-{}", std::process::id()))?;

    let mut poll = Poll::new()?;
    let mut server = Server::bind(&endpoint, ServerOptions::default())?;
    server.register(poll.registry(), LISTENER, CONNECTIONS)?;
    println!("[server] serving on {}", server.endpoint());

    let client = (!serve_only).then(|| {
        let endpoint = server.endpoint().clone();
        std::thread::spawn(move || client(&endpoint))
    });

    let mut events = Events::with_capacity(256);
    let tick_every = Duration::from_millis(100);
    let mut next_tick = Instant::now() + tick_every;
    let mut ticks = 0u64;
    loop {
        // Sleep until the server needs attention or our own timer is due.
        let now = Instant::now();
        let until_tick = next_tick.saturating_duration_since(now);
        let timeout = server.timeout(now).map_or(until_tick, |t| t.min(until_tick));
        poll.poll(&mut events, Some(timeout))?;

        let now = Instant::now();
        for event in events.iter() {
            server.handle(event, now);
        }
        server.handle_timeout(now);
        if now >= next_tick {
            ticks += 1;
            let report = server.publish("clock/tick", wharf::mio::encode(&ticks)?);
            if report.queued > 0 {
                println!("[server] tick {ticks} published to {} subscription(s)", report.queued);
            }
            next_tick = now + tick_every;
        }
        while let Some(ev) = server.poll_event(now) {
            match ev.event {
                Event::Connected(c) => println!("[server] connection {} established", c.connection_id),
                Event::Request(call) => match call.method.as_str() {
                    "add" => {
                        let (a, b): (i64, i64) = wharf::mio::decode(&call.payload)?;
                        server.respond(ev.token, call.id, wharf::mio::encode(&(a + b))?);
                    }
                    "stop" => {
                        server.respond(ev.token, call.id, Bytes::new());
                        println!("[server] asked to stop: shutting down gracefully");
                        server.shutdown("demo over", Some(Duration::from_secs(1)), now);
                    }
                    other => {
                        let msg = format!("no method {other:?}");
                        server.respond_error(ev.token, call.id, Code::UNKNOWN_METHOD, &msg);
                    }
                },
                Event::Closed(e) => println!("[server] connection {} closed: {e}", ev.connection_id),
                _ => {}
            }
        }
        if server.connection_count() == 0 && client.as_ref().is_some_and(|c| c.is_finished()) {
            break;
        }
    }
    if let Some(c) = client {
        c.join().expect("the client thread panicked")?;
    }
    println!("[server] done");
    Ok(())
}

fn client(endpoint: &Endpoint) -> Result<(), wharf::mio::Error> {
    let mut client = Client::connect(endpoint)?;
    let sum: i64 = client.call("add", &(2i64, 40i64))?;
    println!("[client] add(2, 40) = {sum}");
    client.subscribe_prefix("clock/")?;
    for message in client.incoming().take(3) {
        let tick: u64 = message?.decode()?;
        println!("[client] tick {tick}");
    }
    client.call_raw("stop", Bytes::new())?;
    // The server's GOODBYE arrives; the iterator ends with the connection.
    for _ in client.incoming() {}
    if let Some(bye) = client.goodbye() {
        println!("[client] server said goodbye: {:?} (come back after {:?})", bye.message, bye.reconnect_after);
    }
    Ok(())
}
