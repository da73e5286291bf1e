//! NASNet-A Mobile (Zoph et al., 2018) as Keras Applications builds it (`nasnet.py`): a
//! searched cell — separable convolutions, poolings and adds — repeated as normal and
//! reduction cells, after the kit's input scaling to [-1, 1].

use super::graph::{Activation, Graph, GraphBuilder, NodeId, Op, Padding, Shape};

/// Keras' epsilon for NASNet's batch norms.
const EPSILON: f32 = 1e-3;

/// The builder and the shape of every node so far (cells adapt to their inputs' shapes).
struct Cells {
    g: GraphBuilder,
    unnamed: usize,
}

impl Cells {
    fn shape(&self, x: NodeId) -> Shape {
        self.g.shape(x)
    }

    /// A name for a layer Keras leaves unnamed (no weights, so only unique matters).
    fn auto(&mut self, base: &str) -> String {
        self.unnamed += 1;
        format!("{base}_auto_{}", self.unnamed)
    }

    fn relu(&mut self, x: NodeId) -> NodeId {
        let name = self.auto("activation");
        self.g.act(x, &name, Activation::Relu)
    }

    fn avg(
        &mut self,
        x: NodeId,
        name: &str,
        size: usize,
        stride: usize,
        padding: Padding,
    ) -> NodeId {
        let size = (size, size);
        self.g.layer(
            name,
            Op::AvgPool {
                size,
                stride,
                padding,
            },
            &[x],
        )
    }

    fn max(&mut self, x: NodeId, name: &str) -> NodeId {
        let op = Op::MaxPool {
            size: (3, 3),
            stride: 2,
            padding: Padding::Valid,
        };
        self.g.layer(name, op, &[x])
    }

    fn add(&mut self, a: NodeId, b: NodeId, name: Option<&str>) -> NodeId {
        let name = name.map_or_else(|| self.auto("add"), str::to_string);
        self.g.layer(name, Op::Add, &[a, b])
    }

    /// `_separable_conv_block`: twice relu → separable conv → batch norm.
    fn separable_block(
        &mut self,
        ip: NodeId,
        filters: usize,
        kernel: usize,
        stride: usize,
        id: &str,
    ) -> NodeId {
        let mut x = self.relu(ip);
        let (padded, padding) =
            self.g
                .pad_for_stride(x, &format!("separable_conv_1_pad_{id}"), kernel, stride);
        x = padded;
        x = self.g.separable(
            x,
            &format!("separable_conv_1_{id}"),
            filters,
            kernel,
            stride,
            padding,
        );
        x = self.g.bn(x, &format!("separable_conv_1_bn_{id}"), EPSILON);
        x = self.relu(x);
        x = self.g.separable(
            x,
            &format!("separable_conv_2_{id}"),
            filters,
            kernel,
            1,
            Padding::Same,
        );
        self.g.bn(x, &format!("separable_conv_2_bn_{id}"), EPSILON)
    }

    /// `_adjust_block`: makes the previous path `p` match `ip` in size and channels.
    fn adjust(&mut self, p: Option<NodeId>, ip: NodeId, filters: usize, id: &str) -> NodeId {
        let Some(p) = p else {
            return ip;
        };
        let (ps, is) = (self.shape(p), self.shape(ip));
        if ps[1] != is[1] {
            let p = self
                .g
                .act(p, &format!("adjust_relu_1_{id}"), Activation::Relu);
            // Each half: a 1×1 average pool with stride 2, then a 1×1 convolution to half
            // the filters; the second half first shifts the map by one pixel.
            let half = |cells: &mut Cells, x: NodeId, n: usize| {
                let pool = format!("adjust_avg_pool_{n}_{id}");
                let x = cells.avg(x, &pool, 1, 2, Padding::Valid);
                let conv = format!("adjust_conv_{n}_{id}");
                cells
                    .g
                    .conv(x, &conv, filters / 2, (1, 1), 1, Padding::Same)
            };
            let p1 = half(self, p, 1);
            let pad = self.auto("zero_padding2d");
            let p2 = self.g.layer(pad, Op::ZeroPad([0, 1, 0, 1]), &[p]);
            let crop = self.auto("cropping2d");
            let p2 = self.g.layer(crop, Op::Crop([1, 0, 1, 0]), &[p2]);
            let p2 = half(self, p2, 2);
            let concat = self.auto("concatenate");
            let p = self.g.layer(concat, Op::Concat, &[p1, p2]);
            self.g.bn(p, &format!("adjust_bn_{id}"), EPSILON)
        } else if ps[2] != filters {
            let p = self.relu(p);
            let conv = format!("adjust_conv_projection_{id}");
            self.g
                .pointwise_bn(p, &conv, &format!("adjust_bn_{id}"), filters, EPSILON)
        } else {
            p
        }
    }

    /// `relu → 1×1 conv → batch norm`, the cells' first step on `ip`.
    fn squeeze(&mut self, ip: NodeId, filters: usize, kind: &str, id: &str) -> NodeId {
        let h = self.relu(ip);
        let (conv, bn) = (format!("{kind}_conv_1_{id}"), format!("{kind}_bn_1_{id}"));
        self.g.pointwise_bn(h, &conv, &bn, filters, EPSILON)
    }

