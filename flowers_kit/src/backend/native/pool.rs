//! Reusable activation buffers.

/// Reusable f32 buffers of one worker. A network keeps one per thread between calls, so a
/// warm forward pass allocates nothing and touches no fresh pages.
#[derive(Default)]
pub(super) struct Pool {
    free: Vec<Buffer>,
    /// Each step's live buffer during one image (empty between images; kept for its
    /// capacity).
    slots: Vec<Option<Buffer>>,
}

impl Pool {
    /// `n` empty slots, one per step, in the pool's kept allocation.
    pub(super) fn take_slots(&mut self, n: usize) -> Vec<Option<Buffer>> {
        let mut slots = std::mem::take(&mut self.slots);
        slots.clear();
        slots.resize_with(n, || None);
        slots
    }

    /// Returns the slots' buffers to the pool, and the slots for the next image.
    pub(super) fn give_slots(&mut self, mut slots: Vec<Option<Buffer>>) {
        for buffer in slots.drain(..).flatten() {
            self.free.push(buffer);
        }
        self.slots = slots;
    }

    /// A buffer of `len` values (contents unspecified: every kernel writes all of them).
    pub(super) fn take(&mut self, len: usize) -> Buffer {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.data.len() >= len)
            .min_by_key(|(_, b)| b.data.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut buffer = self.free.swap_remove(i);
                buffer.len = len;
                buffer
            }
            None => Buffer {
                data: vec![0.0; len],
                len,
            },
        }
    }

    pub(super) fn give(&mut self, buffer: Buffer) {
        self.free.push(buffer);
    }
}

/// The first `len` values of a pooled allocation. Unlike `Vec::resize`, handing a larger
/// buffer out for a smaller layer writes nothing (re-zeroing cost 8 % of a forward pass).
#[derive(Default)]
pub(super) struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // `take` never hands out more than the allocation holds.
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}
