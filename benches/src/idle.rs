//! Server memory per idle connection.
//!
//! The client process raises its open-file limit, opens one warm-up
//! connection (so one-time costs of the first connection — code paged in,
//! lazily built tables — are not charged to the others), waits for the
//! server's resident set size to settle and reads it ("before"), opens
//! `conns=N` more connections one after another, each completed (see the
//! roles below) before the next, waits for the server's RSS to settle again
//! and reads it ("after"). Bytes per connection = (after − before) / N. The
//! RSS is `VmRSS` from `/proc/SERVER_PID/status`, read by the client while
//! it holds every connection open and sends nothing; it counts the server's
//! user-space memory only, not the kernel's socket buffers.
//!
//! Optional `hold=SECS`: wait that long after the last connection before
//! reading "after" (e.g. past the keepalive interval, 10 s by default, to
//! see what an idle connection holds once keepalives were exchanged; the
//! wharf client runs its runtime meanwhile, so its connections answer);
//! run by hand as a role, no suite sets it.
//!
//! Servers (each raises its own open-file limit for N + 64 descriptors):
//! - `raw-hold-server`: std `accept`, writes one byte to say it accepted,
//!   keeps the socket in a `Vec`; completion = the client read that byte;
//! - `tokio-echo-server` (see [`tokio_echo`](crate::tokio_echo)): a task
//!   with an 8 KiB buffer per connection; completion = one 64-byte echo;
//! - `wharf-tokio-echo-server` with `max_connections` raised to N + 16;
//!   completion = the wharf handshake (`connect` returned).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::Metric;
use crate::tokio_echo::frame;
use crate::wharf_tokio::runtime;
use crate::{Result, sys};

/// Raw floor: accepts and holds connections, writing one byte to each.
pub fn hold_server(p: &Params) -> Result<()> {
    let conns: u64 = p.get("conns")?;
    sys::raise_nofile(conns + 64)?;
    let listener = UnixListener::bind(p.socket()?)?;
    server_ready()?;
    let mut held = Vec::new();
    loop {
        let (mut s, _) = listener.accept()?;
        s.write_all(&[1])?;
        held.push(s);
    }
}

/// Idle clients of `raw-hold-server`.
pub fn raw_client(p: &Params) -> Result<Vec<Metric>> {
    idle(p, std::thread::sleep, |path| {
        let mut s = UnixStream::connect(path)?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        Ok(s)
    })
}

/// Idle clients of `tokio-echo-server`: one echo each, then silence.
pub fn tokio_echo_client(p: &Params) -> Result<Vec<Metric>> {
    let req = frame(&[0x5Au8; MSG]);
    let mut resp = vec![0u8; req.len()];
    idle(p, std::thread::sleep, |path| {
        let mut s = UnixStream::connect(path)?;
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        Ok(s)
    })
}

/// Idle wharf clients: each connects and completes the handshake.
pub fn wharf_client(p: &Params) -> Result<Vec<Metric>> {
    let rt = runtime(p)?;
    idle(
        p,
        |d| rt.block_on(async { tokio::time::sleep(d).await }),
        |path| Ok(rt.block_on(wharf::tokio::connect(path))?),
    )
}

/// The procedure of the module documentation, with `open` opening and
/// completing one connection and `wait` waiting for `hold=`.
fn idle<C>(p: &Params, wait: impl Fn(Duration), mut open: impl FnMut(&Path) -> Result<C>) -> Result<Vec<Metric>> {
    let conns: usize = p.get("conns")?;
    let pid: u32 = p.get("server_pid")?;
    let socket = p.socket()?;
    sys::raise_nofile(conns as u64 + 64)?;
    let mut held = Vec::with_capacity(conns + 1);
    held.push(open(&socket).map_err(|e| format!("warm-up connection: {e}"))?);
    let before = settled_rss(pid)?;
    let t0 = Instant::now();
    for i in 0..conns {
        held.push(open(&socket).map_err(|e| format!("connection {} of {conns}: {e}", i + 1))?);
    }
    let connect = t0.elapsed().as_secs_f64();
    if let Some(hold) = p.opt::<f64>("hold")? {
        wait(Duration::from_secs_f64(hold));
    }
    let after = settled_rss(pid)?;
    let per = (after as f64 - before as f64) / conns as f64;
    Ok(vec![
        ("conns".into(), conns as f64),
        ("rss_before".into(), before as f64),
        ("rss_after".into(), after as f64),
        ("bytes_per_conn".into(), per),
        ("conns_per_s".into(), if connect > 0.0 { conns as f64 / connect } else { 0.0 }),
    ])
}

/// The server's RSS once it has stopped changing: read every 100 ms after
/// a first 300 ms, until two reads in a row agree within 0.1 % (at most
/// 5 s).
fn settled_rss(pid: u32) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = sys::rss_bytes(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sys::rss_bytes(pid)?;
        if now.abs_diff(last) * 1000 <= last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}
