"""The program store: spectax's compiled decode programs saved to disk whole, so that a later process skips tracing,
lowering and compiling them (JAX's persistent compilation cache still traces and lowers a program to find it: ~4 s
for the real model's decode loop on a CPU, every process).

`enable(directory)` turns the store on for the process (`spectax.enable_compile_cache` does, beside JAX's cache);
`call(program, static, *args, static_key=None)` runs `program(static, *args)` (a `jax.jit` with `static_argnums=0`) through it.

A program is found by a key that holds everything its compiled code depends on: the program's name, the static
argument (pickled whole: a tree structure, a dataclass, a tuple), each argument's tree, shape, dtype, weak type and
sharding, the source of spectax and its kernels (a digest of every file), the versions of jax and jaxlib, the backend
and its devices, JAX's configuration and XLA_FLAGS. Anything the key cannot hold exactly (a static argument that
does not pickle, traced arguments inside a user's jit, a program with closed-over constants) runs through `jax.jit`
as usual, uncached; so does a saved program that no longer loads (it is compiled and saved again). A program
XLA cannot serialize (seen: top-k sampling, "`LessThan` is not serializable") runs compiled, unsaved. Files are
written atomically (a temporary file renamed into place). A saved executable is machine code for this machine:
load only a store you wrote yourself (JAX's `deserialize_and_load` warning applies).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import time
from pathlib import Path

import jax
import jaxlib
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache import compilation_cache

SOURCES = ("spectax", "pallas_kernels", "cpu_kernels")    # the packages whose code goes into the programs
SUFFIX = ".jaxexe"
MAX_BYTES = 2 << 30                           # the store's size at most (least recently used programs go first)
LOADED = "/spectax/programs/load_duration"     # a jax.monitoring event: a program read from the store, and how long

_store: dict = {"dir": None, "loaded": {}}


def enable(directory) -> Path:
    """Saves and reads compiled programs in `directory` (created if missing) from now on in this process."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _store["dir"], _store["loaded"] = directory, {}
    return directory


def disable() -> None:
    """Turns the store off (programs compile through jax.jit again; nothing on disk is removed)."""
    _store["dir"], _store["loaded"] = None, {}


def directory() -> Path | None:
    """The store's directory, or None when it is off."""
    return _store["dir"]


@functools.cache
def source_digest() -> str:
    """sha256 of every source file of spectax and its kernels (names and bytes): a change to any invalidates every
    saved program."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in SOURCES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".cc", ".h") and path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environment() -> tuple:
    devices = jax.devices()
    config = tuple(sorted((k, repr(v)) for k, v in jax.config.values.items()))
    return (jax.__version__, jaxlib.__version__,
            devices[0].platform, devices[0].device_kind, getattr(devices[0].client, "platform_version", ""),
            len(devices), os.environ.get("XLA_FLAGS", ""), config, source_digest())


def _leaf(x) -> tuple:
    aval = jax.typeof(x)
    sharding = getattr(x, "sharding", None)
    return (tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False)),
            None if sharding is None else repr(sharding))


def key(name: str, static_key, args: tuple) -> str | None:
    """The store's key of program `name` called with the static argument identified by `static_key` and `args`, or
    None when it cannot be keyed exactly (traced arguments, a static key that does not pickle)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return None
    buffer = io.BytesIO()
    try:
        _KeyPickler(buffer, protocol=5).dump((name, static_key, tree, [_leaf(x) for x in leaves], _environment()))
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        return None
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _fields(*_):
    """Stands for a dataclass in a key's pickle (keys are hashed, never unpickled)."""


class _KeyPickler(pickle.Pickler):
    """Pickles a dataclass as its type and field values only: what a cached property left in its __dict__ (a
    DraftTree's masks, computed on first use) must not change the key."""

    def reducer_override(self, obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            return _fields, (cls.__module__, cls.__qualname__,
                             tuple((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)))
        return NotImplemented


def _read(path: Path):
    try:
        payload, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
        devices = {d.id: d for d in jax.devices()}
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                         execution_devices=[devices[i] for i in device_ids])
    except Exception:           # noqa: BLE001 -- a stale or foreign file: compiled and written again
        return None


def _write(path: Path, compiled) -> None:
    try:
        device_ids = [d.id for d in jax.tree_util.tree_leaves(compiled.input_shardings)[0]._device_assignment]
        blob = pickle.dumps((*serialize_executable.serialize(compiled), device_ids), protocol=5)
    except (ValueError, NotImplementedError, pickle.PicklingError, TypeError, AttributeError,
            jax.errors.JaxRuntimeError):
        return                  # a program XLA cannot serialize (a sort's comparator, ...) is simply not saved
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    prune(path.parent, MAX_BYTES)


def prune(store: Path, max_bytes: int) -> None:
    """Deletes the least recently used programs of `store` (by modification time: a read touches its file) until
    the rest take at most `max_bytes` (each edit of spectax's source starts a new set of programs)."""
    files = []
    for path in store.glob(f"*{SUFFIX}"):
        try:
            stat = path.stat()
        except FileNotFoundError:             # another process pruned it
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def call(program, static, *args, static_key=None):
    """`program(static, *args)`: from the store when it is on and the call can be keyed (read from disk once per
    process, or compiled and saved), through jax.jit otherwise. `program` is a jax.jit with static_argnums=0;
    `static_key` (default: `static`) is what makes two static arguments equal for jit (a Decoder's `_key`), pickled
    into the key."""
    store = _store["dir"]
    name = f"{program.__module__}.{program.__name__}"
    digest = None if store is None else key(name, static if static_key is None else static_key, args)
    if digest is None:
        return program(static, *args)
    compiled = _store["loaded"].get(digest)
    if compiled is not None:
        return compiled(*args)
    path = store / f"{digest}{SUFFIX}"
    start = time.perf_counter()
    compiled = _read(path) if path.is_file() else None
    if compiled is not None:
        jax.monitoring.record_event_duration_secs(LOADED, time.perf_counter() - start)
        os.utime(path)                        # recently used: pruned last
        try:                                 # a file that loads but does not run is compiled and written again
            out = jax.block_until_ready(compiled(*args))
            _store["loaded"][digest] = compiled
            return out
        except jax.errors.JaxRuntimeError:
            pass
    compiled = _compile_fresh(program.lower(static, *args))
    _write(path, compiled)
    _store["loaded"][digest] = compiled
    return compiled(*args)


def _compile_fresh(lowered):
    """Compiles with JAX's persistent cache off: an executable JAX read from its cache does not serialize whole
    (jaxlib 0.10.2 on CPU: loaded again, it fails with 'Function ... not found')."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()

