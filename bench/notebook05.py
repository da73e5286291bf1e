"""Notebook 05 and the issue's evaluation recipe, cold, on the whole dataset's size.

This machine has only ../shared's 750-photo sample, so the stand-in dataset holds it COPIES
times over (5 by default: 3,750 photos, 3,000 of them for training, near the real archive's
3,670): each copy carries its own bytes after the JPEG's end-of-image marker, the same pixels
but another photo to the kit's content-keyed caches, so every copy is decoded, augmented and
run through the network like a photo of its own. (Accuracies printed on copies of one another
mean nothing; only the time does.)

  notebook05.py [en|zh-CN] [COPIES]   every cell of notebook 05 in a fresh Rust kernel, as a
      learner runs it: the dataset downloaded (from a local mirror) and nothing else in the
      cache (no features, activations or weights). Before the clock starts, the kit is built
      into a fresh kernel template as ./lab does before a learner opens a notebook (a few
      minutes, not timed). Needs ./lab's .venv with the Rust kernel registered. Prints the
      kernel's start, the cells' time, the total and the slowest cells.
  notebook05.py recipe [COPIES]   `flowers train` with the recipe (four views, two fine-tuned
      blocks, 3,000 steps of 100, Adam) on the stand-in photos, with an empty cache. Prints
      its wall time and peak resident memory.

The stand-in lives in a scratch folder under target/, removed at the end.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from conftest import REAL_MOBILENET_V2_035, ROOT, SHARED, QuietHandler  # noqa: E402

RECIPE = ["--model", "mobilenet_v2_0.35_224", "--steps", "3000", "--batch", "100", "--optimizer", "adam",
          "--lr", "0.001", "--eval-every", "100", "--augment", "flip,crop=10,scale=10,brightness=10",
          "--views", "4", "--fine-tune-blocks", "2", "--fine-tune-lr", "0.001"]


def stand_in(work, copies):
    """The sample `copies` times over, as class folders under work/flower_photos."""
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
    return photos, sum(1 for p in photos.rglob("*") if p.is_file())


def notebook(work, edition, copies):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    folder = ROOT / "notebooks" if edition == "en" else ROOT / "notebooks" / edition
    path = folder / "05_beyond_the_tutorial.ipynb"
    photos, count = stand_in(work, copies)
    with tarfile.open(work / "flower_photos.tgz", "w:gz", compresslevel=1) as tar:
        tar.add(photos, arcname="flower_photos")
    shutil.rmtree(photos)
    # The real ImageNet weights of MobileNet V2 0.35 under every resolution's Keras name, as
    # the notebook tests serve them (tests/conftest.py).
    (work / "mobilenet_v2").mkdir()
    for rows in (96, 128, 160, 192, 224):
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_{rows}_no_top.h5"
        (work / "mobilenet_v2" / name).symlink_to(REAL_MOBILENET_V2_035)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(work)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
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
        cells = []
        try:
            with client.setup_kernel():
                kernel_start = time.perf_counter() - started
                for index, cell in enumerate(nb.cells):
                    cell_started = time.perf_counter()
                    client.execute_cell(cell, index)
                    cells.append((time.perf_counter() - cell_started, index))
                    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                    if errors:
                        print(f"cell {index} failed after {time.perf_counter() - started:.1f} s: "
                              f"{errors[0].get('ename', '')}: {errors[0].get('evalue', '')}", file=sys.stderr)
                        print("\n".join(errors[0].get("traceback", [])), file=sys.stderr)
                        return 1
        finally:
            km.shutdown_kernel()
        total = time.perf_counter() - started
        slowest = sorted(cells, reverse=True)[:6]
        print(f"notebook 05 ({edition}) on {count} photos, cold: kernel start {kernel_start:.1f} s, "
              f"cells {sum(t for t, _ in cells):.1f} s, total {total:.1f} s")
        print("slowest cells (s, index):", [(round(t, 1), i) for t, i in slowest])
        return 0
    finally:
        server.shutdown()
        server.server_close()


def recipe(work, copies):
    photos, count = stand_in(work, copies)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "flowers_kit", "--bin", "flowers"],
                   check=True, cwd=ROOT)
    env = dict(os.environ, FLOWERS_KIT_HOME=str(work / "home"))
    command = [str(ROOT / "target" / "release" / "flowers"), "train", "--data", str(photos),
               "--weights", str(REAL_MOBILENET_V2_035), *RECIPE, "--out", str(work / "out")]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=ROOT)
    # This child's own resource use (not the build's before it); Linux gives the peak in KiB.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        print(f"flowers train failed ({child.returncode}) after {seconds:.1f} s", file=sys.stderr)
        return 1
    peak = usage.ru_maxrss / 1024
    print(f"evaluation recipe on {count} photos, cold: {seconds:.1f} s, peak {peak:.0f} MiB")
    print("flowers train " + " ".join(RECIPE))
    return 0


def main():
    args = sys.argv[1:]
    mode = args.pop(0) if args and args[0] in ("en", "zh-CN", "recipe") else "en"
    try:
        copies = int(args[0]) if args else 5
    except ValueError:
        copies = 0
    if len(args) > 1 or not 1 <= copies <= 255:
        print(__doc__, file=sys.stderr)
        print("COPIES must be a whole number from 1 to 255", file=sys.stderr)
        return 2
    (ROOT / "target").mkdir(exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="notebook05-", dir=ROOT / "target"))
    try:
        return recipe(work, copies) if mode == "recipe" else notebook(work, mode, copies)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
