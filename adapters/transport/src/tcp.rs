//! TCP: loopback-only listeners unless the caller opts in.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};

use socket2::{Domain, Socket, Type};

use crate::error::TransportError;

/// How to bind a TCP listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Allow an address other than loopback. TCP carries no peer
    /// credentials, so a server that allows remote peers must authenticate
    /// them (the handshake's auth payload). Default false.
    pub allow_remote: bool,
}

/// Resolves `addr` (`host:port`).
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, TransportError> {
    let addrs: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| TransportError::io("resolve", format!("tcp:{addr}"), e))?.collect();
    if addrs.is_empty() {
        return Err(TransportError::InvalidName { input: addr.to_string(), reason: "resolves to no address" });
    }
    Ok(addrs)
}

/// Binds a listener on the first address `addr` resolves to, refusing a
/// non-loopback address unless `options.allow_remote`.
pub fn bind_tcp(addr: &str, options: &TcpOptions) -> Result<TcpListener, TransportError> {
    let addrs = resolve(addr)?;
    if !options.allow_remote
        && let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(TransportError::NonLoopback { addr: *bad });
    }
    let a = addrs[0];
    let endpoint = format!("tcp:{a}");
    let socket = Socket::new(Domain::for_address(a), Type::STREAM, None)
        .map_err(|e| TransportError::io("create socket for", &endpoint, e))?;
    #[cfg(unix)]
    socket.set_reuse_address(true).map_err(|e| TransportError::io("set SO_REUSEADDR on", &endpoint, e))?;
    socket.bind(&a.into()).map_err(|e| TransportError::io("bind", &endpoint, e))?;
    socket.listen(1024).map_err(|e| TransportError::io("listen on", &endpoint, e))?;
    Ok(socket.into())
}

/// The second half of the TCP opt-in, for servers: a listener on a
/// non-loopback address may start only with an authentication hook that
/// checks a token (TCP carries no peer credentials, so the handshake's auth
/// payload is the only proof of who connected). `endpoint` names where the
/// server listens and `has_auth` whether it has an auth hook. Loopback
/// addresses, Unix sockets and pipes always pass; a non-loopback TCP
/// address without auth is [`TransportError::RemoteWithoutAuth`].
pub fn require_auth_for_remote(endpoint: &crate::Endpoint, has_auth: bool) -> Result<(), TransportError> {
    let crate::Endpoint::Tcp(addr) = endpoint else { return Ok(()) };
    if has_auth {
        return Ok(());
    }
    match resolve(addr)?.into_iter().find(|a| !a.ip().is_loopback()) {
        Some(bad) => Err(TransportError::RemoteWithoutAuth { addr: bad }),
        None => Ok(()),
    }
}

/// Applies wharf's stream settings (no Nagle delay: wharf coalesces itself).
pub fn configure_tcp_stream(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)
}

/// Applies wharf's settings to an accepted TCP connection: no Nagle delay,
/// and on Windows a handle that child processes do not inherit. Windows
/// gives accepted sockets the listener's `WSA_FLAG_NO_HANDLE_INHERIT`, but
/// Wine does not: there a process started later (by this program, or by
/// Wine on its behalf) would hold the connection open after this process
/// died, and the peer would never see it close.
#[cfg(unix)]
pub fn configure_accepted_tcp(socket: impl std::os::fd::AsFd) -> std::io::Result<()> {
    // Accepted with SOCK_CLOEXEC by std and the runtimes already.
    socket2::SockRef::from(&socket).set_tcp_nodelay(true)
}

/// Applies wharf's settings to an accepted TCP connection: no Nagle delay,
/// and on Windows a handle that child processes do not inherit. Windows
/// gives accepted sockets the listener's `WSA_FLAG_NO_HANDLE_INHERIT`, but
/// Wine does not: there a process started later (by this program, or by
/// Wine on its behalf) would hold the connection open after this process
/// died, and the peer would never see it close.
#[cfg(windows)]
pub fn configure_accepted_tcp(socket: impl std::os::windows::io::AsSocket) -> std::io::Result<()> {
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};

    let raw = socket.as_socket().as_raw_socket();
    // SAFETY: `raw` is a live socket borrowed for the duration of the call;
    // a SOCKET is a kernel handle, which SetHandleInformation accepts.
    if unsafe { SetHandleInformation(raw as _, HANDLE_FLAG_INHERIT, 0) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket2::SockRef::from(&socket).set_tcp_nodelay(true)
}

/// Maps a failed connect to a typed error naming the address.
pub fn connect_error(addr: &str, e: std::io::Error) -> TransportError {
    let endpoint = format!("tcp:{addr}");
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => TransportError::Refused { endpoint, source: e },
        _ => TransportError::Io { op: "connect to", endpoint, source: e },
    }
}
