"""Executes every notebook in a fresh Rust (evcxr) kernel, as a reader would, and checks
what it printed and displayed."""

import html
import re
import time

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import ARTIFACTS, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Lines flowers_kit's progress reporting prints (see flowers_kit/src/progress.rs).
PROGRESS = re.compile(
    r"^(Extracting features|Extracted \d+ photos|\d+ photos from the cache|Downloading |Downloaded )", re.M
)
# Most progress lines one cell may print: a start, three quarters and a closing line for an
# operation, and a download before it.
MAX_PROGRESS_LINES = 8
# A code cell that ends in one of these shows a figure.
FIGURE = re.compile(r"^(plot::|Picture::|Chart::)")


def text_of(output):
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", [])) + output.get("evalue", "")
    return output.get("data", {}).get("text/plain", "")


def shows_figure(cell):
    """Whether the cell's value is a figure: its last line of code (comments aside) starts
    with a plotting call and is not a statement."""
    lines = program(cell.source)
    return bool(lines) and bool(FIGURE.match(lines[-1].strip())) and not lines[-1].rstrip().endswith(";")


def artifact_name(path):
    """zh-CN editions are saved beside the English ones under their own name."""
    return f"zh-CN_{path.name}" if path.parent.name == "zh-CN" else path.name


def execute(path, env):
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="rust")
    km.start_kernel(env=env, cwd=str(path.parent))
    client = NotebookClient(nb, km=km, timeout=1800, startup_timeout=600, allow_errors=True)
    try:
        client.execute()
    finally:
        # A graceful shutdown, as JupyterLab does it, so the kernel removes its scratch crate.
        km.shutdown_kernel()
    nbformat.write(nb, ARTIFACTS / artifact_name(path))
    return nb


