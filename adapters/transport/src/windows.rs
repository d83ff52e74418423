//! Windows named pipes: creating instances and opening clients with wharf's
//! security settings, typed errors, and the identity of the process at the
//! other end.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Security::{GetLengthSid, GetTokenInformation, IsValidSid, TOKEN_QUERY, TOKEN_USER, TokenUser};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, GetNamedPipeClientProcessId, GetNamedPipeServerProcessId, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

use crate::error::TransportError;
use crate::{PeerIdentity, PipeOptions, PipeRetry, Sid};

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken.
pub const ERROR_PIPE_BUSY: i32 = windows_sys::Win32::Foundation::ERROR_PIPE_BUSY as i32;

/// Size of each direction's pipe buffer, as tokio's default.
const PIPE_BUFFER: u32 = 65536;

/// Creates a server instance of the byte-mode pipe `name` for overlapped
/// I/O, rejecting remote clients, with wharf's security descriptor
/// (full access for the current user and SYSTEM only, see [`pipe_security`](crate::pipe_security))
/// (the same settings as the tokio adapter's pipes), and at most
/// `options.max_instances` instances (fixed by the first). With `first`,
/// the instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`: if
/// another process already holds the name this is
/// [`TransportError::PipeInUse`]. Every instance allowed already exists:
/// [`TransportError::PipeFull`].
///
/// For runtimes that cannot use tokio's pipe types (the pipe reactor of the
/// smol and async-std adapters, wharf-mio).
pub fn create_pipe_instance(name: &str, first: bool, options: &PipeOptions) -> Result<OwnedHandle, TransportError> {
    let max_instances = options.instance_limit(name)?;
    let wide: Vec<u16> = OsStr::new(name).encode_wide().chain(Some(0)).collect();
    let mut open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    if first {
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    let pipe_mode = PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
    let security = crate::pipe_security::pipe_security()
        .map_err(|e| TransportError::io("build the security descriptor of pipe", format!("pipe:{name}"), e))?;
    let attributes = security.attributes();
    // SAFETY: `wide` is a NUL-terminated UTF-16 string and `attributes`
    // points at a descriptor (owned by a process-wide static) that both
    // outlive the call; the handle is not inheritable.
    let handle = unsafe {
        CreateNamedPipeW(wide.as_ptr(), open_mode, pipe_mode, max_instances, PIPE_BUFFER, PIPE_BUFFER, 0, &attributes)
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(pipe_create_error(name, first, io::Error::last_os_error()));
    }
    // SAFETY: `handle` is a valid pipe handle that CreateNamedPipeW just
    // returned and nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle as _) })
}

/// The typed error for a failed creation of an instance of pipe `name`
/// (`first`: with `FILE_FLAG_FIRST_PIPE_INSTANCE`), for every adapter:
/// access denied on the first instance is [`TransportError::PipeInUse`]
/// (someone else holds the name), `ERROR_PIPE_BUSY` is
/// [`TransportError::PipeFull`] (the instance limit is reached), anything
/// else an I/O error naming the pipe.
pub fn pipe_create_error(name: &str, first: bool, e: io::Error) -> TransportError {
    match e.kind() {
        io::ErrorKind::PermissionDenied if first => TransportError::PipeInUse { pipe: name.to_string() },
        _ if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => TransportError::PipeFull { pipe: name.to_string() },
        _ => TransportError::io(
            if first { "create first instance of pipe" } else { "create instance of pipe" },
            format!("pipe:{name}"),
            e,
        ),
    }
}

impl PipeRetry {
    /// What a client does after opening pipe `name` failed with `e`:
    /// `Ok(pause)` to wait and try again, or the error to give up with.
    ///
    /// - `ERROR_PIPE_BUSY` (every instance in use) is retried until the
    ///   deadline, then [`TransportError::PipeBusy`] naming the pipe and
    ///   the time waited.
    /// - A pipe that does not exist fails at once with
    ///   [`TransportError::NotFound`], unless this client already found it
    ///   busy: then its server is restarting, and the client keeps trying
    ///   until the deadline (and reports `NotFound` if it never returns).
    /// - Anything else fails at once, typed by [`connect_error`].
    pub fn after_open_error(&mut self, name: &str, e: io::Error, now: Instant) -> Result<Duration, TransportError> {
        let busy = e.raw_os_error() == Some(ERROR_PIPE_BUSY);
        let restarting = e.kind() == io::ErrorKind::NotFound && self.seen_busy;
        if !busy && !restarting {
            return Err(connect_error(name, e));
        }
        self.seen_busy = true;
        match self.next_delay(now) {
            Some(pause) => Ok(pause),
            None if busy => Err(TransportError::PipeBusy { pipe: name.to_string(), waited: self.waited(now) }),
            None => Err(connect_error(name, e)),
        }
    }
}

/// Opens the client end of pipe `name` for overlapped I/O, with
/// `SECURITY_IDENTIFICATION` so that the server cannot impersonate the
/// client. The raw OS error is returned so that callers can retry
/// [`ERROR_PIPE_BUSY`]; map the others with [`connect_error`].
pub fn open_pipe_client(name: &str) -> io::Result<OwnedHandle> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(FILE_FLAG_OVERLAPPED)
        .security_qos_flags(SECURITY_IDENTIFICATION)
        .open(name)?;
    Ok(OwnedHandle::from(file))
}

