//! How the per-thread scratch of the band-by-band kernels grows, so that a warm forward pass
//! allocates nothing whichever thread runs which part.
//!
//! A fused block's bands, a gathered convolution's patches and a packed product's operand
//! segments live in buffers kept per thread between calls. Which thread runs which part of a
//! split layer is decided at run time (whoever claims it first), so a buffer grown only to
//! the parts its thread happened to run would grow again the first time that thread met a
//! larger one, in any later call (the no-allocation test met this on a CI machine).
//!
//! Each kind of buffer therefore has a mark: the largest need any thread has met. A buffer
//! grows to the mark, not to its own need, and a call that raised a mark ends by having every
//! thread grow its buffers to the marks (see `exec.rs`), so after one call of each kind no
//! thread allocates again.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The kinds of per-thread scratch.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// A fused block's expanded input rows.
    Expanded,
    /// A fused block's depthwise output rows.
    DepthwiseRows,
    /// A gathered convolution's patches.
    Patches,
    /// A packed product's operand segments.
    Segments,
    /// The zeros a windows operand reads for padding taps.
    Zeros,
}

/// The largest need met of each kind, in elements.
static MARKS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];

/// How many times a mark has risen.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The generation this thread last grew all its buffers to.
    static GROWN_TO: Cell<u64> = const { Cell::new(0) };
}

/// The mark of `kind` after a need of `need`.
fn raise(kind: Kind, need: usize) -> usize {
    let mark = &MARKS[kind as usize];
    let known = mark.load(Relaxed);
    if need <= known {
        return known;
    }
    if mark.fetch_max(need, Relaxed) < need {
        GENERATION.fetch_add(1, Relaxed);
    }
    need
}

/// Makes `buffer` at least `need` values long, growing it to the mark of `kind`.
pub(super) fn grow_len(buffer: &mut Vec<f32>, need: usize, kind: Kind) {
    let mark = raise(kind, need);
    if buffer.len() < need {
        buffer.resize(mark.max(need), 0.0);
    }
}

/// Gives `buffer` room for at least `need` elements, growing it to the mark of `kind`.
pub(super) fn grow_capacity<T>(buffer: &mut Vec<T>, need: usize, kind: Kind) {
    let mark = raise(kind, need);
    if buffer.capacity() < need {
        buffer.reserve_exact(mark.max(need) - buffer.len());
    }
}

/// Grows `buffer` to the mark of `kind` (for [`catch_up`]).
pub(super) fn fill_to_mark(buffer: &mut Vec<f32>, kind: Kind) {
    let mark = MARKS[kind as usize].load(Relaxed);
    if buffer.len() < mark {
        buffer.resize(mark, 0.0);
    }
}

/// Grows `buffer`'s room to the mark of `kind` (for [`catch_up`]).
pub(super) fn room_to_mark<T>(buffer: &mut Vec<T>, kind: Kind) {
    let mark = MARKS[kind as usize].load(Relaxed);
    if buffer.capacity() < mark {
        buffer.reserve_exact(mark - buffer.len());
    }
}

/// How many times a mark has risen: a call that sees it change spreads the marks.
pub(super) fn generation() -> u64 {
    GENERATION.load(Relaxed)
}

/// Runs `grow` (which grows this thread's buffers to the marks) unless this thread already
/// did at the current generation; `grow` says whether it could (a buffer in use is skipped).
pub(super) fn catch_up(grow: impl FnOnce() -> bool) {
    let generation = generation();
    if GROWN_TO.get() != generation && grow() {
        GROWN_TO.set(generation);
    }
}
