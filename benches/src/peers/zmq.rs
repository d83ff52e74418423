//! ZeroMQ over `ipc://` (a Unix socket at the run's socket path), through
//! the `zmq` crate and the system's libzmq. Every process has one
//! `zmq::Context` with libzmq's default single I/O thread, which does the
//! socket I/O and is pinned with the process like every other thread.
//! Messages are single 64-byte frames.
//!
//! - `zmq-rep-server` / `zmq-req`: REQ/REP ping-pong, round-trip
//!   percentiles and calls/s (ratio to the raw ping-pong);
//! - `zmq-router-server` / `zmq-dealer`: a DEALER keeps `window=N` requests
//!   in flight (one thread: receive a reply, send a request), a ROUTER
//!   echoes each message to the peer it came from; calls/s (ratio to the
//!   raw window of N);
//! - `zmq-xpub-server` / `zmq-sub`: an XPUB socket with `ZMQ_XPUB_NODROP`
//!   (a full subscriber queue blocks `send` instead of dropping, as a full
//!   socket blocks the raw fan-out) and `ZMQ_XPUB_VERBOSE` waits for
//!   `subs=N` subscriptions, then sends 64-byte messages carrying a
//!   sequence number as fast as `send` returns; N SUB sockets in one client
//!   process, a thread each, count and check them as the raw fan-out's
//!   subscribers do (ratio to the raw fan-out of N).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::Result;
use crate::pubsub::{Counters, SeqCheck, seq_of};
use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::{Latencies, Metric, rate};

fn endpoint(p: &Params) -> Result<String> {
    Ok(format!("ipc://{}", p.socket()?.display()))
}

/// REP echo: receive a request, send it back, forever.
pub fn rep_server(p: &Params) -> Result<()> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::REP)?;
    sock.bind(&endpoint(p)?)?;
    server_ready()?;
    let mut buf = [0u8; MSG * 2];
    loop {
        let n = sock.recv_into(&mut buf, 0)?;
        sock.send(&buf[..n.min(buf.len())], 0)?;
    }
}

/// REQ ping-pong: round-trip percentiles and calls per second.
pub fn req(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::REQ)?;
    sock.set_linger(0)?;
    sock.connect(&endpoint(p)?)?;
    let req = [0x5Au8; MSG];
    let mut resp = [0u8; MSG * 2];
    let mut call = || -> Result<()> {
        sock.send(&req[..], 0)?;
        let n = sock.recv_into(&mut resp, 0)?;
        if n != MSG {
            return Err(format!("REP answered {n} bytes").into());
        }
        Ok(())
    };
    let warm_end = Instant::now() + timing.warmup;
    while Instant::now() < warm_end {
        call()?;
    }
    let mut lat = Latencies::start();
    let end = Instant::now() + timing.measure;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        call()?;
        lat.record(t0, Instant::now());
    }
    Ok(lat.finish())
}

/// ROUTER echo: every message (peer identity frame, payload frame) goes
/// back to the peer it came from, forever.
pub fn router_server(p: &Params) -> Result<()> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::ROUTER)?;
    sock.bind(&endpoint(p)?)?;
    server_ready()?;
    let mut id = zmq::Message::new();
    let mut body = zmq::Message::new();
    loop {
        sock.recv(&mut id, 0)?;
        if !sock.get_rcvmore()? {
            continue;
        }
        sock.recv(&mut body, 0)?;
        sock.send(&*id, zmq::SNDMORE)?;
        sock.send(&*body, 0)?;
    }
}

/// DEALER with `window=N` requests in flight: calls per second.
pub fn dealer(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let window: usize = p.get("window")?;
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::DEALER)?;
    sock.set_linger(0)?;
    sock.connect(&endpoint(p)?)?;
    let req = [0x5Au8; MSG];
    let mut resp = [0u8; MSG * 2];
    for _ in 0..window {
        sock.send(&req[..], 0)?;
    }
    let mut done = 0u64;
    let start = Instant::now();
    let (warm_end, end) = (start + timing.warmup, start + timing.warmup + timing.measure);
    let mut mark: Option<(u64, Instant)> = None;
    loop {
        let n = sock.recv_into(&mut resp, 0)?;
        if n != MSG {
            return Err(format!("ROUTER answered {n} bytes").into());
        }
        done += 1;
        let now = Instant::now();
        if mark.is_none() && now >= warm_end {
            mark = Some((done, now));
        }
        if now >= end {
            let (c0, t0) = mark.unwrap_or((0, start));
            return Ok(rate(done - c0, t0, now));
        }
        sock.send(&req[..], 0)?;
    }
}