    /// `_normal_a_cell`; returns (output, the next cell's `p`).
    fn normal(
        &mut self,
        ip: NodeId,
        p: Option<NodeId>,
        filters: usize,
        id: &str,
    ) -> (NodeId, NodeId) {
        self.g.begin_block(format!("normal_{id}"));
        let p = self.adjust(p, ip, filters, id);
        let h = self.squeeze(ip, filters, "normal", id);
        let x1_1 = self.separable_block(h, filters, 5, 1, &format!("normal_left1_{id}"));
        let x1_2 = self.separable_block(p, filters, 3, 1, &format!("normal_right1_{id}"));
        let x1 = self.add(x1_1, x1_2, Some(&format!("normal_add_1_{id}")));
        let x2_1 = self.separable_block(p, filters, 5, 1, &format!("normal_left2_{id}"));
        let x2_2 = self.separable_block(p, filters, 3, 1, &format!("normal_right2_{id}"));
        let x2 = self.add(x2_1, x2_2, Some(&format!("normal_add_2_{id}")));
        let x3 = self.avg(h, &format!("normal_left3_{id}"), 3, 1, Padding::Same);
        let x3 = self.add(x3, p, Some(&format!("normal_add_3_{id}")));
        let x4_1 = self.avg(p, &format!("normal_left4_{id}"), 3, 1, Padding::Same);
        let x4_2 = self.avg(p, &format!("normal_right4_{id}"), 3, 1, Padding::Same);
        let x4 = self.add(x4_1, x4_2, Some(&format!("normal_add_4_{id}")));
        let x5 = self.separable_block(h, filters, 3, 1, &format!("normal_left5_{id}"));
        let x5 = self.add(x5, h, Some(&format!("normal_add_5_{id}")));
        let x = self.g.layer(
            format!("normal_concat_{id}"),
            Op::Concat,
            &[p, x1, x2, x3, x4, x5],
        );
        (x, ip)
    }

    /// `_reduction_a_cell`; returns (output, the next cell's `p`).
    fn reduction(
        &mut self,
        ip: NodeId,
        p: Option<NodeId>,
        filters: usize,
        id: &str,
    ) -> (NodeId, NodeId) {
        self.g.begin_block(format!("reduction_{id}"));
        let p = self.adjust(p, ip, filters, id);
        let h = self.squeeze(ip, filters, "reduction", id);
        // The padded map that the stride-2 poolings below read ("valid" windows).
        let (h3, _) = self
            .g
            .pad_for_stride(h, &format!("reduction_pad_1_{id}"), 3, 2);
        let x1_1 = self.separable_block(h, filters, 5, 2, &format!("reduction_left1_{id}"));
        let x1_2 = self.separable_block(p, filters, 7, 2, &format!("reduction_right1_{id}"));
        let x1 = self.add(x1_1, x1_2, Some(&format!("reduction_add_1_{id}")));
        let x2_1 = self.max(h3, &format!("reduction_left2_{id}"));
        let x2_2 = self.separable_block(p, filters, 7, 2, &format!("reduction_right2_{id}"));
        let x2 = self.add(x2_1, x2_2, Some(&format!("reduction_add_2_{id}")));
        let x3_1 = self.avg(h3, &format!("reduction_left3_{id}"), 3, 2, Padding::Valid);
        let x3_2 = self.separable_block(p, filters, 5, 2, &format!("reduction_right3_{id}"));
        let x3 = self.add(x3_1, x3_2, Some(&format!("reduction_add3_{id}")));
        let x4 = self.avg(x1, &format!("reduction_left4_{id}"), 3, 1, Padding::Same);
        let x4 = self.add(x2, x4, None);
        let x5_1 = self.separable_block(x1, filters, 3, 1, &format!("reduction_left4_{id}"));
        let x5_2 = self.max(h3, &format!("reduction_right5_{id}"));
        let x5 = self.add(x5_1, x5_2, Some(&format!("reduction_add4_{id}")));
        let x = self.g.layer(
            format!("reduction_concat_{id}"),
            Op::Concat,
            &[x2, x3, x4, x5],
        );
        (x, ip)
    }
}

/// The network, layer by layer with Keras' names (penultimate filters 1056, 4 blocks, stem
/// 32 filters, filter multiplier 2).
pub fn graph() -> Graph {
    let (g, input) = GraphBuilder::new(224);
    let mut c = Cells { g, unnamed: 0 };
    let x = c.g.from_unit_to_symmetric(input);
    let x = c.g.conv(x, "stem_conv1", 32, (3, 3), 2, Padding::Valid);
    let x = c.g.bn(x, "stem_bn1", EPSILON);
    let filters = 1056 / 24;
    let (x, p) = c.reduction(x, None, filters / 4, "stem_1");
    let (mut x, mut p) = c.reduction(x, Some(p), filters / 2, "stem_2");
    for i in 0..4 {
        (x, p) = c.normal(x, Some(p), filters, &i.to_string());
    }
    let (x0, p0) = c.reduction(x, Some(p), filters * 2, "reduce_4");
    (x, p) = (x0, p0);
    for i in 0..4 {
        (x, p) = c.normal(x, Some(p), filters * 2, &(5 + i).to_string());
    }
    let (x0, p0) = c.reduction(x, Some(p), filters * 4, "reduce_8");
    (x, p) = (x0, p0);
    for i in 0..4 {
        (x, p) = c.normal(x, Some(p), filters * 4, &(9 + i).to_string());
    }
    let _ = p;
    c.relu(x);
    c.g.finish()
}
