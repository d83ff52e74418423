//! Windows named pipes: the identity of the process at the other end.

use std::io;
use std::os::windows::io::AsRawHandle;

use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId};

use crate::PeerIdentity;

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken.
pub const ERROR_PIPE_BUSY: i32 = windows_sys::Win32::Foundation::ERROR_PIPE_BUSY as i32;

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
