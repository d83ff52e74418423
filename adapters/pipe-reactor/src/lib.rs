//! # wharf-pipe-reactor
//!
//! Windows named pipes for the adapters whose runtime cannot wait on them.
//! smol and async-std run on `async-io`, whose reactor registers sockets
//! only (smol-rs/async-io#14); tokio has pipe types of its own and does not
//! use this crate.
//!
//! ## Design
//!
//! One reactor thread per process, named `wharf-pipe-reactor`, started on
//! the first pipe that is bound or connected and kept for the life of the
//! process. It owns a `mio::Poll` (an I/O completion port) and waits on it;
//! every pipe handle is a `mio::windows::NamedPipe` registered with it.
//! mio turns the completion model into readiness: it keeps one overlapped
//! read and one overlapped write in flight per pipe, through its own
//! buffers. When one completes, the reactor thread marks the pipe readable
//! or writable and wakes the task waiting on it; the task then copies the
//! data out of (or into) mio's buffer on its own executor thread. The same
//! mechanism that tokio's named pipes use, minus tokio.
//!
//! ## Cost
//!
//! - One thread for the process, whatever the number of pipes; it sleeps
//!   in `GetQueuedCompletionStatusEx` while nothing completes.
//! - Per completed read or write: one wake-up of the reactor thread and
//!   one cross-thread wake of the task (tokio handles the completion on the
//!   worker thread that polls the port instead).
//! - Copies, as with tokio's pipes: every read goes through a mio buffer of
//!   at least 4 KiB (one overlapped read in flight at a time), every write
//!   through one mio buffer. A vectored write of several small slices is
//!   gathered into one buffer first (at most 64 KiB), so a frame header and
//!   its payload cost one overlapped write, not two.
//! - Memory per connected pipe: mio's two buffers (4 KiB or more each),
//!   the handle's kernel buffers (64 KiB each way, as tokio's default), and
//!   up to 64 KiB of gather buffer once a vectored write needed it.
//!
//! Pipe instances are created by `wharf-transport` with the same settings
//! as the tokio adapter's: byte mode, `FILE_FLAG_FIRST_PIPE_INSTANCE` for
//! the first, remote clients rejected, the next instance created before a
//! connected one is handed off; clients open with `SECURITY_IDENTIFICATION`
//! and retry busy pipes within their deadline.
//!
//! On other operating systems this crate is empty.

#![deny(missing_docs)]

#[cfg(windows)]
mod pipe;
#[cfg(windows)]
mod reactor;

#[cfg(windows)]
pub use pipe::{PipeListener, PipeStream, connect};
