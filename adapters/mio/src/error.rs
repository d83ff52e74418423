//! The error type of wharf-mio.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wharf_core::{AckError, CallError, Code, ConfigError, ConnectionError, SendError};
use wharf_transport::TransportError;

/// Everything that can go wrong in wharf-mio. Each variant names the
/// endpoint, the limit, the peer's code or the operation involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer answered a call with an error.
    #[error("remote error {code}: {message}")]
    Remote {
        /// Error code.
        code: Code,
        /// Message from the peer.
        message: String,
        /// Extra data from the peer (opaque).
        data: Bytes,
    },
    /// The operation's deadline passed (`what` names the operation).
    #[error("{what} timed out after {after:?}")]
    TimedOut {
        /// What was waited for: "call", "connect", "subscribe", ...
        what: &'static str,
        /// The deadline it was given.
        after: Duration,
    },
    /// The call was cancelled.
    #[error("call cancelled")]
    Cancelled,
    /// The connection ended (rejected handshake, peer gone, keepalive,
    /// protocol violation, local close): every pending operation fails
    /// with this.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// A [`ReconnectingClient`](crate::ReconnectingClient) stopped trying:
    /// `attempts` reconnection attempts to `endpoint` failed in a row (its
    /// policy's `max_attempts`), or the server refused the handshake for
    /// good (the last error says why).
    #[error("gave up reconnecting to {endpoint} after {attempts} failed attempts")]
    ReconnectGaveUp {
        /// The endpoint.
        endpoint: String,
        /// How many attempts failed.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        last: Option<Arc<Error>>,
    },
    /// The server refused a subscription or publish with this code.
    #[error("refused by the server: {0}")]
    Refused(Code),
    /// A command was refused locally (too large, too many in flight,
    /// closing, blocked).
    #[error(transparent)]
    Send(#[from] SendError),
    /// A value could not be encoded.
    #[error("could not encode {what}: {message}")]
    Encode {
        /// The Rust type.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A payload could not be decoded as the requested type.
    #[error("could not decode {what}: {message}")]
    Decode {
        /// The Rust type.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The endpoint could not be named, bound or reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which endpoint.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// The wire code closest to this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Remote { code, .. } | Error::Refused(code) => *code,
            Error::TimedOut { .. } => Code::DEADLINE_EXCEEDED,
            Error::Cancelled => Code::CANCELLED,
            Error::ConnectionLost(_) | Error::ReconnectGaveUp { .. } => Code::CONNECTION_LOST,
            Error::Send(SendError::TooLarge { .. }) => Code::TOO_LARGE,
            Error::Send(SendError::TooManyInFlight { .. }) => Code::BUSY,
            Error::Decode { .. } => Code::INVALID_REQUEST,
            _ => Code::INTERNAL,
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Remote { code, message, data } => Error::Remote { code, message: message.to_string(), data },
            CallError::TimedOut(after) => Error::TimedOut { what: "call", after },
            CallError::Cancelled => Error::Cancelled,
            CallError::ConnectionLost(c) => Error::ConnectionLost(c),
            other => Error::io("call failed", io::Error::other(other.to_string())),
        }
    }
}

impl From<AckError> for Error {
    fn from(e: AckError) -> Error {
        match e {
            AckError::Refused(code) => Error::Refused(code),
            AckError::ConnectionLost(c) => Error::ConnectionLost(c),
            other => Error::io("operation failed", io::Error::other(other.to_string())),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, context } => io::Error::new(source.kind(), format!("{context}: {source}")),
            Error::Transport(t) => t.into(),
            Error::ConnectionLost(c) => c.into(),
            Error::TimedOut { .. } => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
            Error::ReconnectGaveUp { .. } => io::Error::new(io::ErrorKind::NotConnected, e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}
