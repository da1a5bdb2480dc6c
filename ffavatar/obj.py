"""Wavefront OBJ export of a triangle mesh (optionally with per-vertex colours), for looking at heads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write ``vertices (V,3)``, ``faces (F,3)`` (0-based) and optional ``colors (V,3)`` in [0,1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(vertices, dtype=np.float64)
    rows = np.hstack([v, np.asarray(colors, dtype=np.float64)]) if colors is not None else v
    fmt = "v" + " %.6f" * rows.shape[1]
    lines = [fmt % tuple(r) for r in rows]
    lines += ["f %d %d %d" % tuple(t) for t in np.asarray(faces, dtype=np.int64) + 1]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
