"""What a learner waits for in a notebook, measured in fresh Rust kernels (run by first_cell.sh,
which sets up the environment): the cold first cell with empty caches, the warm first cell,
re-running the training cell after an edit, and the extraction cell against the release CLI.

Prints one line per measurement. Speed is reported, never asserted."""

import os
import pathlib
import re
import subprocess
import sys
import time

import nbformat
from jupyter_client.manager import KernelManager

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "00_transfer_learning_flowers.ipynb"
MODEL = "mobilenet_v2_0.35_224"


class Kernel:
    def __init__(self, env):
        started = time.monotonic()
        self.km = KernelManager(kernel_name="rust")
        self.km.start_kernel(env=env, cwd=str(ROOT / "notebooks"))
        self.client = self.km.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=600)
        self.startup = time.monotonic() - started

    def run(self, code):
        """Runs a cell; returns (seconds, printed text). A failing cell stops the benchmark."""
        printed = []

        def keep(msg):
            content = msg["content"]
            printed.append(content.get("text", "") + content.get("evalue", "") + "".join(content.get("traceback", [])))

        started = time.monotonic()
        reply = self.client.execute_interactive(code, timeout=1800, output_hook=keep)
        seconds = time.monotonic() - started
        text = "".join(printed)
        if reply["content"]["status"] != "ok":
            sys.exit(f"cell failed:\n{code}\n{text}")
        return seconds, text

    def close(self):
        self.client.stop_channels()
        self.km.shutdown_kernel()


def cells():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def first_cell(env, label):
    kernel = Kernel(env)
    try:
        seconds, _ = kernel.run(cells()[0])
        print(f"{label}: {seconds:.1f} s (kernel start {kernel.startup:.1f} s before it)", flush=True)
    finally:
        kernel.close()


def rerun_after_edit(env):
    code = cells()
    hyper = next(i for i, c in enumerate(code) if "const LEARNING_RATE" in c)
    training = next(i for i, c in enumerate(code) if "let (classifier, history) = train(" in c)
    kernel = Kernel(env)
    try:
        for source in code[: training + 1]:
            kernel.run(source)
        kernel.run(code[hyper].replace("const LEARNING_RATE: f32 = 0.01;", "const LEARNING_RATE: f32 = 0.05;"))
        seconds, _ = kernel.run(code[training])
        print(f"edit LEARNING_RATE, re-run the training cell: {seconds:.2f} s", flush=True)
        extract = (
            f'let started = std::time::Instant::now();\n'
            f'let fresh = FeatureExtractor::new(Model::parse("{MODEL}")?)?.without_cache().quiet().extract(&split)?;\n'
            f'println!("notebook extraction: {{:.2}} s", started.elapsed().as_secs_f64());'
        )
        best = min(float(re.search(r"([0-9.]+) s", kernel.run(extract)[1]).group(1)) for _ in range(3))
    finally:
        kernel.close()
    cli = ROOT / "target" / "release" / "flowers"
    times = []
    for _ in range(3):
        home = pathlib.Path(env["BENCH_TMP"]) / f"cli-home-{len(times)}"
        out = subprocess.run(
            [str(cli), "train", "--model", MODEL, "--steps", "1", "--out", str(home / "out")],
            env={**env, "FLOWERS_KIT_HOME": str(home)}, capture_output=True, text=True, check=True,
        ).stdout
        times.append(float(re.search(r"Extracted \d+ photos with \S+ in ([0-9.]+) s", out).group(1)))
    print(f"extraction of the sample with {MODEL}, best of 3: notebook {best:.2f} s, release CLI {min(times):.2f} s "
          f"(notebook/CLI {best / min(times):.2f})", flush=True)


def main():
    env = dict(os.environ)
    if env.get("BENCH_COLD", "1") != "0":
        cold = dict(env, XDG_CACHE_HOME=env["BENCH_TMP"] + "/cold-cache",
                    FLOWERS_KIT_KERNELS_DIR=env["BENCH_TMP"] + "/cold-kernels")
        first_cell(cold, "cold first cell (empty evcxr cache, new kernel folder)")
    first_cell(env, "first cell, built before (as after ./lab)")
    first_cell(env, "first cell again, another fresh kernel")
    rerun_after_edit(env)


if __name__ == "__main__":
    main()
