"""The Rust kernel as JupyterLab runs it (scripts/evcxr-kernel): each kernel works in a reusable
slot, so a new kernel finds the kit already built, kernels open at once never share one, and
disk use stays bounded however often kernels are killed (evcxr alone left ~700 MB in /tmp at
every kernel start, which filled CI's disk)."""

import hashlib
import json
import os
import re
import pathlib
import signal
import subprocess
import time
import tomllib

import nbformat
from jupyter_client.manager import KernelManager

from conftest import ROOT


def folders(env):
    root = pathlib.Path(env["FLOWERS_KIT_KERNELS_DIR"])
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in (".cargo", "template"))


def start(env):
    km = KernelManager(kernel_name="rust")
    km.start_kernel(env=env, cwd=str(ROOT / "notebooks"))
    client = km.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=300)
    return km, client


def run(client, code):
    """Runs a cell; returns its status and everything it printed or raised."""
    printed = []

    def keep(msg):
        content = msg["content"]
        printed.append(content.get("text", "") + content.get("evalue", "") + "".join(content.get("traceback", [])))

    reply = client.execute_interactive(code, timeout=300, output_hook=keep)
    return reply["content"]["status"], "".join(printed)


def stop(km, client, now=False):
    client.stop_channels()
    km.shutdown_kernel(now=now)


def test_kernels_reuse_slots_never_share_one_and_keep_cells_checked(product_env):
    env = dict(product_env)
    root = pathlib.Path(env["FLOWERS_KIT_KERNELS_DIR"])

    first, first_client = start(env)
    second, second_client = start(env)
    try:
        assert run(first_client, "let answer = 6 * 7;")[0] == "ok"
        assert run(second_client, "let answer = 6 * 7;")[0] == "ok"
        # Two kernels at once: two slots, each with evcxr's crate built in it (not in /tmp).
        assert folders(env) == ["slot-0", "slot-1"], folders(env)
        for slot in ("slot-0", "slot-1"):
            assert (root / slot / "target").is_dir(), list((root / slot).iterdir())
            assert (root / slot / "src" / "lib.rs").is_file()
        # The learner's cells keep evcxr's checks: an overflow is a panic with a message.
        _, printed = run(first_client, "let small: u8 = std::hint::black_box(255); let _ = small + 1;")
        assert "attempt to add with overflow" in printed, printed
    finally:
        stop(first, first_client)
        stop(second, second_client, now=True)

    # Killed or not, the slots are free again: new kernels reuse them and nothing piles up.
    lib = root / "slot-0" / "src" / "lib.rs"
    before = lib.stat().st_mtime_ns
    for now in (True, False):
        km, client = start(env)
        try:
            assert run(client, "let answer = 6 * 7;")[0] == "ok"
        finally:
            stop(km, client, now=now)
    assert folders(env) == ["slot-0", "slot-1"], folders(env)
    assert lib.stat().st_mtime_ns != before, "a new kernel did not work in the free slot-0"
    # The kit and its hot dependencies build as for release, the rest quickly, none with checks.
    profiles = tomllib.loads((root / ".cargo" / "config.toml").read_text())["profile"]["dev"]["package"]
    assert profiles["*"] == {"opt-level": 0, "debug-assertions": False, "overflow-checks": False}, profiles
    for hot in ("flowers_kit", "dfdx", "gemm-common", "zune-jpeg", "rayon-core"):
        assert profiles[hot] == {"opt-level": 3}, (hot, profiles)


def test_a_new_slot_starts_from_the_template_and_kernels_start_with_the_kit_loaded(product_env):
    env = dict(product_env)
    root = pathlib.Path(env["FLOWERS_KIT_KERNELS_DIR"])
    template_kit = sorted((root / "template" / "target").rglob("libflowers_kit-*.rlib"))
    assert template_kit, "scripts/prewarm.py left no template with the kit built"
    # One kernel more than there are slots, so that one of them takes a slot never used.
    used = folders(env)
    kernels = [start(env) for _ in range(len(used) + 1)]
    try:
        # (Another kernel still closing may hold a used slot: then two are new.)
        new = sorted(set(folders(env)) - set(used))
        assert new, folders(env)
        for _, client in kernels:
            # init.evcxr loaded the kit while the kernel started (scripts/evcxr-kernel).
            status, printed = run(client, 'println!("prewarmed: {}", flowers_kit_prewarmed);')
            assert status == "ok" and "prewarmed: true" in printed, printed
        # The notebooks' second cell needs the kit: in the new slot it comes from the template,
        # as built there, not rebuilt.
        for _, client in kernels:
            status, printed = run(client, "use flowers_kit::prelude::*;\nlet classes = 5usize;")
            assert status == "ok", printed
        for slot in new:
            copied = sorted((root / slot / "target").rglob("libflowers_kit-*.rlib"))
            assert [p.stat().st_mtime_ns for p in copied] == [p.stat().st_mtime_ns for p in template_kit], slot
    finally:
        for km, client in kernels:
            stop(km, client)


