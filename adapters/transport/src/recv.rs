//! Reading from a socket straight into the spare capacity of a `BytesMut`,
//! without zeroing it first and without a scratch buffer.

use std::io;

use bytes::BytesMut;
use socket2::SockRef;

/// How much room to make when `buf` has no spare capacity at all.
const MIN_SPARE: usize = 4096;

/// Reads what a socket has into the spare capacity of `buf`, appending, in
/// one `recv`. Makes 4 KiB of room if there is none. On a
/// non-blocking socket with nothing to read this is an
/// [`io::ErrorKind::WouldBlock`] error; `Ok(0)` is end of stream.
#[cfg(unix)]
pub fn recv_buf(socket: impl std::os::fd::AsFd, buf: &mut BytesMut) -> io::Result<usize> {
    recv_into(SockRef::from(&socket), buf)
}

/// Reads what a socket has into the spare capacity of `buf`, appending, in
/// one `recv`. Makes 4 KiB of room if there is none. On a non-blocking
/// socket with nothing to read this is an [`io::ErrorKind::WouldBlock`]
/// error; `Ok(0)` is end of stream.
#[cfg(windows)]
pub fn recv_buf(socket: impl std::os::windows::io::AsSocket, buf: &mut BytesMut) -> io::Result<usize> {
    recv_into(SockRef::from(&socket), buf)
}

fn recv_into(socket: SockRef<'_>, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(MIN_SPARE);
    }
    loop {
        match socket.recv(buf.spare_capacity_mut()) {
            Ok(n) => {
                // SAFETY: `recv` (the OS call) initialised the first `n` bytes
                // of the spare capacity it was given, and `n` never exceeds
                // the length of that slice.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn appends_without_touching_what_is_there() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"world").unwrap();
        let mut buf = BytesMut::from(&b"hello "[..]);
        let n = recv_buf(&b, &mut buf).unwrap();
        assert_eq!((n, &buf[..]), (5, &b"hello world"[..]));
        drop(a);
        assert_eq!(recv_buf(&b, &mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn full_buffer_gets_room_and_empty_socket_would_block() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(recv_buf(&b, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        a.write_all(&[7; 10]).unwrap();
        assert_eq!(recv_buf(&b, &mut buf).unwrap(), 10);
        assert!(buf.capacity() >= MIN_SPARE);
    }
}
