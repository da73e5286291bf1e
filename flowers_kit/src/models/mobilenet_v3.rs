//! MobileNet V3 Large (Howard et al., 2019) as Keras Applications builds it
//! (`mobilenet_v3.py`, tf_keras' layer names): inverted residuals with hard-swish and
//! squeeze-and-excitation, and the model's own rescaling to [-1, 1]. The kit's [0, 1] pixels
//! are first scaled to 0–255, Keras' input range.

use super::graph::{Activation, Graph, GraphBuilder, NodeId, Op, Padding};
use super::mobilenet_v2::make_divisible;

/// Keras' epsilon for MobileNet V3's batch norms.
const EPSILON: f32 = 1e-3;

/// The Large stack: (expansion, filters, kernel, stride, squeeze-excite, hard-swish).
const BLOCKS: [(f64, usize, usize, usize, bool, bool); 15] = [
    (1.0, 16, 3, 1, false, false),
    (4.0, 24, 3, 2, false, false),
    (3.0, 24, 3, 1, false, false),
    (3.0, 40, 5, 2, true, false),
    (3.0, 40, 5, 1, true, false),
    (3.0, 40, 5, 1, true, false),
    (6.0, 80, 3, 2, false, true),
    (2.5, 80, 3, 1, false, true),
    (2.3, 80, 3, 1, false, true),
    (2.3, 80, 3, 1, false, true),
    (6.0, 112, 3, 1, true, true),
    (6.0, 112, 3, 1, true, true),
    (6.0, 160, 5, 2, true, true),
    (6.0, 160, 5, 1, true, true),
    (6.0, 160, 5, 1, true, true),
];

/// The network, layer by layer with tf_keras' names.
pub fn graph() -> Graph {
    let (mut g, input) = GraphBuilder::new(224);
    let x = g.from_unit_to_bytes(input);
    let x = g.rescale(x, "rescaling", 1.0 / 127.5, -1.0);
    let x = g.conv(x, "Conv", 16, (3, 3), 2, Padding::Same);
    let x = g.bn(x, "Conv/BatchNorm", EPSILON);
    let mut x = g.act(x, "Conv/hard_swish", Activation::HardSwish);
    let mut channels = 16;
    for (id, &(expansion, filters, kernel, stride, se, hard)) in BLOCKS.iter().enumerate() {
        let activation = if hard {
            Activation::HardSwish
        } else {
            Activation::Relu
        };
        x = block(
            &mut g, x, id, channels, expansion, filters, kernel, stride, se, activation,
        );
        channels = filters;
    }
    let x = g.conv(
        x,
        "Conv_1",
        make_divisible(channels as f64 * 6.0, 8),
        (1, 1),
        1,
        Padding::Same,
    );
    let x = g.bn(x, "Conv_1/BatchNorm", EPSILON);
    g.act(x, "Conv_1/hard_swish", Activation::HardSwish);
    g.finish()
}

/// `_inverted_res_block`.
#[allow(clippy::too_many_arguments)]
fn block(
    g: &mut GraphBuilder,
    inputs: NodeId,
    id: usize,
    infilters: usize,
    expansion: f64,
    filters: usize,
    kernel: usize,
    stride: usize,
    se: bool,
    activation: Activation,
) -> NodeId {
    let prefix = if id == 0 {
        "expanded_conv/".to_string()
    } else {
        format!("expanded_conv_{id}/")
    };
    g.begin_block(prefix.trim_end_matches('/'));
    let mut x = inputs;
    let expanded = make_divisible(infilters as f64 * expansion, 8);
    if id > 0 {
        let (conv, bn) = (
            format!("{prefix}expand"),
            format!("{prefix}expand/BatchNorm"),
        );
        x = g.pointwise_bn(x, &conv, &bn, expanded, EPSILON);
        x = g.act(x, &format!("{prefix}expand/activation"), activation);
    }
    let (padded, padding) = g.pad_for_stride(x, &format!("{prefix}depthwise/pad"), kernel, stride);
    x = padded;
    x = g.depthwise(x, &format!("{prefix}depthwise"), kernel, stride, padding);
    x = g.bn(x, &format!("{prefix}depthwise/BatchNorm"), EPSILON);
    x = g.act(x, &format!("{prefix}depthwise/activation"), activation);
    if se {
        let names =
            ["AvgPool", "Conv", "Conv_1", "Mul"].map(|n| format!("{prefix}squeeze_excite/{n}"));
        let names = [&names[0], &names[1], &names[2], &names[3]].map(String::as_str);
        let squeeze = make_divisible(expanded as f64 * 0.25, 8);
        x = g.squeeze_excite(x, names, squeeze, Activation::Relu, Activation::HardSigmoid);
    }
    let (conv, bn) = (
        format!("{prefix}project"),
        format!("{prefix}project/BatchNorm"),
    );
    x = g.pointwise_bn(x, &conv, &bn, filters, EPSILON);
    if stride == 1 && infilters == filters {
        x = g.layer(format!("{prefix}Add"), Op::Add, &[inputs, x]);
    }
    x
}
