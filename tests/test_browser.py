"""Browser check: JupyterLab on 127.0.0.1, the tutorial notebook (English and zh-CN) run in
headless Chromium."""

import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import ARTIFACTS, ROOT

BROWSER_DIR = ROOT / "tests" / "browser"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_root():
    """A copy of notebooks/ beside a link to the crate, so that `:dep ../flowers_kit` still
    resolves while JupyterLab's autosave and checkpoints never write into the repository."""
    root = ARTIFACTS / "lab"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "flowers_kit").symlink_to(ROOT / "flowers_kit")
    return root / "notebooks"


@pytest.mark.parametrize(
    "notebook, prefix",
    [("00_transfer_learning_flowers.ipynb", "lab-00"), ("zh-CN/00_transfer_learning_flowers.ipynb", "lab-zh-CN-00")],
    ids=["en", "zh-CN"],
)
def test_tutorial_notebook_renders_in_jupyterlab(product_env, notebook, prefix, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(chromium), "Debian's chromium is needed (./test installs it)"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), "run npm install in tests/browser"
    port, token = free_port(), secrets.token_hex(16)
    lab = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", "--ip", "127.0.0.1",
         "--port", str(port), f"--IdentityProvider.token={token}", "--allow-root",
         f"--ServerApp.root_dir={lab_root()}",
         # A workspace of its own: JupyterLab otherwise reopens the notebook an earlier run
         # left open, beside the one this run opens.
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        env=product_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                assert lab.poll() is None, lab.stdout.read().decode(errors="replace")
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(1)
        check = subprocess.run(
            ["node", str(BROWSER_DIR / "check.mjs"), url, token,
             notebook, str(ARTIFACTS), prefix],
            env={**product_env, "CHROMIUM": chromium}, capture_output=True, text=True, timeout=1800,
        )
        print(check.stdout)
        assert check.returncode == 0, check.stdout + check.stderr
        assert (ARTIFACTS / f"{prefix}-plots.png").stat().st_size > 10_000
        assert (ARTIFACTS / f"{prefix}-grad-cam.png").stat().st_size > 10_000
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
