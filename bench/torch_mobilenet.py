"""PyTorch peer: torchvision's MobileNet V2 (random weights, eval mode) forward throughput.

Usage: torch_mobilenet.py ALPHA RESOLUTION BATCH THREADS SECONDS
Prints: images_per_second
"""
import sys
import time

import torch
import torchvision


def main():
    alpha, res, batch, threads, seconds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=alpha).features.eval()
    x = torch.rand(batch, 3, res, res)
    with torch.inference_mode():
        model(x).mean((2, 3))
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x).mean((2, 3))
            images += batch
    print(f"{images / (time.perf_counter() - start):.1f}")


if __name__ == "__main__":
    main()
