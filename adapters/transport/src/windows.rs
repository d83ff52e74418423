//! Windows named pipes: creating instances and opening clients with wharf's
//! security settings, typed errors, and the identity of the process at the
//! other end.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, GetNamedPipeClientProcessId, GetNamedPipeServerProcessId, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

use crate::PeerIdentity;
use crate::error::TransportError;

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken.
pub const ERROR_PIPE_BUSY: i32 = windows_sys::Win32::Foundation::ERROR_PIPE_BUSY as i32;

/// Size of each direction's pipe buffer, as tokio's default.
const PIPE_BUFFER: u32 = 65536;

/// Creates a server instance of the byte-mode pipe `name` for overlapped
/// I/O, rejecting remote clients, with wharf's security descriptor
/// (full access for the current user and SYSTEM only, see [`pipe_security`](crate::pipe_security))
/// (the same settings as the tokio adapter's pipes). With `first`, the
/// instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`: if another
/// process already holds the name this is [`TransportError::PipeInUse`].
///
/// For runtimes that cannot use tokio's pipe types (the pipe reactor of the
/// smol and async-std adapters).
pub fn create_pipe_instance(name: &str, first: bool) -> Result<OwnedHandle, TransportError> {
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
        CreateNamedPipeW(
            wide.as_ptr(),
            open_mode,
            pipe_mode,
            PIPE_UNLIMITED_INSTANCES,
            PIPE_BUFFER,
            PIPE_BUFFER,
            0,
            &attributes,
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        let e = io::Error::last_os_error();
        return Err(match e.kind() {
            // FILE_FLAG_FIRST_PIPE_INSTANCE: someone else holds the name.
            io::ErrorKind::PermissionDenied if first => TransportError::PipeInUse { pipe: name.to_string() },
            _ => TransportError::io(
                if first { "create first instance of pipe" } else { "create instance of pipe" },
                format!("pipe:{name}"),
                e,
            ),
        });
    }
    // SAFETY: `handle` is a valid pipe handle that CreateNamedPipeW just
    // returned and nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle as _) })
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
/// kernel reports it (read once at accept time).
pub fn pipe_client_identity(pipe: &impl AsRawHandle) -> io::Result<PeerIdentity> {
    let mut pid = 0u32;
    // SAFETY: the handle is borrowed from a live pipe object for the duration
    // of the call, and `pid` is a valid, writable u32.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle() as _, &mut pid) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerIdentity { pid: Some(pid), ..PeerIdentity::default() })
}

/// The server process of a connected client-side pipe, as the kernel reports it.
pub fn pipe_server_identity(pipe: &impl AsRawHandle) -> io::Result<PeerIdentity> {
    let mut pid = 0u32;
    // SAFETY: as above: a borrowed live handle and a valid out-pointer.
    let ok = unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle() as _, &mut pid) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerIdentity { pid: Some(pid), ..PeerIdentity::default() })
}
