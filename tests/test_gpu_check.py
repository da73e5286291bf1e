"""`scripts/gpu-check.sh run`, the half that runs on a GPU machine, on this one (which has no
GPU): it refuses in one line without a GPU, refuses packages it cannot trust or run, and runs a
package's tests and benchmarks into $OUT with its summary. The package here is a stand-in (shell
scripts for the binaries, empty files for CUDA's libraries): `scripts/gpu-check.sh build` needs
570 MB of CUDA's libraries and minutes of building, and is rehearsed by hand (README)."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import time

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"
SONAMES = ["libcublas.so.13", "libcublasLt.so.13", "libcuda.so.1", "libnvrtc.so.13"]


def gpu_check(*args, path, **env):
    """The script with PATH set to `path` (plus the system's), and `env` added."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{path}:/usr/bin:/bin", **env))


def fake_nvidia_smi(folder: pathlib.Path, answer: str, status: int = 0) -> pathlib.Path:
    """A folder with an nvidia-smi that prints `answer` on stdout (as the real one prints its
    failures too) and exits with `status`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\necho '{answer}'\nexit {status}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


H100 = "NVIDIA H100 80GB HBM3, 9.0, 580.159.04"


def package(root: pathlib.Path, cap: str = "90", tests: str = "ok", sums: bool = True,
            count: str = "4") -> pathlib.Path:
    """A package laid out as `build` lays it out, its binaries shell scripts: `tests` is "ok",
    "short" (3 tests ran, not BUILD's `count`), "failed" or "hang"."""
    for folder in ("bin", "include", "shared/golden"):
        (root / folder).mkdir(parents=True)
    (root / "shared" / "golden" / "data.bin").write_bytes(b"golden")
    headers = root.parent / f"{root.name}-headers"
    headers.mkdir()
    (headers / "cuda_fp16.h").write_text("// CUDA's\n")
    subprocess.run(["tar", "-C", str(headers), "-cJf", str(root / "include" / "cuda-include.tar.xz"), "."],
                   check=True)
    (root / "include" / "cuda_utils.cuh").write_text("// dfdx's\n")
    body = {"ok": "echo 'test result: ok. 4 passed; 0 failed; 0 ignored'",
            "short": "echo 'test result: ok. 3 passed; 0 failed; 0 ignored'",
            "failed": "echo 'test result: FAILED. 3 passed; 1 failed; 0 ignored'; exit 101",
            "hang": "sleep 600"}[tests]
    (root / "bin" / "cuda-tests").write_text(
        f"#!/bin/sh\necho \"shared: $FLOWERS_TEST_SHARED, args: $*\"\necho \"ld: $LD_LIBRARY_PATH\"\n{body}\n")
    (root / "bin" / "flowers").write_text(
        "#!/bin/sh\necho \"model forward, batch 64: 1234.5 images/s ($*)\"\n")
    for binary in ("cuda-tests", "flowers"):
        (root / "bin" / binary).chmod(0o755)
    (root / "BUILD").write_text(
        f"commit=abc\ncompute_capability={cap}\ncuda_sonames={' '.join(SONAMES)}\n"
        f"nvrtc_include={root.parent / (root.name + '-nvrtc')}/include\n"
        f"dfdx_out_dir={root.parent / (root.name + '-dfdx')}/out\ntests={count}\n")
    if sums:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        (root / "SHA256SUMS").write_text("".join(
            f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in files))
    return root


def cuda_libraries(folder: pathlib.Path) -> str:
    """A folder with (empty) files named as CUDA 13's libraries, NVRTC's builtins included."""
    folder.mkdir()
    for soname in SONAMES + ["libnvrtc-builtins.so.13.0"]:
        (folder / soname).write_bytes(b"")
    return str(folder)


def test_run_without_a_gpu_says_so_in_one_line_and_fails(tmp_path):
    absent = tmp_path / "none"
    absent.mkdir()
    hanging = fake_nvidia_smi(tmp_path / "hanging", "", status=0)
    (hanging / "nvidia-smi").write_text("#!/bin/sh\nsleep 120\n")
    gpus = [
        # No nvidia-smi at all (unless the system has one: then this machine has a GPU).
        *([] if shutil.which("nvidia-smi", path="/usr/bin:/bin") else [absent]),
        hanging,
        fake_nvidia_smi(tmp_path / "failed", "NVIDIA-SMI has failed because it couldn't communicate "
                        "with the NVIDIA driver.", status=9),
        fake_nvidia_smi(tmp_path / "nodevice", "No devices were found", status=6),
        fake_nvidia_smi(tmp_path / "garbled", "Failed to initialize NVML: Driver/library version mismatch"),
    ]
    for path in gpus:
        folders = [package(tmp_path / f"pkg-{path.name}")]
        if path != hanging:
            folders.append(tmp_path / "missing")
        for folder in folders:
            started = time.monotonic()
            done = gpu_check("run", str(folder), path=path)
            assert time.monotonic() - started < 60
            assert done.returncode == 1, done
            assert done.stdout == "", done.stdout
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and "no NVIDIA GPU answers here" in lines[0], done.stderr


def test_run_refuses_what_it_cannot_trust_or_run(tmp_path):
    gpu = fake_nvidia_smi(tmp_path / "gpu", H100)
    libraries = cuda_libraries(tmp_path / "lib")

    def refused(folder, expected, **env):
        done = gpu_check("run", str(folder), path=gpu, **{"LD_LIBRARY_PATH": libraries, **env})
        assert done.returncode == 2 and expected in done.stderr, done
        assert not (folder / "results").exists()
        return done

    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a package from 'scripts/gpu-check.sh build'")
    # A file changed after the build.
    damaged = package(tmp_path / "damaged")
    (damaged / "shared" / "golden" / "data.bin").write_bytes(b"other")
    refused(damaged, "does not match its SHA256SUMS")
    # A file added that SHA256SUMS does not list, and sums that list only BUILD.
    added = package(tmp_path / "added")
    (added / "bin" / "other").write_text("#!/bin/sh\n")
    refused(added, "holds files its SHA256SUMS does not list")
    partial = package(tmp_path / "partial", sums=False)
    (partial / "SHA256SUMS").write_text(
        f"{hashlib.sha256((partial / 'BUILD').read_bytes()).hexdigest()}  BUILD\n")
    refused(partial, "holds files its SHA256SUMS does not list")
    # A link, even one listed.
    linked = package(tmp_path / "linked")
    (linked / "shared" / "link").symlink_to("/etc/passwd")
    refused(linked, "holds links or special files")
    # A BUILD record that is not one.
    for cap in ("", "x[$(touch pwned)]", "9.0"):
        refused(package(tmp_path / f"cap-{len(cap)}", cap=cap), "'compute_capability' is")
    refused(package(tmp_path / "count", count="four"), "'tests' is 'four'")
    assert not (tmp_path / "pwned").exists() and not pathlib.Path("pwned").exists()
    # Built for a later GPU than this one; a driver older than CUDA 13.0's.
    refused(package(tmp_path / "later", cap="100"), "older than the build's sm_100")
    old_driver = fake_nvidia_smi(tmp_path / "old", "NVIDIA H100 80GB HBM3, 9.0, 550.54.15")
    done = gpu_check("run", str(package(tmp_path / "old-driver")), path=old_driver, LD_LIBRARY_PATH=libraries)
    assert done.returncode == 2 and "driver 550 is older than CUDA 13.0's 580" in done.stderr, done
    # CUDA's libraries nowhere to be found, or NVRTC without its builtins: each named.
    done = refused(package(tmp_path / "nolibs"), "not found in", LD_LIBRARY_PATH="")
    assert all(soname in done.stderr for soname in SONAMES), done.stderr
    (pathlib.Path(libraries) / "libnvrtc-builtins.so.13.0").unlink()
    refused(package(tmp_path / "nobuiltins"), "libnvrtc-builtins.so.13.* (beside")


def test_run_writes_the_tests_benchmarks_and_summary_to_out(tmp_path):
    gpu = fake_nvidia_smi(tmp_path / "gpu", H100)
    libraries = cuda_libraries(tmp_path / "lib")
    for tests in ("ok", "short", "failed"):
        pkg = package(tmp_path / f"pkg-{tests}", tests=tests)
        # A header folder left by another build is refilled from the package.
        stale = tmp_path / f"pkg-{tests}-nvrtc" / "include"
        stale.mkdir(parents=True)
        (stale / "cuda_fp16.h").write_text("// stale\n")
        out = tmp_path / f"out-{tests}"
        done = gpu_check("run", str(pkg), path=gpu, LD_LIBRARY_PATH=libraries, OUT=str(out))
        assert done.returncode == (0 if tests == "ok" else 1), done  # 3 of 4 tests is a failure
        summary = (out / "summary.txt").read_text()
        assert f"GPU: {H100}" in summary
        assert f"libraries: {libraries}/libcublas.so.13" in summary
        log = (out / "tests.log").read_text()
        assert f"shared: {pkg}/shared" in log and "--test-threads=1" in log
        # The folders found, first, before what the caller had.
        assert f"ld: {libraries}:{libraries}\n" in log, log
        assert {"ok": "tests: test result: ok. 4 passed", "short": "tests: test result: ok. 3 passed",
                "failed": "tests: test result: FAILED"}[tests] in summary
        # dfdx's run-time kernels find their headers where the build wrote them in.
        assert (tmp_path / f"pkg-{tests}-nvrtc" / "include" / "cuda_fp16.h").read_text() == "// CUDA's\n"
        assert (tmp_path / f"pkg-{tests}-dfdx" / "out" / "cuda_utils.cuh").read_text() == "// dfdx's\n"
        bench = (out / "bench.txt").read_text()
        # The GPU's and the CPU's extraction at batch 64, then a fine-tuning step on each.
        for device in ("cuda", "cpu"):
            assert f"--forward-only --model mobilenet_v2_1.0_224 --batch 64 --seconds 5 --device {device}" in bench
            assert f"--fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device {device}" in bench
        assert summary.count("images/s") == 8, summary


def test_run_stops_a_hang_at_its_deadline(tmp_path):
    gpu = fake_nvidia_smi(tmp_path / "gpu", H100)
    out = tmp_path / "out"
    started = time.monotonic()
    done = gpu_check("run", str(package(tmp_path / "pkg", tests="hang")), path=gpu,
                     LD_LIBRARY_PATH=cuda_libraries(tmp_path / "lib"), OUT=str(out),
                     FLOWERS_GPU_CHECK_SECONDS="8")
    assert done.returncode == 1, done
    assert time.monotonic() - started < 30
    summary = (out / "summary.txt").read_text()
    assert "tests: no result line: stopped at the deadline or crashed" in summary
    assert summary.count("stopped at the deadline") == 9, summary


def test_build_refuses_bad_arguments_before_anything_is_installed(tmp_path):
    done = gpu_check(path=tmp_path)
    assert done.returncode == 2 and "usage: scripts/gpu-check.sh build DIR | run DIR" in done.stderr, done
    done = gpu_check("check", str(tmp_path), path=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr, done
    done = gpu_check("build", str(tmp_path / "pkg"), path=tmp_path, FLOWERS_GPU_CHECK_CAP="9.0")
    assert done.returncode == 2 and "FLOWERS_GPU_CHECK_CAP='9.0' is not a compute capability" in done.stderr, done
    assert not (tmp_path / "pkg").exists()
    # DIR is emptied by a build: never the repository or a folder above it, never a folder of
    # other things.
    for folder in (ROOT, ROOT.parent):
        done = gpu_check("build", str(folder), path=tmp_path)
        assert done.returncode == 2 and "holds the repository" in done.stderr, done
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    done = gpu_check("build", str(tmp_path / "notes"), path=tmp_path)
    assert done.returncode == 2 and "holds other things than a package (keep.txt )" in done.stderr, done
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
