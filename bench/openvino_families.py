"""OpenVINO peer for every family: the same ONNX graph as ort_families.py (the prepared
network of `flowers graph MODEL`, batch norm folded, random weights), compiled for the CPU
with f32 inference precision set explicitly, in both of OpenVINO's performance modes; prints
the better (see openvino_mobilenet.py).
Usage: openvino_families.py GRAPH_JSON BATCH THREADS SECONDS
Prints: images_per_second
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import openvino as ov

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openvino_mobilenet import measure  # noqa: E402
from ort_families import build  # noqa: E402


def compile_cpu(spec, batch, threads, mode):
    core = ov.Core()
    res = spec["resolution"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "family.onnx")
        onnx.save(build(spec), path)
        model = core.read_model(path)
        model.reshape([batch, res, res, 3])
        return core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": mode,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        })


def main():
    spec = json.load(open(sys.argv[1]))
    batch, threads, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    res = spec["resolution"]
    x = np.random.default_rng(1).random((batch, res, res, 3), dtype=np.float32)
    best = 0.0
    for mode in ("LATENCY", "THROUGHPUT"):
        best = max(best, measure(compile_cpu(spec, batch, threads, mode), x, batch, seconds / 2, mode))
    print(f"{best:.1f}")


if __name__ == "__main__":
    main()
