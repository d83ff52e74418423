//! The security descriptor of wharf's named pipes: an explicit, protected
//! DACL denying network logons and granting full access to the current
//! user and to SYSTEM, nobody else (instead of the default descriptor,
//! which also lets Everyone and Anonymous open the pipe for reading).

use std::ffi::c_void;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetSecurityInfo, SDDL_REVISION_1, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};

/// A self-relative security descriptor built from SDDL, freed on drop.
#[derive(Debug)]
pub struct PipeSecurity {
    descriptor: PSECURITY_DESCRIPTOR,
    sddl: String,
}

// SAFETY: the descriptor is a block of memory that nothing mutates after
// it was created; it is only read (by CreateNamedPipeW) and freed once, in
// drop.
unsafe impl Send for PipeSecurity {}
// SAFETY: as above: shared use is read-only.
unsafe impl Sync for PipeSecurity {}

impl PipeSecurity {
    /// Full access for the current user and for SYSTEM only, none for
    /// network logons, protected from inherited entries:
    /// `D:P(D;;GA;;;NU)(A;;GA;;;SY)(A;;GA;;;<user SID>)`.
    pub fn owner_and_system() -> io::Result<PipeSecurity> {
        let sid = crate::windows::current_user_sid()?;
        PipeSecurity::from_sddl(&format!("D:P(D;;GA;;;NU)(A;;GA;;;SY)(A;;GA;;;{sid})"))
    }

    /// A descriptor from an SDDL string (for a deliberately wider access
    /// list).
    pub fn from_sddl(sddl: &str) -> io::Result<PipeSecurity> {
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated and outlives the call; the
        // out-pointer is valid; the size out-parameter may be null.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PipeSecurity { descriptor, sddl: sddl.to_string() })
    }

    /// The SDDL it was built from.
    pub fn sddl(&self) -> &str {
        &self.sddl
    }

    /// `SECURITY_ATTRIBUTES` pointing at this descriptor (handles not
    /// inheritable); valid while `self` lives.
    pub fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.descriptor,
            bInheritHandle: 0,
        }
    }
}

impl Drop for PipeSecurity {
    fn drop(&mut self) {
        // SAFETY: the descriptor was allocated by
        // ConvertStringSecurityDescriptorToSecurityDescriptorW (LocalAlloc)
        // and is freed exactly once.
        unsafe { LocalFree(self.descriptor as _) };
    }
}

/// The descriptor every wharf pipe instance is created with (built once
/// per process).
pub fn pipe_security() -> io::Result<&'static PipeSecurity> {
    static CELL: OnceLock<Result<PipeSecurity, String>> = OnceLock::new();
    match CELL.get_or_init(|| PipeSecurity::owner_and_system().map_err(|e| e.to_string())) {
        Ok(s) => Ok(s),
        Err(e) => Err(io::Error::other(format!("building the pipe security descriptor: {e}"))),
    }
}

/// Runs `f` with a pointer to `SECURITY_ATTRIBUTES` for wharf's pipes
/// (see [`pipe_security`]), valid for the duration of the call: for
/// runtimes whose pipe constructors take raw attributes (tokio's
/// `ServerOptions::create_with_security_attributes_raw`).
pub fn with_pipe_security_attributes<R>(f: impl FnOnce(*mut c_void) -> R) -> io::Result<R> {
    let mut attributes = pipe_security()?.attributes();
    Ok(f(&mut attributes as *mut SECURITY_ATTRIBUTES as *mut c_void))
}

/// The DACL of a kernel object (a pipe instance), as SDDL, read back from
/// the object: for tests and diagnostics.
pub fn dacl_sddl(object: &impl AsRawHandle) -> io::Result<String> {
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the handle is borrowed from a live object; the out-pointers
    // are valid or null as the API allows.
    let err = unsafe {
        GetSecurityInfo(
            object.as_raw_handle() as HANDLE,
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `descriptor` is the valid descriptor GetSecurityInfo returned;
    // the out-pointers are valid.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            std::ptr::null_mut(),
        )
    };
    let result = if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `text` is a NUL-terminated wide string the call allocated.
        Ok(unsafe { wide_to_string(text) })
    };
    // SAFETY: both were allocated by the calls above (LocalAlloc), freed once.
    unsafe {
        if !text.is_null() {
            LocalFree(text as _);
        }
        LocalFree(descriptor as _);
    }
    result
}

/// # Safety
/// `p` must point to a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(p: *const u16) -> String {
    let mut n = 0;
    // SAFETY: the caller promises a NUL terminator, so every read up to it
    // is in bounds.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the `n` units before the terminator are initialised.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}
