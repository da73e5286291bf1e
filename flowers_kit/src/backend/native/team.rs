//! A persistent team of threads that share the layers of one image (or a batch's images, one
//! contiguous share each).
//!
//! At batch 1 every layer is split among the threads and joined before the next one starts:
//! 50–100 joins per image, each of a few microseconds of work at MobileNet V2 0.35/128. A
//! rayon split wakes a sleeping worker through the kernel (tens of microseconds on this VM),
//! which cost more than half a small layer saves, so small images ran on one thread. The
//! team's helpers instead spin between layers (as XNNPACK's pthreadpool does) and park only
//! after [`SPIN`] without work, so a split costs a few atomic operations.
//!
//! One word holds a job's whole state: its epoch, its number of parts and the next unclaimed
//! part. A thread runs a part only after claiming it from that word, so a helper that looks
//! late can never claim a part of a job whose leader has returned.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it parks: longer than the gap between
/// two layers of an image, short enough that an idle kernel leaves the core to others (a
/// class shares its cores).
const SPIN: Duration = Duration::from_micros(200);

/// How long a broadcast waits for a helper to take its part.
const BROADCAST_WAIT: Duration = Duration::from_millis(200);

/// The most parts one job may have (the width of its field in the claim word).
pub(super) const MAX_PARTS: usize = 0xFFFF;

/// A job: part `i` of it.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The claim word: epoch (bits 32–63), parts (16–31), next unclaimed part (0–15).
fn word(epoch: u64, parts: usize, next: usize) -> u64 {
    (epoch << 32) | ((parts as u64) << 16) | next as u64
}

fn fields(word: u64) -> (u64, usize, usize) {
    (
        word >> 32,
        ((word >> 16) & 0xFFFF) as usize,
        (word & 0xFFFF) as usize,
    )
}

/// What the leader and its helpers share.
struct Shared {
    claim: AtomicU64,
    /// The current job, written by the leader before it publishes the job's epoch and not
    /// again until every part of it has run (see [`Team::run`]).
    job: UnsafeCell<Option<Job<'static>>>,
    /// Parts of the current job that have finished.
    done: AtomicUsize,
    /// The first panic of a part of the current job, raised again by the leader.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Whether each helper is parked (or about to be).
    asleep: Vec<AtomicBool>,
    stop: AtomicBool,
}

// SAFETY: `job` is the only field that is not itself Sync. The leader writes it only while no
// part of any job is claimable (before publishing a new epoch, after every part of the last
// one finished), and a helper reads it only after claiming a part of the epoch it belongs
// to, through the same SeqCst word that published it.
unsafe impl Sync for Shared {}

impl Shared {
    /// Claims and runs parts of the job of `epoch` until none is left.
    fn work(&self, epoch: u64) {
        loop {
            let current = self.claim.load(SeqCst);
            let (e, parts, next) = fields(current);
            if e != epoch || next >= parts {
                return;
            }
            if self
                .claim
                .compare_exchange(current, current + 1, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            let ran = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: part `next` of the live job was just claimed; the leader does not
                // return (ending the borrow behind `job`) or write `job` until it is done.
                let job = unsafe { *self.job.get() };
                job.expect("invariant: a claimable job was published")(next)
            }));
            if let Err(payload) = ran {
                self.keep_panic(payload);
            }
            // Counted whatever happened, so that the leader never waits forever.
            self.done.fetch_add(1, SeqCst);
        }
    }
}

impl Shared {
    /// Keeps the first panic of the job for the leader; drops any later one, a panic in
    /// whose drop is caught too.
    fn keep_panic(&self, payload: Box<dyn Any + Send>) {
        let mut slot = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(payload);
        } else {
            drop(slot);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
    }
}

/// Waits until every part of the published job has run, then retires the job: on the way
/// out of [`Team::run`] however it leaves, so that no part outlives the borrow behind it.
struct Retire<'a> {
    team: &'a Team,
    parts: usize,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let shared = &*self.team.shared;
        let mut spins = 0u32;
        while shared.done.load(SeqCst) < self.parts {
            spins = spins.wrapping_add(1);
            // A helper the system preempted may take a while: leave it the core.
            if spins.is_multiple_of(1 << 12) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every part has finished, so no thread reads the job any more.
        unsafe {
            *shared.job.get() = None;
        }
        self.team.leading.store(false, SeqCst);
    }
}

