"""Shared fixtures for the whole-product tests: a local HTTP mirror of ../shared (the flower
photo archive and the MobileNet V2 weight files under their Keras Applications paths) and an
environment that points flowers_kit at it, with a fresh cache."""

import functools
import http.server
import os
import pathlib
import tarfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ARTIFACTS = ROOT / "target" / "notebook-tests"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """Serves flower_photos.tgz (the 750-photo sample packed like the real archive) and the
    golden weight files on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mirror")
    with tarfile.open(root / "flower_photos.tgz", "w:gz", compresslevel=1) as tar:
        tar.add(SHARED / "data" / "flower_photos_sample", arcname="flower_photos")
    # Keras Applications' layout: <family folder>/<file>.
    (root / "mobilenet_v2").mkdir()
    for h5 in (SHARED / "golden").glob("mobilenet_v2_*_no_top.h5"):
        alpha, rows = h5.name[len("mobilenet_v2_") : -len("_no_top.h5")].split("_")
        keras_name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"
        (root / "mobilenet_v2" / keras_name).symlink_to(h5)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="session")
def product_env(mirror, tmp_path_factory):
    """Environment for kernels and servers: mirror URLs and a cache that starts empty, so the
    first notebook really downloads and extracts."""
    home = tmp_path_factory.mktemp("flowers_kit_home")
    env = dict(os.environ)
    env.update(
        FLOWERS_DATA_URL=f"{mirror}/flower_photos.tgz",
        FLOWERS_WEIGHTS_URL=f"{mirror}/",
        FLOWERS_KIT_HOME=str(home),
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return env
