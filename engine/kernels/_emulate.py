"""Host emulation of the CUDA kernels: compile the .cu sources with the host C++ compiler and run them.

Why: on a machine without a GPU, nvcc proves the kernels compile but not that they compute the right thing.
This runs the *same* CUDA source (and the same Python glue: argument order, argument C types, table
layout, launch geometry) on numpy arrays.  `HostLauncher` replaces the cupy launcher in the `*_gpu`
functions; every thread of the real launch (grid from rt.grid_for, blockDim) runs, one after another.

Independent-thread kernels (each output element has exactly one writer: all but one of ours) run their
threads one after another, which is exact for them.  Warp-cooperative kernels (softmax_xent's forward,
detected by its __shfl calls) run each warp's 32 lanes as real threads that meet at a barrier inside
every shuffle, so the lane exchange is exercised too.  Not covered: timing, memory coalescing, the
device's own math library (host libm stands in for expf/erff/tanhf) and cupy's launch mechanics; those
need a real GPU (tests/test_kernels_gpu.py).

Used by tests/test_kernels_nvcc.py; needs a C++17 compiler (g++ or clang++, or $CXX).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import _runtime as rt
from . import _source

_SHIM_COMMON = r"""
#include <math.h>
#include <string.h>
struct dpt_emu_dim3 { unsigned int x, y, z; };
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, sizeof d); return d; }
"""

# Independent threads: run one after another (faithful for kernels where every output has one writer).
_SHIM_SEQUENTIAL = _SHIM_COMMON + r"""
static dpt_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
"""

# Warp-cooperative kernels (they call __shfl_*): the 32 lanes of a warp are real OS threads meeting at a
# barrier in every shuffle, so lanes exchange values as on the device; warps run one after another.
_SHIM_LANES = _SHIM_COMMON + r"""
#include <barrier>
#include <thread>
#include <vector>
static thread_local dpt_emu_dim3 threadIdx, blockIdx;
static dpt_emu_dim3 blockDim, gridDim;
struct DptEmuWarp {
    std::barrier<> bar{32};
    alignas(8) unsigned char slot[32][8];
};
static thread_local DptEmuWarp* dpt_emu_warp = nullptr;
template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const unsigned lane = threadIdx.x % 32;
    memcpy(dpt_emu_warp->slot[lane], &v, sizeof(T));
    dpt_emu_warp->bar.arrive_and_wait();
    T r;
    memcpy(&r, dpt_emu_warp->slot[lane ^ (unsigned)lane_mask], sizeof(T));
    dpt_emu_warp->bar.arrive_and_wait();
    return r;
}
"""

_SIG = re.compile(r'extern\s+"C"\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{')

# C parameter type (after dropping const/__restrict__) -> (ctypes type, numpy dtype it must receive)
_SCALARS = {"long long": (ctypes.c_longlong, np.int64), "dpt_i64": (ctypes.c_longlong, np.int64),
            "int": (ctypes.c_int, np.int32), "double": (ctypes.c_double, np.float64),
            "float": (ctypes.c_float, np.float32), "unsigned long long": (ctypes.c_ulonglong, np.uint64)}
_POINTEES = {"float": np.float32, "double": np.float64, "long long": np.int64, "dpt_i64": np.int64,
             "int": np.int32}


def compiler() -> str | None:
    """The host C++ compiler to use, or None (the emulation tests then skip)."""
    for cand in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


class _Param:
    def __init__(self, text: str):
        words = text.replace("*", " * ").split()
        self.name = words[-1]
        self.is_ptr = "*" in words
        base = " ".join(w for w in words[:-1] if w not in ("const", "__restrict__", "*"))
        self.base = base
        if self.is_ptr:
            if base not in _POINTEES:
                raise TypeError(f"emulator: unsupported pointer type {text!r}")
            self.ctype, self.dtype = ctypes.c_void_p, np.dtype(_POINTEES[base])
        else:
            if base not in _SCALARS:
                raise TypeError(f"emulator: unsupported scalar type {text!r}")
            ct, dt = _SCALARS[base]
            self.ctype, self.dtype = ct, np.dtype(dt)


class EmulatedModule:
    """One translation unit compiled for the host; kernels callable with CUDA launch semantics."""

    def __init__(self, source: str, label: str):
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no host C++ compiler (g++/clang++) found for the kernel emulator; set $CXX")
        self.lanes = "__shfl" in source
        text = (_SHIM_LANES if self.lanes else _SHIM_SEQUENTIAL) + source
        pre = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-std=c++20", "-"], input=text, text=True,
                             capture_output=True, timeout=120)
        if pre.returncode != 0:
            raise RuntimeError(f"emulator: preprocessing {label} failed:\n{pre.stderr[-4000:]}")
        self.kernels = {}
        wrappers = []
        for name, params in _SIG.findall(pre.stdout):
            if name.startswith("emu_"):
                continue
            plist = [_Param(p) for p in params.split(",") if p.strip()]
            self.kernels[name] = plist
            call = ", ".join(p.name for p in plist)
            head = (f'extern "C" void emu_{name}(unsigned _grid, unsigned _block, {params}) {{\n'
                    f"  gridDim = {{_grid, 1, 1}}; blockDim = {{_block, 1, 1}};\n")
            if self.lanes:
                body = (f"  for (unsigned _b = 0; _b < _grid; ++_b)\n"
                        f"    for (unsigned _w = 0; _w < _block / 32; ++_w) {{\n"
                        f"      DptEmuWarp _warp;\n      std::vector<std::thread> _lanes;\n"
                        f"      for (unsigned _l = 0; _l < 32; ++_l)\n"
                        f"        _lanes.emplace_back([&, _b, _w, _l] {{\n"
                        f"          blockIdx = {{_b, 0, 0}}; threadIdx = {{_w * 32 + _l, 0, 0}};\n"
                        f"          dpt_emu_warp = &_warp; {name}({call}); }});\n"
                        f"      for (auto& _t : _lanes) _t.join();\n    }}\n}}\n")
            else:
                body = (f"  for (unsigned _b = 0; _b < _grid; ++_b) for (unsigned _t = 0; _t < _block; ++_t) {{\n"
                        f"    blockIdx.x = _b; threadIdx.x = _t; {name}({call});\n  }}\n}}\n")
            wrappers.append(head + body)
        full = text + "\n" + "\n".join(wrappers)
        digest = hashlib.sha256(full.encode()).hexdigest()[:20]
        build = Path(tempfile.gettempdir()) / f"dptrain_emu_{os.getuid()}"
        build.mkdir(exist_ok=True)
        lib = build / f"{label}_{digest}.so"
        self.warnings = ""
        if not lib.exists():
            src = build / f"{label}_{digest}.cpp"
            src.write_text(full)
            tmp_lib = build / f"{label}_{digest}.{os.getpid()}.so"
            res = subprocess.run([cxx, "-O1", "-std=c++20", "-pthread", "-shared", "-fPIC", "-Wall",
                                  "-Wno-unused-function", "-o", str(tmp_lib), str(src)],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"emulator: compiling {label} failed:\n{res.stderr[-4000:]}")
            self.warnings = res.stderr
            os.replace(tmp_lib, lib)
        self._lib = ctypes.CDLL(str(lib))

    def launch(self, name: str, grid: int, block: int, args) -> None:
        """Run every (block, thread) of the launch; checks each argument against the kernel's C signature."""
        if name not in self.kernels:
            raise KeyError(f"kernel {name} is not defined by this module (have {sorted(self.kernels)})")
        params = self.kernels[name]
        if self.lanes and block % 32:
            raise ValueError(f"{name}: warp-cooperative kernel launched with {block} threads per block, "
                             "not a multiple of 32")
        if len(args) != len(params):
            raise TypeError(f"{name}: {len(args)} arguments for {len(params)} parameters")
        c_args = []
        for p, a in zip(params, args):
            if p.is_ptr:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{name}: parameter {p.name} is a pointer but got {type(a).__name__}")
                if a.dtype != p.dtype:
                    raise TypeError(f"{name}: parameter {p.name} ({p.base}*) got an array of {a.dtype}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{name}: parameter {p.name} got a non-contiguous array")
                c_args.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if not isinstance(a, np.generic) or a.dtype != p.dtype:
                    raise TypeError(f"{name}: parameter {p.name} ({p.base}) needs a numpy {p.dtype} scalar, "
                                    f"got {type(a).__name__}")
                c_args.append(p.ctype(a.item()))
        fn = getattr(self._lib, f"emu_{name}")
        fn.restype = None
        fn(ctypes.c_uint(grid), ctypes.c_uint(block), *c_args)


