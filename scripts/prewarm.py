"""Builds flowers_kit in a kernel slot exactly as a notebook's first cell does (same kernel, same
evcxr flags, profile and target folder; see scripts/evcxr-kernel), so that a learner's first
cell only loads it. Prints a line every 10 s while it works and the time it took.

Usage: python scripts/prewarm.py   (./lab runs it when the kit changed since the last time)
Exit status: 0 when the kit is built, 1 when the cell failed, with evcxr's message."""

import json
import pathlib
import queue
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
    km = KernelManager(kernel_name="rust")
    km.start_kernel(cwd=str(NOTEBOOKS))
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
        return 0
    finally:
        client.stop_channels()
        km.shutdown_kernel()


if __name__ == "__main__":
    sys.exit(main())
