//! tarpc over a Unix socket (`tarpc::serde_transport::unix`, length-delimited
//! frames, bincode through tokio-serde): a service with one method,
//! `echo(Vec<u8>) -> Vec<u8>`, called with a 64-byte vector.
//!
//! The server spawns a tokio task per connection (`BaseChannel` with
//! defaults, `execute`) and one per request, as tarpc's examples do. The
//! client is `EchoClient` with the default config; its calls take their
//! vector by value, so each call clones the 64-byte payload (what a tarpc
//! caller does). Both run on the `flavor=` tokio scheduler, like wharf.

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};

use crate::raw::MSG;
use crate::role::{Params, server_ready};
use crate::stats::Metric;
use crate::wharf_tokio::runtime;
use crate::{Result, drive};

/// The measured service.
#[tarpc::service]
trait Echo {
    /// Returns its argument.
    async fn echo(payload: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

/// Serves `Echo` on every connection until the orchestrator closes our
/// standard input.
pub fn echo_server(p: &Params) -> Result<()> {
    let socket = p.socket()?;
    runtime(p)?.block_on(async move {
        let mut incoming = tarpc::serde_transport::unix::listen(socket, Bincode::default).await?;
        server_ready()?;
        while let Some(transport) = incoming.next().await {
            let channel = BaseChannel::with_defaults(transport?);
            tokio::spawn(channel.execute(EchoServer.serve()).for_each(|request| async move {
                tokio::spawn(request);
            }));
        }
        Ok(())
    })
}

async fn connect(p: &Params) -> Result<EchoClient> {
    let transport = tarpc::serde_transport::unix::connect(p.socket()?, Bincode::default).await?;
    Ok(EchoClient::new(client::Config::default(), transport).spawn())
}

/// One `echo` call, its response's length checked.
async fn echo(client: &EchoClient, payload: Vec<u8>) -> Result<()> {
    let r = client.echo(context::current(), payload).await?;
    if r.len() != MSG {
        return Err(format!("tarpc echo returned {} bytes", r.len()).into());
    }
    Ok(())
}

/// One call in flight, back to back (in a spawned task, as for wharf):
/// round-trip percentiles and calls per second.
pub fn unary_latency(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    runtime(p)?.block_on(async move {
        let client = connect(p).await?;
        let payload = vec![0x5Au8; MSG];
        tokio::spawn(async move { drive::back_to_back(timing, || echo(&client, payload.clone())).await }).await?
    })
}

/// `window=N` tasks sharing one client, each calling back to back: calls
/// per second with N calls in flight.
pub fn inflight(p: &Params) -> Result<Vec<Metric>> {
    let timing = p.timing()?;
    let window: usize = p.get("window")?;
    runtime(p)?.block_on(async move {
        let client = connect(p).await?;
        drive::in_flight(window, timing, client, |c: EchoClient| async move { echo(&c, vec![0x5Au8; MSG]).await }).await
    })
}
