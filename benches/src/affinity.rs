//! CPU pinning: `sched_setaffinity(2)` through `libc`, called by each role
//! process on itself before it starts any thread (threads inherit the
//! mask, so every thread of the process, tokio's included, stays on that
//! CPU). Linux only; elsewhere pinning is refused and `--pin none` works.

use crate::Result;

/// The CPUs this process may run on, in ascending order.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is a valid
    // (empty) set; `sched_getaffinity` writes at most `size_of` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!("sched_getaffinity: {}", std::io::Error::last_os_error()).into());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `cpu` is below the set's capacity in bits.
    Ok((0..max).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Pins the calling thread (and so every thread it starts later) to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_to(cpu: usize) -> Result<()> {
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpu >= max {
        return Err(format!("cpu {cpu} is beyond the affinity mask ({max} cpus)").into());
    }
    // SAFETY: as in `allowed_cpus`; `cpu` is below the set's capacity.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!("sched_setaffinity(cpu {cpu}): {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// The CPUs this process may run on (unknown here: none).
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Result<Vec<usize>> {
    Ok(Vec::new())
}

/// Pinning is implemented for Linux only.
#[cfg(not(target_os = "linux"))]
pub fn pin_to(cpu: usize) -> Result<()> {
    Err(format!("cannot pin to cpu {cpu}: pinning is implemented for Linux only (use --pin none)").into())
}