/// ZMQ_XPUB_NODROP, which the `zmq` crate has no setter for (libzmq ≥ 4.1).
const ZMQ_XPUB_NODROP: i32 = 69;

/// XPUB publisher: waits for `subs=N` subscriptions, then sends until every
/// subscriber has left.
pub fn xpub_server(p: &Params) -> Result<()> {
    let subs: usize = p.get("subs")?;
    let ctx = zmq::Context::new();
    let mut sock = ctx.socket(zmq::XPUB)?;
    sock.set_xpub_verbose(true)?;
    sock.set_linger(0)?;
    let one: i32 = 1;
    // SAFETY: a libzmq call on the live socket `sock` owns (its pointer is
    // valid until `sock` is dropped, after this call); the option value is
    // an `int` and its size is passed with it, as zmq_setsockopt(3) wants.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            sock.as_mut_ptr(),
            ZMQ_XPUB_NODROP,
            (&one as *const i32).cast(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc != 0 {
        return Err(format!("zmq_setsockopt(ZMQ_XPUB_NODROP): {}", std::io::Error::last_os_error()).into());
    }
    sock.bind(&endpoint(p)?)?;
    server_ready()?;
    let mut note = [0u8; 256];
    let mut joined = 0usize;
    while joined < subs {
        let n = sock.recv_into(&mut note, 0)?;
        if n > 0 && note[0] == 1 {
            joined += 1;
        }
    }
    let mut payload = [0x5Au8; MSG];
    let mut seq = 0u64;
    loop {
        for _ in 0..1024 {
            seq += 1;
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            sock.send(&payload[..], 0)?;
        }
        // Unsubscriptions (a subscriber's socket closed): stop when all left.
        while let Ok(n) = sock.recv_into(&mut note, zmq::DONTWAIT) {
            if n > 0 && note[0] == 0 {
                joined -= 1;
            }
        }
        if joined == 0 {
            return Ok(());
        }
    }
}

/// `subs=N` SUB sockets, a thread each: messages per second received.
pub fn sub(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let subs: usize = p.get("subs")?;
    let ctx = zmq::Context::new();
    let counters = Counters::new(subs);
    let stop = Arc::new(AtomicBool::new(false));
    let endpoint = endpoint(p)?;
    let mut threads = Vec::new();
    for i in 0..subs {
        let sock = ctx.socket(zmq::SUB)?;
        sock.set_rcvtimeo(100)?;
        sock.set_linger(0)?;
        sock.connect(&endpoint)?;
        sock.set_subscribe(b"")?;
        let (counters, stop) = (counters.clone(), stop.clone());
        threads.push(std::thread::Builder::new().name(format!("sub-{i}")).spawn(move || -> Result<()> {
            let mut buf = [0u8; MSG * 2];
            let (mut count, mut seq) = (0u64, SeqCheck::default());
            while !stop.load(Ordering::Relaxed) {
                let n = match sock.recv_into(&mut buf, 0) {
                    Ok(n) => n,
                    Err(zmq::Error::EAGAIN) => continue,
                    Err(e) => return Err(e.into()),
                };
                if n != MSG {
                    return Err(format!("SUB received {n} bytes").into());
                }
                let gap = seq.gap(seq_of(&buf));
                if gap > 0 {
                    counters.gaps.fetch_add(gap, Ordering::Relaxed);
                }
                count += 1;
                counters.delivered[i].store(count, Ordering::Relaxed);
            }
            Ok(())
        })?);
    }
    let m = crate::pubsub::measure_sleeping(&counters, timing, false, std::thread::sleep);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "subscriber thread panicked")??;
    }
    Ok(m)
}
