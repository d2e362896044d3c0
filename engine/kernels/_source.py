"""CUDA source of truth: the .cu/.cuh files next to this module, plus the registry of what is compiled from them.

Why: the CUDA code lives in real files (shipped as package data) so that nvcc can compile every kernel in the
test suite and the host emulator can run it on a machine without a GPU.  At runtime `load()` turns a file
into one self-contained string (local `#include "x.cuh"` lines inlined) for NVRTC, which has no include path.

Two registries describe every kernel the Python side launches:
  RAW_KERNELS  : cu file -> base names; the file defines `extern "C"` kernels `<base>_f32` and `<base>_f64`.
  ELEMENTWISE  : spec name -> ElementwiseSpec (cupy.ElementwiseKernel parameters + body); the body calls
                 device functions from a .cuh preamble, and `elementwise_wrapper()` wraps it in a plain
                 __global__ grid-stride loop so nvcc and the emulator compile the very same body.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_./-]+)"\s*$', re.M)
_cache: dict = {}


def cu_files() -> list:
    """Every CUDA translation unit shipped with the package (the .cuh headers are pulled in by these)."""
    return sorted(p.name for p in KERNEL_DIR.glob("*.cu"))


def header_files() -> list:
    return sorted(p.name for p in KERNEL_DIR.glob("*.cuh"))


def load(name: str) -> str:
    """Source of `name` with local includes inlined once each (NVRTC gets one self-contained string)."""
    src = _cache.get(name)
    if src is None:
        src = _inline(name, set())
        _cache[name] = src
    return src


def _inline(name: str, seen: set) -> str:
    if name in seen:
        return ""
    seen.add(name)
    path = KERNEL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {name} is missing from {KERNEL_DIR}; the package was installed "
                                "without its package data (*.cu, *.cuh): reinstall dptrain")
    text = path.read_text()
    return _INCLUDE.sub(lambda m: _inline(m.group(1), seen), text)


# ---------------------------------------------------------------------------------------------------------
# Raw kernels


RAW_KERNELS: dict = {}


def register_raw(cu_file: str, *bases: str) -> None:
    """Declare that `cu_file` defines `<base>_f32` and `<base>_f64` for each base (checked by the nvcc test)."""
    RAW_KERNELS.setdefault(cu_file, set()).update(bases)


# ---------------------------------------------------------------------------------------------------------
# Elementwise kernels


@dataclass(frozen=True)
class ElementwiseSpec:
    """The arguments of one cupy.ElementwiseKernel, kept as data so tests can compile the body too.

    `scalars` names the input parameters that are passed as scalars (cupy decides that from the call; the
    wrapper needs to be told).  Every other non-raw parameter is an array indexed by the element index `i`.
    """
    name: str
    in_params: str
    out_params: str
    operation: str
    preamble_file: str = ""
    scalars: tuple = field(default_factory=tuple)


ELEMENTWISE: dict = {}


def register_elementwise(spec: ElementwiseSpec) -> ElementwiseSpec:
    ELEMENTWISE[spec.name] = spec
    return spec


_CTYPES = {"float32": "float", "float64": "double", "float16": "half", "int8": "signed char",
           "int16": "short", "int32": "int", "int64": "long long", "uint8": "unsigned char",
           "uint32": "unsigned int", "uint64": "unsigned long long", "bool": "bool"}


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str          # C type after resolving type placeholders
    is_raw: bool
    is_out: bool
    is_scalar: bool


def parse_params(spec: ElementwiseSpec, T: str) -> list:
    """Parse cupy's 'T x, raw T y, int32 k' parameter strings; type placeholders (single capitals) -> T."""
    out = []
    for text, is_out in ((spec.in_params, False), (spec.out_params, True)):
        for item in filter(None, (s.strip() for s in text.split(","))):
            words = item.split()
            is_raw = words[0] == "raw"
            if is_raw:
                words = words[1:]
            if len(words) != 2:
                raise ValueError(f"cannot parse elementwise parameter {item!r} of {spec.name}")
            tname, pname = words
            if tname in _CTYPES:
                ctype = _CTYPES[tname]
            elif re.fullmatch(r"[A-Z][A-Za-z0-9_]*", tname):
                ctype = T
            else:
                raise ValueError(f"unknown type {tname!r} in elementwise spec {spec.name}")
            out.append(Param(pname, ctype, is_raw, is_out, pname in spec.scalars))
    return out


def elementwise_wrapper(spec: ElementwiseSpec, T: str, suffix: str) -> str:
    """`extern "C"` grid-stride kernel running `spec.operation` on flat arrays: same body cupy compiles.

    Arrays are contiguous and already broadcast (the caller's job, as cupy does it for its kernels);
    scalars are passed by value; `i` is the element index, as in cupy.
    """
    params = parse_params(spec, T)
    sig, decls = [], []
    for p in params:
        if p.is_scalar:
            sig.append(f"{p.ctype} {p.name}")
        elif p.is_raw:
            sig.append(f"{'' if p.is_out else 'const '}{p.ctype}* {p.name}")
        elif p.is_out:
            sig.append(f"{p.ctype}* __restrict__ {p.name}_arr")
            decls.append(f"{p.ctype}& {p.name} = {p.name}_arr[i];")
        else:
            sig.append(f"const {p.ctype}* __restrict__ {p.name}_arr")
            decls.append(f"const {p.ctype} {p.name} = {p.name}_arr[i];")
    sig.append("long long _n")
    body = "\n        ".join(decls)
    return (f'extern "C" __global__ void {spec.name}_{suffix}({", ".join(sig)}) {{\n'
            f"    typedef {T} T;\n"
            f"    DPT_GRID_STRIDE(i, _n) {{\n        {body}\n        {spec.operation}\n    }}\n}}\n")


def elementwise_unit() -> str:
    """One translation unit holding every registered elementwise body (float and double) plus preambles."""
    seen: set = set()
    parts = [_inline("common.cuh", seen)]          # DPT_GRID_STRIDE for the wrappers
    for spec in ELEMENTWISE.values():
        if spec.preamble_file:
            parts.append(_inline(spec.preamble_file, seen))
    head = "\n".join(parts)
    kernels = [elementwise_wrapper(s, T, sfx) for s in ELEMENTWISE.values()
               for T, sfx in (("float", "f32"), ("double", "f64"))]
    return head + "\n" + "\n".join(kernels)
