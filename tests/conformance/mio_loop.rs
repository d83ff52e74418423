//! A wharf-mio server driven by a hand-written mio loop on a thread of its
//! own, with the methods the wharf-mio conformance cases and the fault
//! cases use (`echo`, `add`, `fail`, `hang`, `hanging`, `idem`, `blob`,
//! `late`, `wait`, `broadcast`, `cancelled`, `shutdown`, the `shout`
//! notification), publishing and answering on command, and counters of what
//! it saw.
//! Shared by `tests/conformance_mio.rs` and the fault cases
//! (`tests/conformance/faults.rs`).

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use wharf::core::{Bytes, Code, ConnectionError, Event, RequestId};
use wharf::mio::{AuthReject, Endpoint, Server, ServerOptions};

/// The listener's token; connections get [`TOKENS`].
pub const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// Connection tokens: room for more than 10,000 at once (the S6 case).
pub const TOKENS: std::ops::Range<usize> = 2..20_002;

/// What the test tells the loop.
pub enum Command {
    /// Graceful shutdown with this reason and reconnect hint.
    Shutdown(&'static str, Option<Duration>),
    /// Drop the server at once: every socket closes, nothing is answered.
    Vanish,
    /// Publish each payload on the topic, from the server's side.
    Publish(String, Vec<Bytes>),
    /// Answer every `wait` call held so far with `answered` (after what
    /// was commanded before, a GOODBYE included).
    Answer,
}

/// What the mio-loop server saw.
#[derive(Default)]
pub struct Seen {
    /// Calls the callers gave up (`CallCancelled`).
    pub cancelled: AtomicUsize,
    /// Connections established.
    pub connected: AtomicUsize,
    /// Connections closed.
    pub closed: AtomicUsize,
    /// Notifications received, by method.
    pub notifications: Mutex<Vec<String>>,
    /// `Server::evicted_handshakes` and `connection_count`, after each pass.
    pub evicted: AtomicUsize,
    /// Connections held.
    pub held: AtomicUsize,
    /// `Server::refused_peers`, after each pass.
    pub refused: AtomicUsize,
    /// Calls to `hang` that reached the server.
    pub hanging: AtomicUsize,
    /// Calls to `idem` that reached the server.
    pub idem: AtomicUsize,
    /// Calls to `wait` that reached the server (answered on
    /// [`Command::Answer`]).
    pub waiting: AtomicUsize,
    /// Whether `idem` calls wait forever instead of answering.
    pub hold_idem: AtomicBool,
    /// Why each connection closed, and when.
    pub closed_why: Mutex<Vec<(ConnectionError, Instant)>>,
    /// Messages published on command so far.
    pub published: AtomicU64,
    /// `BrokerStats::dropped`, after each pass.
    pub dropped: AtomicU64,
}

/// The loop's handle: dropping it stops the loop at once (every socket
/// closes, as if the server vanished).
pub struct MioServer {
    /// Where it listens (a TCP port the OS chose filled in).
    pub endpoint: Endpoint,
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    /// What it saw.
    pub seen: Arc<Seen>,
    thread: Option<JoinHandle<()>>,
}

impl MioServer {
    /// Tells the loop `c`.
    pub fn command(&self, c: Command) {
        self.commands.send(c).unwrap();
        self.waker.wake().unwrap();
    }

    /// A function that tells the loop a command, for another thread.
    pub fn commander(&self) -> impl Fn(Command) + Send + 'static {
        let (commands, waker) = (self.commands.clone(), self.waker.clone());
        move |c| {
            commands.send(c).unwrap();
            waker.wake().unwrap();
        }
    }

    /// Whether the loop has ended (after a shutdown drained every client).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the loop to end (after a shutdown drained every client).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("the server loop panicked");
        }
    }
}

impl Drop for MioServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.commands.send(Command::Vanish);
            let _ = self.waker.wake();
            let _ = t.join();
        }
    }
}

/// Binds `endpoint` and runs the loop on a thread of its own (`token`: the
/// auth payload it requires, if any).
pub fn mio_server(endpoint: Endpoint, options: ServerOptions, token: Option<&'static [u8]>) -> MioServer {
    try_mio_server(endpoint, options, token).expect("the mio server binds")
}

/// [`mio_server`], or why it could not bind.
pub fn try_mio_server(
    endpoint: Endpoint,
    options: ServerOptions,
    token: Option<&'static [u8]>,
) -> Result<MioServer, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (commands, command_rx) = mpsc::channel();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    let thread = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        let mut server = match Server::bind(&endpoint, options) {
            Ok(s) => s,
            Err(e) => {
                ready_tx.send(Err(e.to_string())).unwrap();
                return;
            }
        };
        if let Some(token) = token {
            server.set_auth(move |req| if req.auth == token { Ok(()) } else { Err(AuthReject::new("wrong token")) });
        }
        server.register(poll.registry(), LISTENER, TOKENS).unwrap();
        ready_tx.send(Ok((server.endpoint().clone(), waker))).unwrap();
        serve(&mut poll, &mut server, &command_rx, &seen2);
    });
    let (endpoint, waker) = ready_rx.recv().unwrap()?;
    Ok(MioServer { endpoint, commands, waker, seen, thread: Some(thread) })
}

