"""Compile time, saved and seen: JAX's persistent compilation cache for spectax's programs, and a record of the
compiles that a block of code ran (so that a timing can leave them out).

A decode program of the real model takes 6-14 s to compile on a CPU; with the cache on, a later process that
compiles the same program (same model structure, drafter, tree, shapes, flags and jax version) reads it from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from spectax import programs

TRACE, LOWER, BACKEND = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                         "/jax/core/compile/backend_compile_duration")
CACHE_HITS = "/jax/compilation_cache/cache_hits"


def enable_compile_cache(path=None, min_compile_seconds: float = 0.0) -> Path:
    """Turns on JAX's persistent compilation cache in the directory `path` (default: `compile/` in the spectax cache,
    `$SPECTAX_CACHE` or ~/.cache/spectax) for the whole process, from the next compile on. Programs whose compile
    took at least `min_compile_seconds` are written. spectax's decode programs are also saved whole, compiled, in
    its `programs/` subdirectory (`spectax.programs`): a later process runs them without tracing or lowering them.
    Returns the directory (created if missing)."""
    from spectax.io.hub import cache_dir

    if not isinstance(min_compile_seconds, (int, float)) or isinstance(min_compile_seconds, bool) \
            or not min_compile_seconds >= 0:
        raise ValueError(f"min_compile_seconds must be a number >= 0, got {min_compile_seconds!r}")
    directory = cache_dir() / "compile" if path is None else Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"the compile cache {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()      # a cache JAX already opened elsewhere is replaced by this one
    programs.enable(directory / "programs")
    return directory


def compile_cache_dir() -> Path | None:
    """The persistent compilation cache directory this process uses, or None when the cache is off."""
    configured = jax.config.jax_compilation_cache_dir
    return Path(configured) if configured else None


@dataclasses.dataclass
class Compiles:
    """The compiles seen inside a `watch_compiles()` block."""

    seconds: float = 0.0     # tracing + lowering + backend compiles (reads from either cache included)
    programs: int = 0        # backend compiles requested (each either compiled or read from the cache)
    cache_hits: int = 0      # of those, the ones read from the persistent cache
    loaded: int = 0          # spectax programs read from the program store (neither traced, lowered nor compiled)


@contextlib.contextmanager
def watch_compiles() -> Iterator[Compiles]:
    """Yields a `Compiles` that counts, until the block ends, every compile this process runs (any thread)."""
    seen = Compiles()

    def on_duration(event: str, duration: float, **_) -> None:
        if event in (TRACE, LOWER, BACKEND, programs.LOADED):
            seen.seconds += duration
        if event == BACKEND:
            seen.programs += 1
        if event == programs.LOADED:
            seen.loaded += 1

    def on_event(event: str, **_) -> None:
        if event == CACHE_HITS:
            seen.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
