//! The per-thread scratch of the band-by-band kernels, and how it grows so that a warm forward
//! pass allocates nothing whichever thread runs which part.
//!
//! A fused block's bands, a gathered convolution's patches and a packed product's operand
//! segments live in buffers kept per thread between calls. Which thread runs which part of a
//! split layer is decided at run time (whoever claims it first), so a buffer grown only to
//! the parts its thread happened to run would grow again the first time that thread met a
//! larger one, in any later call (the no-allocation test met this on a CI machine).
//!
//! Each kind of buffer therefore has a mark: the largest need any thread has met. A buffer
//! grows to the mark, not to its own need, and a thread that starts a part after a mark rose
//! first grows all its buffers to the marks ([`catch_up`]). The team's threads also catch up
//! together at the end of a team call after a mark rose (`Team::broadcast_once`), so that a
//! helper does not meet it for the first time inside a later call; rayon's workers, which
//! run layers only while another image holds the team, catch up at their first part. The marks are the
//! largest needs of the networks this process has run: a few MB per thread at most (a band
//! aims at 192 KB, a gathered band at 64 KB, rows copied apart at 1 MB).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The kinds of per-thread scratch.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// A fused block's expanded input rows.
    Expanded,
    /// A fused block's depthwise output rows.
    DepthwiseRows,
    /// A gathered convolution's band of padded input rows.
    Patches,
    /// A packed product's operand segments (row starts).
    Segments,
    /// The zeros a windows operand reads for padding taps.
    Zeros,
    /// A chunk's operand rows copied apart, where their own stride aliases in L1.
    Rows,
}

thread_local! {
    /// A block's band buffers (expanded rows, depthwise output).
    pub(super) static BANDS: RefCell<(Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
    /// The padded input rows of one gathered band.
    pub(super) static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One chunk's operand segments (row starts, a tile's rows after one another), the
    /// zeros that stand for padding taps, and the chunk's rows where they are copied apart.
    pub(super) static SEGMENTS: RefCell<(Vec<*const f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// The generation this thread last grew all its buffers to.
    static GROWN_TO: Cell<u64> = const { Cell::new(0) };
}

/// The largest need met of each kind, in elements.
static MARKS: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

/// How many times a mark has risen (published after the mark, read before the marks).
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn mark(kind: Kind) -> usize {
    MARKS[kind as usize].load(Ordering::Acquire)
}

/// The mark of `kind` after a need of `need`.
fn raise(kind: Kind, need: usize) -> usize {
    let known = mark(kind);
    if need <= known {
        return known;
    }
    let before = MARKS[kind as usize].fetch_max(need, Ordering::AcqRel);
    if before < need {
        GENERATION.fetch_add(1, Ordering::Release);
    }
    before.max(need)
}

/// Makes `buffer` at least `need` values long, growing it to the mark of `kind`.
pub(super) fn grow_len(buffer: &mut Vec<f32>, need: usize, kind: Kind) {
    let mark = raise(kind, need);
    if buffer.len() < need {
        fill(buffer, mark);
    }
}

/// Gives `buffer` room for at least `need` elements, growing it to the mark of `kind`.
pub(super) fn grow_capacity<T>(buffer: &mut Vec<T>, need: usize, kind: Kind) {
    let mark = raise(kind, need);
    if buffer.capacity() < need {
        room(buffer, mark);
    }
}

/// How many times a mark has risen: a call that sees it change has the team catch up.
pub(super) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Grows this thread's buffers to the marks unless it already did at the current
/// generation. Returns whether it is caught up: false where one of its buffers is in use (a
/// part inside another part), and then a later call catches up.
pub(super) fn catch_up() -> bool {
    let generation = generation();
    if GROWN_TO.get() == generation {
        return true;
    }
    let bands = BANDS.with(|cell| {
        let Ok(mut held) = cell.try_borrow_mut() else {
            return false;
        };
        let (expanded, depthwise_rows) = &mut *held;
        fill(expanded, mark(Kind::Expanded));
        fill(depthwise_rows, mark(Kind::DepthwiseRows));
        true
    });
    let patches = PATCHES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut held) => {
            fill(&mut held, mark(Kind::Patches));
            true
        }
        Err(_) => false,
    });
    let segments = SEGMENTS.with(|cell| {
        let Ok(mut held) = cell.try_borrow_mut() else {
            return false;
        };
        let (segments, zeros, rows) = &mut *held;
        room(segments, mark(Kind::Segments));
        fill(zeros, mark(Kind::Zeros));
        fill(rows, mark(Kind::Rows));
        true
    });
    let caught_up = bands && patches && segments;
    if caught_up {
        GROWN_TO.set(generation);
    }
    caught_up
}

/// Makes `buffer` at least `len` values long.
fn fill(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// Gives `buffer` room for at least `capacity` elements.
fn room<T>(buffer: &mut Vec<T>, capacity: usize) {
    if buffer.capacity() < capacity {
        // `len ≤ capacity`, so the subtraction cannot underflow.
        buffer.reserve_exact(capacity - buffer.len());
    }
}
