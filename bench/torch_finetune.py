"""PyTorch peer of `flowers bench --fine-tune`: seconds per fine-tuning step of a model's
last blocks, its top convolution and a linear head, with Adam, on a fixed random batch of
activations at the cut.

The blocks are written out with batch norm folded (each convolution has a bias and no batch
norm), as flowers_kit trains them, with the shapes Keras gives them:
- mobilenet_v2_ALPHA_RES: inverted residual blocks (1x1 expand, ReLU6; 3x3 depthwise,
  ReLU6; 1x1 project; the residual where shapes allow), then the 1x1 convolution to 1280,
  ReLU6.
- efficientnet_b0: block7a (1x1 expand, swish; 3x3 depthwise, swish; squeeze-and-excitation
  to 48; 1x1 project to 320), then the 1x1 convolution to 1280, swish.

Usage: torch_finetune.py MODEL BLOCKS BATCH THREADS SECONDS
Prints: seconds per step
"""
import sys
import time

import torch
from torch import nn


def divisible(v, d=8):
    """Keras' and torchvision's channel rounding."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class Inverted(nn.Module):
    def __init__(self, cin, cout, expand, act, se=0):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Conv2d(cin, mid, 1) if expand != 1 else None
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, se, 1), nn.SiLU(),
                                nn.Conv2d(se, mid, 1), nn.Sigmoid()) if se else None
        self.project = nn.Conv2d(mid, cout, 1)
        self.act = act
        self.residual = cin == cout

    def forward(self, x):
        y = self.act(self.expand(x)) if self.expand is not None else x
        y = self.act(self.depthwise(y))
        if self.se is not None:
            y = y * self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


def suffix(model, blocks):
    """The trainable blocks, the top convolution and the input shape at the cut (C, H, W)."""
    if model.startswith("mobilenet_v2_"):
        alpha, res = model[len("mobilenet_v2_"):].split("_")
        alpha, res = float(alpha), int(res)
        # Keras' last stages: (expansion, channels, repeats, stride) as in the paper.
        stages = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1)]
        first = divisible(32 * alpha)
        chans, layout = first, []
        for t, c, n, s in stages:
            out = divisible(c * alpha)
            for i in range(n):
                layout.append((chans, out, t))
                chans = out
        side = res // 32
        chosen = layout[-blocks:]
        act = nn.ReLU6()
        last = 1280 if alpha <= 1.0 else divisible(1280 * alpha)
        layers = [Inverted(cin, cout, t, act) for cin, cout, t in chosen]
        layers += [nn.Conv2d(chosen[-1][1], last, 1), nn.ReLU6()]
        return nn.Sequential(*layers), (chosen[0][0], side, side), last
    if model == "efficientnet_b0" and blocks == 1:
        act = nn.SiLU()
        layers = [Inverted(192, 320, 6, act, se=48), nn.Conv2d(320, 1280, 1), nn.SiLU()]
        return nn.Sequential(*layers), (192, 7, 7), 1280
    raise SystemExit(f"unsupported: {model} with {blocks} block(s)")


def main():
    model, blocks, batch, threads, seconds = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                              int(sys.argv[4]), float(sys.argv[5]))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    body, shape, features = suffix(model, blocks)
    net = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, 5))
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, *shape) * 2 - 1
    labels = torch.arange(batch) % 5
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    print(f"{(time.perf_counter() - start) / steps:.4f}")


if __name__ == "__main__":
    main()
