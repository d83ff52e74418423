//! wharf-core driven by hand over a std `UnixStream`: no async runtime and no
//! adapter, only the sans-IO core and blocking std I/O.
//!
//! `cargo run --example hand_driven` starts a server in this process and a
//! client in a second process (this same program, run with `client <path>`),
//! and prints what each side sees: a call, an error reply, a streaming
//! call, pub/sub through the broker, a ping and a graceful close.
//!
//! The loop in [`Link::run`] is the whole driving contract: write what the
//! connection queued, hand it events, sleep until its next timer or input,
//! feed it what arrived.

#[cfg(unix)]
fn main() -> std::io::Result<()> {
    unix::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("this example uses Unix domain sockets; the adapters bring named pipes");
}

#[cfg(unix)]
mod unix {
    use std::io::{self, IoSlice, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use wharf::core::broker::{Broker, BrokerConfig, Delivery, SubscriberId};
    use wharf::core::{
        Bytes, CallKind, CallOptions, Code, Config, Connection, Event, SlowConsumerPolicy, SubscribeOptions, Text,
        Timeout,
    };

    const TOKEN: &[u8] = b"let-me-in";

    /// One connection: a socket and the protocol state it carries.
    struct Link {
        stream: UnixStream,
        conn: Connection,
        buf: Vec<u8>,
    }

    impl Link {
        fn new(stream: UnixStream, conn: Connection) -> Link {
            Link { stream, conn, buf: vec![0; 64 * 1024] }
        }

        /// Writes everything the connection has queued (vectored, blocking).
        fn flush(&mut self) -> io::Result<()> {
            loop {
                let mut slices = [IoSlice::new(&[]); 32];
                let n = self.conn.transmit_slices(Instant::now(), &mut slices);
                if n == 0 {
                    return Ok(());
                }
                let written = self.stream.write_vectored(&slices[..n])?;
                self.conn.advance_transmit(written, Instant::now());
            }
        }

        /// Drives the connection, giving each event to `on_event`, until it
        /// returns true or the connection ends.
        fn run(&mut self, mut on_event: impl FnMut(&mut Connection, Event) -> bool) -> io::Result<()> {
            loop {
                self.flush()?;
                while let Some(event) = self.conn.poll_event() {
                    let closed = matches!(event, Event::Closed(_));
                    let done = on_event(&mut self.conn, event);
                    if done || closed {
                        return self.flush();
                    }
                }
                self.flush()?;
                if self.conn.poll_timeout() == Some(Instant::now()) {
                    continue;
                }
                let now = Instant::now();
                let wait = self
                    .conn
                    .next_timer()
                    .map_or(Duration::from_secs(60), |t| t.saturating_duration_since(now))
                    .max(Duration::from_millis(1));
                self.stream.set_read_timeout(Some(wait))?;
                match self.stream.read(&mut self.buf) {
                    Ok(0) => self.conn.handle_eof(Instant::now()),
                    Ok(n) => self.conn.handle_input(&self.buf[..n], Instant::now()),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        self.conn.handle_timeout(Instant::now())
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.conn.handle_transport_error(&e, Instant::now()),
                }
            }
        }
    }

    pub fn main() -> io::Result<()> {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some("client") {
            return client(Path::new(&args[2]));
        }
        let dir = std::env::temp_dir().join(format!("wharf-hand-driven-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("demo.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        println!("[server] listening on {}", path.display());
        let mut child = Command::new(std::env::current_exe()?).arg("client").arg(&path).spawn()?;
        let (stream, _) = listener.accept()?;
        let result = serve(stream);
        let status = child.wait()?;
        let _ = std::fs::remove_dir_all(&dir);
        result?;
        if !status.success() {
            return Err(io::Error::other(format!("client process failed: {status}")));
        }
        println!("[server] done");
        Ok(())
    }

    fn serve(stream: UnixStream) -> io::Result<()> {
        let config = Arc::new(Config { name: Text::from("hand-driven-server"), ..Config::default() });
        let mut link = Link::new(stream, Connection::server(config, Instant::now()).map_err(io::Error::other)?);
        let mut broker = Broker::new(BrokerConfig::default()).map_err(io::Error::other)?;
        let me = SubscriberId(1);
        broker.add_subscriber(me);

        link.run(|conn, event| {
            match event {
                Event::HandshakeRequest(hello) => {
                    println!("[server] hello from {:?}", hello.client_name);
                    if hello.auth == TOKEN {
                        conn.accept(1).unwrap();
                    } else {
                        conn.reject(Code::AUTH_FAILED, "bad token", None).unwrap();
                    }
                }
                Event::Connected(c) => println!("[server] connection {} established", c.connection_id),
                Event::Request(call) => {
                    let text = String::from_utf8_lossy(&call.payload).into_owned();
                    println!("[server] call {} {:?}", call.method, text);
                    match call.method.as_str() {
                        "add" => {
                            let sum: i64 = text.split_whitespace().filter_map(|n| n.parse::<i64>().ok()).sum();
                            conn.respond(call.id, Bytes::from(sum.to_string())).unwrap();
                        }
                        "count" => {
                            // A server-stream: five messages, then the response ends it.
                            for i in 1..=5 {
                                conn.stream_send(call.id, Bytes::from(format!("tick {i}"))).unwrap();
                            }
                            conn.respond(call.id, Bytes::from_static(b"counted to 5")).unwrap();
                        }
                        other => {
                            let msg = format!("no method {other:?}");
                            conn.respond_error(call.id, Code::UNKNOWN_METHOD, &msg, Bytes::new()).unwrap();
                        }
                    }
                }
                Event::Subscribe { id, topic, prefix, policy } => {
                    broker.subscribe(me, id, topic.clone(), prefix, policy).unwrap();
                    conn.accept_subscription(id).unwrap();
                    println!("[server] subscription {id} to {topic:?} (prefix: {prefix})");
                }
                Event::Unsubscribe { id } => {
                    broker.unsubscribe(me, id);
                }
                Event::Notification(n) if n.method == "publish-news" => {
                    for (topic, body) in [("news/weather", "rain"), ("news/sport", "2-1"), ("other", "ignored")] {
                        let report = broker.publish(&Text::from(topic), &Bytes::from(body));
                        println!("[server] published on {topic:?} to {} subscription(s)", report.queued);
                    }
                    while let Some(d) = broker.next_delivery(me) {
                        match d {
                            Delivery::Message { subscription, topic, payload } => {
                                conn.deliver(subscription, &topic, payload).unwrap()
                            }
                            Delivery::Lagged { subscription, dropped } => {
                                conn.deliver_lagged(subscription, dropped).unwrap()
                            }
                        }
                    }
                }
                Event::GoodbyeReceived { message, .. } => println!("[server] client says goodbye: {message:?}"),
                Event::Closed(e) => println!("[server] closed: {e}"),
                _ => {}
            }
            false
        })
    }

    fn client(path: &Path) -> io::Result<()> {
        let stream = UnixStream::connect(path)?;
        let config = Arc::new(Config { name: Text::from("hand-driven-client"), ..Config::default() });
        let conn = Connection::client(config, Bytes::from_static(TOKEN), Instant::now()).map_err(io::Error::other)?;
        let mut link = Link::new(stream, conn);

        link.run(|_, e| match e {
            Event::Connected(c) => {
                println!("[client] connected to {:?} as connection {}", c.peer_name, c.connection_id);
                true
            }
            other => panic!("[client] {other:?}"),
        })?;

        let outcome = |link: &mut Link, id| -> io::Result<Result<Bytes, wharf::core::CallError>> {
            let mut out = None;
            link.run(|conn, e| match e {
                Event::StreamData { id: sid, payload } if sid == id => {
                    println!("[client]   stream: {}", String::from_utf8_lossy(&payload));
                    conn.stream_consumed(sid, payload.len());
                    false
                }
                Event::Response { id: rid, result } if rid == id => {
                    out = Some(result);
                    true
                }
                _ => false,
            })?;
            out.ok_or_else(|| io::Error::other("connection ended"))
        };

        let now = Instant::now();
        let id = link.conn.request("add", Bytes::from_static(b"2 3 37"), CallOptions::new(), now).unwrap();
        let sum = outcome(&mut link, id)?.map_err(io::Error::other)?;
        println!("[client] add(2, 3, 37) = {}", String::from_utf8_lossy(&sum));

        let id = link.conn.request("divide", Bytes::new(), CallOptions::new(), Instant::now()).unwrap();
        match outcome(&mut link, id)? {
            Err(e) => println!("[client] divide failed as expected: {e}"),
            Ok(_) => return Err(io::Error::other("divide should fail")),
        }

        let opts = CallOptions::new().kind(CallKind::ServerStream).timeout(Timeout::After(Duration::from_secs(5)));
        let id = link.conn.request("count", Bytes::new(), opts, Instant::now()).unwrap();
        let done = outcome(&mut link, id)?.map_err(io::Error::other)?;
        println!("[client] count finished: {}", String::from_utf8_lossy(&done));

        let opts = SubscribeOptions { prefix: true, policy: SlowConsumerPolicy::DropOldest };
        let sub = link.conn.subscribe("news/", opts).unwrap();
        link.conn.notify("publish-news", Bytes::new(), CallOptions::new()).unwrap();
        let mut got = 0;
        link.run(|_, e| match e {
            Event::SubscribeResult { id, result } => {
                println!("[client] subscription {id} confirmed: {result:?}");
                false
            }
            Event::Message { subscription, topic, payload } if subscription == sub => {
                println!("[client] message on {topic:?}: {}", String::from_utf8_lossy(&payload));
                got += 1;
                got == 2
            }
            _ => false,
        })?;

        link.conn.ping(Instant::now()).unwrap();
        link.run(|_, e| match e {
            Event::Pong { rtt, .. } => {
                println!("[client] ping round trip {rtt:?}");
                true
            }
            _ => false,
        })?;

        link.conn.close(Code::OK, "bye", None, Instant::now());
        link.run(|_, e| {
            if let Event::Closed(e) = e {
                println!("[client] closed: {e}");
            }
            false
        })?;
        Ok(())
    }
}
