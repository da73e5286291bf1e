//! The CUDA path on a real GPU (issue 27): features against TensorFlow's within the CPU's
//! bounds, for MobileNet V2 and every other family, and training and fine-tuning on the GPU
//! taking the CPU's steps. Built with `--features cuda` and run by `scripts/gpu-check.sh run`
//! on a machine with an NVIDIA GPU, which refuses, in one line, to start without one; `cargo
//! check --features cuda,ci-check` type-checks it in every test run. A build without `cuda`
//! has none of these tests.
#![cfg(feature = "cuda")]

mod support;

use flowers_kit::backend::Network;
use flowers_kit::device::DeviceKind;
use flowers_kit::features::{BackendKind, Compute, FeatureExtractor, Gpu};
use flowers_kit::models::Model;
use flowers_kit::train::{train, FineTune, Optimizer, TrainConfig};
use support::keras::FamilyCase;

/// The MobileNet V2 variants checked on the GPU (scripts/gpu-check.sh carries their files):
/// the notebooks' default, the one fine-tuned below, the smallest maps (3×3 at the top) and
/// the full width. The other two golden files would take 21 MB more of the 64 MiB a GPU check
/// may carry, for the same kernels at other sizes.
pub const CUDA_VARIANTS: [&str; 4] = ["0.35_128", "0.35_224", "0.75_96", "1.0_224"];

/// An extractor on the GPU.
fn on_cuda(model: Model, weights: Option<&str>) -> FeatureExtractor {
    let extractor = FeatureExtractor::with_weights_on(model, weights, DeviceKind::Cuda)
        .unwrap()
        .without_cache()
        .quiet();
    assert_eq!(extractor.device(), DeviceKind::Cuda);
    extractor
}

/// Features of `photos` by `extractor`, none skipped.
fn features(extractor: &FeatureExtractor, photos: &[std::path::PathBuf]) -> Vec<f32> {
    let out = extractor.extract_paths(photos).unwrap();
    assert!(out.skipped.is_empty(), "skipped: {:?}", out.skipped);
    out.values
}

#[test]
fn a_build_with_cuda_prefers_the_gpu_it_finds() {
    let here = Compute::detect();
    println!("{here}");
    let Gpu::Cuda { capability, .. } = here.gpu else {
        panic!("no usable GPU: {here}");
    };
    assert!(capability >= (7, 5), "compute capability {capability:?}");
    assert_eq!(DeviceKind::preferred(), DeviceKind::Cuda);
    assert_eq!(TrainConfig::default().device, DeviceKind::Cuda);
    let network = Network::random(Model::parse("mobilenet_v2_0.35_128").unwrap(), 0).unwrap();
    let extractor = FeatureExtractor::from_network(network).unwrap();
    assert_eq!(extractor.device(), DeviceKind::Cuda);
}

#[test]
fn mobilenet_v2_on_cuda_matches_tensorflow() {
    for variant in CUDA_VARIANTS {
        let name = format!("mobilenet_v2_{variant}");
        let h5 = support::golden_h5(variant);
        let (_, golden) = support::tensor_f32(
            &support::golden().join(format!("{name}.safetensors")),
            "features",
        );
        // The default batch, one photo at a time, and 64 at once (the benchmark's batch:
        // the golden photos eight times over).
        for batch in [None, Some(1), Some(64)] {
            let extractor = on_cuda(Model::parse(&name).unwrap(), h5.to_str());
            let extractor = match batch {
                Some(batch) => extractor.batch_size(batch).unwrap(),
                None => extractor,
            };
            let copies = if batch == Some(64) { 8 } else { 1 };
            let photos: Vec<_> = (0..copies).flat_map(|_| support::golden_pngs()).collect();
            let ours = features(&extractor, &photos);
            let (max, mean) = support::max_mean_abs_diff(&ours, &golden.repeat(copies));
            println!("{name} on CUDA, batch {batch:?}: max |Δ| {max:.2e}, mean {mean:.2e}");
            assert!(
                max <= 1e-4,
                "{name} on CUDA, batch {batch:?}: max |Δ| = {max}"
            );
        }
    }
}

#[test]
fn every_family_on_cuda_matches_tensorflow() {
    for family in [
        "mobilenet_v3_large",
        "efficientnet_b0",
        "resnet50_v2",
        "inception_v3",
        "nasnet_mobile",
    ] {
        let case = FamilyCase::new(family);
        let extractor = on_cuda(case.model, case.weights());
        let ours = features(&extractor, &support::golden_pngs());
        let (max, mean) = support::max_mean_abs_diff(&ours, &case.golden);
        let bound = case.bound;
        println!("{family} on CUDA: max |Δ| {max:.3e}, mean {mean:.3e} (bound {bound:.1e})");
        assert!(max <= bound, "{family} on CUDA: max |Δ| {max} > {bound}");
        // Grad-CAM from an extractor on the GPU (its maps come from the CPU's kernels).
        support::check_class_maps(
            &extractor,
            &support::golden_pngs()[..2],
            &case.golden,
            bound,
        );
    }
}

/// The settings both runs below share; `fine_tune` trains the top block too.
fn config(fine_tune: bool) -> TrainConfig {
    TrainConfig {
        steps: if fine_tune { 4 } else { 20 },
        batch_size: Some(4),
        optimizer: Optimizer::adam(),
        learning_rate: 0.01,
        weight_decay: 0.01,
        eval_every: 1,
        verbose: false,
        fine_tune: fine_tune.then_some(FineTune {
            blocks: 1,
            learning_rate: 0.001,
            head_steps: 2,
        }),
        ..Default::default()
    }
}

/// A head alone, then the top block with it, trained on the GPU and on the CPU (dfdx, which
/// the GPU runs too) from the same start on the same photos: the same losses step by step and
/// the same trained weights.
#[test]
fn training_and_fine_tuning_on_cuda_take_the_cpus_steps() {
    let dir = tempfile::tempdir().unwrap();
    let split = support::golden_photos(&dir.path().join("photos"));
    let h5 = support::golden_h5("0.35_224");
    let extractor = on_cuda(Model::parse("mobilenet_v2_0.35_224").unwrap(), h5.to_str())
        .cache_dir(dir.path().join("cache"));
    for fine_tune in [false, true] {
        let on_gpu = TrainConfig {
            device: DeviceKind::Cuda,
            ..config(fine_tune)
        };
        let rows = extractor.extract_for(&split, &on_gpu).unwrap();
        let (gpu, gpu_history) = train(&rows, &on_gpu).unwrap();
        let on_cpu = TrainConfig {
            device: DeviceKind::Cpu,
            backend: BackendKind::Dfdx,
            ..on_gpu.clone()
        };
        let (cpu, cpu_history) = train(&rows, &on_cpu).unwrap();
        let name = if fine_tune { "fine-tuning" } else { "the head" };
        println!(
            "{name}: training losses on CUDA {:?}, on the CPU {:?}",
            gpu_history.train_loss, cpu_history.train_loss
        );
        support::assert_same_training(name, (&gpu, &gpu_history), (&cpu, &cpu_history), &rows);
    }
}