/// Helper threads plus the calling thread, which leads: it publishes each job, runs parts of
/// it too, and returns when all have run.
pub(crate) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// The last epoch published (only the leader, holding the team, publishes).
    epoch: AtomicU64,
    /// Whether a job is running: a part that asks the team for another job runs it alone.
    leading: AtomicBool,
    /// The generation of the last [`Team::broadcast_once`] that went round.
    broadcast: AtomicU64,
    /// The generation of the last one tried.
    tried: AtomicU64,
}

impl Team {
    /// A team of `size` threads (the caller and `size - 1` helpers), or `None` when the
    /// helpers cannot be started.
    pub(super) fn new(size: usize) -> Option<Team> {
        let helpers = size.saturating_sub(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            asleep: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let mut team = Team {
            shared: shared.clone(),
            helpers: Vec::with_capacity(helpers),
            epoch: AtomicU64::new(0),
            leading: AtomicBool::new(false),
            broadcast: AtomicU64::new(0),
            tried: AtomicU64::new(0),
        };
        for index in 0..helpers {
            let shared = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("flowers-team-{index}"))
                .spawn(move || help(&shared, index));
            // Dropping a partial team stops and joins the helpers already started.
            team.helpers.push(spawned.ok()?);
        }
        Some(team)
    }

    /// Threads in the team, the caller included.
    pub(super) fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(i)` for every `i < parts`, shared among the team; returns when all have run.
    ///
    /// # Panics
    /// With the first panic of a part (on whichever thread ran it), once all have run.
    pub(super) fn run(&self, parts: usize, job: &(dyn Fn(usize) + Sync)) {
        if parts <= 1
            || parts > MAX_PARTS
            || self.helpers.is_empty()
            || self.leading.swap(true, SeqCst)
        {
            // A nested job (a part asking for its own split) runs on the thread that asked.
            (0..parts).for_each(job);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: only this leader writes `job`, and no part is claimable now: the last
        // job's parts all finished before its `run` returned. The lifetime is extended to
        // 'static only for the span of this call, which waits below until every part that
        // could read it has finished.
        unsafe {
            *shared.job.get() = Some(std::mem::transmute::<Job<'_>, Job<'static>>(job));
        }
        shared.done.store(0, SeqCst);
        let epoch = (self.epoch.load(SeqCst) + 1) & 0xFFFF_FFFF;
        self.epoch.store(epoch, SeqCst);
        shared.claim.store(word(epoch, parts, 0), SeqCst);
        for (asleep, helper) in shared.asleep.iter().zip(&self.helpers) {
            if asleep.load(SeqCst) {
                helper.thread().unpark();
            }
        }
        let retire = Retire { team: self, parts };
        shared.work(epoch);
        drop(retire);
        let panic = shared
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }

    /// Runs `f` once on each of the team's threads, the caller's included, unless it already
    /// did for `generation`. `f` says whether it did its work; the generation is recorded
    /// when every thread took its part within [`BROADCAST_WAIT`] and every `f` returned
    /// true, or at the second try, so that a helper left out is asked once more by the next
    /// call but a starved one never costs every call the wait.
    pub(super) fn broadcast_once(&self, generation: u64, f: &(dyn Fn() -> bool + Sync)) {
        // Inside a job (a part asking), parts could not reach the other threads.
        if self.broadcast.load(SeqCst) == generation || self.leading.load(SeqCst) {
            return;
        }
        let size = self.size();
        let arrived = AtomicUsize::new(0);
        let done = AtomicBool::new(true);
        self.run(size, &|_| {
            if !f() {
                done.store(false, SeqCst);
            }
            arrived.fetch_add(1, SeqCst);
            // Held here until every part is claimed, so that each part runs on its own thread.
            let start = Instant::now();
            while arrived.load(SeqCst) < size {
                if start.elapsed() > BROADCAST_WAIT {
                    // A part left for the caller: some thread did not take its own.
                    done.store(false, SeqCst);
                    return;
                }
                thread::yield_now();
            }
        });
        let retried = self.tried.swap(generation, SeqCst) == generation;
        if done.load(SeqCst) || retried {
            self.broadcast.store(generation, SeqCst);
        }
    }

    /// `work(i, chunk)` for each `chunk`-long piece of `out` (the last may be shorter),
    /// split into about `split` parts of consecutive pieces, shared among the team.
    pub(super) fn chunks_mut(
        &self,
        out: &mut [f32],
        chunk: usize,
        split: usize,
        work: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let pieces = out.len().div_ceil(chunk);
        let per_part = pieces.div_ceil(split.clamp(1, MAX_PARTS)).max(1);
        let parts = pieces.div_ceil(per_part);
        let len = out.len();
        let base = SharedSlice(out.as_mut_ptr());
        self.run(parts, &|part| {
            let first = part * per_part;
            let start = (first * chunk).min(len);
            let end = ((first + per_part) * chunk).min(len);
            // SAFETY: each part is claimed once, and parts cover disjoint ranges of `out`
            // (pieces first..first + per_part), all inside its `len` values; `out` stays
            // mutably borrowed by this call until every part has finished.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
            for (i, c) in piece.chunks_mut(chunk).enumerate() {
                work(first + i, c);
            }
        });
    }
}

/// A slice's base pointer handed to the parts that write disjoint ranges of it.
#[derive(Clone, Copy)]
struct SharedSlice(*mut f32);

// SAFETY: the parts write disjoint ranges (see `Team::chunks_mut`).
unsafe impl Sync for SharedSlice {}
unsafe impl Send for SharedSlice {}

impl SharedSlice {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            // A helper only returns; a join error would mean it panicked outside a part,
            // and there is nothing left to clean up.
            let _ = helper.join();
        }
    }
}

/// A helper's life: wait for a new epoch (spinning, then parked), run parts of its job.
fn help(shared: &Shared, index: usize) {
    // The epoch the team was made with, not the one this thread finds when it starts: a
    // leader may have published the first job before then.
    let mut seen = 0;
    let Some(asleep) = shared.asleep.get(index) else {
        return;
    };
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let epoch = loop {
            if shared.stop.load(SeqCst) {
                return;
            }
            let epoch = fields(shared.claim.load(SeqCst)).0;
            if epoch != seen {
                break epoch;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                let now = Instant::now();
                if now.duration_since(*idle_since.get_or_insert(now)) > SPIN {
                    // Announce the nap, then look once more: a leader that published after
                    // this store sees it and unparks (a token that outlives a late park).
                    asleep.store(true, SeqCst);
                    if fields(shared.claim.load(SeqCst)).0 == seen && !shared.stop.load(SeqCst) {
                        thread::park();
                    }
                    asleep.store(false, SeqCst);
                    idle_since = None;
                }
            }
            std::hint::spin_loop();
        };
        seen = epoch;
        shared.work(epoch);
    }
}

/// The process's team, shared by every network: one image at a time leads it. `None` until
/// first asked for, and `Some(None)` when its threads could not be started for that size
/// (not tried again for it).
static TEAM: Mutex<Option<(usize, Option<Team>)>> = Mutex::new(None);

/// Runs `work` with the team of `size` threads, or with `None` when its threads cannot be
/// started, or when another image holds it and `wait` is false (that caller then splits its
/// layers on rayon). A team of another size is stopped and replaced.
pub(super) fn with_team<R>(size: usize, wait: bool, work: impl FnOnce(Option<&Team>) -> R) -> R {
    let locked = if wait {
        TEAM.lock().unwrap_or_else(PoisonError::into_inner)
    } else {
        match TEAM.try_lock() {
            Ok(guard) => guard,
            // A part that panicked leaves the team consistent (see Team::run): keep it.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return work(None),
        }
    };
    let mut guard = locked;
    if guard.as_ref().map(|(s, _)| *s) != Some(size) {
        // The old team (another thread count) is stopped and joined first.
        *guard = None;
        *guard = Some((size, Team::new(size)));
    }
    work(guard.as_ref().and_then(|(_, team)| team.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_whatever_the_split() {
        let team = Team::new(3).expect("threads start");
        for len in [0, 1, 5, 64, 1000, 4099] {
            for chunk in [1, 3, 16, 5000] {
                for split in [1, 2, 3, 8, 70_000] {
                    let mut out = vec![0f32; len];
                    team.chunks_mut(&mut out, chunk, split, &|i, c| {
                        for (j, v) in c.iter_mut().enumerate() {
                            *v += (i * chunk + j) as f32 + 1.0;
                        }
                    });
                    let expected: Vec<f32> = (0..len).map(|j| j as f32 + 1.0).collect();
                    assert_eq!(out, expected, "len {len}, chunk {chunk}, split {split}");
                }
            }
        }
    }

    #[test]
    fn many_jobs_in_a_row_and_after_a_nap() {
        let team = Team::new(2).expect("threads start");
        let total = AtomicUsize::new(0);
        for round in 0..20_000 {
            team.run(2 + round % 3, &|i| {
                total.fetch_add(i + 1, SeqCst);
            });
        }
        // Parts 0..p sum to p(p+1)/2 for p = 2, 3, 4 in turn.
        let expected: usize = (0..20_000).map(|r| [3, 6, 10][r % 3]).sum();
        assert_eq!(total.load(SeqCst), expected);
        // The helper has parked: the next job wakes it (or the leader does all of it).
        thread::sleep(SPIN * 20);
        team.run(4, &|i| {
            total.fetch_add(i, SeqCst);
        });
        assert_eq!(total.load(SeqCst), expected + 6);
    }

    #[test]
    fn a_broadcast_runs_on_every_thread_once_per_generation() {
        let team = Team::new(3).expect("threads start");
        let threads = Mutex::new(Vec::new());
        let record = || {
            threads.lock().unwrap().push(thread::current().id());
            true
        };
        let distinct = || {
            let mut seen = threads.lock().unwrap().clone();
            seen.sort_by_key(|id| format!("{id:?}"));
            seen.dedup();
            seen
        };
        // A helper the system starves past BROADCAST_WAIT is left out (the caller takes its
        // part): try new generations until one went round.
        let mut generation = 0;
        loop {
            generation += 1;
            assert!(generation < 20, "no broadcast reached every thread");
            threads.lock().unwrap().clear();
            team.broadcast_once(generation, &record);
            if distinct().len() == 3 {
                break;
            }
        }
        assert_eq!(
            threads.lock().unwrap().len(),
            3,
            "each of the three threads ran it once"
        );
        assert!(distinct().contains(&thread::current().id()));
        assert_eq!(team.broadcast.load(SeqCst), generation);
        team.broadcast_once(generation, &record);
        assert_eq!(
            threads.lock().unwrap().len(),
            3,
            "not again for the same generation"
        );
        // A thread that could not do its work leaves the generation unrecorded, once.
        team.broadcast_once(generation + 1, &|| false);
        assert_eq!(team.broadcast.load(SeqCst), generation);
        team.broadcast_once(generation + 1, &|| false);
        assert_eq!(
            team.broadcast.load(SeqCst),
            generation + 1,
            "recorded at the second try"
        );
    }

    #[test]
    fn a_nested_job_runs_on_the_thread_that_asked() {
        let team = Team::new(2).expect("threads start");
        let total = AtomicUsize::new(0);
        team.run(2, &|_| {
            team.run(3, &|i| {
                total.fetch_add(i, SeqCst);
            });
        });
        assert_eq!(total.load(SeqCst), 6);
    }

    #[test]
    fn a_panicking_part_reaches_the_leader_and_the_team_goes_on() {
        let team = Team::new(2).expect("threads start");
        let finished = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            team.run(8, &|i| {
                assert!(i != 5, "part 5 fails");
                finished.fetch_add(1, SeqCst);
            });
        }));
        let payload = caught.expect_err("the part's panic");
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        assert_eq!(message, Some("part 5 fails"));
        // Every other part ran before the leader raised it.
        assert_eq!(finished.load(SeqCst), 7);
        let total = AtomicUsize::new(0);
        team.run(8, &|i| {
            total.fetch_add(i, SeqCst);
        });
        assert_eq!(total.load(SeqCst), 28);
    }
}
