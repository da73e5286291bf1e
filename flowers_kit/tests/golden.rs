//! MobileNet V2 features against TensorFlow's, for every variant in ../shared/golden.

mod support;

use dfdx::tensor::Cpu;
use flowers_kit::backend::dfdx::DfdxNetwork;
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

#[test]
fn dfdx_cpu_matches_tensorflow_for_every_variant() {
    for name in GOLDEN_VARIANTS {
        let model = MobileNetV2::parse(name).unwrap();
        let stem = name.trim_start_matches("mobilenet_v2_");
        let weights =
            KerasWeights::open(support::golden().join(format!("mobilenet_v2_{stem}_no_top.h5")))
                .unwrap();
        let network = Network::from_keras(model, &weights).unwrap();
        let dfdx = DfdxNetwork::new(&network, Cpu::default()).unwrap();
        let features = dfdx.forward(&golden_pixels(model.resolution), 8).unwrap();
        let ours: Vec<f32> = features.as_vec();
        let (shape, expected) = support::tensor_f32(
            &support::golden().join(format!("{name}.safetensors")),
            "features",
        );
        assert_eq!(shape, [8, model.feature_dim()]);
        let (max, mean) = support::max_mean_abs_diff(&ours, &expected);
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{name}: max |Δ| {max:.2e}, mean {mean:.2e}, max |feature| {scale:.2}");
        assert!(max <= 1e-4, "{name}: max |Δ| = {max}");
    }
}
