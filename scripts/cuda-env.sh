# Sourced (by bash) by scripts/cuda-kernels.sh and `./lab --cuda`: a CUDA compiler for dfdx's
# kernels, and an answer to dfdx's build script's question about the GPU.
#  - nvcc: the CUDA toolkit on the PATH or in /usr/local/cuda (a GPU machine's own, matched to
#    its driver), else NVIDIA's CUDA 13.0 compiler from PyPI (scripts/requirements-cuda.txt,
#    pinned) in .venv-cuda. FLOWERS_CUDA_PYPI=1 takes the pinned one always (CI does).
#  - nvidia-smi: the machine's, when it answers; else, only when FLOWERS_CUDA_COMPUTE_CAP names
#    the GPU to compile for (a build without a GPU), scripts/cuda/nvidia-smi, which answers that.
# Exports PATH, FLOWERS_CUDA_HOME and CUDA_ROOT (the toolkit's root), and CUDA_COMPUTE_CAP when
# FLOWERS_CUDA_COMPUTE_CAP is set. Returns non-zero, with a message, when it cannot.
if [ -z "${BASH_VERSION:-}" ]; then
  echo "scripts/cuda-env.sh: source it from bash" >&2
  return 1
fi
_flowers_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_flowers_nvcc="$(command -v nvcc 2>/dev/null || true)"
[ -n "$_flowers_nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || _flowers_nvcc=/usr/local/cuda/bin/nvcc
if [ "${FLOWERS_CUDA_PYPI:-0}" != 1 ] && [ -n "$_flowers_nvcc" ]; then
  FLOWERS_CUDA_HOME="$(cd "$(dirname "$(readlink -f "$_flowers_nvcc")")/.." && pwd)"
  echo "== CUDA compiler: this machine's, $FLOWERS_CUDA_HOME" >&2
else
  _flowers_venv="$_flowers_repo/.venv-cuda"
  if ! cmp -s "$_flowers_repo/scripts/requirements-cuda.txt" "$_flowers_venv/.requirements-installed"; then
    echo "== installing NVIDIA's CUDA compiler from PyPI into $_flowers_venv (about 300 MB)" >&2
    if ! { [ -x "$_flowers_venv/bin/pip" ] || python3 -m venv --clear "$_flowers_venv"; }; then
      echo "scripts/cuda-env.sh: cannot make a Python venv (Debian: apt install python3-venv)" >&2
      return 1
    fi
    "$_flowers_venv/bin/pip" install -q --disable-pip-version-check -r "$_flowers_repo/scripts/requirements-cuda.txt" \
      && cp "$_flowers_repo/scripts/requirements-cuda.txt" "$_flowers_venv/.requirements-installed" \
      || { echo "scripts/cuda-env.sh: installing scripts/requirements-cuda.txt failed" >&2; return 1; }
  fi
  FLOWERS_CUDA_HOME="$("$_flowers_venv/bin/python" -c 'import nvidia, pathlib; print(pathlib.Path(nvidia.__path__[0]) / "cu13")')"
  export PATH="$FLOWERS_CUDA_HOME/bin:$PATH"
fi
if [ ! -x "$FLOWERS_CUDA_HOME/bin/nvcc" ] || [ ! -f "$FLOWERS_CUDA_HOME/include/cuda.h" ]; then
  echo "scripts/cuda-env.sh: no nvcc and cuda.h under '$FLOWERS_CUDA_HOME'" >&2
  return 1
fi
# dfdx's build script and cudarc's look for include/cuda.h under CUDA_ROOT (dfdx bakes that
# folder into the kit for the kernels it compiles at run time with NVRTC).
export FLOWERS_CUDA_HOME CUDA_ROOT="$FLOWERS_CUDA_HOME"
if ! nvidia-smi --query-gpu=compute_cap --format=csv >/dev/null 2>&1; then
  if [ -z "${FLOWERS_CUDA_COMPUTE_CAP:-}" ]; then
    echo "scripts/cuda-env.sh: no nvidia-smi answers here; set FLOWERS_CUDA_COMPUTE_CAP (75 for a T4, 90 for an H100) to build for a GPU elsewhere" >&2
    return 1
  fi
  export PATH="$_flowers_repo/scripts/cuda:$PATH"
fi
if [ -n "${FLOWERS_CUDA_COMPUTE_CAP:-}" ]; then
  export CUDA_COMPUTE_CAP="$FLOWERS_CUDA_COMPUTE_CAP"
fi
unset _flowers_repo _flowers_nvcc _flowers_venv
