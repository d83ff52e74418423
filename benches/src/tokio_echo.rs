//! The async floor: a hand-written tokio echo over `tokio::net::UnixStream`
//! with length-prefixed messages, no protocol beyond the prefix.
//!
//! A message is a 4-byte little-endian length and that many bytes. The
//! server gives each connection a task with an 8 KiB read buffer (the size
//! of tokio's `BufReader`): it reads what is available, echoes every
//! complete message it holds with one `write_all`, and keeps a partial one
//! for the next read. The client is the ping-pong of [`raw::pingpong`]
//! written for tokio: one message out, its echo back, repeat.
//!
//! [`raw::pingpong`]: crate::raw::pingpong

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::{Latencies, Metric, Timing};
use crate::wharf_tokio::runtime;
use crate::{Result, sys};

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;
/// A connection's read buffer.
const BUF: usize = 8 * 1024;

/// One message: the length prefix and `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(PREFIX + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Serves every connection with an echo task until the orchestrator closes
/// our standard input. `conns=N` (optional) raises the open-file limit for
/// N connections.
pub fn echo_server(p: &Params) -> Result<()> {
    if let Some(n) = p.opt::<u64>("conns")? {
        sys::raise_nofile(n + 64)?;
    }
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let listener = UnixListener::bind(socket)?;
        server_ready()?;
        loop {
            let (s, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(e) = serve(s).await {
                    eprintln!("tokio-echo-server: connection ended: {e}");
                }
            });
        }
    })
}

/// Echoes complete messages back, batched per read.
async fn serve(mut s: UnixStream) -> Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut have = 0usize;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut at = 0usize;
        while have - at >= PREFIX {
            let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            if PREFIX + len > BUF {
                return Err(format!("message of {len} bytes does not fit the {BUF}-byte buffer").into());
            }
            if have - at < PREFIX + len {
                break;
            }
            out.extend_from_slice(&buf[at..at + PREFIX + len]);
            at += PREFIX + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Ping-pong of [`MSG`]-byte payloads: round-trip percentiles and calls per
/// second, the loop in a spawned task as for wharf.
pub fn pingpong(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let s = UnixStream::connect(socket).await?;
        tokio::spawn(pingpong_loop(s, timing)).await?
    })
}

async fn pingpong_loop(mut s: UnixStream, timing: Timing) -> Result<Vec<Metric>> {
    let mut req = frame(&[0x5Au8; MSG]);
    let mut resp = vec![0u8; req.len()];
    let mut seq = 0u64;
    let mut call = async |s: &mut UnixStream| -> Result<()> {
        seq += 1;
        req[PREFIX..PREFIX + 8].copy_from_slice(&seq.to_le_bytes());
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
        if resp != req {
            return Err("tokio echo returned a different message".into());
        }
        Ok(())
    };
    let warm_end = Instant::now() + timing.warmup;
    while Instant::now() < warm_end {
        call(&mut s).await?;
    }
    let mut lat = Latencies::start();
    let end = Instant::now() + timing.measure;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        call(&mut s).await?;
        lat.record(t0, Instant::now());
    }
    Ok(lat.finish())
}
