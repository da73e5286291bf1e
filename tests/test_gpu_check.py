"""`scripts/gpu-check.sh run`, the half that runs on a GPU machine, on this one (which has no
GPU): it refuses in one line without a GPU, refuses packages it cannot trust or run, and runs a
package's tests and benchmarks into $OUT with its summary. The package here is a stand-in (shell
scripts for the binaries, empty files for CUDA's libraries): `scripts/gpu-check.sh build` needs
570 MB of CUDA's libraries and minutes of building, and is rehearsed by hand (README)."""

import hashlib
import os
import pathlib
import subprocess

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"
SONAMES = ["libcublas.so.13", "libcublasLt.so.13", "libcuda.so.1", "libnvrtc.so.13"]


def gpu_check(*args, path, **env):
    """The script with PATH set to `path` (plus the system's), and `env` added."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{path}:/usr/bin:/bin", **env))


def fake_nvidia_smi(folder: pathlib.Path, answer: str | None) -> pathlib.Path:
    """A folder with an nvidia-smi that prints `answer`, or fails as one without a driver does."""
    folder.mkdir(parents=True, exist_ok=True)
    body = f"echo '{answer}'" if answer else "echo 'NVIDIA-SMI has failed' >&2; exit 9"
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{body}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def package(root: pathlib.Path, cap: int = 90, tests_pass: bool = True) -> pathlib.Path:
    """A package laid out as `build` lays it out, its binaries shell scripts."""
    (root / "bin").mkdir(parents=True)
    (root / "shared" / "golden").mkdir(parents=True)
    (root / "shared" / "golden" / "data.bin").write_bytes(b"golden")
    result = "ok. 4 passed; 0 failed" if tests_pass else "FAILED. 3 passed; 1 failed"
    (root / "bin" / "cuda-tests").write_text(
        f"#!/bin/sh\necho \"shared: $FLOWERS_TEST_SHARED, args: $*\"\necho 'test result: {result}'\n"
        f"{'exit 0' if tests_pass else 'exit 101'}\n")
    (root / "bin" / "flowers").write_text(
        "#!/bin/sh\necho \"$@\" >> \"$FLOWERS_KIT_HOME/../bench-calls\" 2>/dev/null\n"
        "echo \"model forward, batch 64: 1234.5 images/s ($*)\"\n")
    for binary in ("cuda-tests", "flowers"):
        (root / "bin" / binary).chmod(0o755)
    (root / "BUILD").write_text(f"commit=abc\ncompute_capability={cap}\ncuda_sonames={' '.join(SONAMES)}\n")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in files))
    return root


def cuda_libraries(folder: pathlib.Path) -> str:
    folder.mkdir()
    for soname in SONAMES:
        (folder / soname).write_bytes(b"")
    return str(folder)


def test_run_without_a_gpu_says_so_in_one_line_and_fails(tmp_path):
    failing = fake_nvidia_smi(tmp_path / "failing", None)
    absent = tmp_path / "none"
    absent.mkdir()
    for path in (failing, absent):
        for folder in (tmp_path / "missing", package(tmp_path / f"pkg-{path.name}")):
            done = gpu_check("run", str(folder), path=path)
            assert done.returncode == 1, done
            assert done.stdout == "", done.stdout
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and "no NVIDIA GPU answers here" in lines[0], done.stderr


def test_run_refuses_what_it_cannot_trust_or_run(tmp_path):
    gpu = fake_nvidia_smi(tmp_path / "gpu", "NVIDIA H100 80GB HBM3, 9.0, 580.159.04")
    libraries = cuda_libraries(tmp_path / "lib")
    # Not a package.
    (tmp_path / "empty").mkdir()
    done = gpu_check("run", str(tmp_path / "empty"), path=gpu, LD_LIBRARY_PATH=libraries)
    assert done.returncode == 2 and "not a package from 'scripts/gpu-check.sh build'" in done.stderr, done
    # A file changed after the build.
    damaged = package(tmp_path / "damaged")
    (damaged / "shared" / "golden" / "data.bin").write_bytes(b"other")
    done = gpu_check("run", str(damaged), path=gpu, LD_LIBRARY_PATH=libraries)
    assert done.returncode == 2 and "does not match its SHA256SUMS" in done.stderr, done
    # Built for a later GPU than this one.
    later = package(tmp_path / "later", cap=100)
    done = gpu_check("run", str(later), path=gpu, LD_LIBRARY_PATH=libraries)
    assert done.returncode == 2 and "older than the build's sm_100" in done.stderr, done
    # CUDA's libraries nowhere to be found: each missing one is named.
    done = gpu_check("run", str(package(tmp_path / "nolibs")), path=gpu, LD_LIBRARY_PATH="")
    assert done.returncode == 2, done
    assert all(soname in done.stderr for soname in SONAMES), done.stderr
    assert not (tmp_path / "nolibs" / "results").exists()


def test_run_writes_the_tests_benchmarks_and_summary_to_out(tmp_path):
    gpu = fake_nvidia_smi(tmp_path / "gpu", "NVIDIA H100 80GB HBM3, 9.0, 580.159.04")
    libraries = cuda_libraries(tmp_path / "lib")
    for tests_pass in (True, False):
        pkg = package(tmp_path / f"pkg-{tests_pass}", tests_pass=tests_pass)
        out = tmp_path / f"out-{tests_pass}"
        done = gpu_check("run", str(pkg), path=gpu, LD_LIBRARY_PATH=libraries, OUT=str(out))
        assert done.returncode == (0 if tests_pass else 1), done
        summary = (out / "summary.txt").read_text()
        assert "GPU: NVIDIA H100 80GB HBM3, 9.0, 580.159.04" in summary
        assert f"libraries: {libraries}" in summary
        tests = (out / "tests.log").read_text()
        assert f"shared: {pkg}/shared" in tests and "--test-threads=1" in tests
        assert ("test result: ok" if tests_pass else "test result: FAILED") in summary
        bench = (out / "bench.txt").read_text()
        # The GPU's and the CPU's extraction at batch 64, then a fine-tuning step on each.
        for device in ("cuda", "cpu"):
            assert f"--forward-only --model mobilenet_v2_1.0_224 --batch 64 --seconds 5 --device {device}" in bench
            assert f"--fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device {device}" in bench
        assert summary.count("images/s") == 8, summary


def test_usage_and_a_bad_capability_are_refused_before_anything_is_installed(tmp_path):
    done = gpu_check(path=tmp_path)
    assert done.returncode == 2 and "usage: scripts/gpu-check.sh build DIR | run DIR" in done.stderr, done
    done = gpu_check("check", str(tmp_path), path=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr, done
    done = gpu_check("build", str(tmp_path / "pkg"), path=tmp_path, FLOWERS_GPU_CHECK_CAP="9.0")
    assert done.returncode == 2 and "FLOWERS_GPU_CHECK_CAP='9.0' is not a compute capability" in done.stderr, done
    assert not (tmp_path / "pkg").exists()
