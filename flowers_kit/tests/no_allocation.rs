//! A warm forward pass allocates nothing: every buffer comes from pools kept between calls.
//! One test in its own binary, so that the counting allocator sees only this test's threads
//! (the team's helpers and rayon's workers included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use flowers_kit::backend::native::{Kernels, LayerSplit, NativeNetwork};
use flowers_kit::backend::Network;
use flowers_kit::models::Model;

/// The system allocator, counting every allocation and reallocation.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `work` makes (on any thread).
fn allocations_of(work: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(SeqCst);
    work();
    ALLOCATIONS.load(SeqCst) - before
}

#[test]
fn a_warm_forward_pass_allocates_nothing() {
    // Two threads at least, so that batch 1 runs on the team and batch 4 in parallel (on the
    // team too).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    // Fused blocks; squeeze-and-excitation and hard swish; separable convolutions, pooling,
    // cropping and concatenation; a 7×7 stem after zero padding.
    // Every packed kernel set this CPU runs (each has its own buffers and paths). Not
    // `Portable`: it multiplies through the gemm crate, which allocates per product.
    let packed_sets = || {
        Kernels::available()
            .into_iter()
            .filter(|k| *k != Kernels::Portable)
    };
    let cases = [
        "mobilenet_v2_0.35_96",
        "mobilenet_v3_large",
        "nasnet_mobile",
        "resnet50_v2",
    ]
    .into_iter()
    .flat_map(|name| packed_sets().map(move |k| (name, k)));
    for (name, kernels) in cases {
        let model = Model::parse(name).unwrap();
        let network = Network::random(model, 1).unwrap();
        let native = NativeNetwork::with_kernels(&network, kernels).unwrap();
        let per_image = model.resolution() * model.resolution() * 3;
        let pixels: Vec<f32> = (0..4 * per_image)
            .map(|i| (i % 255) as f32 / 255.0)
            .collect();
        let mut out = vec![0f32; 4 * native.output_len()];
        // forward_split waits for the team, so the team's own path is counted.
        let runs: [(usize, Option<LayerSplit>); 5] = [
            (1, None),
            (4, None),
            (1, Some(LayerSplit::Team)),
            (1, Some(LayerSplit::Rayon)),
            (1, Some(LayerSplit::Single)),
        ];
        let mut run = |(n, split): (usize, Option<LayerSplit>)| {
            let pixels = &pixels[..n * per_image];
            let out = &mut out[..n * native.output_len()];
            match split {
                None => native.forward_into(pixels, n, out).unwrap(),
                // forward_split returns a fresh Vec: only the pass inside it is counted.
                Some(split) => drop(native.forward_split(pixels, n, split).unwrap()),
            }
        };
        // Warm: every pool, band buffer and thread. Which thread runs which part of a split
        // layer changes from call to call, so the measured calls are several rounds of all.
        for _ in 0..3 {
            runs.into_iter().for_each(&mut run);
        }
        // Each rayon worker runs the network once: a worker that took no part of the calls
        // above has not yet grown its band buffers to this network's largest bands (the team's
        // threads have: a team call that raised them ends with every team thread growing).
        rayon::broadcast(|_| {
            drop(native.forward_split(&pixels[..per_image], 1, LayerSplit::Single));
        });
        for config in (0..5).flat_map(|_| runs) {
            let allocated = if config.1 == Some(LayerSplit::Rayon) {
                // Measured on one of rayon's workers: a call from outside the pool hands
                // rayon a job through its injection queue, which allocates a block every 64
                // or so jobs (rayon's own, not the network's). The default paths above run
                // from this thread on the kit's team, which has no such queue.
                rayon::scope(|_| allocations_of(|| run(config)))
            } else {
                allocations_of(|| run(config))
            };
            let expected = usize::from(config.1.is_some());
            assert_eq!(
                allocated, expected,
                "{name}, {kernels:?}, batch {}, {:?}: {allocated} allocations",
                config.0, config.1
            );
        }
    }
}