/// Maps a failed open of pipe `name` (other than busy) to a typed error
/// naming it.
pub fn connect_error(name: &str, e: io::Error) -> TransportError {
    let endpoint = format!("pipe:{name}");
    match e.kind() {
        io::ErrorKind::NotFound => TransportError::NotFound { endpoint, source: e },
        _ => TransportError::Io { op: "open pipe", endpoint, source: e },
    }
}

/// The client process of a connected server-side pipe instance, as the
/// kernel reports it, read once at accept time: its pid
/// (`GetNamedPipeClientProcessId`) and the user SID of its token (see
/// [`process_identity`]). An error only if the pid cannot be read; a SID
/// that cannot be read is `None`, which every peer policy but `any`
/// refuses.
pub fn pipe_client_identity(pipe: &impl AsRawHandle) -> io::Result<PeerIdentity> {
    let mut pid = 0u32;
    // SAFETY: the handle is borrowed from a live pipe object for the duration
    // of the call, and `pid` is a valid, writable u32.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(process_identity(pid))
}

/// The server process of a connected client-side pipe, as the kernel
/// reports it, read once at connect time: its pid
/// (`GetNamedPipeServerProcessId`) and the user SID of its token (`None`
/// if it cannot be read), as [`pipe_client_identity`].
pub fn pipe_server_identity(pipe: &impl AsRawHandle) -> io::Result<PeerIdentity> {
    let mut pid = 0u32;
    // SAFETY: as above: a borrowed live handle and a valid out-pointer.
    let ok = unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(process_identity(pid))
}

/// Process `pid` as a peer: the pid, and the user SID of its token when
/// [`process_sid`] can read it (`None` otherwise: the process is gone,
/// or this process may not query it; logged at debug level). A missing
/// SID never matches a peer policy, so a failed lookup refuses the peer.
pub fn process_identity(pid: u32) -> PeerIdentity {
    let sid = match process_sid(pid) {
        Ok(sid) => Some(sid),
        Err(e) => {
            tracing::debug!(pid, error = %e, "wharf: the peer process's user SID could not be read");
            None
        }
    };
    PeerIdentity { pid: Some(pid), sid, ..PeerIdentity::default() }
}

/// The user SID of process `pid`'s primary token:
/// `OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION)`,
/// `OpenProcessToken(TOKEN_QUERY)`, `GetTokenInformation(TokenUser)`.
/// Fails if the process does not exist or this process may not open it
/// or its token.
pub fn process_sid(pid: u32) -> io::Result<Sid> {
    // SAFETY: plain call; a null handle (failure) is checked below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `process` is a valid handle OpenProcess just returned, owned
    // by nothing else; the OwnedHandle closes it once.
    let process = unsafe { OwnedHandle::from_raw_handle(process as _) };
    token_sid(process.as_raw_handle() as HANDLE)
}

/// The user SID of this process's token (read once, then cached: a
/// process's primary token user never changes).
pub fn current_user_sid() -> io::Result<Sid> {
    static CELL: std::sync::OnceLock<Sid> = std::sync::OnceLock::new();
    if let Some(sid) = CELL.get() {
        return Ok(*sid);
    }
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    let sid = token_sid(unsafe { GetCurrentProcess() })?;
    Ok(*CELL.get_or_init(|| sid))
}

/// The user SID of the primary token of `process` (a handle with at least
/// `PROCESS_QUERY_LIMITED_INFORMATION`, borrowed for the call).
fn token_sid(process: HANDLE) -> io::Result<Sid> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `process` is a live process handle (or the current-process
    // pseudo-handle) for the duration of the call; `token` is a valid
    // out-pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `token` is a valid handle OpenProcessToken just returned,
    // owned by nothing else; the OwnedHandle closes it once.
    let token = unsafe { OwnedHandle::from_raw_handle(token as _) };
    // A TOKEN_USER and the SID it points to (at most 68 bytes) fit in 256
    // bytes; u64s keep the buffer 8-aligned for the TOKEN_USER.
    let mut buf = [0u64; 32];
    let mut len = 0u32;
    // SAFETY: `token` is live; `buf` is writable for the size given and
    // `len` is a valid out-pointer.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            TokenUser,
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: GetTokenInformation(TokenUser) succeeded, so `buf` starts
    // with an initialised TOKEN_USER (the buffer is 8-aligned).
    let user = unsafe { &*(buf.as_ptr() as *const TOKEN_USER) };
    let sid = user.User.Sid;
    // SAFETY: `sid` points into `buf` (the call stores the SID after the
    // TOKEN_USER), which is alive and unchanged here.
    if sid.is_null() || unsafe { IsValidSid(sid) } == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the token's user SID is not valid"));
    }
    // SAFETY: a valid SID, as just checked.
    let n = unsafe { GetLengthSid(sid) } as usize;
    // SAFETY: a valid SID is `n` readable bytes, inside `buf`.
    let bytes = unsafe { std::slice::from_raw_parts(sid as *const u8, n) };
    Sid::from_bytes(bytes).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected SID layout"))
}
