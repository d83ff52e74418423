//! Unix domain sockets: safe bind, stale-socket reclaim, peer credentials.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::endpoint::check_unix_path;
use crate::error::TransportError;
use crate::{PeerIdentity, UnixBindOptions};

/// Keeps a bound socket's file and lock: on drop removes the socket file
/// (only if it is still the one we created) and the lock file, then
/// releases the lock.
#[derive(Debug)]
pub struct SocketFileGuard {
    path: PathBuf,
    /// (dev, ino, ctime, ctime_nsec): inode numbers are reused, so the
    /// change time tells our file from a successor's.
    id: (u64, u64, i64, i64),
    _lock: File,
}

impl SocketFileGuard {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path)
            && file_id(&m) == self.id
        {
            let _ = fs::remove_file(&self.path);
        }
        // Remove the lock file while still holding the lock (a server that
        // opened it meanwhile notices and retries with a fresh file).
        let lock_file = lock_path(&self.path);
        if let (Ok(held), Ok(m)) = (self._lock.metadata(), fs::symlink_metadata(&lock_file))
            && held.dev() == m.dev()
            && held.ino() == m.ino()
        {
            let _ = fs::remove_file(&lock_file);
        }
    }
}

/// The lock file that serialises binds of one socket path.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Binds and listens on a Unix socket at `path`, safely:
///
/// 1. the path length is checked (typed error naming path and limit);
/// 2. the parent directory is created (0700) if missing, and refused if a
///    symlink, not a directory, owned by another non-root user, or writable
///    by others without the sticky bit;
/// 3. an exclusive `flock` on `<path>.lock` serialises servers: of two
///    starting at once exactly one proceeds, the other gets
///    [`TransportError::Locked`];
/// 4. an existing socket file is probed: if a server answers it is never
///    displaced ([`TransportError::AddrInUse`]); if nobody listens it is
///    stale and removed; anything that is not a socket is left alone
///    ([`TransportError::NotASocket`]);
/// 5. the socket gets `options.mode` before it is reachable (on Linux by
///    `fchmod` on the unbound socket, elsewhere by binding inside a private
///    directory and renaming into place);
/// 6. it listens with `options.backlog`.
///
/// The listener is blocking; adapters switch it to non-blocking. Keep the
/// guard alive as long as the listener: dropping it removes the file.
pub fn bind_unix(path: &Path, options: &UnixBindOptions) -> Result<(UnixListener, SocketFileGuard), TransportError> {
    check_unix_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    prepare_dir(&parent, options.create_parent)?;

    let lock_file = lock_path(path);
    let lock = take_lock(path, &lock_file)?;

    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(TransportError::AddrInUse { path: path.to_path_buf() }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && options.reclaim_stale => {
                tracing::info!(path = %path.display(), "wharf: removing stale socket file");
                fs::remove_file(path).map_err(|e| TransportError::io("remove stale socket", path.display(), e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(TransportError::AddrInUse { path: path.to_path_buf() });
            }
            Err(e) => return Err(TransportError::io("probe existing socket", path.display(), e)),
        },
        Ok(_) => return Err(TransportError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TransportError::io("stat", path.display(), e)),
    }

    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| TransportError::io("create socket for", path.display(), e))?;
    bind_with_mode(&socket, path, options.mode)?;
    socket.listen(options.backlog).map_err(|e| TransportError::io("listen on", path.display(), e))?;
    let meta = fs::symlink_metadata(path).map_err(|e| TransportError::io("stat", path.display(), e))?;
    let listener = UnixListener::from(OwnedFd::from(socket));
    Ok((listener, SocketFileGuard { path: path.to_path_buf(), id: file_id(&meta), _lock: lock }))
}

