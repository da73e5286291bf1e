//! MobileNet V2 features against TensorFlow's, for every variant in ../shared/golden.

mod support;

use dfdx::tensor::Cpu;
use flowers_kit::backend::dfdx::DfdxNetwork;
use flowers_kit::backend::native::{Kernels, LayerSplit, NativeNetwork};
use flowers_kit::backend::Network;
use flowers_kit::data::image::{self, Resize};
use flowers_kit::models::MobileNetV2;
use flowers_kit::weights::KerasWeights;

pub const GOLDEN_VARIANTS: [&str; 6] = [
    "mobilenet_v2_0.35_224",
    "mobilenet_v2_0.35_128",
    "mobilenet_v2_0.5_160",
    "mobilenet_v2_0.75_96",
    "mobilenet_v2_1.0_224",
    "mobilenet_v2_1.4_224",
];

fn golden_pixels(size: usize) -> Vec<f32> {
    support::GOLDEN_IMAGES
        .iter()
        .flat_map(|stem| {
            let path = support::golden().join("images").join(format!("{stem}.png"));
            image::load_resized(&path, size, Resize::TfV1Bilinear)
                .unwrap()
                .data
        })
        .collect()
}

fn network(name: &str) -> Network {
    let model = MobileNetV2::parse(name).unwrap();
    let stem = name.trim_start_matches("mobilenet_v2_");
    let weights =
        KerasWeights::open(support::golden().join(format!("mobilenet_v2_{stem}_no_top.h5")))
            .unwrap();
    Network::from_keras(model, &weights).unwrap()
}

#[test]
fn dfdx_cpu_matches_tensorflow_for_every_variant() {
    for name in GOLDEN_VARIANTS {
        let network = network(name);
        let dfdx = DfdxNetwork::new(&network, Cpu::default()).unwrap();
        let features = dfdx
            .forward(&golden_pixels(network.model().resolution()), 8)
            .unwrap();
        compare(name, &features.as_vec(), network.model().feature_dim());
    }
}

/// Batch 8 runs images in parallel; batch 1 runs each image with its layers split among a
/// team of spinning threads (no other test here holds it), or as rayon tasks: every path,
/// with every instruction set this CPU has (AVX-512, AVX2 with fused blocks, portable).
#[test]
fn native_matches_tensorflow_for_every_variant_kernel_set_and_threading_mode() {
    for (name, kernels) in GOLDEN_VARIANTS
        .iter()
        .flat_map(|n| Kernels::available().into_iter().map(move |k| (n, k)))
    {
        let network = network(name);
        let native = NativeNetwork::with_kernels(&network, kernels).unwrap();
        println!("{kernels:?}:");
        let pixels = golden_pixels(network.model().resolution());
        let batched = native.forward(&pixels, 8).unwrap();
        compare(name, &batched, network.model().feature_dim());
        let per_image = pixels.len() / 8;
        let one_by_one: Vec<f32> = pixels
            .chunks(per_image)
            .flat_map(|image| native.forward(image, 1).unwrap())
            .collect();
        compare(name, &one_by_one, network.model().feature_dim());
        let on_rayon = native.forward_split(&pixels, 8, LayerSplit::Rayon).unwrap();
        compare(name, &on_rayon, network.model().feature_dim());
    }
}

/// Features of the 8 golden images against TensorFlow's, max |Δ| ≤ 1e-4.
fn compare(name: &str, ours: &[f32], dim: usize) {
    let (shape, expected) = support::tensor_f32(
        &support::golden().join(format!("{name}.safetensors")),
        "features",
    );
    assert_eq!(shape, [8, dim]);
    let (max, mean) = support::max_mean_abs_diff(ours, &expected);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("{name}: max |Δ| {max:.2e}, mean {mean:.2e}, max |feature| {scale:.2}");
    assert!(max <= 1e-4, "{name}: max |Δ| = {max}");
}
