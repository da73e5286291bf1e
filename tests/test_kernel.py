"""The Rust kernel as JupyterLab runs it (scripts/evcxr-kernel) leaves no scratch crate behind:
evcxr alone left ~700 MB in /tmp at every kernel start, which filled CI's disk."""

import os
import pathlib

from jupyter_client.manager import KernelManager

from conftest import ROOT


def scratch_folders(env):
    return sorted(p for p in pathlib.Path(env["FLOWERS_KIT_KERNELS_DIR"]).iterdir() if p.is_dir())


def start(env):
    km = KernelManager(kernel_name="rust")
    km.start_kernel(env=env, cwd=str(ROOT / "notebooks"))
    client = km.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=120)
    return km, client


def run(client, code):
    reply = client.execute_interactive(code, timeout=300, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]


def test_kernel_scratch_is_removed_after_shutdown_and_after_a_kill(product_env):
    env = dict(product_env)
    before = scratch_folders(env)

    km, client = start(env)
    try:
        run(client, "let answer = 6 * 7;")
        during = [p for p in scratch_folders(env) if p not in before]
        assert len(during) == 1, during
        # evcxr compiled its crate there, not in /tmp.
        assert list(during[0].glob("*/target")), list(during[0].iterdir())
    finally:
        client.stop_channels()
        km.shutdown_kernel()
    assert not during[0].exists(), f"{during[0]} is left after a graceful shutdown"

    # Killed (as Jupyter does when a kernel does not answer): the folder stays until the
    # next kernel starts, which removes it.
    km, client = start(env)
    try:
        run(client, "let answer = 6 * 7;")
        killed = [p for p in scratch_folders(env) if p not in before]
        assert len(killed) == 1, killed
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    assert killed[0].exists()
    km, client = start(env)
    try:
        assert not killed[0].exists(), f"{killed[0]} of a killed kernel was not removed"
        assert len([p for p in scratch_folders(env) if p not in before]) == 1
    finally:
        client.stop_channels()
        km.shutdown_kernel()
    assert [p for p in scratch_folders(env) if p not in before] == []
    assert os.path.isdir(env["FLOWERS_KIT_KERNELS_DIR"])
