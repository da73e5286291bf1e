# Sourced by scripts/cuda-kernels.sh, scripts/gpu-check.sh and `./lab --cuda`: a CUDA compiler
# for dfdx's kernels, and something that answers dfdx's build script's question about the GPU.
#  - nvcc: the CUDA toolkit already on the PATH (a GPU machine's own, matched to its driver),
#    else NVIDIA's CUDA 13.2 compiler from PyPI (scripts/requirements-cuda.txt, pinned) in
#    .venv-cuda. FLOWERS_CUDA_PYPI=1 takes the pinned one always (CI does, to be reproducible).
#  - nvidia-smi: the machine's, when it answers; else scripts/cuda/nvidia-smi, which names the
#    compute capability FLOWERS_CUDA_COMPUTE_CAP (default 90) for builds without a GPU.
# Exports PATH, FLOWERS_CUDA_HOME and CUDA_ROOT (the toolkit's root), and CUDA_COMPUTE_CAP when
# FLOWERS_CUDA_COMPUTE_CAP is set.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${FLOWERS_CUDA_PYPI:-0}" != 1 ] && command -v nvcc >/dev/null 2>&1; then
  FLOWERS_CUDA_HOME="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
else
  cuda_venv="$repo/.venv-cuda"
  if ! cmp -s "$repo/scripts/requirements-cuda.txt" "$cuda_venv/.requirements-installed"; then
    echo "== installing NVIDIA's CUDA compiler from PyPI into $cuda_venv (about 300 MB)"
    [ -x "$cuda_venv/bin/python" ] || python3 -m venv "$cuda_venv"
    "$cuda_venv/bin/pip" install -q --disable-pip-version-check -r "$repo/scripts/requirements-cuda.txt"
    cp "$repo/scripts/requirements-cuda.txt" "$cuda_venv/.requirements-installed"
  fi
  FLOWERS_CUDA_HOME="$("$cuda_venv/bin/python" -c 'import nvidia, pathlib; print(pathlib.Path(nvidia.__path__[0]) / "cu13")')"
  export PATH="$FLOWERS_CUDA_HOME/bin:$PATH"
fi
# dfdx's build script and cudarc's look for include/cuda.h under CUDA_ROOT (dfdx bakes that
# folder into the kit for the kernels it compiles at run time with NVRTC).
export FLOWERS_CUDA_HOME CUDA_ROOT="$FLOWERS_CUDA_HOME"
if ! nvidia-smi --query-gpu=compute_cap --format=csv >/dev/null 2>&1; then
  export PATH="$repo/scripts/cuda:$PATH"
fi
if [ -n "${FLOWERS_CUDA_COMPUTE_CAP:-}" ]; then
  export CUDA_COMPUTE_CAP="$FLOWERS_CUDA_COMPUTE_CAP"
fi