/// The hand-written loop: the methods every case uses.
fn serve(poll: &mut Poll, server: &mut Server, commands: &mpsc::Receiver<Command>, seen: &Seen) {
    let mut events = Events::with_capacity(256);
    let mut stopping = false;
    // Calls answered later: (token, id, when).
    let mut delayed: Vec<(Token, RequestId, Instant)> = Vec::new();
    // `wait` calls, answered on command.
    let mut waiting: Vec<(Token, RequestId)> = Vec::new();
    loop {
        let now = Instant::now();
        let mut timeout = server.timeout(now);
        if let Some(at) = delayed.iter().map(|d| d.2).min() {
            let t = at.saturating_duration_since(now);
            timeout = Some(timeout.map_or(t, |x| x.min(t)));
        }
        poll.poll(&mut events, timeout).unwrap();
        let now = Instant::now();
        for event in events.iter() {
            if event.token() == WAKE {
                while let Ok(c) = commands.try_recv() {
                    match c {
                        Command::Shutdown(reason, hint) => {
                            stopping = true;
                            server.shutdown(reason, hint, now);
                        }
                        Command::Vanish => return,
                        Command::Answer => {
                            for (token, id) in waiting.drain(..) {
                                server.respond(token, id, Bytes::from_static(b"answered"));
                            }
                        }
                        Command::Publish(topic, payloads) => {
                            for p in payloads {
                                server.publish(&topic, p);
                                seen.published.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
            } else {
                server.handle(event, now);
            }
        }
        server.handle_timeout(now);
        delayed.retain(|&(token, id, at)| {
            if at <= now {
                server.respond(token, id, Bytes::from_static(b"late"));
                false
            } else {
                true
            }
        });
        while let Some(ev) = server.poll_event(now) {
            let token = ev.token;
            match ev.event {
                Event::Request(call) => match call.method.as_str() {
                    "echo" => server.respond(token, call.id, call.payload),
                    "add" => {
                        let (a, b): (i64, i64) = wharf::mio::decode(&call.payload).unwrap();
                        server.respond(token, call.id, wharf::mio::encode(&(a + b)).unwrap());
                    }
                    "fail" => server.respond_error(token, call.id, Code::INVALID_REQUEST, "nope"),
                    "hang" => {
                        seen.hanging.fetch_add(1, Ordering::SeqCst);
                    }
                    "hanging" => {
                        let n = seen.hanging.load(Ordering::SeqCst) as u64;
                        server.respond(token, call.id, wharf::mio::encode(&n).unwrap());
                    }
                    // Answers 42, or never while `hold_idem` is set.
                    "idem" => {
                        seen.idem.fetch_add(1, Ordering::SeqCst);
                        if !seen.hold_idem.load(Ordering::SeqCst) {
                            server.respond(token, call.id, wharf::mio::encode(&42u32).unwrap());
                        }
                    }
                    // Answers, then shuts down with the reconnect hint asked
                    // for (milliseconds).
                    "shutdown" => {
                        let hint_ms: u64 = wharf::mio::decode(&call.payload).unwrap();
                        server.respond(token, call.id, wharf::mio::encode(&()).unwrap());
                        stopping = true;
                        server.shutdown("restarting", Some(Duration::from_millis(hint_ms)), now);
                    }
                    "blob" => server.respond(token, call.id, Bytes::from(vec![7u8; 1 << 20])),
                    "late" => delayed.push((token, call.id, now + Duration::from_millis(300))),
                    "wait" => {
                        seen.waiting.fetch_add(1, Ordering::SeqCst);
                        waiting.push((token, call.id));
                    }
                    "broadcast" => {
                        // (topic, count): publish `count` numbered messages.
                        let (topic, count): (String, u32) = wharf::mio::decode(&call.payload).unwrap();
                        let mut reached = 0;
                        for i in 0..count {
                            reached += server.publish(&topic, wharf::mio::encode(&i).unwrap()).queued;
                        }
                        server.respond(token, call.id, wharf::mio::encode(&reached).unwrap());
                    }
                    "cancelled" => {
                        let n = seen.cancelled.load(Ordering::SeqCst) as u64;
                        server.respond(token, call.id, wharf::mio::encode(&n).unwrap());
                    }
                    other => {
                        let msg = format!("no method {other:?}");
                        server.respond_error(token, call.id, Code::UNKNOWN_METHOD, &msg);
                    }
                },
                Event::Notification(n) => {
                    seen.notifications.lock().unwrap().push(n.method.to_string());
                    if n.method == "shout" {
                        server.publish("shouts", n.payload);
                    }
                }
                Event::CallCancelled { .. } => {
                    seen.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                Event::Connected(_) => {
                    seen.connected.fetch_add(1, Ordering::SeqCst);
                }
                Event::Closed(e) => {
                    seen.closed.fetch_add(1, Ordering::SeqCst);
                    seen.closed_why.lock().unwrap().push((e, Instant::now()));
                }
                _ => {}
            }
        }
        seen.evicted.store(server.evicted_handshakes() as usize, Ordering::SeqCst);
        seen.held.store(server.connection_count(), Ordering::SeqCst);
        seen.refused.store(server.refused_peers() as usize, Ordering::SeqCst);
        seen.dropped.store(server.broker_stats().dropped, Ordering::SeqCst);
        if stopping && server.connection_count() == 0 {
            return;
        }
    }
}
