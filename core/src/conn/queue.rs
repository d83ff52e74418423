//! The outbound queue: a deque of `Bytes` chunks ready for vectored writes.
//!
//! Frame headers and small payloads are appended to one growing buffer
//! (`open`) so that many small frames become one contiguous chunk; large
//! payloads are queued as their own chunk without copying. Splitting `open`
//! leaves its spare capacity in place, and once the written chunks are
//! dropped that capacity is reclaimed, so the steady state allocates nothing.
//! `open` is reset to the start of its block whenever the queue drains, and
//! when it runs out of room while chunks cut from it still wait to be
//! written (more than a block queued in one go), it moves to a
//! [`SpareBlock`], so that case does not allocate either.
//!
//! A new queue, or one whose block was released while empty, starts with a
//! small block ([`SMALL_BLOCK`]) and keeps it while every frame fits and
//! the written chunks cut from it have been dropped by the next one; else
//! it moves to full blocks ([`OPEN_CHUNK`]) until the next release.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use super::block::SpareBlock;
use crate::wire::{Frame, HEADER_LEN};

/// Payloads up to this size are copied next to their header.
const COPY_MAX: usize = 1024;
/// Minimum growth of the coalescing buffer.
const OPEN_CHUNK: usize = 16 * 1024;
/// The first coalescing block (see the module's documentation).
const SMALL_BLOCK: usize = 256;

/// Which block `open` is cut from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// None yet (new, or released).
    #[default]
    None,
    /// A small block.
    Small,
    /// A full block (at least [`OPEN_CHUNK`]).
    Full,
}

#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    chunks: VecDeque<Bytes>,
    open: BytesMut,
    /// The previous coalescing block, while chunks cut from it may still
    /// be queued.
    spare: SpareBlock,
    len: usize,
    mode: Mode,
}

impl SendQueue {
    /// Unwritten bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `n` more bytes in `open`. Allocates only when both
    /// `open` and the spare block still share memory with unwritten chunks,
    /// or for a frame head larger than a block.
    fn reserve(&mut self, n: usize) {
        if self.open.capacity() - self.open.len() >= n {
            return;
        }
        let want = n.max(OPEN_CHUNK);
        match self.mode {
            Mode::Full => {}
            Mode::None => {
                // `open` is empty: it has never had a block since the last release.
                let small = n <= SMALL_BLOCK;
                self.open = BytesMut::with_capacity(if small { SMALL_BLOCK } else { want });
                self.mode = if small { Mode::Small } else { Mode::Full };
                return;
            }
            Mode::Small => {
                if self.open.try_reclaim(n) {
                    return;
                }
                // The traffic needs more: a full block, the small one left to
                // the chunks still cut from it.
                self.seal();
                self.open = BytesMut::with_capacity(want);
                self.mode = Mode::Full;
                return;
            }
        }
        if self.open.try_reclaim(want) || self.open.try_reclaim(n) {
            self.spare.not_needed();
            return;
        }
        // Queue what `open` holds, then go on in another block.
        self.seal();
        self.spare.switch(&mut self.open, n, want);
    }

    /// The queue drained: start `open` over at the front of its block if no
    /// written chunk still holds part of it (no allocation, nothing copied).
    fn rewind(&mut self) {
        if self.len == 0 && self.chunks.is_empty() && self.open.is_empty() {
            let _ = self.open.try_reclaim(if self.mode == Mode::Small { SMALL_BLOCK } else { OPEN_CHUNK });
        }
    }

    /// Gives back the coalescing block, the spare and the chunk list, if
    /// nothing is queued.
    pub(crate) fn release(&mut self) {
        if self.len == 0 && self.chunks.is_empty() {
            self.open = BytesMut::new();
            self.spare.clear();
            self.mode = Mode::None;
            self.chunks = VecDeque::new();
        }
    }

    /// Whether a full block (or a spare) is held.
    pub(crate) fn holds_full_block(&self) -> bool {
        self.mode == Mode::Full || self.spare.capacity() > 0
    }

    /// Capacity of the coalescing block from where `open` starts, plus the spare's.
    pub(crate) fn block_capacity(&self) -> usize {
        self.open.capacity() + self.spare.capacity()
    }

    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.open.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Queues `frame`, whose body length `body_len` was computed (and
    /// validated) by the caller.
    pub(crate) fn push_frame(&mut self, frame: &Frame, body_len: u32) {
        let tail = frame.tail().filter(|t| !t.is_empty());
        let head_len = HEADER_LEN + body_len as usize - tail.map_or(0, |t| t.len());
        match tail {
            Some(t) if t.len() > COPY_MAX => {
                self.reserve(head_len);
                frame.encode_head(body_len, &mut self.open);
                self.seal();
                self.chunks.push_back(t.clone());
            }
            Some(t) => {
                self.reserve(head_len + t.len());
                frame.encode_head(body_len, &mut self.open);
                self.open.extend_from_slice(t);
            }
            None => {
                self.reserve(head_len);
                frame.encode_head(body_len, &mut self.open);
            }
        }
        self.len += HEADER_LEN + body_len as usize;
    }

    /// Moves the coalescing buffer's contents into the chunk queue.
    fn seal(&mut self) {
        if !self.open.is_empty() {
            self.chunks.push_back(self.open.split().freeze());
        }
    }

    /// Fills `out` with the queued chunks, front first; returns how many.
    pub(crate) fn slices<'a>(&'a mut self, out: &mut [IoSlice<'a>]) -> usize {
        self.seal();
        let mut n = 0;
        for (slot, chunk) in out.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Removes the front chunk whole.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        self.seal();
        let c = self.chunks.pop_front()?;
        self.len -= c.len();
        // The caller holds `c` for now: a later `reserve` reclaims the block.
        Some(c)
    }

    /// Drops `n` written bytes from the front.
    pub(crate) fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                // Bytes still in `open` (the caller wrote without asking for
                // slices first): only possible if chunks is empty.
                self.open.advance(n);
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
        self.rewind();
    }

    /// Drops everything (the peer will never read it).
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.open.clear();
        self.spare.clear();
        self.len = 0;
    }
}