def cell_seconds(cell):
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return None
    from datetime import datetime

    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def check(nb, name):
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        for out in outputs:
            text = text_of(out)
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: error output: {text[:2000]}")
            if "panicked at" in text:
                problems.append(f"cell {i}: panic: {text[:2000]}")
            if out.get("name") == "stderr" and re.search(r"^error(\[E\d+\])?:", text, re.M):
                problems.append(f"cell {i}: compile error: {text[:2000]}")
        progress = sum(len(PROGRESS.findall(text_of(o))) for o in outputs if o.get("name") == "stdout")
        if progress > MAX_PROGRESS_LINES:
            problems.append(f"cell {i} prints {progress} progress lines (at most {MAX_PROGRESS_LINES})")
        if shows_figure(cell):
            mimes = {m for out in outputs for m in out.get("data", {})}
            if not mimes & {"image/png", "image/svg+xml"}:
                problems.append(f"cell {i} should show a figure but has outputs {sorted(mimes)}: {cell.source[:120]!r}")
    timings = [(cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    slowest = sorted((t, i) for t, i in timings if t is not None)[-3:]
    print(f"{name}: slowest cells (s, index): {[(round(t, 1), i) for t, i in slowest]}")
    return problems


# The zh-CN editions the tests execute (the others differ from English only in strings,
# which test_zh_cn_edition_runs_the_same_code checks).
EXECUTED = NOTEBOOKS + [ROOT / "notebooks" / "zh-CN" / n for n in (
    "00_transfer_learning_flowers.ipynb", "05_beyond_the_tutorial.ipynb")]


def printed_by(nb):
    return "".join(text_of(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def percent(printed, label):
    """The percentage a notebook printed after `label` (a regex), as a float."""
    match = re.search(label + r"\s*([0-9.]+)\s*%", printed)
    assert match, f"nothing printed matches {label!r}"
    return float(match.group(1))


def check_results(stem, printed):
    """The lesson's key result, in a band that a regression which breaks learning fails:
    the notebook tests serve the real ImageNet weights of MobileNet V2 0.35 for every
    α = 0.35 variant, so these are real features of the 750-photo sample. Both editions'
    wordings are read (the tests execute zh-CN 00 and 05)."""
    if stem.startswith("00_"):
        # The second cell says where the work runs (device::Compute).
        assert re.search(r"^CPU: .+, \d+ threads, (AVX-512|AVX2|portable) kernels\. ", printed, re.M), printed[:2000]
        accuracy = percent(printed, r"(?:Final test accuracy:|最终测试准确率：)")
        assert accuracy >= 70.0, f"the tutorial's classifier reached only {accuracy:.1f}%"
        for step in (0, 10, 50, 99):
            assert f"Test accuracy at step {step}: " in printed
        pretrained = percent(printed, r"(?:ImageNet weights:|ImageNet 权重：)")
        untrained = percent(printed, r"(?:random weights:|随机权重：)")
        print(f"{stem}: final test accuracy {accuracy:.1f}%, random weights {untrained:.1f}%")
        # Pre-training is what the lesson is about: it must be worth far more than noise.
        assert pretrained > untrained + 15.0, (pretrained, untrained)
    if stem.startswith(("02_", "04_")):
        # The best setting found on validation beats the tutorial's own training on test.
        best = percent(printed, r"best on validation, [^:]*: test accuracy")
        tutorial = percent(printed, r"the tutorial's \w+ and training: test accuracy")
        print(f"{stem}: best on validation {best:.1f}%, the tutorial's {tutorial:.1f}% (test)")
        assert best > tutorial, (best, tutorial)
    if stem.startswith("05_"):
        # The last cell prints the frozen baseline, then the recipe chosen on validation.
        lines = re.findall(
            r"^(.*)[:：] ?(?:validation accuracy|验证准确率) ([0-9.]+) %.*(?:test accuracy|测试准确率) ([0-9.]+) %",
            printed, re.M)
        assert len(lines) == 2, lines
        (_, frozen_validation, frozen_test), (recipe, recipe_validation, recipe_test) = lines
        print(f"{stem}: {recipe}: validation {recipe_validation}% (frozen {frozen_validation}%), "
              f"test {recipe_test}% (frozen {frozen_test}%)")
        # Augmentation and fine-tuning must really help where the recipe is chosen; on 150 test
        # photos the two differ by a photo or two, so the test figure is only held to a floor
        # that broken learning (a label off by one, a broken backward pass) cannot reach.
        assert float(recipe_validation) >= float(frozen_validation) + 2.0, lines
        assert float(recipe_test) >= 70.0, lines


def untranslated_charts(nb):
    """Every chart a zh-CN notebook draws must carry Chinese text: the language is set in one
    cell and each later cell is a separate library in evcxr, so a setting that does not
    survive between cells would leave English charts."""
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            svg = out.get("data", {}).get("image/svg+xml")
            if svg is None:
                continue
            svg = html.unescape("".join(svg))
            if not CHINESE_TEXT.search(svg):
                problems.append(f"cell {i} draws a chart with no Chinese text")
            texts = {t.strip() for t in re.findall(r">([^<>]*)</text>", svg)}
            english = sorted(t for t in texts if t in KIT_ENGLISH_TEXTS or t.startswith("Confusion matrix"))
            if english:
                problems.append(f"cell {i} draws a chart with the kit's English texts {english}")
    return problems


# The kit's own chart texts in English (plot/language.rs).
KIT_ENGLISH_TEXTS = {"Loss", "Accuracy", "step", "cross-entropy", "accuracy", "train (batch)",
                     "test", "predicted label", "true label", "Prediction", "probability"}


@pytest.mark.parametrize("path", EXECUTED, ids=[artifact_name(p)[:-6] for p in EXECUTED])
def test_notebook_runs_top_to_bottom(path, product_env):
    nb = execute(path, product_env)
    problems = check(nb, artifact_name(path))
    if path.parent == ZH_CN:
        problems += untranslated_charts(nb)
    assert not problems, "\n".join(problems)
    check_results(path.stem, printed_by(nb))


def test_editing_the_learning_rate_reruns_training_from_cache(product_env):
    """A reader's loop: run the tutorial, change LEARNING_RATE, re-run the training cell. The
    re-run must not extract features again; its duration (compile included) is reported."""
    path = next(p for p in NOTEBOOKS if p.stem.startswith("00_"))
    nb = nbformat.read(path, as_version=4)
    training = next(i for i, c in enumerate(nb.cells) if "let (classifier, history) = train(" in c.source)
    hyper = next(i for i, c in enumerate(nb.cells) if "const LEARNING_RATE" in c.source)
    # Prints the test-loss history: it depends on the learning rate even where the accuracy
    # does not.
    probe = nbformat.v4.new_code_cell('println!("{:?}", history.test_loss);')
    nb.cells.append(probe)
    probe_index = len(nb.cells) - 1
    km = KernelManager(kernel_name="rust")
    km.start_kernel(env=product_env, cwd=str(ROOT / "notebooks"))
    client = NotebookClient(nb, km=km, timeout=1800, startup_timeout=600)
    try:
        with client.setup_kernel():
            for i in range(training + 1):
                client.execute_cell(nb.cells[i], i)
            client.execute_cell(probe, probe_index)
            before = "".join(text_of(o) for o in probe.outputs)
            nb.cells[hyper].source = nb.cells[hyper].source.replace(
                "const LEARNING_RATE: f32 = 0.01;", "const LEARNING_RATE: f32 = 0.05;"
            )
            client.execute_cell(nb.cells[hyper], hyper)
            started = time.monotonic()
            client.execute_cell(nb.cells[training], training)
            seconds = time.monotonic() - started
            printed = "".join(text_of(o) for o in nb.cells[training].outputs)
            client.execute_cell(probe, probe_index)
            after = "".join(text_of(o) for o in probe.outputs)
    finally:
        km.shutdown_kernel()
    assert "Final test accuracy:" in printed, printed
    assert before.startswith("[") and after.startswith("["), (before, after)
    # The edit took effect: the same seed with another learning rate gives another history.
    assert after != before, after
    print(f"re-running the training cell after editing LEARNING_RATE: {seconds:.2f} s")


ZH_CN = ROOT / "notebooks" / "zh-CN"


def program(source):
    """A code cell without its comments and blank lines: what the compiler sees."""
    out, i, in_string = [], 0, False
    while i < len(source):
        ch = source[i]
        if in_string:
            out.append(ch)
            if ch == "\\":
                out.append(source[i + 1 : i + 2])
                i += 1
            elif ch == '"':
                in_string = False
        elif source.startswith("//", i):
            while i < len(source) and source[i] != "\n":
                i += 1
            continue
        else:
            in_string = ch == '"'
            out.append(ch)
        i += 1
    return [line.rstrip() for line in "".join(out).splitlines() if line.strip()]


def test_program_ignores_comments_but_not_strings():
    assert program('let a = "https://x"; // note\n// only a comment\nlet b = 1;') == [
        'let a = "https://x";',
        "let b = 1;",
    ]
    assert program('let a = "https://x";') != program('let a = "https://y";')


CJK = re.compile(r"[\u4e00-\u9fff]")
# What a translated string may change: Chinese characters, and Chinese (full-width) punctuation.
CHINESE_TEXT = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# The one line the zh-CN editions add: the kit's own chart texts in Chinese.
ZH_CN_SETTING = "plot::set_language(plot::Language::ZhCn);"
LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def literals_apart(line):
    """A line of code with each string literal's text taken out, and those texts."""
    return LITERAL.sub('""', line), [m[1:-1] for m in LITERAL.findall(line)]


BROKEN_CHINESE_LINE = re.compile(r"[\u2000-\u206f\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]\n[ \t]*[\u2000-\u206f\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def same_program(en, zh):
    """None if the zh-CN cell is the English cell's program with, at most, its string literals
    translated (each changed literal has Chinese in it and the same format placeholders) and
    the language setting added; otherwise what differs."""
    zh = [line for line in zh if line.strip() != ZH_CN_SETTING]
    if len(en) != len(zh):
        return f"{len(zh)} lines of code instead of {len(en)}"
    for a, b in zip(en, zh):
        (code_a, texts_a), (code_b, texts_b) = literals_apart(a), literals_apart(b)
        if code_a != code_b:
            return f"{b!r} is not {a!r}"
        for x, y in zip(texts_a, texts_b):
            if x != y and not (CHINESE_TEXT.search(y) and PLACEHOLDER.findall(x) == PLACEHOLDER.findall(y)):
                return f"the string {y!r} is neither {x!r} nor its translation with the same placeholders"
    return None


def test_same_program_allows_translated_strings_and_nothing_else():
    en = program('let c = Chart::bars("Accuracy", "test accuracy", &rows);\nprintln!("{name}: {:.1}%", a);')
    assert same_program(en, program('let c = Chart::bars("准确率", "测试准确率", &rows);\nprintln!("{name}：{:.1}%", a);')) is None
    assert same_program(en, [ZH_CN_SETTING] + en) is None
    # A changed value, a dropped placeholder or changed code are all caught.
    assert same_program(en, program('let c = Chart::bars("Accuracy!", "test accuracy", &rows);\nprintln!("{name}: {:.1}%", a);'))
    assert same_program(en, program('let c = Chart::bars("准确率", "测试准确率", &rows);\nprintln!("{name}：%", a);'))
    assert same_program(en, program('let c = Chart::bars("准确率", "测试准确率", &rows[1..]);\nprintln!("{name}: {:.1}%", a);'))
    handle = program('const H: &str = "https://tfhub.dev/google/imagenet/mobilenet_v2_035_128/feature_vector/2";')
    assert same_program(handle, program('const H: &str = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/2";'))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_zh_cn_edition_runs_the_same_code(path):
    """Every notebook has a zh-CN edition (the tutorial's original language) with translated
    prose, comments and display strings, and otherwise exactly the same code."""
    zh_path = ZH_CN / path.name
    assert zh_path.exists(), f"{zh_path} is missing"
    en, zh = nbformat.read(path, as_version=4), nbformat.read(zh_path, as_version=4)
    assert [c.cell_type for c in zh.cells] == [c.cell_type for c in en.cells], "cells differ"
    settings = sum(ZH_CN_SETTING in c.source for c in zh.cells if c.cell_type == "code")
    assert settings == 1, f"{zh_path.name} sets the charts' language {settings} times, not once"
    for i, (a, b) in enumerate(zip(en.cells, zh.cells)):
        if a.cell_type == "code":
            expected = program(a.source.replace('path = "../flowers_kit"', 'path = "../../flowers_kit"'))
            difference = same_program(expected, program(b.source))
            assert difference is None, f"code cell {i}: {difference}"
        else:
            assert CJK.search(b.source), f"markdown cell {i} is not translated: {b.source[:80]!r}"
            # Markdown renders a line break as a space, which splits a Chinese sentence.
            broken = BROKEN_CHINESE_LINE.search(b.source)
            assert not broken, f"markdown cell {i} breaks a line inside Chinese text: {broken.group(0)!r}"
            for link in re.findall(r"\]\(([^)#]+\.ipynb)\)", b.source):
                assert (zh_path.parent / link).exists(), f"cell {i} links to a missing {link}"
        assert not b.get("outputs"), f"cell {i} of {zh_path.name} is saved with outputs"


def test_no_jupyter_checkpoints_are_tracked():
    """JupyterLab's autosave copies (.ipynb_checkpoints) hold a learner's outputs and stale
    code: they must never be committed."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "--", "notebooks"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert tracked, "git lists no notebooks: not a checkout?"
    checkpoints = [f for f in tracked if ".ipynb_checkpoints" in f.split("/")]
    assert not checkpoints, f"tracked checkpoint files: {checkpoints}"


def test_lab_prints_links_to_both_editions_of_the_tutorial():
    """./lab's links (scripts/lab-urls.sh) open the tutorial in English and in Chinese: both
    point at notebooks that exist, under JupyterLab's root (notebooks/), with the token."""
    import subprocess
    from urllib.parse import parse_qs, urlparse

    out = subprocess.run(
        [str(ROOT / "scripts" / "lab-urls.sh"), "8899", "abc123"], capture_output=True, text=True, check=True
    ).stdout
    urls = re.findall(r"http://\S+", out)
    assert len(urls) == 2, out
    for url in urls:
        parts = urlparse(url)
        assert parts.netloc == "127.0.0.1:8899" and parse_qs(parts.query) == {"token": ["abc123"]}, url
        relative = parts.path.removeprefix("/lab/tree/")
        assert (ROOT / "notebooks" / relative).is_file(), url
    assert any("/zh-CN/" in u for u in urls) and "中文" in out
    # ./lab itself calls the script with JupyterLab's port and token.
    assert 'scripts/lab-urls.sh "$port" "$JUPYTER_TOKEN"' in (ROOT / "lab").read_text()
