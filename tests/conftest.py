"""Shared fixtures for the whole-product tests: a local HTTP mirror of ../shared (the flower
photo archive and the MobileNet V2 weight files under their Keras Applications paths) and an
environment that points flowers_kit at it, with a fresh cache."""

import functools
import http.server
import json
import math
import os
import pathlib
import subprocess
import tarfile
import threading

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ARTIFACTS = ROOT / "target" / "notebook-tests"
REAL_MOBILENET_V2_035 = SHARED / "golden" / "mobilenet_v2_0.35_224_no_top.h5"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """Serves flower_photos.tgz (the 750-photo sample packed like the real archive) and the
    weight files on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mirror")
    with tarfile.open(root / "flower_photos.tgz", "w:gz", compresslevel=1) as tar:
        tar.add(SHARED / "data" / "flower_photos_sample", arcname="flower_photos")
    # Keras Applications' layout: <family folder>/<file>. The real ImageNet weights of
    # MobileNet V2 0.35 (../shared/golden's only real file) are served for every α = 0.35
    # resolution: Keras' files for one α hold the same tensors whatever the resolution, so
    # the lessons (the tutorial's 0.35/128 included) run on real features and the tests can
    # check what they teach. The other widths are ../shared's seeded random stand-ins.
    (root / "mobilenet_v2").mkdir()
    for h5 in (SHARED / "golden").glob("mobilenet_v2_*_no_top.h5"):
        alpha, rows = h5.name[len("mobilenet_v2_") : -len("_no_top.h5")].split("_")
        if alpha == "0.35":
            continue
        keras_name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"
        (root / "mobilenet_v2" / keras_name).symlink_to(h5)
    for rows in (96, 128, 160, 192, 224):
        keras_name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_{rows}_no_top.h5"
        (root / "mobilenet_v2" / keras_name).symlink_to(REAL_MOBILENET_V2_035)
    # The other families: generator weights (../shared/golden/families/generator.md) in
    # Keras' save_weights layout, at their Keras Applications paths.
    for family, relative in FAMILY_FILES.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_family_h5(family, target)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


FAMILY_FILES = {
    "inception_v3": "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_v2": "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "nasnet_mobile": "nasnet/NASNet-mobile-no-top.h5",
    "efficientnet_b0": "efficientnetb0_notop.h5",
    "mobilenet_v3_large": "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
}

MASK64 = (1 << 64) - 1


def generate(layer, weight, shape, gain):
    """The documented weight generator: FNV-1a of the name seeds splitmix64."""
    state = 0xCBF29CE484222325
    for b in f"{layer}/{weight}".encode():
        state = ((state ^ b) * 0x100000001B3) & MASK64
    n = math.prod(shape)
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    if weight == "gamma":
        v = 0.5 + u
    elif weight in ("moving_variance", "variance"):
        v = 0.5 + 1.5 * u
    elif weight == "count":
        v = np.full(n, 1000.0)
    elif len(shape) >= 2:
        fan_in = math.prod(shape[:2]) if weight == "depthwise_kernel" else math.prod(shape[:-1])
        v = (2 * u - 1) * math.sqrt(6 / fan_in) * gain
    else:
        v = (2 * u - 1) * 0.05
    return v.astype(np.float32).reshape(shape)


def keras_attr(value):
    """What Keras hands h5py: a list of names as bytes (an empty list as np.asarray([]))."""
    if isinstance(value, list):
        return [v.encode() for v in value] if value else np.asarray([])
    return value


def write_family_h5(family, path):
    """The family's weights in the exact HDF5 tree tf_keras' save_weights writes
    (<family>.keras_layout.json: weightless layers in layer_names, layer names with '/'
    nesting groups inside other layers' groups), written through h5py as Keras writes it,
    with the generator's values. Weighted layers map to the generator's names by order (the
    published Inception V3 file carries other generated names than a fresh session)."""
    import h5py

    families = SHARED / "golden" / "families"
    spec = json.loads((families / f"{family}.json").read_text())
    layout = json.loads((families / f"{family}.keras_layout.json").read_text())
    gain = spec.get("kernel_gain", 1.0)
    groups = {g["path"]: g["attrs"] for g in layout["groups"]}
    weighted = [n for n in layout["attrs"]["layer_names"] if groups[n].get("weight_names")]
    spec_layers = []
    for layer, weight, _ in spec["weights"]:
        if not spec_layers or spec_layers[-1][0] != layer:
            spec_layers.append((layer, []))
        spec_layers[-1][1].append(weight)
    assert len(weighted) == len(spec_layers), family
    owner = {}
    for name, (layer, weights) in zip(weighted, spec_layers):
        for file_weight, weight in zip(groups[name]["weight_names"], weights):
            owner[f"{name}/{file_weight}"] = (layer, weight)
    with h5py.File(path, "w") as f:
        for key, value in layout["attrs"].items():
            f.attrs[key] = keras_attr(value)
        for group_path, attrs in groups.items():
            group = f.require_group(group_path)
            for key, value in attrs.items():
                group.attrs[key] = keras_attr(value)
        for dataset in layout["datasets"]:
            layer, weight = owner[dataset["path"]]
            values = generate(layer, weight, dataset["shape"], gain)
            f.create_dataset(dataset["path"], data=values.astype(dataset["dtype"]))


@pytest.fixture(scope="session")
def product_env(mirror, tmp_path_factory):
    """Environment for kernels and servers: mirror URLs, a cache that starts empty (so the first
    notebook really downloads and extracts) and kernels as `./lab` prepares them."""
    home = tmp_path_factory.mktemp("flowers_kit_home")
    env = dict(os.environ)
    env.update(
        FLOWERS_DATA_URL=f"{mirror}/flower_photos.tgz",
        FLOWERS_WEIGHTS_URL=f"{mirror}/",
        FLOWERS_KIT_HOME=str(home),
        # Kernels' scratch crates (scripts/evcxr-kernel), where the tests can check them.
        FLOWERS_KIT_KERNELS_DIR=str(tmp_path_factory.mktemp("kernels")),
        # The kernels' shared rust-analyzer (scripts/evcxr-kernel) leaves 20 s after the last
        # kernel, not 5 minutes, so that no test leaves it running for long.
        EVCXR_SHARED_ANALYZER_IDLE_SECS="20",
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # As after `./lab`'s build step: the kit built in the kernel template that every kernel's slot
    # starts from, and the stamp that lets kernels load the kit at start (scripts/prewarm.py,
    # scripts/evcxr-kernel).
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "prewarm.py"), "tests"],
                   env=env, check=True, timeout=1800)
    return env

