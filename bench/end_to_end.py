"""Peers end to end: decode + resize every photo of a folder with Pillow (a thread per
core), then the forward pass in batches of 16, with ONNX Runtime or PyTorch.

Usage: end_to_end.py ort|openvino|torch ALPHA RESOLUTION THREADS PHOTO_DIR
Prints: images_per_second
"""
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image


def load(path, res):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((res, res), Image.BILINEAR), dtype=np.float32) / 255.0


def main():
    engine, alpha, res, threads, folder = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    paths = sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if engine == "ort":
        import onnxruntime as ort
        from ort_mobilenet import build

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(build(alpha, res).SerializeToString(), options, providers=["CPUExecutionProvider"])
        run = lambda batch: session.run(None, {"input": batch.transpose(0, 3, 1, 2).copy() * 2 - 1})
    elif engine == "openvino":
        from openvino_mobilenet import compile_cpu

        request = compile_cpu(alpha, res, threads, "LATENCY").create_infer_request()
        run = lambda batch: request.infer({0: batch.transpose(0, 3, 1, 2).copy() * 2 - 1})
    else:
        import torch
        import torchvision

        torch.set_num_threads(threads)
        model = torchvision.models.mobilenet_v2(width_mult=alpha).features.eval()

        def run(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch).permute(0, 3, 1, 2) * 2 - 1).mean((2, 3))

    run(np.zeros((16, res, res, 3), np.float32))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for i in range(0, len(paths), 16):
            batch = np.stack(list(pool.map(lambda p: load(p, res), paths[i : i + 16])))
            run(batch)
    print(f"{len(paths) / (time.perf_counter() - start):.1f}")


if __name__ == "__main__":
    main()
