//! wharf without an async runtime: an echo server in a hand-written mio
//! loop (`wharf::mio::Server`) and the blocking client
//! (`wharf::mio::Client`), with 64-byte raw payloads.

use std::time::Instant;

use bytes::Bytes;
use mio::{Events, Poll, Token};
use wharf::core::Event;
use wharf::mio::{Client, Endpoint, Server, ServerOptions};

use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::Metric;
use crate::{Result, drive};

/// Serves `echo` from a mio loop on this thread until the orchestrator
/// closes our standard input (the process then exits).
pub fn echo_server(p: &Params) -> Result<()> {
    let endpoint = Endpoint::unix(p.socket()?);
    let mut poll = Poll::new()?;
    let mut server = Server::bind(&endpoint, ServerOptions::default())?;
    server.register(poll.registry(), Token(0), 1..65_536)?;
    server_ready()?;
    let mut events = Events::with_capacity(256);
    loop {
        poll.poll(&mut events, server.timeout(Instant::now()))?;
        let now = Instant::now();
        for event in events.iter() {
            server.handle(event, now);
        }
        server.handle_timeout(now);
        while let Some(ev) = server.poll_event(now) {
            if let Event::Request(call) = ev.event {
                server.respond(ev.token, call.id, call.payload);
            }
        }
    }
}

/// The blocking client, one call at a time: round-trip percentiles and
/// calls per second.
pub fn blocking_unary(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let mut client = Client::connect(&Endpoint::unix(p.socket()?))?;
    let payload = Bytes::from(vec![0x5Au8; MSG]);
    drive::back_to_back_blocking(timing, || {
        let r = client.call_raw("echo", payload.clone())?;
        if r.len() != MSG {
            return Err(format!("echo returned {} of {MSG} bytes", r.len()).into());
        }
        Ok(())
    })
}
