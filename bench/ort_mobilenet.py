"""ONNX Runtime peer: MobileNet V2 forward throughput with random weights.

Builds the Keras MobileNet V2 graph (BN folded into convs, as inference engines run it)
directly with onnx.helper, so no deep-learning framework is needed to export it.
Usage: ort_mobilenet.py ALPHA RESOLUTION BATCH THREADS SECONDS
Prints: images_per_second
"""
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BLOCKS = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
          (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6),
          (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6)]


def make_divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def build(alpha, res):
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def conv(x, cin, cout, k, stride, group, relu6):
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
        b = np.full(cout, 0.01, np.float32)
        wn, bn, out = name("w"), name("b"), name("t")
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        # TF "SAME" with stride 2 on even sizes pads bottom/right only.
        pads = [0, 0, 1, 1] if (k == 3 and stride == 2) else ([1, 1, 1, 1] if k == 3 else [0, 0, 0, 0])
        nodes.append(helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=pads, group=group))
        if not relu6:
            return out
        clipped = name("t")
        lo, hi = name("c"), name("c")
        inits.extend([numpy_helper.from_array(np.array(0, np.float32), lo),
                      numpy_helper.from_array(np.array(6, np.float32), hi)])
        nodes.append(helper.make_node("Clip", [out, lo, hi], [clipped]))
        return clipped

    first = make_divisible(32 * alpha)
    x = conv("input", 3, first, 3, 2, 1, True)
    c = first
    for i, (filters, stride, expansion) in enumerate(BLOCKS):
        out = make_divisible(int(filters * alpha))
        inp = x
        inner = c
        if i > 0:
            inner = c * expansion
            x = conv(x, c, inner, 1, 1, 1, True)
        x = conv(x, inner, inner, 3, stride, inner, True)
        x = conv(x, inner, out, 1, 1, 1, False)
        if c == out and stride == 1:
            added = name("t")
            nodes.append(helper.make_node("Add", [x, inp], [added]))
            x = added
        c = out
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = conv(x, c, last, 1, 1, 1, True)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    graph = helper.make_graph(
        nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, res, res])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", last])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    alpha, res, batch, threads, seconds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(build(alpha, res).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((batch, 3, res, res), dtype=np.float32)
    session.run(None, {"input": x})
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        images += batch
    print(f"{images / (time.perf_counter() - start):.1f}")


if __name__ == "__main__":
    main()
