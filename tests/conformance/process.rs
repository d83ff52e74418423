//! Peer processes: this test binary started again in a role, to be
//! killed (SIGKILL on Unix, `TerminateProcess` on Windows) while a case
//! watches. Shared by the conformance harness ([`super::Env::spawn_peer`])
//! and the wharf-mio cases.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf::Endpoint;

use super::watch::Watch;

/// Environment variables of a peer process (see [`spawn`]).
pub const PEER_ROLE_VAR: &str = "WHARF_CONFORMANCE_PEER_ROLE";
/// The endpoint the peer process serves on or connects to.
pub const PEER_ENDPOINT_VAR: &str = "WHARF_CONFORMANCE_PEER_ENDPOINT";
/// What a peer process prints once it is ready.
pub const PEER_READY: &str = "WHARF-CONFORMANCE-PEER-READY";

/// Starts this test binary again, running only the (ignored) test
/// `peer_test`, as a peer process in `role` on `endpoint`. The process is
/// killed when the handle drops.
pub fn spawn(peer_test: &str, role: &str, endpoint: &Endpoint) -> Peer {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([peer_test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(PEER_ROLE_VAR, role)
        .env(PEER_ENDPOINT_VAR, endpoint.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the peer process");
    let lines: Watch<Vec<String>> = Watch::new(Vec::new());
    let stdout = child.stdout.take().expect("piped stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.update(|v| v.push(line));
        }
        sink.update(|v| v.push(String::from("<eof>")));
    });
    Peer { child, lines, killed: false }
}

/// The role and endpoint of this process, if it was started as a peer.
pub fn role() -> Option<(String, Endpoint)> {
    let role = std::env::var(PEER_ROLE_VAR).ok()?;
    let endpoint =
        std::env::var(PEER_ENDPOINT_VAR).expect("peer endpoint variable").parse().expect("peer endpoint parses");
    Some((role, endpoint))
}

/// A peer process: this test binary started again in a role (see [`spawn`]).
pub struct Peer {
    child: Child,
    lines: Watch<Vec<String>>,
    killed: bool,
}

impl Peer {
    /// Waits until the peer printed [`PEER_READY`] (true) or exited (false).
    pub async fn ready(&self) -> bool {
        self.lines.wait(|v| v.iter().any(|l| l.contains(PEER_READY) || l == "<eof>")).await;
        self.lines.with(|v| v.iter().any(|l| l.contains(PEER_READY)))
    }

    /// Waits for a line holding `marker` and returns it from the marker on
    /// (`None`: the peer's output ended without one).
    pub async fn line_with(&self, marker: &str) -> Option<String> {
        self.lines.wait(|v| v.iter().any(|l| l.contains(marker) || l == "<eof>")).await;
        self.lines.with(|v| v.iter().find_map(|l| l.find(marker).map(|at| l[at..].to_string())))
    }

    /// [`ready`](Self::ready), blocking this thread at most `limit` (false
    /// also when the time ran out).
    pub fn wait_ready(&self, limit: Duration) -> bool {
        self.lines.wait_blocking(|v| v.iter().any(|l| l.contains(PEER_READY) || l == "<eof>"), limit);
        self.lines.with(|v| v.iter().any(|l| l.contains(PEER_READY)))
    }

    /// Blocks this thread until the peer printed `n` lines holding `marker`
    /// (true), its output ended or `limit` passed (false).
    pub fn wait_lines(&self, marker: &str, n: usize, limit: Duration) -> bool {
        let count = |v: &Vec<String>| v.iter().filter(|l| l.contains(marker)).count();
        self.lines.wait_blocking(|v| count(v) >= n || v.last().is_some_and(|l| l == "<eof>"), limit);
        self.lines.with(count) >= n
    }

    /// How many lines holding `marker` the peer printed so far.
    pub fn count_lines(&self, marker: &str) -> usize {
        self.lines.with(|v| v.iter().filter(|l| l.contains(marker)).count())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the peer printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.get()
    }

    /// Kills the process with SIGKILL (on Unix; `TerminateProcess` on
    /// Windows) and returns the moment it was sent.
    pub fn kill(&mut self) -> Instant {
        self.child.kill().expect("killing the peer process");
        let at = Instant::now();
        self.killed = true;
        let _ = self.child.wait();
        at
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether this process runs under Wine (its ntdll exports `wine_get_version`).
#[cfg(windows)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both strings are NUL-terminated literals; ntdll is always
    // loaded, and a null module handle is checked before use.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// Whether this process runs under Wine (never, off Windows).
#[cfg(not(windows))]
pub fn under_wine() -> bool {
    false
}
