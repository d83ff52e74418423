//! The one error type of the async layer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wharf_core::{AckError, CallError, Code, ConnectionError, SendError};
use wharf_transport::TransportError;

/// Everything that can go wrong with a call, a subscription, a stream or a
/// connection. Handlers return it too: [`Error::new`] makes an error reply
/// with an application code.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer answered with an error (or a handler returned this).
    #[error("remote error {code}: {message}")]
    Remote {
        /// Error code (application codes are 1000 and up).
        code: Code,
        /// Message.
        message: String,
        /// Optional data.
        data: Bytes,
    },
    /// The call's deadline passed.
    #[error("call timed out after {0:?}")]
    TimedOut(Duration),
    /// The call was cancelled.
    #[error("call cancelled")]
    Cancelled,
    /// The connection ended; the operation's outcome is unknown unless the
    /// error says the peer did not process it.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The server refused a subscribe or publish.
    #[error("refused by the server: {0}")]
    Refused(Code),
    /// A subscription with [`SlowConsumerPolicy::Disconnect`](wharf_core::SlowConsumerPolicy::Disconnect)
    /// fell more than `buffered` messages behind its reader and was ended.
    #[error("subscription ended: its reader fell more than {buffered} messages behind (policy: disconnect)")]
    SlowConsumer {
        /// The local buffer limit that was exceeded.
        buffered: usize,
    },
    /// A [`ReconnectingClient`](crate::ReconnectingClient) stopped trying:
    /// `attempts` reconnection attempts failed in a row (its policy's
    /// `max_attempts`), or the server refused the handshake for good.
    #[error("gave up reconnecting after {attempts} failed attempts{}", match last { Some(e) => format!(": {e}"), None => String::new() })]
    ReconnectGaveUp {
        /// How many attempts failed.
        attempts: u32,
        /// Why the last one failed.
        last: Option<Box<Error>>,
    },
    /// A local limit or misuse (see [`SendError`]).
    #[error(transparent)]
    Send(SendError),
    /// A value could not be encoded.
    #[error("could not encode {what}: {message}")]
    Encode {
        /// The type.
        what: &'static str,
        /// The codec's message.
        message: String,
    },
    /// A payload could not be decoded.
    #[error("could not decode {what}: {message}")]
    Decode {
        /// The type.
        what: &'static str,
        /// The codec's message.
        message: String,
    },
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] wharf_core::ConfigError),
    /// Naming, binding or connecting failed.
    #[error(transparent)]
    Transport(Arc<TransportError>),
    /// Another I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: Arc<io::Error>,
    },
}

impl Error {
    /// An error reply with `code` and `message` (handlers return this).
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error::Remote { code, message: message.into(), data: Bytes::new() }
    }

    /// An error reply carrying `data` as well.
    pub fn with_data(code: Code, message: impl Into<String>, data: impl Into<Bytes>) -> Error {
        Error::Remote { code, message: message.into(), data: data.into() }
    }

    /// `INVALID_REQUEST` with a message.
    pub fn invalid_request(message: impl Into<String>) -> Error {
        Error::new(Code::INVALID_REQUEST, message)
    }

    /// `INTERNAL` with a message.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Code::INTERNAL, message)
    }

    /// The status code that best describes this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Remote { code, .. } | Error::Refused(code) => *code,
            Error::SlowConsumer { .. } => Code::SLOW_CONSUMER,
            Error::TimedOut(_) => Code::DEADLINE_EXCEEDED,
            Error::Cancelled => Code::CANCELLED,
            Error::ConnectionLost(_) | Error::ReconnectGaveUp { .. } => Code::CONNECTION_LOST,
            Error::Send(SendError::TooLarge { .. }) => Code::TOO_LARGE,
            Error::Send(SendError::TooManyInFlight { .. }) => Code::BUSY,
            Error::Send(_) | Error::Encode { .. } | Error::Transport(_) | Error::Io { .. } | Error::Config(_) => {
                Code::INTERNAL
            }
            Error::Decode { .. } => Code::INVALID_REQUEST,
        }
    }

    /// Whether a call that failed this way was certainly not processed by
    /// the peer, so that repeating it cannot do the work twice.
    pub fn is_safe_to_retry(&self) -> bool {
        match self {
            Error::Remote { code, .. } => matches!(*code, Code::BUSY | Code::SHUTTING_DOWN | Code::TOO_MANY_STREAMS),
            Error::Send(_) | Error::Encode { .. } => true,
            _ => false,
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Remote { code, message, data } => Error::Remote { code, message: message.to_string(), data },
            CallError::TimedOut(d) => Error::TimedOut(d),
            CallError::Cancelled => Error::Cancelled,
            CallError::ConnectionLost(c) => Error::ConnectionLost(c),
            other => Error::Io { context: "call failed".into(), source: Arc::new(io::Error::other(other.to_string())) },
        }
    }
}

impl From<AckError> for Error {
    fn from(e: AckError) -> Error {
        match e {
            AckError::Refused(code) => Error::Refused(code),
            AckError::ConnectionLost(c) => Error::ConnectionLost(c),
            other => {
                Error::Io { context: "operation failed".into(), source: Arc::new(io::Error::other(other.to_string())) }
            }
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        match e {
            SendError::Closed(c) => Error::ConnectionLost(c),
            other => Error::Send(other),
        }
    }
}

impl From<ConnectionError> for Error {
    fn from(e: ConnectionError) -> Error {
        Error::ConnectionLost(e)
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Error {
        Error::Transport(Arc::new(e))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::ConnectionLost(c) => c.io_kind(),
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
            Error::ReconnectGaveUp { .. } => io::ErrorKind::NotConnected,
            Error::Transport(t) => t.kind(),
            Error::Io { source, .. } => source.kind(),
            Error::Decode { .. } | Error::Encode { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
