//! Connecting: [`ClientBuilder`].

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use wharf_core::{Config, Connection, ReconnectPolicy, Text};
use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy, PipeRetry, TransportError};

use crate::api::{Client, Session};
use crate::backend::{Backend, IntoEndpoint};
use crate::codec::Codec;
use crate::error::Error;
use crate::io::ByteStream;
use crate::reconnect::ReconnectingClient;
use crate::router::Router;
use crate::session::{Driver, Inner};

/// Configures and opens a client connection.
pub struct ClientBuilder {
    backend: Backend,
    config: Config,
    auth: Bytes,
    router: Router,
    codec: Codec,
    sub_queue: usize,
    connect_timeout: Duration,
    server_policy: Option<PeerPolicy>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder on this runtime backend.
    pub fn new(backend: Backend) -> Self {
        ClientBuilder {
            backend,
            config: Config::default(),
            auth: Bytes::new(),
            router: Router::new(),
            codec: Codec::default(),
            sub_queue: 1024,
            connect_timeout: Duration::from_secs(10),
            server_policy: None,
        }
    }

    /// Limits and timeouts (see [`Config`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The name the server sees in the handshake.
    pub fn name(mut self, name: &str) -> Self {
        self.config.name = Text::from(name.to_string());
        self
    }

    /// The authentication payload sent in the handshake.
    pub fn auth(mut self, auth: impl Into<Bytes>) -> Self {
        self.auth = auth.into();
        self
    }

    /// Handlers for calls the server makes to this client (peer mode).
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// The codec of typed calls (default postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Messages buffered per subscription, locally, before the
    /// subscription's [`SlowConsumerPolicy`](wharf_core::SlowConsumerPolicy)
    /// applies (as it does in the server's broker): drop the oldest and report
    /// the loss as [`SubscriptionEvent::Lagged`](crate::SubscriptionEvent::Lagged),
    /// or end the subscription with [`Error::SlowConsumer`]. Default 1024.
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.sub_queue = messages.max(1);
        self
    }

    /// How long to try reaching the endpoint (busy pipes are retried within
    /// it). The handshake then has the config's `handshake_timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Which servers this client trusts, judged on the kernel's identity
    /// of the server process when the connection is made, before anything
    /// is sent (like a server's [peer policy](crate::ServerBuilder::peer_policy)
    /// judges its clients). A server that does not pass is left at once
    /// with [`TransportError::ServerRefused`] naming the endpoint and the
    /// server's pid and SID (or uid).
    ///
    /// Default (no policy set): a **named-pipe** server must run as this
    /// process's own user or as LocalSystem (a server whose SID cannot be
    /// read is refused), because any local user can create a pipe name;
    /// **Unix-socket** servers are not judged (the directory the socket
    /// lives in says who could create it, and servers of other users are
    /// ordinary); TCP is never judged. Set a policy to trust a server of
    /// another account (`PeerPolicy::allow_list().allow_sid(sid)`), to
    /// judge Unix servers too, or, deliberately, to trust any
    /// ([`PeerPolicy::any`]). See [`wharf_transport::check_server`].
    pub fn server_policy(mut self, policy: PeerPolicy) -> Self {
        self.server_policy = Some(policy);
        self
    }

    /// Connects to `endpoint` and completes the handshake.
    pub async fn connect(self, endpoint: impl IntoEndpoint) -> Result<Client, Error> {
        let endpoint = endpoint.into_endpoint()?;
        self.into_parts().connect(&endpoint).await
    }

    /// Connects to `endpoint` like [`connect`](Self::connect), then keeps
    /// the client connected: when the connection ends, the returned
    /// [`ReconnectingClient`] connects again with the builder's settings,
    /// waiting between attempts as `policy` says (capped exponential backoff
    /// with jitter, never less than the server's GOODBYE `reconnect_after`
    /// hint). The first connection is not retried: if it fails, this returns
    /// its error, as `connect` does.
    pub async fn connect_reconnecting(
        self,
        endpoint: impl IntoEndpoint,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingClient, Error> {
        let endpoint = endpoint.into_endpoint()?;
        let parts = self.into_parts();
        let first = parts.connect(&endpoint).await?;
        Ok(ReconnectingClient::start(parts, endpoint, policy, first))
    }

    /// Runs the protocol over an already connected stream. No
    /// [server policy](Self::server_policy) is applied (there is no
    /// endpoint): judge `peer` with [`wharf_transport::check_server`]
    /// first if the stream could lead to an untrusted server.
    pub async fn connect_stream(self, stream: Box<dyn ByteStream>, peer: PeerIdentity) -> Result<Client, Error> {
        self.into_parts().connect_stream(stream, peer).await
    }

    fn into_parts(self) -> ConnectParts {
        ConnectParts {
            backend: self.backend,
            config: Arc::new(self.config),
            auth: self.auth,
            router: Arc::new(self.router),
            codec: self.codec,
            sub_queue: self.sub_queue,
            connect_timeout: self.connect_timeout,
            server_policy: self.server_policy,
        }
    }
}

