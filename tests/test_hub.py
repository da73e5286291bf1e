"""The class set-up (issue 24): JupyterHub with class/jupyterhub_config.py, as a teacher starts it,
on 127.0.0.1 with the dummy authenticator. Two learners are created and their servers started
through the hub's REST API; each server lists the Rust kernel and runs the first two cells of
notebook 00 through the kernel API; the hub is stopped and nothing it started is left running."""

import asyncio
import json
import os
import pathlib
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import nbformat
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from conftest import ARTIFACTS, ROOT
from test_browser import free_port

LEARNERS = ["ada", "bo"]


def api(base, token, method, path, body=None):
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read().decode()
        return json.loads(text) if text else None


async def run_cells(url, token, sources, timeout):
    """Runs each source in the kernel behind `url` (its channels websocket); returns, per cell,
    the reply's status and the text of its outputs."""
    # The server answers once the kernel has started, which a prewarmed kernel takes a while to.
    socket = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"},
                                                 connect_timeout=timeout, request_timeout=timeout))
    session, results = uuid.uuid4().hex, []
    try:
        for code in sources:
            msg_id = uuid.uuid4().hex
            await socket.write_message(json.dumps({
                "header": {"msg_id": msg_id, "session": session, "username": "test",
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
            }))
            # Done when the reply has come on the shell channel and the kernel has said it is
            # idle on iopub (the two channels are not ordered against each other).
            texts, status, idle = [], None, False
            while status is None or not idle:
                raw = await asyncio.wait_for(socket.read_message(), timeout)
                assert raw is not None, "the kernel's websocket closed"
                message = json.loads(raw)
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                content = message["content"]
                if message["msg_type"] in ("stream", "error"):
                    texts.append(content.get("text", "") + content.get("evalue", ""))
                if message["msg_type"] == "execute_reply":
                    status = content["status"]
                if message["msg_type"] == "status" and content.get("execution_state") == "idle":
                    idle = True
            results.append((status, "".join(texts)))
    finally:
        socket.close()
    return results


def processes_mentioning(marker):
    """PIDs of the processes whose command line or environment contains `marker`."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(proc.name))
    return found


def test_a_class_hub_serves_each_learner_the_notebooks_and_a_warm_rust_kernel(product_env, tmp_path):
    proxy = ROOT / "class" / "node_modules" / ".bin"
    assert (proxy / "configurable-http-proxy").exists(), "run npm ci in class/ (./test does)"
    class_dir = tmp_path / "class"
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = dict(product_env, PATH=f"{proxy}{os.pathsep}{product_env['PATH']}",
               FLOWERS_CLASS_DIR=str(class_dir), FLOWERS_HUB_URL=base,
               FLOWERS_HUB_AUTHENTICATOR="dummy", FLOWERS_HUB_ADMIN_TOKEN=token)
    log = open(ARTIFACTS / "hub.log", "w")
    hub = subprocess.Popen([str(ROOT / ".venv" / "bin" / "jupyterhub"), "-f", str(ROOT / "class" / "jupyterhub_config.py")],
                           env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sources = [c.source for c in nbformat.read(ROOT / "notebooks" / "00_transfer_learning_flowers.ipynb",
                                               as_version=4).cells if c.cell_type == "code"][:2]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(base, token, "GET", "/hub/api/")
                break
            except (OSError, urllib.error.HTTPError):
                assert hub.poll() is None, (ARTIFACTS / "hub.log").read_text()
                assert time.monotonic() < deadline, "the hub did not start"
                time.sleep(1)
        api(base, token, "POST", "/hub/api/users", {"usernames": LEARNERS})
        for name in LEARNERS:
            api(base, token, "POST", f"/hub/api/users/{name}/server")
        for name in LEARNERS:
            deadline = time.monotonic() + 180
            while not api(base, token, "GET", f"/hub/api/users/{name}")["servers"].get("", {}).get("ready"):
                assert time.monotonic() < deadline, f"{name}'s server did not start"
                time.sleep(1)
            home = class_dir / "learners" / name / "flowers"
            assert (home / "notebooks" / "00_transfer_learning_flowers.ipynb").is_file()
            assert (home / "flowers_kit").resolve() == (ROOT / "flowers_kit").resolve()
            specs = api(base, token, "GET", f"/user/{name}/api/kernelspecs")
            assert "rust" in specs["kernelspecs"], specs
            # Opening the notebook, as JupyterLab does: a session whose kernel runs in its folder.
            session = api(base, token, "POST", f"/user/{name}/api/sessions",
                          {"path": "00_transfer_learning_flowers.ipynb", "type": "notebook", "kernel": {"name": "rust"}})
            kernel = session["kernel"]
            started = time.monotonic()
            url = f"ws://127.0.0.1:{port}/user/{name}/api/kernels/{kernel['id']}/channels"
            results = asyncio.run(run_cells(url, token, sources, timeout=900))
            print(f"{name}: the first two cells of notebook 00 in {time.monotonic() - started:.1f} s "
                  "after the kernel was started")
            for i, (status, text) in enumerate(results):
                assert status == "ok" and "panicked" not in text, f"{name}, cell {i}: {status}\n{text}"
        for name in LEARNERS:
            try:
                api(base, token, "DELETE", f"/hub/api/users/{name}/server")
            except urllib.error.HTTPError as e:
                assert e.code == 202, e
    finally:
        hub.send_signal(signal.SIGINT)
        try:
            hub.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(hub.pid, signal.SIGKILL)
            hub.wait()
        log.close()
    # (The kernels' shared rust-analyzer leaves 20 s after the last kernel: product_env.)
    deadline = time.monotonic() + 60
    while (left := processes_mentioning(str(class_dir))) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"still running after the hub stopped: {left}"
