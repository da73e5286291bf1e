//! EfficientNet-B0 (Tan & Le, 2019) as Keras Applications builds it (`efficientnet.py`):
//! MBConv blocks with squeeze-and-excitation and swish, and the model's own input
//! normalisation. The kit's [0, 1] pixels are first scaled to 0–255, Keras' input range.

use super::graph::{Activation, Graph, GraphBuilder, NodeId, Op, Padding};

/// Keras' BatchNormalization default.
const EPSILON: f32 = 1e-3;

/// ImageNet's per-channel standard deviation, as Keras' EfficientNet writes it.
const IMAGENET_STDDEV_RGB: [f32; 3] = [0.229, 0.224, 0.225];

/// B0's blocks: (kernel, repeats, filters in, filters out, expansion, stride).
const BLOCKS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
];

/// The network. `published_weights`: Keras' `weights="imagenet"`, which adds a rescaling
/// by 1/√stddev after the normalisation (tensorflow/tensorflow#49930); a weight file given
/// by path does not get it.
pub fn graph(published_weights: bool) -> Graph {
    let (mut g, input) = GraphBuilder::new(224);
    let x = g.from_unit_to_bytes(input);
    let x = g.rescale(x, "rescaling", 1.0 / 255.0, 0.0);
    let mut x = g.layer("normalization", Op::Normalize, &[x]);
    if published_weights {
        let scale = IMAGENET_STDDEV_RGB.iter().map(|s| 1.0 / s.sqrt()).collect();
        x = g.layer("rescaling_1", Op::Rescale { scale, offset: 0.0 }, &[x]);
    }
    let (x, padding) = g.pad_for_stride(x, "stem_conv_pad", 3, 2);
    let x = g.conv(x, "stem_conv", 32, (3, 3), 2, padding);
    let x = g.bn(x, "stem_bn", EPSILON);
    let mut x = g.act(x, "stem_activation", Activation::Swish);
    for (i, &(kernel, repeats, filters_in, filters_out, expand, stride)) in
        BLOCKS.iter().enumerate()
    {
        for j in 0..repeats {
            let (input_filters, stride) = if j == 0 {
                (filters_in, stride)
            } else {
                (filters_out, 1)
            };
            let name = format!("block{}{}_", i + 1, char::from(b'a' + j as u8));
            g.begin_block(name.trim_end_matches('_'));
            x = block(
                &mut g,
                x,
                &name,
                input_filters,
                filters_out,
                kernel,
                stride,
                expand,
            );
        }
    }
    let x = g.conv(x, "top_conv", 1280, (1, 1), 1, Padding::Same);
    let x = g.bn(x, "top_bn", EPSILON);
    g.act(x, "top_activation", Activation::Swish);
    g.finish()
}

/// One MBConv block (`block` in Keras).
#[allow(clippy::too_many_arguments)]
fn block(
    g: &mut GraphBuilder,
    inputs: NodeId,
    name: &str,
    filters_in: usize,
    filters_out: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
) -> NodeId {
    let filters = filters_in * expand;
    let mut x = inputs;
    if expand != 1 {
        let (conv, bn) = (format!("{name}expand_conv"), format!("{name}expand_bn"));
        x = g.pointwise_bn(x, &conv, &bn, filters, EPSILON);
        x = g.act(x, &format!("{name}expand_activation"), Activation::Swish);
    }
    let (padded, padding) = g.pad_for_stride(x, &format!("{name}dwconv_pad"), kernel, stride);
    x = padded;
    x = g.depthwise(x, &format!("{name}dwconv"), kernel, stride, padding);
    x = g.bn(x, &format!("{name}bn"), EPSILON);
    x = g.act(x, &format!("{name}activation"), Activation::Swish);
    // Squeeze and excitation, ratio 0.25 of the block's input filters.
    let names = ["se_squeeze", "se_reduce", "se_expand", "se_excite"].map(|n| format!("{name}{n}"));
    let names = [&names[0], &names[1], &names[2], &names[3]].map(String::as_str);
    let squeeze = (filters_in / 4).max(1);
    x = g.squeeze_excite(x, names, squeeze, Activation::Swish, Activation::Sigmoid);
    let (conv, bn) = (format!("{name}project_conv"), format!("{name}project_bn"));
    x = g.pointwise_bn(x, &conv, &bn, filters_out, EPSILON);
    if stride == 1 && filters_in == filters_out {
        x = g.layer(format!("{name}add"), Op::Add, &[x, inputs]);
    }
    x
}
