"""OpenVINO peer: MobileNet V2 forward throughput with random weights.

Runs the same ONNX graph as ort_mobilenet.py (built with onnx.helper, batch norm folded),
compiled for the CPU with f32 inference precision set explicitly, in both of OpenVINO's
performance modes, and prints the better: LATENCY (one request at a time) and THROUGHPUT
(as many requests in flight as OpenVINO asks for, each a whole batch).
Usage: openvino_mobilenet.py ALPHA RESOLUTION BATCH THREADS SECONDS
Prints: images_per_second
"""
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import openvino as ov

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_mobilenet import build  # noqa: E402


def compile_cpu(alpha, res, threads, mode, batch=None):
    """The ONNX graph of ort_mobilenet.build, compiled for the CPU in f32 with `mode`
    (LATENCY or THROUGHPUT), for a fixed `batch` or, without one, any batch size."""
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mobilenet_v2.onnx")
        onnx.save(build(alpha, res), path)
        model = core.read_model(path)
        if batch is not None:
            model.reshape([batch, 3, res, res])
        return core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": mode,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        })


def measure(compiled, x, batch, seconds, mode):
    if mode == "LATENCY":
        request = compiled.create_infer_request()
        request.infer({0: x})
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            request.infer({0: x})
            images += batch
        return images / (time.perf_counter() - start)
    jobs = max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, jobs)
    for _ in range(jobs):
        queue.start_async({0: x})
    queue.wait_all()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(jobs):
            queue.start_async({0: x})
        queue.wait_all()
        images += batch * jobs
    return images / (time.perf_counter() - start)


def main():
    alpha, res, batch, threads, seconds = (float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                           int(sys.argv[4]), float(sys.argv[5]))
    x = np.random.default_rng(1).random((batch, 3, res, res), dtype=np.float32)
    best = 0.0
    for mode in ("LATENCY", "THROUGHPUT"):
        compiled = compile_cpu(alpha, res, threads, mode, batch)
        best = max(best, measure(compiled, x, batch, seconds / 2, mode))
    print(f"{best:.1f}")


if __name__ == "__main__":
    main()
