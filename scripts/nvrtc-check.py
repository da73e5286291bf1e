"""Compiles, with NVRTC and no GPU, every kernel dfdx compiles at run time (its `cuda_kernel.rs`
files that call `compile_ptx_with_opts`), from the headers a GPU-check package carries, as dfdx
compiles them on the GPU: `--include-path` for CUDA's headers and for dfdx's own, and
`--gpu-architecture=sm_CAP`. Run by `scripts/cuda-kernels.sh` (so in every test run) and by
`scripts/gpu-check.sh build`, so that a package whose run-time kernels would not compile on the
GPU machine is never made.

Usage: python3 scripts/nvrtc-check.py LIBNVRTC DFDX_SRC CAP INCLUDE_DIR...
"""

import ctypes
import pathlib
import re
import sys

# The element types dfdx's kernels are instantiated with (E::NAME), and to_dtype's pairs.
TYPES = ["float", "double", "__half"]
LITERAL = re.compile(r'const (\w+): &str = "(.*?)";\n', re.S)


def unescape(rust: str) -> str:
    """A Rust string literal's body as its value (these use only \\" and \\\\)."""
    return re.sub(r'\\(["\\n])', lambda m: "\n" if m.group(1) == "n" else m.group(1), rust)


def sources(dfdx_src: pathlib.Path):
    """(name, source) of every run-time kernel, each element type substituted."""
    for path in sorted(dfdx_src.glob("tensor_ops/*/cuda_kernel.rs")):
        text = path.read_text()
        if "compile_ptx_with_opts" not in text:
            continue
        for const, body in LITERAL.findall(text):
            body = unescape(body)
            name = f"{path.parent.name}/{const}"
            if "$Src" in body:
                for src in TYPES:
                    for dst in TYPES:
                        yield f"{name}<{src},{dst}>", body.replace("$Src", src).replace("$Dst", dst)
            else:
                for ty in TYPES:
                    # reshape_to names its type $T, the others $Ty.
                    yield f"{name}<{ty}>", body.replace("$Ty", ty).replace("$T", ty)


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    library, dfdx_src, cap, *includes = sys.argv[1:]
    nvrtc = ctypes.CDLL(library)
    options = [f"--include-path={d}".encode() for d in includes] + [f"--gpu-architecture=sm_{cap}".encode()]
    compiled = 0
    for name, source in sources(pathlib.Path(dfdx_src)):
        program = ctypes.c_void_p()
        if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None):
            print(f"nvrtc-check: {name}: nvrtcCreateProgram failed", file=sys.stderr)
            return 1
        status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        if status or size.value < 100:
            log_size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(log_size))
            log = ctypes.create_string_buffer(log_size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            print(f"nvrtc-check: {name} does not compile:\n{log.value.decode(errors='replace')}", file=sys.stderr)
            return 1
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
        compiled += 1
    if compiled == 0:
        print(f"nvrtc-check: no run-time kernels found under {dfdx_src}", file=sys.stderr)
        return 1
    print(f"nvrtc-check: {compiled} run-time kernel instances compile for sm_{cap} with NVRTC from the headers given")
    return 0


if __name__ == "__main__":
    sys.exit(main())
