//! The outbound queue: a deque of `Bytes` chunks ready for vectored writes.
//!
//! Frame headers and small payloads are appended to one growing buffer
//! (`open`) so that many small frames become one contiguous chunk; large
//! payloads are queued as their own chunk without copying. While nothing
//! else is queued, `open` is written from as it is and consumed from its
//! front (no chunk is cut, so no chunk list and no shared header are
//! needed); otherwise it is split into a chunk behind the others. Splitting
//! `open` leaves its spare capacity in place, and once the written chunks
//! are dropped that capacity is reclaimed, so the steady state allocates
//! nothing.
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

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::block::SpareBlock;
use crate::text::Text;
use crate::wire::{Frame, FrameType, HEADER_LEN, Header};

/// Payloads up to this size are copied next to their header.
pub(crate) const COPY_MAX: usize = 1024;
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
    /// The MESSAGES frame at the end of `open`, which later messages of the
    /// same subscription and topic may join while nothing else is queued
    /// after it and none of it was handed out for writing.
    batch: Option<OpenBatch>,
}

/// Where the growing MESSAGES frame is, and what may join it.
#[derive(Debug)]
struct OpenBatch {
    /// Offset of its header in `open` (the topic follows the header, so it
    /// is compared where it was written instead of being kept here).
    start: usize,
    /// Its body length so far.
    body_len: u32,
    subscription: u64,
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
                // the chunks still cut from it (an open batch moves along).
                self.seal_before_batch();
                let mut block = BytesMut::with_capacity(want.max(self.open.len() + n));
                block.extend_from_slice(&self.open);
                self.open = block;
                self.mode = Mode::Full;
                return;
            }
        }
        if self.open.try_reclaim(want) || self.open.try_reclaim(n) {
            self.spare.not_needed();
            return;
        }
        // Queue what `open` holds, then go on in another block (an open
        // batch moves along).
        self.seal_before_batch();
        self.spare.switch(&mut self.open, n, want);
    }

    /// [`seal`](Self::seal), except for an open batch, which stays in `open`
    /// (at its front) so that it can go on growing.
    fn seal_before_batch(&mut self) {
        let Some(b) = self.batch.as_mut() else { return self.seal() };
        if b.start > 0 {
            let before = self.open.split_to(b.start);
            b.start = 0;
            self.chunks.push_back(before.freeze());
        }
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
            self.batch = None;
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

    /// Appends one message to the MESSAGES frame at the end of the queue
    /// if it is for the same subscription and topic and its body stays
    /// within `max_body`; false (and nothing queued) otherwise.
    pub(crate) fn join_batch(&mut self, subscription: u64, topic: &Text, payload: &[u8], max_body: u32) -> bool {
        let add = 4 + payload.len();
        let open = &self.open;
        let fits = |b: &OpenBatch| {
            // The topic's str16 starts right after the header.
            let at = b.start + HEADER_LEN + 2;
            b.subscription == subscription
                && b.body_len as usize + add <= max_body as usize
                && open.get(at - 2..at) == Some(&(topic.len() as u16).to_le_bytes()[..])
                && open.get(at..at + topic.len()) == Some(topic.as_bytes())
        };
        if !self.batch.as_ref().is_some_and(fits) {
            return false;
        }
        // Room in this block: a reserve that has to move to another block
        // seals this one, which ends the batch.
        self.reserve(add);
        let Some(b) = self.batch.as_mut() else { return false };
        self.open.put_u32_le(payload.len() as u32);
        self.open.extend_from_slice(payload);
        b.body_len += add as u32;
        self.open[b.start..b.start + 4].copy_from_slice(&b.body_len.to_le_bytes());
        self.len += add;
        true
    }

    /// Queues a MESSAGES frame holding one message, which later ones of
    /// the same subscription and topic may join ([`join_batch`](Self::join_batch)).
    /// `body_len` (the topic's str16 and the item) was checked by the caller.
    pub(crate) fn push_batch(&mut self, subscription: u64, topic: &Text, payload: &[u8], body_len: u32) {
        self.reserve(HEADER_LEN + body_len as usize);
        let start = self.open.len();
        Header { len: body_len, ty: FrameType::Messages, flags: 0, id: subscription }.encode(&mut self.open);
        self.open.put_u16_le(topic.len() as u16);
        self.open.extend_from_slice(topic.as_bytes());
        self.open.put_u32_le(payload.len() as u32);
        self.open.extend_from_slice(payload);
        self.len += HEADER_LEN + body_len as usize;
        self.batch = Some(OpenBatch { start, body_len, subscription });
    }

    /// Ends the open batch: nothing more joins it.
    pub(crate) fn end_batch(&mut self) {
        self.batch = None;
    }

    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.batch = None;
        self.reserve(bytes.len());
        self.open.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Queues `frame`, whose body length `body_len` was computed (and
    /// validated) by the caller.
    pub(crate) fn push_frame(&mut self, frame: &Frame, body_len: u32) {
        self.batch = None;
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

    /// Moves the coalescing buffer's contents into the chunk queue (which
    /// ends an open batch: its bytes may be written from now on).
    fn seal(&mut self) {
        self.batch = None;
        if !self.open.is_empty() {
            self.chunks.push_back(self.open.split().freeze());
        }
    }

    /// Fills `out` with the queued chunks, front first; returns how many.
    /// When everything queued is in `open` (the usual case: small frames),
    /// `open` itself is handed out, without cutting a chunk from it: its
    /// bytes no longer change (an open batch ends), [`advance`](Self::advance)
    /// consumes them from its front, and the chunk list is not needed.
    pub(crate) fn slices<'a>(&'a mut self, out: &mut [IoSlice<'a>]) -> usize {
        if self.chunks.is_empty() {
            self.batch = None;
            if self.open.is_empty() || out.is_empty() {
                return 0;
            }
            out[0] = IoSlice::new(&self.open);
            return 1;
        }
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
                // Bytes in `open`, handed out by `slices` as they are (or
                // written without asking for slices first): only possible
                // if chunks is empty.
                self.batch = None;
                self.open.advance(n);
                break;
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
        self.batch = None;
        self.chunks.clear();
        self.open.clear();
        self.spare.clear();
        self.len = 0;
    }
}
