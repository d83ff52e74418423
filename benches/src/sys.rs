//! Process limits and memory: `RLIMIT_NOFILE` (through `libc`) and the
//! resident set size of a process (from `/proc`). Linux only; elsewhere
//! the idle-connection measurements report that they cannot run.

use crate::Result;

/// Raises this process's open-file limit so it can hold at least `needed`
/// descriptors: the soft limit up to the hard one, and the hard one too
/// when that is not enough and the process may (root, `CAP_SYS_RESOURCE`).
/// Returns the soft limit now in force; fails with the limits it found
/// when `needed` cannot be had.
#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is narrower than u64 on some targets
pub fn raise_nofile(needed: u64) -> Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through the valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error()).into());
    }
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if soft >= needed {
        return Ok(soft);
    }
    let want = libc::rlimit { rlim_cur: needed as libc::rlim_t, rlim_max: hard.max(needed) as libc::rlim_t };
    // SAFETY: `setrlimit` reads one `rlimit` through the valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return Ok(needed);
    }
    let err = std::io::Error::last_os_error();
    Err(format!(
        "cannot raise RLIMIT_NOFILE to {needed} open files (soft limit {soft}, hard limit {hard}; \
         setrlimit: {err}); raise the hard limit (ulimit -Hn, limits.conf, or run as root) \
         or measure fewer connections (--conns)"
    )
    .into())
}

/// Raising limits is implemented for Linux only.
#[cfg(not(target_os = "linux"))]
pub fn raise_nofile(needed: u64) -> Result<u64> {
    Err(format!("cannot make sure of {needed} open files: RLIMIT_NOFILE is handled on Linux only").into())
}

/// Resident set size of process `pid` in bytes: `VmRSS` of
/// `/proc/PID/status` (the same figure the process would read from
/// `/proc/self/status`; anonymous and file-backed pages it has resident,
/// not kernel memory such as socket buffers).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| format!("{path}: no VmRSS line"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("{path}: bad VmRSS line {line:?}"))?
        .parse()
        .map_err(|e| format!("{path}: bad VmRSS line {line:?}: {e}"))?;
    Ok(kib * 1024)
}
