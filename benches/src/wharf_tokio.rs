//! wharf on tokio: an echo server (`Router::raw`) and unary clients
//! (`Session::call_raw`) with 64-byte raw payloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use wharf::{CallOptions, Context, Error, Router};

use crate::Result;
use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::{Latencies, Metric, Timing, rate};

/// The echo method's name.
const ECHO: &str = "echo";

/// Which tokio scheduler a role runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `current_thread`: everything of the process on one thread.
    Current,
    /// `multi_thread` with tokio's default worker count (the CPUs this
    /// process may run on, so one worker when pinned).
    Multi,
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "current" | "current_thread" => Ok(Flavor::Current),
            "multi" | "multi_thread" => Ok(Flavor::Multi),
            other => Err(format!("unknown tokio flavor {other:?} (current or multi)")),
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::Current => "current",
            Flavor::Multi => "multi",
        })
    }
}

fn runtime(p: &Params) -> Result<tokio::runtime::Runtime> {
    let mut b = match p.get::<Flavor>("flavor")? {
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
        Flavor::Multi => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}

/// Serves `echo` (a raw handler returning its payload) until the
/// orchestrator closes our standard input.
pub fn echo_server(p: &Params) -> Result<()> {
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let router = Router::new().raw(ECHO, |payload: Bytes, _: Context| async move { Ok::<_, Error>(payload) });
        let _server = wharf::tokio::server().router(router).bind(socket).await?;
        server_ready()?;
        std::future::pending::<Result<()>>().await
    })
}

/// One call in flight, back to back: round-trip percentiles and calls per
/// second.
pub fn unary_latency(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let socket = p.socket()?;
    // The loop runs in a spawned task, not in `block_on`'s future: tokio's
    // current_thread scheduler answers a wake-up of the `block_on` future
    // with an extra zero-timeout poll of the driver (one more epoll_wait
    // per call), which would be measured here as wharf's.
    runtime(p)?.block_on(async move {
        let client = wharf::tokio::connect(socket).await?;
        tokio::spawn(latency_loop(client, timing)).await?
    })
}

/// The back-to-back call loop of [`unary_latency`].
async fn latency_loop(client: wharf::Client, timing: Timing) -> Result<Vec<Metric>> {
    let payload = Bytes::from(vec![0x5Au8; MSG]);
    let call = || async {
        let r = client.call_raw(ECHO, payload.clone(), CallOptions::new()).await?;
        if r.len() != MSG {
            return Err::<(), crate::BoxError>(format!("echo returned {} bytes", r.len()).into());
        }
        Ok(())
    };
    let warm_end = Instant::now() + timing.warmup;
    while Instant::now() < warm_end {
        call().await?;
    }
    let mut lat = Latencies::start();
    let end = Instant::now() + timing.measure;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        call().await?;
        lat.record(t0, Instant::now());
    }
    Ok(lat.finish())
}

/// `window` tasks on one connection, each calling back to back: calls per
/// second with `window` calls in flight.
pub fn inflight(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let window: usize = p.get("window")?;
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let client = wharf::tokio::connect(socket).await?;
        let payload = Bytes::from(vec![0x5Au8; MSG]);
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..window)
            .map(|_| {
                let (client, payload, done, stop) = (client.clone(), payload.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = client.call_raw(ECHO, payload.clone(), CallOptions::new()).await?;
                        if r.len() != MSG {
                            return Err::<(), crate::BoxError>(format!("echo returned {} bytes", r.len()).into());
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        tokio::time::sleep(timing.warmup).await;
        let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(timing.measure).await;
        let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        Ok(rate(c1 - c0, t0, t1))
    })
}