fn file_id(m: &fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

/// Opens and exclusively locks `lock_file`. The previous owner removes the
/// file when it stops (while still holding the lock), so after locking we
/// check that the file we hold is still the one at the path; if not, we
/// locked a file that was just removed, and try again with a fresh one.
fn take_lock(path: &Path, lock_file: &Path) -> Result<File, TransportError> {
    for _ in 0..16 {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(lock_file)
            .map_err(|e| TransportError::io("open lock file", lock_file.display(), e))?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(TransportError::Locked { path: path.to_path_buf(), lock: lock_file.to_path_buf() });
            }
            Err(e) => return Err(TransportError::io("lock", lock_file.display(), e.into())),
        }
        let held = lock.metadata().map_err(|e| TransportError::io("stat lock file", lock_file.display(), e))?;
        match fs::symlink_metadata(lock_file) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => return Ok(lock),
            _ => continue,
        }
    }
    Err(TransportError::Locked { path: path.to_path_buf(), lock: lock_file.to_path_buf() })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_with_mode(socket: &Socket, path: &Path, mode: u32) -> Result<(), TransportError> {
    // Linux creates the socket file with the socket inode's mode (minus the
    // umask): set it before bind, so the file is never more open than `mode`.
    rustix::fs::fchmod(socket, rustix::fs::Mode::from_raw_mode(mode & 0o777))
        .map_err(|e| TransportError::io("fchmod socket for", path.display(), e.into()))?;
    let addr = SockAddr::unix(path).map_err(|e| TransportError::io("address", path.display(), e))?;
    socket.bind(&addr).map_err(|e| TransportError::io("bind", path.display(), e))?;
    // The umask may have removed bits the caller asked for; adding them back
    // only widens towards the requested mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| TransportError::io("chmod", path.display(), e))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_with_mode(socket: &Socket, path: &Path, mode: u32) -> Result<(), TransportError> {
    // Bind inside a fresh private directory, set the mode, then rename the
    // socket into place: it is reachable only once it has its final mode.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp_dir = parent.join(format!(".wharf-bind-{}-{:x}", std::process::id(), nonce()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(|e| TransportError::io("create private bind directory", tmp_dir.display(), e))?;
    let tmp = tmp_dir.join("s");
    let result = (|| {
        check_unix_path(&tmp)?;
        let addr = SockAddr::unix(&tmp).map_err(|e| TransportError::io("address", tmp.display(), e))?;
        socket.bind(&addr).map_err(|e| TransportError::io("bind", tmp.display(), e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| TransportError::io("chmod", tmp.display(), e))?;
        fs::rename(&tmp, path).map_err(|e| TransportError::io("move socket into place at", path.display(), e))
    })();
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(&tmp_dir);
    result
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

fn prepare_dir(dir: &Path, create: bool) -> Result<(), TransportError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| TransportError::io("create socket directory", dir.display(), e))?;
            fs::symlink_metadata(dir).map_err(|e| TransportError::io("stat", dir.display(), e))?
        }
        Err(e) => return Err(TransportError::io("stat socket directory", dir.display(), e)),
    };
    let unsafe_dir = |reason: String| Err(TransportError::UnsafeDirectory { path: dir.to_path_buf(), reason });
    if meta.file_type().is_symlink() {
        return unsafe_dir("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return unsafe_dir("it is not a directory".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return unsafe_dir(format!("it is owned by uid {}, not by us ({me}) or root", meta.uid()));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return unsafe_dir(format!("mode {:o} lets others replace files in it and it is not sticky", mode & 0o7777));
    }
    Ok(())
}

/// Credentials of the process at the other end of a Unix socket, read from
/// the kernel (`SO_PEERCRED` on Linux, `getpeereid` elsewhere). Read once, at
/// accept time: never look them up again by pid later.
pub fn peer_credentials(fd: impl AsFd) -> io::Result<PeerIdentity> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let c = rustix::net::sockopt::socket_peercred(fd)?;
        Ok(PeerIdentity {
            uid: Some(c.uid.as_raw()),
            gid: Some(c.gid.as_raw()),
            pid: u32::try_from(c.pid.as_raw_nonzero().get()).ok(),
            ..PeerIdentity::default()
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        use std::os::fd::AsRawFd;
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: the fd is borrowed for the duration of the call, and the two
        // out-pointers point at live, writable locals of the right types.
        let rc = unsafe { libc::getpeereid(fd.as_fd().as_raw_fd(), &mut uid, &mut gid) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PeerIdentity { uid: Some(uid as u32), gid: Some(gid as u32), ..PeerIdentity::default() })
    }
}

/// Connects to the Unix socket at `path`, waiting at most `timeout`.
///
/// A blocking `connect` on a Unix socket waits without bound while the
/// server's listen backlog is full (a server that stopped accepting). Here
/// the socket is non-blocking: a full backlog (`EAGAIN`) or a connect in
/// progress (`EINPROGRESS` on some systems) is retried with growing pauses
/// (1 ms doubling to 50 ms, the [`PipeRetry`](crate::PipeRetry) schedule)
/// until the deadline, and then fails with a timeout naming the path.
/// Other failures map through [`connect_error`]. The stream is returned in
/// non-blocking mode. For blocking clients; async adapters wait on their
/// reactor instead.
pub fn connect_unix_within(path: &Path, timeout: std::time::Duration) -> Result<UnixStream, TransportError> {
    use rustix::io::Errno;
    check_unix_path(path)?;
    let endpoint = format!("unix:{}", path.display());
    let addr = SockAddr::unix(path).map_err(|e| connect_error(path, e))?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| TransportError::io("create a socket for", &endpoint, e))?;
    sock.set_nonblocking(true).map_err(|e| TransportError::io("set non-blocking", &endpoint, e))?;
    let mut retry = crate::PipeRetry::new(std::time::Instant::now(), timeout);
    loop {
        let e = match sock.connect(&addr) {
            Ok(()) => break,
            Err(e) => e,
        };
        match Errno::from_io_error(&e) {
            Some(Errno::ISCONN) => break,
            Some(Errno::AGAIN | Errno::INPROGRESS | Errno::ALREADY | Errno::INTR) => {
                match retry.next_delay(std::time::Instant::now()) {
                    Some(d) => {
                        tracing::trace!(path = %path.display(), "wharf: listen backlog full; retrying connect");
                        std::thread::sleep(d);
                    }
                    None => return Err(TransportError::timed_out(&endpoint, timeout)),
                }
            }
            _ => return Err(connect_error(path, e)),
        }
    }
    Ok(UnixStream::from(OwnedFd::from(sock)))
}

/// Maps a failed connect to a typed error naming the path.
pub fn connect_error(path: &Path, e: io::Error) -> TransportError {
    let endpoint = format!("unix:{}", path.display());
    match e.kind() {
        io::ErrorKind::NotFound => TransportError::NotFound { endpoint, source: e },
        io::ErrorKind::ConnectionRefused => TransportError::Refused { endpoint, source: e },
        _ => TransportError::Io { op: "connect to", endpoint, source: e },
    }
}
