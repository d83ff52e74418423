//! wharf on tokio: an echo server (`Router::raw`) and unary clients
//! (`Session::call_raw`) with 64-byte raw payloads.

use bytes::Bytes;
use wharf::{CallOptions, Config, Context, Error, Router};

use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::{Metric, Timing, mib_per_s};
use crate::{Result, drive, sys};

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

/// The tokio runtime of a role, from its `flavor=` parameter.
pub fn runtime(p: &Params) -> Result<tokio::runtime::Runtime> {
    let mut b = match p.get::<Flavor>("flavor")? {
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
        Flavor::Multi => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}

/// The connection config of the bulk measurement's client and server:
/// the default, with `max_frame_size` raised for `size`-byte payloads if
/// the default (16 MiB) is too small.
pub fn bulk_config(size: usize) -> Result<Config> {
    let mut config = Config::default();
    let needed = size.saturating_add(64 * 1024);
    if needed > config.max_frame_size as usize {
        config.max_frame_size =
            u32::try_from(needed).map_err(|_| format!("a {size}-byte payload exceeds wharf's frame limit"))?;
        config.max_inbound_buffered = config.max_inbound_buffered.max(2 * needed);
        config.max_outbound_buffered = config.max_outbound_buffered.max(2 * needed);
    }
    Ok(config)
}

/// Serves `echo` (a raw handler returning its payload) until the
/// orchestrator closes our standard input. Optional parameters: `conns=N`
/// raises the open-file limit and wharf's connection limit (default 16,384)
/// for N clients; `size=BYTES` sizes the frame limit for payloads that big
/// ([`bulk_config`]).
pub fn echo_server(p: &Params) -> Result<()> {
    let socket = p.socket()?;
    let conns = p.opt::<usize>("conns")?;
    if let Some(n) = conns {
        sys::raise_nofile(n as u64 + 64)?;
    }
    let config = match p.opt::<usize>("size")? {
        Some(size) => bulk_config(size)?,
        None => Config::default(),
    };
    runtime(p)?.block_on(async move {
        let router = Router::new().raw(ECHO, |payload: Bytes, _: Context| async move { Ok::<_, Error>(payload) });
        let mut builder = wharf::tokio::server().router(router).config(config);
        if let Some(n) = conns {
            builder = builder.max_connections(n + 16);
        }
        let _server = builder.bind(socket).await?;
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
        tokio::spawn(latency_loop(client, Bytes::from(vec![0x5Au8; MSG]), timing)).await?
    })
}

/// Bulk: one `size=`-byte payload echoed per call, back to back, as in
/// [`unary_latency`]: round-trip percentiles, calls per second and payload
/// MiB/s (request and echo both counted).
pub fn bulk(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let socket = p.socket()?;
    let size: usize = p.get("size")?;
    let config = bulk_config(size)?;
    let mut metrics = runtime(p)?.block_on(async move {
        let client = wharf::tokio::client().config(config).connect(socket).await?;
        tokio::spawn(latency_loop(client, Bytes::from(vec![0x5Au8; size]), timing)).await?
    })?;
    metrics.push(mib_per_s(&metrics, 2 * size));
    Ok(metrics)
}

/// The back-to-back call loop of [`unary_latency`] and [`bulk`]. The
/// response's length is checked, not its bytes (the floor does the same).
async fn latency_loop(client: wharf::Client, payload: Bytes, timing: Timing) -> Result<Vec<Metric>> {
    drive::back_to_back(timing, || echo(&client, payload.clone())).await
}

/// One `echo` call, its response's length checked.
async fn echo(client: &wharf::Client, payload: Bytes) -> Result<()> {
    let len = payload.len();
    let r = client.call_raw(ECHO, payload, CallOptions::new()).await?;
    if r.len() != len {
        return Err(format!("echo returned {} of {len} bytes", r.len()).into());
    }
    Ok(())
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
        drive::in_flight(window, timing, client, move |c: wharf::Client| {
            let payload = payload.clone();
            async move { echo(&c, payload).await }
        })
        .await
    })
}
