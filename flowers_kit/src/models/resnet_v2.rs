//! ResNet-50 V2 (He et al., 2016: identity mappings, pre-activation) as Keras Applications
//! builds it (`resnet_v2.py`), after the kit's input scaling to [-1, 1].

use super::graph::{Activation, Graph, GraphBuilder, NodeId, Op, Padding};

/// Keras' epsilon for every ResNet batch norm.
const EPSILON: f32 = 1.001e-5;

/// The network, layer by layer with Keras' names.
pub fn graph() -> Graph {
    let (mut g, input) = GraphBuilder::new(224);
    let x = g.from_unit_to_symmetric(input);
    let x = g.layer("conv1_pad", Op::ZeroPad([3, 3, 3, 3]), &[x]);
    let x = g.conv_with(
        x,
        "conv1_conv",
        64,
        (7, 7),
        2,
        Padding::Valid,
        true,
        Activation::Linear,
    );
    let x = g.layer("pool1_pad", Op::ZeroPad([1, 1, 1, 1]), &[x]);
    let mut x = g.layer(
        "pool1_pool",
        Op::MaxPool {
            size: (3, 3),
            stride: 2,
            padding: Padding::Valid,
        },
        &[x],
    );
    let mut pools = 0;
    for (name, filters, blocks, stride) in [
        ("conv2", 64, 3, 2),
        ("conv3", 128, 4, 2),
        ("conv4", 256, 6, 2),
        ("conv5", 512, 3, 1),
    ] {
        g.begin_block(format!("{name}_block1"));
        x = block(
            &mut g,
            x,
            filters,
            1,
            true,
            &format!("{name}_block1"),
            &mut pools,
        );
        for i in 2..blocks {
            g.begin_block(format!("{name}_block{i}"));
            x = block(
                &mut g,
                x,
                filters,
                1,
                false,
                &format!("{name}_block{i}"),
                &mut pools,
            );
        }
        g.begin_block(format!("{name}_block{blocks}"));
        x = block(
            &mut g,
            x,
            filters,
            stride,
            false,
            &format!("{name}_block{blocks}"),
            &mut pools,
        );
    }
    let x = g.bn(x, "post_bn", EPSILON);
    g.act(x, "post_relu", Activation::Relu);
    g.finish()
}

/// `residual_block_v2`: pre-activation, 1×1 → 3×3 (strided) → 1×1, plus the shortcut.
fn block(
    g: &mut GraphBuilder,
    x: NodeId,
    filters: usize,
    stride: usize,
    conv_shortcut: bool,
    name: &str,
    pools: &mut usize,
) -> NodeId {
    let preact = g.bn(x, &format!("{name}_preact_bn"), EPSILON);
    let preact = g.act(preact, &format!("{name}_preact_relu"), Activation::Relu);
    let shortcut = if conv_shortcut {
        let conv = format!("{name}_0_conv");
        g.conv_with(
            preact,
            &conv,
            4 * filters,
            (1, 1),
            stride,
            Padding::Valid,
            true,
            Activation::Linear,
        )
    } else if stride > 1 {
        // Keras leaves this pooling unnamed.
        let pool = match *pools {
            0 => "max_pooling2d".to_string(),
            n => format!("max_pooling2d_{n}"),
        };
        *pools += 1;
        let op = Op::MaxPool {
            size: (1, 1),
            stride,
            padding: Padding::Valid,
        };
        g.layer(pool, op, &[x])
    } else {
        x
    };
    let y = g.conv(
        preact,
        &format!("{name}_1_conv"),
        filters,
        (1, 1),
        1,
        Padding::Valid,
    );
    let y = g.bn(y, &format!("{name}_1_bn"), EPSILON);
    let y = g.act(y, &format!("{name}_1_relu"), Activation::Relu);
    let y = g.layer(format!("{name}_2_pad"), Op::ZeroPad([1, 1, 1, 1]), &[y]);
    let y = g.conv(
        y,
        &format!("{name}_2_conv"),
        filters,
        (3, 3),
        stride,
        Padding::Valid,
    );
    let y = g.bn(y, &format!("{name}_2_bn"), EPSILON);
    let y = g.act(y, &format!("{name}_2_relu"), Activation::Relu);
    let conv = format!("{name}_3_conv");
    let y = g.conv_with(
        y,
        &conv,
        4 * filters,
        (1, 1),
        1,
        Padding::Valid,
        true,
        Activation::Linear,
    );
    g.layer(format!("{name}_out"), Op::Add, &[shortcut, y])
}
