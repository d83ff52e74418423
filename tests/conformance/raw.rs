//! Peers on the bare core over blocking Unix sockets, for cases that need
//! a peer doing exactly what the case says and nothing else (never
//! reading, going silent). Shared by the fault cases
//! (`tests/conformance/faults.rs`) and `tests/conformance_mio.rs`.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use wharf::core::{Bytes, Config, Connection, Event};

/// A client on the bare core over a blocking socket: it completes the
/// handshake, then does only what the case makes it do; it vanishes on
/// drop.
pub struct RawClient {
    /// The socket (blocking).
    pub stream: UnixStream,
    /// The protocol state.
    pub conn: Connection,
}

impl RawClient {
    /// Connects to `path` and completes the handshake.
    pub fn connect(path: &std::path::Path) -> io::Result<RawClient> {
        let stream = UnixStream::connect(path)?;
        let conn = Connection::client(Arc::new(Config::default()), Bytes::new(), Instant::now()).expect("client");
        let mut c = RawClient { stream, conn };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            c.flush()?;
            while let Some(e) = c.conn.poll_event() {
                match e {
                    Event::Connected(_) => return Ok(c),
                    Event::Closed(e) => return Err(io::Error::other(format!("handshake failed: {e}"))),
                    _ => {}
                }
            }
            let n = c.stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("end of stream in the handshake"));
            }
            c.conn.handle_input(&buf[..n], Instant::now());
        }
    }

    /// Writes everything queued (blocking).
    pub fn flush(&mut self) -> io::Result<()> {
        write_all_queued(&mut self.stream, &mut self.conn)
    }
}

/// Writes everything `conn` has queued to `stream` (blocking).
fn write_all_queued(stream: &mut UnixStream, conn: &mut Connection) -> io::Result<()> {
    loop {
        let mut slices = [IoSlice::new(&[]); 32];
        let n = conn.transmit_slices(Instant::now(), &mut slices);
        if n == 0 {
            return Ok(());
        }
        let written = stream.write_vectored(&slices[..n])?;
        conn.advance_transmit(written, Instant::now());
    }
}
