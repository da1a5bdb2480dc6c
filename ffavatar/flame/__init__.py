"""The FLAME head layer: safe file loading, the model, subdivision and the built-in demo head.

Which head model is used: an explicit path, else ``$FFAVATAR_FLAME``, else the procedural demo head
(generated on first use into the cache directory; see ``demo_head``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import load_model_file
from .model import JOINT_NAMES, FlameModel, FlameOutput, head_model_id

__all__ = ["JOINT_NAMES", "FlameModel", "FlameOutput", "head_model_id", "load_head_model",
           "load_model_file", "resolve_flame_path"]


def resolve_flame_path(path: str | Path | None = None) -> Path | None:
    """The FLAME file to use: ``path``, else ``$FFAVATAR_FLAME``, else None (the demo head)."""
    chosen = path or os.environ.get("FFAVATAR_FLAME") or None
    return Path(chosen).expanduser() if chosen else None


def load_head_model(path: str | Path | None = None, landmarks: str | Path | None = None,
                    cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Load the head model (validated FLAME dict) chosen by :func:`resolve_flame_path`.

    ``landmarks`` (else ``$FFAVATAR_FLAME_LANDMARKS``) names a separate landmark embedding file
    for a user FLAME; the demo head carries its own 68-point embedding.
    """
    flame = resolve_flame_path(path)
    if flame is None:
        from .demo_head import demo_head_path

        return load_model_file(demo_head_path(cache_dir))
    lmk = landmarks or os.environ.get("FFAVATAR_FLAME_LANDMARKS") or None
    return load_model_file(flame, lmk)
