"""Atomic writes of directories (checkpoints, drafters): a leaf, used by io/ and by the drafters' save()."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_dir(path, overwrite: bool, fill) -> Path:
    """Creates the directory `path` by calling fill(tmp) on a sibling temp dir, then renaming it into place: a
    reader never sees it half-written. ValueError if `path` exists and not `overwrite`."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)                  # mkdtemp makes it private; the result is an ordinary directory
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
