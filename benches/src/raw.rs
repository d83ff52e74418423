//! The floor: raw std blocking Unix sockets, no protocol at all.
//!
//! Requests and responses are fixed-size [`MSG`]-byte messages; the server
//! echoes bytes back as they come, so a response is its request.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::Result;
use crate::role::{Params, server_ready};
use crate::stats::{Latencies, Metric, mib_per_s, rate};

/// Request and response size in bytes.
pub const MSG: usize = 64;
/// The server's read buffer. A read that returns less than this drained
/// the socket; the largest window (calls in flight × [`MSG`]) must stay
/// below it, or the server could wait for more input with its output held.
const SERVER_BUF: usize = 256 * 1024;
/// The largest window the raw sliding-window client accepts.
pub const MAX_WINDOW: usize = SERVER_BUF / MSG / 2;

/// Echo server for one connection: reads as much as is available, and
/// writes back what it read once its input is drained (a read returned
/// less than the buffer). Under ping-pong that is one read and one write
/// per call; under a window it batches like a real server that flushes
/// only when idle.
pub fn echo_server(p: &Params) -> Result<()> {
    let listener = UnixListener::bind(p.socket()?)?;
    server_ready()?;
    let (mut s, _) = listener.accept()?;
    let mut buf = vec![0u8; SERVER_BUF];
    let mut out: Vec<u8> = Vec::with_capacity(SERVER_BUF);
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n < buf.len() {
            // Drained: write out everything held, without a copy in the
            // common case of nothing held.
            if out.is_empty() {
                s.write_all(&buf[..n])?;
            } else {
                out.extend_from_slice(&buf[..n]);
                s.write_all(&out)?;
                out.clear();
            }
        } else {
            out.extend_from_slice(&buf[..n]);
        }
    }
    if !out.is_empty() {
        s.write_all(&out)?;
    }
    Ok(())
}

/// Blocking ping-pong: write one request, read its response, repeat.
/// Reports round-trip percentiles and calls per second.
pub fn pingpong(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let mut s = UnixStream::connect(p.socket()?)?;
    let mut req = [0x5Au8; MSG];
    let mut resp = [0u8; MSG];
    let mut seq = 0u64;
    let mut call = |s: &mut UnixStream| -> Result<()> {
        seq += 1;
        req[..8].copy_from_slice(&seq.to_le_bytes());
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        if resp != req {
            return Err("raw echo returned a different message".into());
        }
        Ok(())
    };

    crate::drive::back_to_back_blocking(timing, || call(&mut s))
}

/// What the window client's two threads share.
struct Window {
    state: Mutex<WindowState>,
    credit: Condvar,
}

struct WindowState {
    /// Calls the writer may still start.
    credits: usize,
    stop: bool,
}

/// Sliding window: `window` calls in flight; a writer thread sends as many
/// requests as it has credits for in one write, a reader thread reads
/// whatever responses have arrived and returns their credits. Reports
/// calls per second.
pub fn window(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let window: usize = p.get("window")?;
    if window == 0 || window > MAX_WINDOW {
        return Err(format!("window must be 1..={MAX_WINDOW}").into());
    }
    let s = UnixStream::connect(p.socket()?)?;
    let shared =
        Arc::new(Window { state: Mutex::new(WindowState { credits: window, stop: false }), credit: Condvar::new() });
    let received = Arc::new(AtomicU64::new(0));

    let writer = {
        let shared = shared.clone();
        let mut s = s.try_clone()?;
        std::thread::Builder::new().name("writer".into()).spawn(move || -> Result<()> {
            let batch = vec![0x5Au8; window * MSG];
            loop {
                let k = {
                    let mut st = shared.state.lock().map_err(|_| "poisoned")?;
                    while st.credits == 0 && !st.stop {
                        st = shared.credit.wait(st).map_err(|_| "poisoned")?;
                    }
                    if st.stop {
                        return Ok(());
                    }
                    std::mem::take(&mut st.credits)
                };
                s.write_all(&batch[..k * MSG])?;
            }
        })?
    };
    let reader = {
        let shared = shared.clone();
        let received = received.clone();
        let mut s = s.try_clone()?;
        std::thread::Builder::new().name("reader".into()).spawn(move || -> Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut partial = 0usize;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                partial += n;
                let done = partial / MSG;
                partial %= MSG;
                if done > 0 {
                    received.fetch_add(done as u64, Ordering::Relaxed);
                    let mut st = shared.state.lock().map_err(|_| "poisoned")?;
                    let was_empty = st.credits == 0;
                    st.credits += done;
                    drop(st);
                    // The writer only ever waits with no credits.
                    if was_empty {
                        shared.credit.notify_one();
                    }
                }
            }
        })?
    };

    std::thread::sleep(timing.warmup);
    let (c0, t0) = (received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(timing.measure);
    let (c1, t1) = (received.load(Ordering::Relaxed), Instant::now());

    // Stop the writer, then close our write side: the server echoes what
    // is in flight, sees EOF and closes, and the reader sees EOF.
    shared.state.lock().map_err(|_| "poisoned")?.stop = true;
    shared.credit.notify_one();
    writer.join().map_err(|_| "writer panicked")??;
    s.shutdown(Shutdown::Write)?;
    reader.join().map_err(|_| "reader panicked")??;
    Ok(rate(c1 - c0, t0, t1))
}

/// Bulk echo server for one connection: reads exactly `size=` bytes (one
/// request), writes them back (the response), repeats until the client
/// closes. Reading the whole request before answering keeps both sides
/// from blocking on each other's full socket buffers.
pub fn bulk_echo_server(p: &Params) -> Result<()> {
    let size: usize = p.get("size")?;
    let listener = UnixListener::bind(p.socket()?)?;
    server_ready()?;
    let (mut s, _) = listener.accept()?;
    let mut buf = vec![0u8; size];
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        s.write_all(&buf)?;
    }
}

/// Bulk ping-pong: `write_all` of a `size=`-byte request, `read_exact` of
/// the `size`-byte response, back to back. Reports round-trip percentiles,
/// calls per second and payload MiB/s (request and response both counted).
/// Only the response's length is checked, as for wharf.
pub fn bulk(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let size: usize = p.get("size")?;
    let mut s = UnixStream::connect(p.socket()?)?;
    let req = vec![0x5Au8; size];
    let mut resp = vec![0u8; size];
    let mut call = |s: &mut UnixStream| -> Result<()> {
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        Ok(())
    };
    let warm_end = Instant::now() + timing.warmup;
    while Instant::now() < warm_end {
        call(&mut s)?;
    }
    let mut lat = Latencies::start();
    let end = Instant::now() + timing.measure;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        call(&mut s)?;
        lat.record(t0, Instant::now());
    }
    let mut metrics = lat.finish();
    metrics.push(mib_per_s(&metrics, 2 * size));
    Ok(metrics)
}
