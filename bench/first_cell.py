"""What a learner waits for in a notebook, measured in fresh Rust kernels (run by first_cell.sh,
which sets up the environment): the cold first cell with empty caches, the warm first cell,
re-running the training cell after an edit, the extraction cell against the release CLI, and
notebook 00 top to bottom in a fresh kernel with the kernel's peak memory (evcxr_jupyter and the
process it runs cells in, resident set sampled every 0.2 s: the figure a class server needs).

Prints one line per measurement. Speed is reported, never asserted."""

import os
import pathlib
import re
import subprocess
import sys
import threading
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
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    # BENCH_KIT_FEATURES="download" measures the kit as the notebooks built it before they left
    # its HTTP client out.
    features = os.environ.get("BENCH_KIT_FEATURES")
    if features:
        quoted = ", ".join(f'"{f}"' for f in features.split(","))
        sources[0] = sources[0].replace("default-features = false", f"default-features = false, features = [{quoted}]")
    return sources


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


def process_tree_rss(root):
    """Resident bytes of `root` (evcxr_jupyter), of the compilers below it (cargo, rustc, cc,
    the linker) and of the other processes below it (the one that runs the cells), from /proc."""
    children = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    usage, todo = {"kernel": 0, "compilers": 0, "cells": 0}, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            rss = int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            name = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if pid == root:
            usage["kernel"] += rss
        elif name in ("cargo", "rustc", "cc", "ld", "rust-lld", "cc1", "collect2") or name.startswith("build-script"):
            usage["compilers"] += rss
        else:
            usage["cells"] += rss
    return usage


def analyzer_rss():
    """Resident bytes of the shared rust-analyzers (evcxr_jupyter --shared-analyzer, started by
    the first kernel and shared by all: scripts/evcxr-kernel), from /proc."""
    total = 0
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            if b"--shared-analyzer" in (proc / "cmdline").read_bytes().split(b"\0"):
                total += int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def whole_notebook(env):
    """Notebook 00 top to bottom in a fresh kernel: the first cells' times, the whole run, and the
    kernel's peak memory."""
    kernel = Kernel(env)
    pid = kernel.km.provisioner.process.pid
    # Peaks of: evcxr_jupyter with the process that runs the cells (the figure per learner), each
    # of them, the compilers while a cell builds, and the rust-analyzer all kernels share.
    peak, done = {"learner": 0, "kernel": 0, "cells": 0, "compilers": 0, "analyzer": 0}, threading.Event()

    def sample():
        while not done.wait(0.2):
            usage = process_tree_rss(pid)
            usage["learner"] = usage["kernel"] + usage["cells"]
            usage["analyzer"] = analyzer_rss()
            for key, value in usage.items():
                peak[key] = max(peak[key], value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        started = time.monotonic()
        times = [kernel.run(code)[0] for code in cells()]
        whole = time.monotonic() - started
    finally:
        done.set()
        sampler.join()
        kernel.close()
    first_let = next(i for i, code in enumerate(cells()) if re.search(r"^let ", code, re.M))
    print(f"notebook 00 top to bottom: {whole:.1f} s; first cell {times[0]:.1f} s, first cell with a `let` "
          f"(cell {first_let + 1}) {times[first_let]:.1f} s", flush=True)
    mib = {key: round(value / 2**20) for key, value in peak.items()}
    print(f"  peak memory: {mib['learner']} MiB for evcxr_jupyter with the process running the cells "
          f"(evcxr_jupyter {mib['kernel']} MiB, cells {mib['cells']} MiB); compilers at most {mib['compilers']} MiB "
          f"while a cell builds; the shared rust-analyzer {mib['analyzer']} MiB (one for all kernels)", flush=True)


def first_cells_after_reading(env, read_seconds):
    """A learner opens notebook 00 (the kernel starts), reads for `read_seconds`, then runs the
    cells down to the first with a `let`: the wait after their click, per cell. With prewarming
    (scripts/evcxr-kernel) the kernel loads the kit while they read."""
    started = time.monotonic()
    kernel = Kernel(env)
    try:
        ready = time.monotonic() - started
        time.sleep(max(0.0, started + read_seconds - time.monotonic()))
        click = time.monotonic()
        sources = cells()
        first_let = next(i for i, code in enumerate(sources) if re.search(r"^let ", code, re.M))
        times = [kernel.run(code)[0] for code in sources[: first_let + 1]]
        waited = time.monotonic() - click
    finally:
        kernel.close()
    mode = "prewarmed" if env.get("FLOWERS_KIT_PREWARM", "1") != "0" else "not prewarmed"
    print(f"{mode}, learner reads {read_seconds} s first: kernel ready {ready:.1f} s after it started; "
          f"after the click, first cell {times[0]:.1f} s, cells 1-{first_let + 1} (to the first `let`) "
          f"{waited:.1f} s", flush=True)


def main():
    env = dict(os.environ)
    if env.get("BENCH_ONLY") == "notebook":
        whole_notebook(env)
        return
    if env.get("BENCH_ONLY") == "start":
        for prewarm in ("0", "1"):
            for read in (0, 20):
                first_cells_after_reading(dict(env, FLOWERS_KIT_PREWARM=prewarm), read)
        return
    if env.get("BENCH_COLD", "1") != "0":
        cold = dict(env, XDG_CACHE_HOME=env["BENCH_TMP"] + "/cold-cache",
                    FLOWERS_KIT_KERNELS_DIR=env["BENCH_TMP"] + "/cold-kernels")
        first_cell(cold, "cold first cell (empty evcxr cache, new kernel folder)")
    first_cell(env, "first cell, built before (as after ./lab)")
    first_cell(env, "first cell again, another fresh kernel")
    rerun_after_edit(env)
    whole_notebook(env)


if __name__ == "__main__":
    main()
