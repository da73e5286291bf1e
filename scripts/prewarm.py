"""Builds flowers_kit in the kernel template (<kernels folder>/template) exactly as a notebook's
first cell does (same kernel, same evcxr flags and profile; see scripts/evcxr-kernel), so that a
learner's kernel starts from a copy of it and its first cell only loads the kit. Prints a line
every 10 s while it works and the time it took.

Usage: python scripts/prewarm.py [STAMP]   (./lab runs it when the kit changed since the last time)
A successful build writes STAMP (default: the time) to <kernels folder>/prewarmed and to the
template: the record of the build, which ./lab compares and scripts/evcxr-kernel requires
before it copies the template or prewarms a kernel.
Exit status: 0 when the kit is built, 1 when the cell failed, with evcxr's message."""

import json
import os
import pathlib
import queue
import shutil
import sys
import time

from jupyter_client.manager import KernelManager

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PROGRESS_EVERY_S = 10


def first_cell():
    """The tutorial notebook's first code cell (`:dep flowers_kit = …`), verbatim: the same
    text gives the same evcxr crate, so the learner's kernel finds everything fresh."""
    notebook = json.loads((NOTEBOOKS / "00_transfer_learning_flowers.ipynb").read_text(encoding="utf-8"))
    return "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])


def main():
    started = time.monotonic()
    kernels = pathlib.Path(os.environ.get("FLOWERS_KIT_KERNELS_DIR") or ROOT / ".lab" / "kernels")
    # Until this build completes, the template holds no build kernels may copy.
    (kernels / "template" / "prewarmed").unlink(missing_ok=True)
    km = KernelManager(kernel_name="rust")
    # This kernel builds the template kernel slots start from (scripts/evcxr-kernel).
    km.start_kernel(cwd=str(NOTEBOOKS), env=dict(os.environ, FLOWERS_KIT_BUILD_TEMPLATE="1"))
    client = km.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=600)
        # Using the prelude links the kit into the cell, as the notebooks' second cell does.
        msg_id = client.execute(first_cell() + "\nuse flowers_kit::prelude::*;")
        errors = []
        while True:
            try:
                reply = client.get_shell_msg(timeout=PROGRESS_EVERY_S)
            except queue.Empty:
                print(f"   still building flowers_kit for the notebooks ({time.monotonic() - started:.0f} s)", flush=True)
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        while True:
            try:
                message = client.get_iopub_msg(timeout=1)
            except queue.Empty:
                break
            content = message["content"]
            if message["msg_type"] == "error":
                errors.append(content.get("evalue", "") + "\n".join(content.get("traceback", [])))
            elif message["msg_type"] == "stream" and content.get("name") == "stderr":
                errors.append(content.get("text", ""))
        if reply["content"]["status"] != "ok":
            print("== building flowers_kit for the notebooks failed:\n" + "\n".join(errors), file=sys.stderr)
            return 1
        print(f"== flowers_kit built for the notebooks in {time.monotonic() - started:.0f} s (once; a notebook's first cell now only loads it)")
    finally:
        client.stop_channels()
        km.shutdown_kernel()
    # The build is complete: mark the template with it, then record it (the stamp) for ./lab
    # and for the kernels, which copy the template and prewarm only while the two agree.
    stamp = sys.argv[1] if len(sys.argv) > 1 else f"built {time.strftime('%Y-%m-%dT%H:%M:%S')}"
    shutil.rmtree(kernels / "template" / "evcxr", ignore_errors=True)
    (kernels / "template" / "prewarmed").write_text(stamp)
    (kernels / "prewarmed").write_text(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
