"""Keyframe arrays for the fast path (no bpy): tracks -> per-F-Curve flat ``co`` arrays.

A :class:`Curve` is one F-Curve's worth of keys; ``anim.py`` writes it with
``keyframe_points.add(n)`` + ``foreach_set("co", curve.co())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rotations import axis_angle_to_channels, to_blender


@dataclass
class Curve:
    """Keys of one F-Curve: ``frames (T,)`` and ``values (T,)``."""

    data_path: str
    index: int
    frames: np.ndarray
    values: np.ndarray
    group: str | None = None

    def co(self) -> np.ndarray:
        """Interleaved ``[f0, v0, f1, v1, ...]`` float32 ``(2T,)`` for ``foreach_set("co", ...)``."""
        out = np.empty(2 * len(self.frames), dtype=np.float32)
        out[0::2] = self.frames
        out[1::2] = self.values
        return out


def frame_numbers(count: int, start: int = 1, step: float = 1.0) -> np.ndarray:
    """Scene frame numbers ``(count,)`` for track frames 0..count-1."""
    return start + step * np.arange(count, dtype=np.float64)


def shape_key_curves(values: np.ndarray, names: list[str], frames: np.ndarray,
                     available: set[str] | None = None) -> list[Curve]:
    """Curves for shape-key values on a Key datablock: ``values (T,K)`` column k -> key ``names[k]``.

    Keys not in ``available`` (when given) are skipped."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(names) or values.shape[0] != len(frames):
        raise ValueError(f"values {values.shape} do not match {len(frames)} frames x {len(names)} keys")
    return [Curve(f'key_blocks["{_quote(n)}"].value', 0, frames, values[:, k], "Shape Keys")
            for k, n in enumerate(names) if available is None or n in available]


def pose_to_bone_local(pose_ours: np.ndarray, bone_basis: np.ndarray) -> np.ndarray:
    """FLAME joint rotations ``(T,3)`` (axis-angle, our world, relative to the parent's frame at rest)
    -> rotations in a bone's local frame ``(T,3)``.

    ``bone_basis (3,3)`` is the bone's rest orientation in Blender world (``armature.matrix_world``
    rotation @ ``bone.matrix_local`` rotation, normalized). Blender poses a bone about its own rest
    axes, so the world rotation vector v becomes ``B^T v``.
    """
    b = np.asarray(bone_basis, dtype=np.float64)
    b = b / np.linalg.norm(b, axis=0, keepdims=True)
    return to_blender(pose_ours) @ b   # row-vector form of B^T v


def bone_rotation_curves(bone: str, local_aa: np.ndarray, rotation_mode: str,
                         frames: np.ndarray) -> list[Curve]:
    """Curves for a pose bone's rotation in its ``rotation_mode`` from local axis-angle ``(T,3)``."""
    prop, channels = axis_angle_to_channels(local_aa, rotation_mode)
    path = f'pose.bones["{_quote(bone)}"].{prop}'
    return [Curve(path, i, frames, channels[:, i], bone) for i in range(channels.shape[1])]


def _quote(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')
