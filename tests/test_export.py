"""The ONNX export against the real consumers: ONNX's own checker and ONNX Runtime (pinned in
the test venv) load every family's export and give the probabilities `flowers predict` gives,
within 1e-4. The weights are the families' generator files the notebooks' mirror serves (the
real ImageNet file for MobileNet V2 0.35), laid out as Keras writes them."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "flower_photos_sample"
FLOWERS = ROOT / "target" / "debug" / "flowers"
# One model of each family, at its own input size.
MODELS = {
    "mobilenet_v2_0.35_128": 128,
    "mobilenet_v3_large": 224,
    "efficientnet_b0": 224,
    "resnet50_v2": 224,
    "inception_v3": 299,
    "nasnet_mobile": 224,
}


def flowers(env, *args):
    assert FLOWERS.is_file(), "build the flowers program first (cargo build -p flowers_kit --bin flowers)"
    done = subprocess.run([str(FLOWERS), *map(str, args)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("model", list(MODELS))
def test_onnx_export_gives_the_probabilities_predict_gives(model, product_env, tmp_path):
    size = MODELS[model]
    # A small dataset (4 photos per class). MobileNet V2 (real weights) trains a hidden layer
    # and fine-tunes its last block, MobileNet V3 fine-tunes its last block, so that every
    # part of the export is exercised. The other families run on generator weights whose
    # features are large (up to ~1e4): their heads train at small rates, unfine-tuned, and
    # their features are checked too, since NASNet's saturate the softmax.
    data = tmp_path / "data"
    for folder in sorted(SAMPLE.iterdir()):
        (data / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:4]:
            shutil.copy(photo, data / folder.name / photo.name)
    fine_tuned = model.startswith("mobilenet")
    settings = {"mobilenet_v2_0.35_128": ["--hidden", "32", "--fine-tune-blocks", "1", "--head-steps", "10"],
                "mobilenet_v3_large": ["--fine-tune-blocks", "1", "--head-steps", "10"]}.get(model, ["--lr", "1e-5"])
    flowers(product_env, "train", "--data", data, "--model", model, "--steps", "30", "--batch", "8",
            *settings, "--out", tmp_path / "run")
    classifier = tmp_path / "run" / "classifier.safetensors"
    exported = tmp_path / f"{model}.onnx"
    printed = flowers(product_env, "export", "--classifier", classifier, "--out", exported)
    print(printed.strip())

    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == sorted(f.name for f in SAMPLE.iterdir())
    assert meta["model"] == model and meta["resize"] == "tf_v1_bilinear"
    [pixels] = proto.graph.input
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["batch", size, size, 3]

    # Photos already at the model's size, so that the kit's resize leaves them as they are
    # and both sides see the same bytes.
    photos = []
    for i, source in enumerate(sorted(SAMPLE.glob("*/*.jpg"))[::150][:5]):
        path = tmp_path / f"photo{i}.png"
        Image.open(source).convert("RGB").resize((size, size), Image.BILINEAR).save(path)
        photos.append(path)
    expected = [json.loads(line)["probabilities"] for line in
                flowers(product_env, "predict", "--json", "--classifier", classifier, *photos).splitlines()]
    # The network's features as a second output, beside the probabilities.
    proto.graph.output.append(onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = np.stack([np.asarray(Image.open(p)) for p in photos])
    probabilities, features = session.run(["probabilities", "features"], {"pixels": batch})
    difference = np.abs(probabilities - np.array(expected, np.float32)).max()
    print(f"{model}: {exported.stat().st_size / 1e6:.1f} MB, max |Δp| {difference:.2e}")
    assert difference <= 1e-4, (probabilities, expected)
    if not fine_tuned:
        flowers(product_env, "features", "--model", model, "--out", tmp_path / "features.safetensors", *photos)
        ours = read_safetensors(tmp_path / "features.safetensors")["features"]
        scale = max(1.0, float(np.abs(ours).max()))
        feature_difference = np.abs(features - ours).max()
        print(f"{model}: features max |Δ| {feature_difference:.2e} (largest {scale:.1f})")
        assert feature_difference <= 1e-4 * scale
        # The features differ between photos: the export is not a constant.
        assert np.ptp(features, axis=0).max() > 1e-3 * scale
    else:
        assert np.ptp(probabilities, axis=0).max() > 1e-3


def read_safetensors(path):
    """The f32 tensors of a safetensors file (8-byte header length, JSON header, data)."""
    raw = Path(path).read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[8 + length + start:8 + length + end], np.float32).reshape(info["shape"])
    return tensors


def test_export_refuses_what_it_cannot_write(product_env, tmp_path):
    bad = subprocess.run([str(FLOWERS), "export", "--classifier", tmp_path / "missing.safetensors",
                          "--out", tmp_path / "m.onnx"], env=product_env, capture_output=True, text=True)
    assert bad.returncode != 0 and "missing.safetensors" in bad.stderr, bad.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    bad = subprocess.run([str(FLOWERS), "export", "--classifier", tmp_path / "junk.safetensors",
                          "--out", tmp_path / "m.onnx"], env=product_env, capture_output=True, text=True)
    assert bad.returncode != 0 and "junk.safetensors" in bad.stderr, bad.stderr
    assert not (tmp_path / "m.onnx").exists()
    bad = subprocess.run([str(FLOWERS), "export", "--classifier", tmp_path / "junk.safetensors",
                          "--out", tmp_path / "m.txt"], env=product_env, capture_output=True, text=True)
    assert bad.returncode != 0 and ".onnx" in bad.stderr, bad.stderr


@pytest.mark.parametrize("edition", ["", "zh-CN/"])
def test_the_python_snippet_of_notebook_05_runs_the_export(edition, product_env, tmp_path, capsys):
    """The snippet notebook 05 ends with, as a learner copies it: only the file's path and the
    photo's name replaced. Its answer for a photo of any size comes close to `flowers
    predict`'s (it rounds the resized photo to bytes, and Pillow decodes the JPEG)."""
    notebook = json.loads((ROOT / "notebooks" / f"{edition}05_beyond_the_tutorial.ipynb").read_text())
    [cell] = [c for c in notebook["cells"] if "InferenceSession" in "".join(c["source"])]
    snippet = "".join(cell["source"]).split("```python\n")[1].split("```")[0]
    data = tmp_path / "data"
    for folder in sorted(SAMPLE.iterdir()):
        (data / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:4]:
            shutil.copy(photo, data / folder.name / photo.name)
    flowers(product_env, "train", "--data", data, "--model", "mobilenet_v2_0.35_128", "--steps", "30",
            "--batch", "8", "--out", tmp_path / "run")
    exported = tmp_path / "flowers.onnx"
    flowers(product_env, "export", "--classifier", tmp_path / "run" / "classifier.safetensors", "--out", exported)
    path = 'os.path.expanduser("~/.cache/flowers_kit/flowers.onnx")'
    assert snippet.count(path) == 1 and snippet.count('"rose.jpg"') == 1, snippet
    classes = sorted(f.name for f in SAMPLE.iterdir())
    for photo in sorted(SAMPLE.glob("*/*.jpg"))[::250][:3]:
        code = snippet.replace(path, repr(str(exported))).replace('"rose.jpg"', repr(str(photo)))
        capsys.readouterr()
        exec(compile(code, "notebook 05's snippet", "exec"), {})
        printed = capsys.readouterr().out.strip().splitlines()[-1]
        answer = eval(printed, {})  # the dict the snippet prints: {class: probability}
        assert list(answer) == classes, printed
        [line] = flowers(product_env, "predict", "--json", "--classifier",
                         tmp_path / "run" / "classifier.safetensors", photo).splitlines()
        expected = json.loads(line)["probabilities"]
        difference = max(abs(answer[c] - p) for c, p in zip(classes, expected))
        print(f"{photo.name} ({Image.open(photo).size[0]}×{Image.open(photo).size[1]}): max |Δp| {difference:.3f}")
        assert difference <= 0.02, (answer, expected)
