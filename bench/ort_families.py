"""ONNX Runtime peer for every family: the same prepared network flowers_kit runs (from
`flowers graph MODEL`, batch norm folded, random weights), built with onnx.helper.
Usage: ort_families.py GRAPH_JSON BATCH THREADS SECONDS
Prints: images_per_second
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build(spec):
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    count = [0]

    def fresh(prefix):
        count[0] += 1
        return f"{prefix}{count[0]}"

    def const(array):
        name = fresh("c")
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32) if np.asarray(array).dtype.kind == "f" else np.asarray(array), name))
        return name

    def node(op, inputs, **attrs):
        out = fresh("t")
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def activate(x, act):
        if act == "Linear":
            return x
        if act == "Relu":
            return node("Relu", [x])
        if act == "Relu6":
            return node("Clip", [x, const(np.float32(0)), const(np.float32(6))])
        if act == "Sigmoid":
            return node("Sigmoid", [x])
        if act == "Swish":
            return node("Mul", [x, node("Sigmoid", [x])])
        if act == "HardSigmoid":
            return node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)
        if act == "HardSwish":
            return node("HardSwish", [x])
        raise ValueError(act)

    out = {}
    nchw = None
    for i, s in enumerate(spec["steps"]):
        x = [out[j] for j in s["inputs"]]
        k = s["kind"]
        c = s["shape"][2]
        if k == "input":
            y = node("Transpose", ["input"], perm=[0, 3, 1, 2])
        elif k == "conv":
            kh, kw = s["kernel"]
            group = s["cin"] if s["depthwise"] else 1
            w = rng.standard_normal((s["cout"], s["cin"] // group, kh, kw)).astype(np.float32)
            w *= np.sqrt(2.0 / (s["cin"] // group * kh * kw))
            t, b, l, r = s["pad"]
            y = node("Conv", [x[0], const(w), const(np.full(s["cout"], 0.01, np.float32))],
                     strides=[s["stride"]] * 2, pads=[t, l, b, r], group=group, kernel_shape=[kh, kw])
            y = activate(y, s["activation"])
        elif k == "affine":
            y = node("Add", [node("Mul", [x[0], const(np.ones((1, c, 1, 1), np.float32))]),
                             const(np.zeros((1, c, 1, 1), np.float32))])
            y = activate(y, s["activation"])
        elif k == "activation":
            y = activate(x[0], s["activation"])
        elif k == "add":
            y = x[0]
            for other in x[1:]:
                y = node("Add", [y, other])
            y = activate(y, s["activation"])
        elif k == "multiply":
            y = node("Mul", x)
        elif k == "concat":
            y = node("Concat", x, axis=1)
        elif k in ("maxpool", "avgpool"):
            t, b, l, r = s["pad"]
            attrs = dict(kernel_shape=s["size"], strides=[s["stride"]] * 2, pads=[t, l, b, r])
            if k == "avgpool":
                attrs["count_include_pad"] = 0
            y = node("MaxPool" if k == "maxpool" else "AveragePool", [x[0]], **attrs)
        elif k == "pad":
            t, b, l, r = s["pad"]
            y = node("Pad", [x[0], const(np.array([0, 0, t, l, 0, 0, b, r], np.int64))])
        elif k == "crop":
            t, b, l, r = s["crop"]
            h, w = s["shape"][0], s["shape"][1]
            y = node("Slice", [x[0], const(np.array([t, l], np.int64)), const(np.array([t + h, l + w], np.int64)),
                               const(np.array([2, 3], np.int64))])
        elif k == "gap":
            y = node("GlobalAveragePool", [x[0]])
        else:
            raise ValueError(k)
        out[i] = y
    last = out[len(spec["steps"]) - 1]
    feats = node("Flatten", [node("GlobalAveragePool", [last])])
    nodes.append(helper.make_node("Identity", [feats], ["features"]))
    r = spec["resolution"]
    graph = helper.make_graph(nodes, spec["model"],
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", r, r, 3])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    spec = json.load(open(sys.argv[1]))
    batch, threads, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(build(spec).SerializeToString(), options, providers=["CPUExecutionProvider"])
    r = spec["resolution"]
    x = np.random.default_rng(1).random((batch, r, r, 3), dtype=np.float32)
    session.run(None, {"input": x})
    start, images = time.perf_counter(), 0
    while images == 0 or time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        images += batch
    print(f"{images / (time.perf_counter() - start):.1f}")


if __name__ == "__main__":
    main()
