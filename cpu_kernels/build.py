"""Compiles the native CPU kernels on first use and registers them with XLA (jax.ffi).

The library is built with the machine's C++ compiler (`CXX`, else g++ / c++ / clang++) for the machine it runs on
(-march=native, OpenMP) into a cache folder keyed by the source, the compiler and jaxlib's version
($SPECTAX_CACHE or ~/.cache/spectax, then kernels/). Where no compiler is found, the build fails or the library
does not load, `library()` returns None after one warning and every caller uses XLA. `SPECTAX_CPU_KERNELS=0`
disables the kernels (the XLA path, by name, for comparisons).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jaxlib

SOURCES = (Path(__file__).parent / "skinny_matmul.cc",)
TARGETS = ("spectax_skinny_nn", "spectax_skinny_nt")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    root = os.environ.get("SPECTAX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "spectax") / "kernels"


def enabled() -> bool:
    """False when SPECTAX_CPU_KERNELS=0 asks for XLA only."""
    return os.environ.get("SPECTAX_CPU_KERNELS", "1") != "0"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, loaded and registered for the CPU platform; None (after one warning) where they cannot
    be built or loaded, or when disabled."""
    if not enabled():
        return None
    cxx = _compiler()
    if cxx is None:
        warnings.warn("spectax: no C++ compiler found; CPU products run on XLA (slower for decode)", stacklevel=2)
        return None
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + cxx.encode() +
                         jaxlib.__version__.encode()).hexdigest()[:16]
    path = _cache_dir() / f"spectax_cpu_{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                out = Path(tmp) / path.name
                subprocess.run([cxx, "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w",
                                f"-I{jax.ffi.include_dir()}", *map(str, SOURCES), "-o", str(out)],
                               check=True, capture_output=True, text=True, timeout=300)
                os.replace(out, path)        # whole or not at all: concurrent first uses race harmlessly
        lib = ctypes.cdll.LoadLibrary(str(path))
        for name in TARGETS:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        detail = e.stderr.strip().splitlines()[-1] if getattr(e, "stderr", None) else str(e)
        warnings.warn(f"spectax: the CPU kernels could not be built or loaded ({detail}); products run on XLA",
                      stacklevel=2)
        return None
    return lib
