"""FLAME tracks on the add-on side (no bpy): per-frame params from the backend -> arrays.

A frame's params (protocol ``frame``/``track`` events) are ``{"expression": [E], "pose": [[3]]*5,
"cam_rot": [3], "cam_t": [3], "focal": f}`` (FLAME axis-angle, our world).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .rigdata import JOINT_NAMES


@dataclass
class Track:
    """A FLAME track: ``expression (T,E)``, ``pose (T,J,3)``, ``cam_rot (T,3)``, ``cam_t (T,3)``,
    ``focal (T,)``; ``indices (T,)`` are the driver frame numbers (0-based) the rows belong to;
    ``arkit (T,K)`` with ``arkit_names (K)``: the face landmarker's ARKit scores, when measured."""

    expression: np.ndarray
    pose: np.ndarray
    cam_rot: np.ndarray
    cam_t: np.ndarray
    focal: np.ndarray
    indices: np.ndarray
    fps: float = 25.0
    expression_names: list[str] = field(default_factory=list)
    joint_names: list[str] = field(default_factory=lambda: list(JOINT_NAMES))
    arkit: np.ndarray | None = None
    arkit_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    def arkit_scores(self) -> dict[str, np.ndarray] | None:
        """``{ARKit name: (T,)}`` or None when the track carries no scores."""
        if self.arkit is None or not self.arkit_names:
            return None
        return {n: self.arkit[:, k] for k, n in enumerate(self.arkit_names)}


class TrackBuffer:
    """Collects per-frame params as they stream in (any order, repeats overwrite)."""

    def __init__(self) -> None:
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, index: int, params: dict) -> None:
        if not isinstance(params, dict) or "expression" not in params or "pose" not in params:
            raise ValueError(f"frame {index}: params need 'expression' and 'pose', got {sorted(params or {})}")
        self._rows[int(index)] = params

    def add_many(self, start: int, params_list: list[dict]) -> None:
        for i, p in enumerate(params_list):
            self.add(start + i, p)

    def indices(self) -> list[int]:
        return sorted(self._rows)

    def to_track(self, *, fps: float = 25.0, expression_names: list[str] | None = None,
                 joint_names: list[str] | None = None) -> Track:
        """Arrays in frame order. Raises ValueError on inconsistent sizes."""
        idx = self.indices()
        rows = [self._rows[i] for i in idx]
        if not rows:
            raise ValueError("the track is empty: no frame params were received")
        expr = np.array([r["expression"] for r in rows], dtype=np.float64)
        pose = np.array([r["pose"] for r in rows], dtype=np.float64)
        if expr.ndim != 2 or pose.ndim != 3 or pose.shape[2] != 3:
            raise ValueError(f"inconsistent params: expression {expr.shape}, pose {pose.shape}")

        def col(key: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.array([r.get(key, np.zeros(shape)) for r in rows], dtype=np.float64).reshape((len(rows),) + shape)

        names = list(expression_names or [])[: expr.shape[1]]
        names += [f"expr_{i:03d}" for i in range(len(names), expr.shape[1])]
        arkit, arkit_names = None, []
        if all(isinstance(r.get("arkit"), dict) and r["arkit"] for r in rows):  # scored by the landmarker
            arkit_names = list(rows[0]["arkit"])
            arkit = np.array([[float(r["arkit"].get(n, 0.0)) for n in arkit_names] for r in rows], dtype=np.float64)
        return Track(expression=expr, pose=pose, cam_rot=col("cam_rot", (3,)), cam_t=col("cam_t", (3,)),
                     focal=col("focal", ()), indices=np.array(idx, dtype=np.int64), fps=float(fps),
                     expression_names=names, joint_names=list(joint_names or JOINT_NAMES)[: pose.shape[1]],
                     arkit=arkit, arkit_names=arkit_names)


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, last), ...]`` runs of consecutive indices (to report gaps in a received track)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return list(zip(starts.tolist(), ends.tolist()))