/// A [`ClientBuilder`]'s settings, kept to connect again and again.
pub(crate) struct ConnectParts {
    pub(crate) backend: Backend,
    pub(crate) config: Arc<Config>,
    auth: Bytes,
    router: Arc<Router>,
    pub(crate) codec: Codec,
    sub_queue: usize,
    connect_timeout: Duration,
    server_policy: Option<PeerPolicy>,
}

impl ConnectParts {
    /// Connects to `endpoint` and completes the handshake.
    ///
    /// A Unix socket whose listen backlog is full refuses a non-blocking
    /// connect at once (`EAGAIN`: `WouldBlock`, or `NotConnected` once a
    /// reactor waited on it): the server is alive but not accepting fast
    /// enough. That is retried with growing pauses
    /// (the [`PipeRetry`] schedule) until `connect_timeout`, then reported
    /// as a timeout naming the endpoint; the same as the blocking client.
    pub(crate) async fn connect(&self, endpoint: &Endpoint) -> Result<Client, Error> {
        let runtime = &self.backend.runtime;
        let start = runtime.now();
        let mut retry = PipeRetry::new(start, self.connect_timeout);
        let (stream, peer) = loop {
            let left = self.connect_timeout.saturating_sub(runtime.now().saturating_duration_since(start));
            match self.backend.network.connect(endpoint, left).await {
                // tokio reports the EAGAIN itself; async-io waits for
                // writability and then finds the socket not connected.
                Err(Error::Transport(e))
                    if matches!(endpoint, Endpoint::Unix(_))
                        && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::NotConnected) =>
                {
                    let Some(delay) = retry.next_delay(runtime.now()) else {
                        return Err(TransportError::timed_out(endpoint, self.connect_timeout).into());
                    };
                    tracing::trace!(%endpoint, "wharf: listen backlog full; retrying connect");
                    let mut timer = runtime.timer(runtime.now() + delay);
                    std::future::poll_fn(|cx| timer.as_mut().poll_fire(cx)).await;
                }
                other => break other?,
            }
        };
        // Before a byte is sent: is this a server we trust?
        if let Err(e) = wharf_transport::check_server(self.server_policy.as_ref(), endpoint, &peer) {
            tracing::debug!(%endpoint, pid = ?peer.pid, uid = ?peer.uid, sid = ?peer.sid, "wharf: server refused");
            drop(stream);
            return Err(e.into());
        }
        self.connect_stream(stream, peer).await
    }

    async fn connect_stream(&self, stream: Box<dyn ByteStream>, peer: PeerIdentity) -> Result<Client, Error> {
        let now = self.backend.runtime.now();
        let conn = Connection::client(self.config.clone(), self.auth.clone(), now)?;
        let inner =
            Inner::new(conn, self.backend.runtime.clone(), self.router.clone(), peer, self.codec, None, self.sub_queue);
        self.backend.runtime.spawn(Box::pin(Driver::new(inner.clone(), stream)));
        std::future::poll_fn(|cx| {
            let mut st = inner.lock();
            if st.peer_name.is_some() {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = st.closed.as_deref().cloned() {
                return Poll::Ready(Err(Error::ConnectionLost(e)));
            }
            st.waiters().connect = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(Session { inner })
    }
}
