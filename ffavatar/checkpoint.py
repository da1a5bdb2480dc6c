"""Files of tensors with JSON metadata: model checkpoints and ``.ffa`` avatars (safetensors only).

Every file records what it was built on (``head_model_id``) and its kind; loading a file of another
kind or for another head model is a clear error, never silent garbage. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError, HeadModelMismatch

META_KEY = "ffavatar"


def versions() -> dict[str, str]:
    """Versions recorded in every file."""
    return {"ffavatar": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) and ``meta`` (JSON) as safetensors.
    The file's mode follows the umask like any other file the user writes (safetensors itself
    creates 0600 files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            save_file(flat, str(tmp), metadata={META_KEY: json.dumps({**meta, "versions": versions()})})
        except SafetensorError as e:  # its I/O failures (disk full...) as the OSError they are
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a file written by :func:`save_tensors` (without loading tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            return json.loads((f.metadata() or {})[META_KEY])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path.name} is not an FFAvatar file (safetensors with metadata): {e}") from e


def load_tensors(path: str | Path, kind: str, head_model_id: str | None = None,
                 device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file of ``kind`` ("checkpoint" or "avatar"); check its head model when given."""
    meta = read_meta(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{Path(path).name} is a {meta.get('kind')!r} file, expected {kind!r}")
    if head_model_id is not None and meta.get("head_model_id") != head_model_id:
        raise HeadModelMismatch(
            f"{Path(path).name} was built on head model {meta.get('head_model_id')}, but the loaded head model "
            f"is {head_model_id}", hint="load the same FLAME file (or the demo head) it was built with")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{Path(path).name} is truncated or corrupt: {e}") from e
    return tensors, meta
