//! Inception V3 (Szegedy et al., 2016) as Keras Applications builds it (`inception_v3.py`),
//! after the kit's input scaling to [-1, 1].
//!
//! Keras generates this model's layer names (`conv2d`, `conv2d_1`, `batch_normalization`,
//! …), and a weight file written in another session numbers them differently (the published
//! file starts at `conv2d_1`). Layers are created here in Keras' order, with the names a
//! fresh session gives them; weights are matched by creation order (see
//! [`crate::backend::Network::from_keras`]).

use super::graph::{Activation, Graph, GraphBuilder, NodeId, Op, Padding};

/// Keras' BatchNormalization default.
const EPSILON: f32 = 1e-3;

/// A builder that names layers the way a fresh Keras session does.
struct Names {
    g: GraphBuilder,
    convs: usize,
    pools: usize,
}

impl Names {
    fn numbered(base: &str, n: usize) -> String {
        match n {
            0 => base.to_string(),
            n => format!("{base}_{n}"),
        }
    }

    /// `conv2d_bn`: a bias-free convolution, a batch norm without γ, ReLU.
    fn conv_bn(
        &mut self,
        x: NodeId,
        filters: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: Padding,
    ) -> NodeId {
        let n = self.convs;
        self.convs += 1;
        let x = self.g.conv(
            x,
            &Names::numbered("conv2d", n),
            filters,
            kernel,
            stride,
            padding,
        );
        let bn = Op::BatchNorm {
            epsilon: EPSILON,
            scale: false,
        };
        let x = self
            .g
            .layer(Names::numbered("batch_normalization", n), bn, &[x]);
        self.g
            .act(x, &Names::numbered("activation", n), Activation::Relu)
    }

    fn same(&mut self, x: NodeId, filters: usize, kh: usize, kw: usize) -> NodeId {
        self.conv_bn(x, filters, (kh, kw), 1, Padding::Same)
    }

    fn pool(&mut self, x: NodeId, max: bool, stride: usize, padding: Padding) -> NodeId {
        self.pools += 1;
        let (size, name) = ((3, 3), format!("pool_{}", self.pools));
        let op = if max {
            Op::MaxPool {
                size,
                stride,
                padding,
            }
        } else {
            Op::AvgPool {
                size,
                stride,
                padding,
            }
        };
        self.g.layer(name, op, &[x])
    }

    fn concat(&mut self, name: &str, inputs: &[NodeId]) -> NodeId {
        self.g.layer(name, Op::Concat, inputs)
    }
}

/// The network, layer by layer.
pub fn graph() -> Graph {
    let (g, input) = GraphBuilder::new(299);
    let mut n = Names {
        g,
        convs: 0,
        pools: 0,
    };
    let x = n.g.from_unit_to_symmetric(input);
    let x = n.conv_bn(x, 32, (3, 3), 2, Padding::Valid);
    let x = n.conv_bn(x, 32, (3, 3), 1, Padding::Valid);
    let x = n.same(x, 64, 3, 3);
    let x = n.pool(x, true, 2, Padding::Valid);
    let x = n.conv_bn(x, 80, (1, 1), 1, Padding::Valid);
    let x = n.conv_bn(x, 192, (3, 3), 1, Padding::Valid);
    let mut x = n.pool(x, true, 2, Padding::Valid);

    // mixed 0, 1, 2: 35 × 35.
    for (i, pool_filters) in [32, 64, 64].into_iter().enumerate() {
        n.g.begin_block(format!("mixed{i}"));
        let b1 = n.same(x, 64, 1, 1);
        let b5 = n.same(x, 48, 1, 1);
        let b5 = n.same(b5, 64, 5, 5);
        let b3 = n.same(x, 64, 1, 1);
        let b3 = n.same(b3, 96, 3, 3);
        let b3 = n.same(b3, 96, 3, 3);
        let bp = n.pool(x, false, 1, Padding::Same);
        let bp = n.same(bp, pool_filters, 1, 1);
        x = n.concat(&format!("mixed{i}"), &[b1, b5, b3, bp]);
    }

    // mixed 3: 17 × 17.
    n.g.begin_block("mixed3");
    let b3 = n.conv_bn(x, 384, (3, 3), 2, Padding::Valid);
    let bd = n.same(x, 64, 1, 1);
    let bd = n.same(bd, 96, 3, 3);
    let bd = n.conv_bn(bd, 96, (3, 3), 2, Padding::Valid);
    let bp = n.pool(x, true, 2, Padding::Valid);
    x = n.concat("mixed3", &[b3, bd, bp]);

    // mixed 4–7: 17 × 17, factorised 7×7.
    for (i, f) in [128, 160, 160, 192].into_iter().enumerate() {
        n.g.begin_block(format!("mixed{}", 4 + i));
        let b1 = n.same(x, 192, 1, 1);
        let b7 = n.same(x, f, 1, 1);
        let b7 = n.same(b7, f, 1, 7);
        let b7 = n.same(b7, 192, 7, 1);
        let bd = n.same(x, f, 1, 1);
        let bd = n.same(bd, f, 7, 1);
        let bd = n.same(bd, f, 1, 7);
        let bd = n.same(bd, f, 7, 1);
        let bd = n.same(bd, 192, 1, 7);
        let bp = n.pool(x, false, 1, Padding::Same);
        let bp = n.same(bp, 192, 1, 1);
        x = n.concat(&format!("mixed{}", 4 + i), &[b1, b7, bd, bp]);
    }

    // mixed 8: 8 × 8.
    n.g.begin_block("mixed8");
    let b3 = n.same(x, 192, 1, 1);
    let b3 = n.conv_bn(b3, 320, (3, 3), 2, Padding::Valid);
    let b7 = n.same(x, 192, 1, 1);
    let b7 = n.same(b7, 192, 1, 7);
    let b7 = n.same(b7, 192, 7, 1);
    let b7 = n.conv_bn(b7, 192, (3, 3), 2, Padding::Valid);
    let bp = n.pool(x, true, 2, Padding::Valid);
    x = n.concat("mixed8", &[b3, b7, bp]);

    // mixed 9, 10: 8 × 8.
    for i in 0..2 {
        n.g.begin_block(format!("mixed{}", 9 + i));
        let b1 = n.same(x, 320, 1, 1);
        let b3 = n.same(x, 384, 1, 1);
        let b3a = n.same(b3, 384, 1, 3);
        let b3b = n.same(b3, 384, 3, 1);
        let b3 = n.concat(&format!("mixed9_{i}"), &[b3a, b3b]);
        let bd = n.same(x, 448, 1, 1);
        let bd = n.same(bd, 384, 3, 3);
        let bda = n.same(bd, 384, 1, 3);
        let bdb = n.same(bd, 384, 3, 1);
        let bd = n.concat(&format!("concatenate_{i}"), &[bda, bdb]);
        let bp = n.pool(x, false, 1, Padding::Same);
        let bp = n.same(bp, 192, 1, 1);
        x = n.concat(&format!("mixed{}", 9 + i), &[b1, b3, bd, bp]);
    }
    n.g.finish()
}
