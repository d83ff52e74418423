//! What a runtime adapter plugs in: a [`Runtime`] and a [`Network`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wharf_transport::{Endpoint, PeerIdentity, PipeOptions, TcpOptions, UnixBindOptions};

use crate::error::Error;
use crate::io::{ByteListener, ByteStream};
use crate::runtime::Runtime;

/// A connected stream and who is at the other end.
pub type ConnectedStream = (Box<dyn ByteStream>, PeerIdentity);

/// The future of [`Network::connect`].
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<ConnectedStream, Error>> + Send>>;

/// How a runtime opens and accepts connections on each transport.
pub trait Network: Send + Sync + 'static {
    /// Connects to `endpoint`, giving up after `timeout` (busy named pipes
    /// are retried within it).
    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> ConnectFuture;

    /// Binds and listens on `endpoint`.
    fn bind(&self, endpoint: &Endpoint, options: &BindOptions) -> Result<Box<dyn ByteListener>, Error>;
}

/// A runtime and its network: everything the endpoint needs from an adapter.
#[derive(Clone)]
pub struct Backend {
    /// Spawning and timers.
    pub runtime: Arc<dyn Runtime>,
    /// Sockets and pipes.
    pub network: Arc<dyn Network>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

/// Listener options, per transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Unix sockets: file mode, stale-file reclaim, directory creation.
    pub unix: UnixBindOptions,
    /// TCP: whether non-loopback addresses are allowed.
    pub tcp: TcpOptions,
    /// Windows named pipes: how many instances (connected clients plus
    /// the one waiting) the pipe may have (default 254).
    pub pipe: PipeOptions,
}

/// Anything that names an endpoint: an [`Endpoint`], or a string in its
/// syntax (`unix:/path`, `pipe:name`, `tcp:host:port`, or a short name).
pub trait IntoEndpoint {
    /// The endpoint.
    fn into_endpoint(self) -> Result<Endpoint, Error>;
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self)
    }
}

impl IntoEndpoint for &Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self.clone())
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(Endpoint::parse(self)?)
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        self.as_str().into_endpoint()
    }
}

impl IntoEndpoint for &Path {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(Endpoint::Unix(self.to_path_buf()))
    }
}

impl IntoEndpoint for PathBuf {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(Endpoint::Unix(self))
    }
}

impl IntoEndpoint for &PathBuf {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(Endpoint::Unix(self.clone()))
    }
}