_modules: dict = {}


def module(cu_file: str) -> EmulatedModule:
    m = _modules.get(cu_file)
    if m is None:
        m = EmulatedModule(_source.load(cu_file), Path(cu_file).stem)
        _modules[cu_file] = m
    return m


def elementwise_module() -> EmulatedModule:
    m = _modules.get("<elementwise>")
    if m is None:
        m = EmulatedModule(_source.elementwise_unit(), "elementwise")
        _modules["<elementwise>"] = m
    return m


class HostLauncher:
    """Drop-in for rt.CupyLauncher that runs kernels through the host emulator on numpy arrays."""

    xp_name = "numpy"

    def __init__(self):
        self.launches = []          # (kernel name, grid, block) of every launch, for tests to inspect

    def raw(self, cu_file, base, dtype, n, args, block=rt.BLOCK):
        if n <= 0:
            return
        name = f"{base}_{rt.float_suffix(dtype)}"
        grid = rt.grid_for(n, block)
        self.launches.append((name, grid, block))
        module(cu_file).launch(name, grid, block, args)

    def elementwise(self, spec_name, *args):
        """cupy.ElementwiseKernel semantics: inputs then outputs, arrays broadcast, scalars by value."""
        spec = _source.ELEMENTWISE[spec_name]
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        T = next(a.dtype for a in arrays if a.dtype.kind == "f")
        params = _source.parse_params(spec, "float" if T == np.float32 else "double")
        if len(args) != len(params):
            raise TypeError(f"{spec_name}: {len(args)} arguments for {len(params)} parameters")
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        call, outs = [], []
        for p, a in zip(params, args):
            if p.is_scalar:
                call.append(a)
            elif p.is_out:
                if a.shape != shape:
                    raise ValueError(f"{spec_name}: output {p.name} has shape {a.shape}, expected {shape}")
                buf = np.empty(shape, dtype=a.dtype)
                outs.append((a, buf))
                call.append(buf)
            else:
                call.append(np.ascontiguousarray(np.broadcast_to(a, shape)))
        n = int(np.prod(shape))
        name = f"{spec.name}_{rt.float_suffix(T)}"
        grid = rt.grid_for(n)
        self.launches.append((name, grid, rt.BLOCK))
        if n:
            elementwise_module().launch(name, grid, rt.BLOCK, call + [np.int64(n)])
        for dst, buf in outs:
            dst[...] = buf
        return outs[0][0] if len(outs) == 1 else tuple(d for d, _ in outs)
