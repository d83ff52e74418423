//! Client loops shared by the clients: back-to-back calls for latency
//! (on tokio, and blocking), and N tasks calling for throughput.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::Result;
use crate::stats::{Latencies, Metric, Timing, rate};

/// One call in flight: `call` back to back for the warm-up, then timed one
/// by one for the measured period. Round-trip percentiles and calls/s.
pub async fn back_to_back<F, Fut>(timing: Timing, mut call: F) -> Result<Vec<Metric>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
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

/// [`back_to_back`] for blocking clients (raw std, the wharf-mio client).
pub fn back_to_back_blocking(timing: Timing, mut call: impl FnMut() -> Result<()>) -> Result<Vec<Metric>> {
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

/// `window` spawned tasks, each running `call` back to back until the
/// measured period is over: calls per second with `window` calls in flight
/// (completions counted between the end of the warm-up and the end of the
/// measured period).
pub async fn in_flight<C, F, Fut>(window: usize, timing: Timing, client: C, call: F) -> Result<Vec<Metric>>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..window)
        .map(|_| {
            let (client, call, done, stop) = (client.clone(), call.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(client.clone()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), crate::BoxError>(())
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
}
