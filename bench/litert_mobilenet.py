"""LiteRT peer: MobileNet V2 forward throughput with random weights, on XNNPACK.

Keras' own MobileNetV2 (no top, global average pooling, random weights) converted by
TensorFlow's TFLiteConverter to a float32 .tflite (no quantisation, no other optimisation),
run by LiteRT's interpreter, whose default delegate for float models is XNNPACK. The
converted model is kept under target/bench/litert/, so only the first run converts.
Usage: litert_mobilenet.py ALPHA RESOLUTION BATCH THREADS SECONDS
       litert_mobilenet.py --end-to-end ALPHA RESOLUTION THREADS PHOTO_DIR
Prints: images_per_second
"""
import os
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CACHE = pathlib.Path(__file__).resolve().parent.parent / "target" / "bench" / "litert"


def tflite_model(alpha, res):
    """The float32 .tflite of Keras' MobileNetV2(alpha, res), converted once."""
    path = CACHE / f"mobilenet_v2_{alpha}_{res}.tflite"
    if not path.exists():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        model = tf.keras.applications.MobileNetV2(
            input_shape=(res, res, 3), alpha=alpha, include_top=False, weights=None, pooling="avg")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_types = [tf.float32]
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(converter.convert())
        partial.rename(path)
    return path


def interpreter(alpha, res, batch, threads):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(tflite_model(alpha, res)), num_threads=threads)
    index = runner.get_input_details()[0]["index"]
    runner.resize_tensor_input(index, [batch, res, res, 3])
    runner.allocate_tensors()
    output = runner.get_output_details()[0]["index"]

    def run(x):
        runner.set_tensor(index, x)
        runner.invoke()
        return runner.get_tensor(output)

    return run


def forward(alpha, res, batch, threads, seconds):
    run = interpreter(alpha, res, batch, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    run(x)
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run(x)
        images += batch
    return images / (time.perf_counter() - start)


def end_to_end(alpha, res, threads, folder):
    """Decode + resize with Pillow (a thread per core), forward in batches of 16."""
    from PIL import Image

    def load(path):
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((res, res), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.float32) / 127.5 - 1

    paths = sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    runs = {16: interpreter(alpha, res, 16, threads)}
    runs[16](np.zeros((16, res, res, 3), np.float32))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for i in range(0, len(paths), 16):
            batch = np.stack(list(pool.map(load, paths[i : i + 16])))
            if len(batch) not in runs:
                runs[len(batch)] = interpreter(alpha, res, len(batch), threads)
            runs[len(batch)](batch)
    return len(paths) / (time.perf_counter() - start)


def main():
    if sys.argv[1] == "--end-to-end":
        alpha, res, threads, folder = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(f"{end_to_end(alpha, res, threads, folder):.1f}")
    else:
        alpha, res, batch, threads, seconds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        print(f"{forward(alpha, res, batch, threads, seconds):.1f}")


if __name__ == "__main__":
    main()