def analyzer_base(env):
    """The path scripts/evcxr-kernel gives evcxr for the rust-analyzer shared by the kernels of
    `env`'s kernels folder; the socket is `<base>-<evcxr build>.sock`."""
    sockets = pathlib.Path("/tmp") / f"flowers-kit-analyzer-{os.getuid()}"
    return sockets / hashlib.sha256(env["FLOWERS_KIT_KERNELS_DIR"].encode()).hexdigest()[:16]


def analyzers(base):
    """{pid: socket} of the shared analyzers (evcxr_jupyter --shared-analyzer) for `base`."""
    found = {}
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--shared-analyzer" in args:
            socket = args[args.index(b"--shared-analyzer") + 1].decode()
            if socket.startswith(f"{base}-") and socket.endswith(".sock"):
                found[int(proc.name)] = pathlib.Path(socket)
    return found


def open_files(pid):
    """The targets of `pid`'s open file descriptors."""
    targets = []
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            pass
    return targets


def test_kernels_share_one_rust_analyzer_and_carry_on_without_it(product_env):
    env = dict(product_env)
    base = analyzer_base(env)
    kernels = [start(env) for _ in range(2)]
    try:
        # A variable kept from cell to cell needs its type, which evcxr asks rust-analyzer for.
        for _, client in kernels:
            assert run(client, 'let petals = vec!["tulip".to_string(), "rose".to_string()];')[0] == "ok"
        for _, client in kernels:
            status, printed = run(client, 'println!("{} petals, {}", petals.len(), petals[0].to_uppercase());')
            assert status == "ok" and "2 petals, TULIP" in printed, printed
        # One analyzer answers both kernels: its listening socket and one connection per kernel.
        ((pid, socket),) = analyzers(base).items()
        files = open_files(pid)
        assert sum(f.startswith("socket:") for f in files) >= 3, files
        # It holds no lock of the kernel that started it (a kernel slot's, the template's): only
        # its own.
        locks = [f for f in files if f.endswith(".lock")]
        assert locks == [str(socket.with_suffix(".lock"))], locks

        # Killed (as by the out-of-memory killer), it is started again by the next kernel that
        # needs it, and the learners' variables and type inference carry on.
        os.kill(pid, signal.SIGKILL)
        for _, client in kernels:
            status, printed = run(client, "let letters: usize = petals.iter().map(|p| p.len()).sum();")
            assert status == "ok", printed
            status, printed = run(client, 'let more = letters + 1;\nprintln!("{more} letters");')
            assert status == "ok" and "10 letters" in printed, printed
        (restarted,) = analyzers(base)
        assert restarted != pid
    finally:
        for km, client in kernels:
            stop(km, client)
    # Once no kernel uses it, it leaves (after EVCXR_SHARED_ANALYZER_IDLE_SECS, 20 s here).
    deadline = time.monotonic() + 90
    while analyzers(base) and time.monotonic() < deadline:
        time.sleep(1)
    assert not analyzers(base) and not socket.exists()

    # Sharing off: the kernel analyses on its own, and no server starts.
    km, client = start(dict(env, FLOWERS_KIT_SHARED_ANALYZER="0"))
    try:
        assert run(client, "let bloom = String::from(\"iris\");")[0] == "ok"
        status, printed = run(client, "println!(\"{}\", bloom.len());")
        assert status == "ok" and "4" in printed, printed
        assert not analyzers(base)
    finally:
        stop(km, client)


