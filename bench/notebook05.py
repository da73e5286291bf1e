"""Notebook 05 cold on the whole dataset's size, timed as a learner runs it: every cell in a
fresh Rust kernel, with the dataset already downloaded and nothing else in the cache (no
features, no activations, no weights).

This machine has only ../shared's 750-photo sample, so the archive holds it COPIES times over
(5 by default: 3,750 photos, 3,000 of them for training, near the real archive's 3,670):
each copy carries its own bytes after the JPEG's end-of-image marker, the same pixels but
another photo to the kit's content-keyed caches, so every copy is decoded, augmented and run
through the network like a photo of its own. (Accuracies printed on duplicated photos mean
nothing; only the time does.)

Usage: .venv/bin/python bench/notebook05.py [en|zh-CN] [COPIES]   (after ./lab built the kernel)
Prints: the kernel's start, the slowest cells and the notebook's total time in seconds.
"""

import functools
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from conftest import REAL_MOBILENET_V2_035, ROOT, SHARED, QuietHandler  # noqa: E402

def archive(work, copies):
    """flower_photos.tgz of the sample, `copies` times over."""
    photos = work / "flower_photos"
    for folder in sorted((SHARED / "data" / "flower_photos_sample").iterdir()):
        if not folder.is_dir():
            continue
        (photos / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir()):
            data = photo.read_bytes()
            for copy in range(copies):
                (photos / folder.name / f"{photo.stem}_{copy}{photo.suffix}").write_bytes(
                    data + bytes([copy]) * 4 if copy else data)
    count = sum(1 for _ in photos.rglob("*.jpg"))
    with tarfile.open(work / "flower_photos.tgz", "w:gz", compresslevel=1) as tar:
        tar.add(photos, arcname="flower_photos")
    shutil.rmtree(photos)
    return count


def main():
    edition = sys.argv[1] if len(sys.argv) > 1 else "en"
    copies = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    folder = ROOT / "notebooks" if edition == "en" else ROOT / "notebooks" / edition
    path = folder / "05_beyond_the_tutorial.ipynb"
    work = pathlib.Path(tempfile.mkdtemp(prefix="notebook05-"))
    try:
        count = archive(work, copies)
        # The real ImageNet weights of MobileNet V2 0.35 under every resolution's Keras name,
        # as the notebook tests serve them (tests/conftest.py).
        (work / "mobilenet_v2").mkdir()
        for rows in (96, 128, 160, 192, 224):
            name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_{rows}_no_top.h5"
            (work / "mobilenet_v2" / name).symlink_to(REAL_MOBILENET_V2_035)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(work)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        mirror = f"http://127.0.0.1:{server.server_port}"
        env = dict(os.environ,
                   FLOWERS_DATA_URL=f"{mirror}/flower_photos.tgz",
                   FLOWERS_WEIGHTS_URL=f"{mirror}/",
                   FLOWERS_KIT_HOME=str(work / "home"),
                   FLOWERS_KIT_KERNELS_DIR=str(work / "kernels"),
                   EVCXR_SHARED_ANALYZER_IDLE_SECS="20")
        python = str(ROOT / ".venv" / "bin" / "python")
        subprocess.run([python, str(ROOT / "scripts" / "prewarm.py"), "bench"], env=env, check=True)
        subprocess.run(["cargo", "run", "--release", "--quiet", "-p", "flowers_kit", "--bin", "flowers",
                        "--", "download"], env=env, check=True, cwd=ROOT)
        nb = nbformat.read(path, as_version=4)
        km = KernelManager(kernel_name="rust")
        started = time.perf_counter()
        km.start_kernel(env=env, cwd=str(path.parent))
        client = NotebookClient(nb, km=km, timeout=1800, startup_timeout=600, allow_errors=True)
        try:
            with client.setup_kernel():
                kernel_start = time.perf_counter() - started
                cells = []
                for index, cell in enumerate(nb.cells):
                    cell_started = time.perf_counter()
                    client.execute_cell(cell, index)
                    cells.append((time.perf_counter() - cell_started, index))
                    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                    if errors:
                        print(f"cell {index} failed: {errors[0].get('evalue', '')}", file=sys.stderr)
                        return 1
        finally:
            km.shutdown_kernel()
        total = time.perf_counter() - started
        slowest = sorted(cells, reverse=True)[:6]
        print(f"notebook 05 ({edition}) on {count} photos, cold: kernel start {kernel_start:.1f} s, "
              f"cells {sum(t for t, _ in cells):.1f} s, total {total:.1f} s")
        print("slowest cells (s, index):", [(round(t, 1), i) for t, i in slowest])
        server.shutdown()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
