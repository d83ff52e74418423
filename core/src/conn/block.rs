//! A spare buffer block, so that a `BytesMut` which hands out frozen slices
//! of itself can go on without allocating while some of those slices are
//! still alive.
//!
//! The receive buffer hands frames to the application as `Bytes` slices of
//! itself, and the send queue hands chunks to the transmit path the same
//! way. While such a slice lives, its block cannot be reclaimed. When the
//! current block is full and still shared, the buffer moves to the spare
//! (the block before it) if everything cut from that one has been dropped
//! by then; only if both are held is a new block allocated, and the full
//! one becomes the spare. Two blocks used in turn cover the common case of
//! slices that live a little longer than one block's worth of traffic.

use bytes::BytesMut;

/// Consecutive full blocks found reclaimable in place (the spare was not
/// needed) after which the spare is released, so that a connection keeps a
/// second block only while its traffic needs one.
const KEEP_UNUSED: u8 = 4;

#[derive(Debug, Default)]
pub(crate) struct SpareBlock {
    /// The previous block, emptied; `None` until one is needed.
    block: Option<BytesMut>,
    /// Full blocks in a row reclaimed in place since the spare was last used.
    unused: u8,
}

impl SpareBlock {
    /// The current block was full and has been reclaimed in place.
    pub(crate) fn not_needed(&mut self) {
        if self.block.is_some() {
            self.unused += 1;
            if self.unused >= KEEP_UNUSED {
                self.block = None;
                self.unused = 0;
            }
        }
    }

    /// Replaces the full, still shared block `current` by one with room for
    /// `need` more bytes after the bytes `current` holds (which are moved):
    /// the spare if it is free by now, else a new block of at least `size`
    /// bytes. `current` (emptied) becomes the spare.
    pub(crate) fn switch(&mut self, current: &mut BytesMut, need: usize, size: usize) {
        let len = current.len();
        let next = match self.block.take() {
            Some(mut spare) => {
                if spare.try_reclaim(len + need) {
                    spare
                } else {
                    // Still shared: dropping this handle leaves the memory to
                    // the slices that hold it.
                    BytesMut::with_capacity(size.max(len + need))
                }
            }
            None => BytesMut::with_capacity(size.max(len + need)),
        };
        let mut old = std::mem::replace(current, next);
        current.extend_from_slice(&old);
        old.clear();
        self.block = Some(old);
        self.unused = 0;
    }

    /// Bytes the spare can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.block.as_ref().map_or(0, BytesMut::capacity)
    }

    /// Releases the spare.
    pub(crate) fn clear(&mut self) {
        self.block = None;
        self.unused = 0;
    }
}