def test_every_crate_the_kernel_optimises_is_one_the_kit_builds():
    """The opt-level 3 list in scripts/evcxr-kernel names crates; a renamed or dropped
    dependency would silently fall back to opt-level 0 (cargo only warns), so check the names."""
    script = (ROOT / "scripts" / "evcxr-kernel").read_text()
    config = script.split("<<'TOML'\n", 1)[1].split("\nTOML\n", 1)[0]
    named = set(tomllib.loads(config)["profile"]["dev"]["package"]) - {"*"}
    assert {"flowers_kit", "dfdx", "gemm-common", "zune-jpeg"} <= named, named
    rustc = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    host = next(line.split(": ", 1)[1] for line in rustc.splitlines() if line.startswith("host: "))
    # The crates the notebooks' build of the kit (no default features) runs: its normal
    # dependencies, followed from the kit through cargo's resolve graph.
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--filter-platform", host,
         "--no-default-features", "--manifest-path", str(ROOT / "flowers_kit" / "Cargo.toml")],
        capture_output=True, text=True, check=True,
    ).stdout)
    names = {package["id"]: package["name"] for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    kit = next(i for i, name in names.items() if name == "flowers_kit")
    reached, todo = set(), [kit]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo += [d["pkg"] for d in nodes[node]["deps"] if any(k["kind"] is None for k in d["dep_kinds"])]
    built = {names[i] for i in reached}
    assert named <= built, f"not dependencies of the notebooks' build of the kit: {sorted(named - built)}"
    # The notebooks' build has no HTTP stack (downloads run the `flowers` program).
    assert not built & {"reqwest", "hyper", "tokio", "rustls"}, sorted(built & {"reqwest", "hyper", "tokio", "rustls"})


def test_no_notebook_turns_on_evcxrs_compilation_cache():
    """evcxr's `:cache` restores a crate with the build records of the folder it was first built
    in; once that folder is gone, cargo rebuilds it and the kit at a kernel's start, which undoes
    the template (scripts/notebook-env.sh)."""
    sources = [(path.name, cell.source) for path in sorted((ROOT / "notebooks").rglob("*.ipynb"))
               for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    sources.append(("init.evcxr", (ROOT / ".lab" / "evcxr" / "init.evcxr").read_text()))
    on = [name for name, source in sources if re.search(r"^\s*:cache\s+[1-9]", source, re.M)]
    assert not on, f"evcxr's cache is turned on in {on}"


def test_lab_cuda_refuses_at_once_without_a_gpu_and_cuda_kernels_get_the_cuda_cfg(tmp_path):
    """`./lab --cuda` on a machine where no NVIDIA GPU answers stops before installing anything,
    saying so; where one does, its kernels build the kit with `--cfg flowers_kit_cuda` (the
    `cuda` feature: flowers_kit/build.rs; scripts/cuda-kernels.sh builds it that way)."""
    no_gpu = tmp_path / "bin"
    no_gpu.mkdir()
    # An nvidia-smi that fails, as one does without a driver.
    (no_gpu / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (no_gpu / "nvidia-smi").chmod(0o755)
    for path in (f"{no_gpu}:/usr/bin:/bin", "/usr/bin:/bin"):
        done = subprocess.run([str(ROOT / "lab"), "--cuda"], env=dict(os.environ, PATH=path),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done
        assert "no NVIDIA GPU answers on this machine" in done.stderr and "without --cuda" in done.stderr, done.stderr
    # The kernel script's cargo configuration, with and without FLOWERS_KIT_CUDA (evcxr_jupyter
    # replaced by `true`: only the configuration is looked at).
    for cuda in ("1", "0"):
        kernels = tmp_path / f"kernels-{cuda}"
        subprocess.run([str(ROOT / "scripts" / "evcxr-kernel")], check=True, timeout=60,
                       env=dict(os.environ, FLOWERS_KIT_KERNELS_DIR=str(kernels), FLOWERS_KIT_CUDA=cuda,
                                EVCXR_JUPYTER="true", FLOWERS_KIT_PREWARM="0"))
        config = tomllib.loads((kernels / ".cargo" / "config.toml").read_text())
        assert config.get("build", {}).get("rustflags") == (["--cfg", "flowers_kit_cuda"] if cuda == "1" else None)
        assert config["patch"]["crates-io"]["dfdx"]["path"] == str((ROOT / "tools" / "dfdx").resolve())
