//! When and how a layer's work is split among threads.

use rayon::prelude::*;

use super::team::Team;

/// Below this many multiply-adds per image, a single image does not split its layers on
/// rayon: measured on a 2-core Zen 3, splitting the layers of MobileNet V3 (214 M) or
/// MobileNet V2 1.0/128 (98 M) among rayon's threads ran no faster or slower than one thread
/// (the waits for the other thread cost what its half saved), while MobileNet V2 1.0/224
/// (299 M) and EfficientNet B0 (385 M) gained 12–21 %. The [`Team`] has no such floor.
pub(super) const MIN_PARALLEL_IMAGE_MACS: usize = 250_000_000;

/// Below this many multiply-adds a layer runs on one thread when rayon would split it:
/// splitting a small layer across rayon's threads costs more than it saves (batch 1 at
/// 0.35/128 ran 3× slower on 2 threads).
pub(super) const MIN_PARALLEL_MACS: usize = 1 << 22;

/// The same floor for the [`Team`], whose split costs a few atomic operations instead of a
/// wake-up: a few microseconds of work.
pub(super) const MIN_TEAM_MACS: usize = 1 << 16;

/// How a layer may split its work among threads.
#[derive(Clone, Copy)]
pub(crate) enum Threads<'a> {
    /// On the calling thread only.
    One,
    /// As tasks on rayon's pool (large layers only, see [`MIN_PARALLEL_MACS`]).
    Rayon,
    /// Among a team of spinning threads that the calling thread leads.
    Team(&'a Team),
}

impl Threads<'_> {
    /// How many threads share a layer of `macs` multiply-adds (1: not worth a split).
    pub(super) fn for_work(self, macs: usize) -> usize {
        match self {
            Threads::One => 1,
            Threads::Rayon if macs >= MIN_PARALLEL_MACS => rayon::current_num_threads(),
            Threads::Rayon => 1,
            Threads::Team(team) if macs >= MIN_TEAM_MACS => team.size(),
            Threads::Team(_) => 1,
        }
    }

    /// `work(i)` for each `i < parts`; with `threads > 1` (from [`Threads::for_work`]) the
    /// parts are shared among that many threads.
    pub(super) fn parts<F>(self, parts: usize, threads: usize, work: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        match self {
            Threads::Team(team) if threads > 1 => team.run(parts, &work),
            Threads::Rayon if threads > 1 => (0..parts).into_par_iter().for_each(work),
            _ => (0..parts).for_each(work),
        }
    }

    /// `work(i, chunk)` for each `chunk`-long piece of `out` (the last may be shorter); with
    /// `threads > 1` (from [`Threads::for_work`]) the pieces are shared among that many
    /// threads.
    pub(super) fn chunks_mut<F>(self, out: &mut [f32], chunk: usize, threads: usize, work: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        let chunk = chunk.max(1);
        match self {
            Threads::Team(team) if threads > 1 => team.chunks_mut(out, chunk, threads, &work),
            Threads::Rayon if threads > 1 => out
                .par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| work(i, c)),
            _ => out
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| work(i, c)),
        }
    }
}
