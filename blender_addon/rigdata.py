"""The FLAME rig as plain arrays in Blender's world (no bpy): what ``rig.py`` turns into objects.

Input is the backend's ``get_rig`` dict (our world, +Y up, face along +Z):
``vertices (V,3)``, ``faces (F,3)``, ``expression_dirs (E,V,3)``, ``expression_names [E]``,
``joints (5,3)``, ``joint_names [5]``, ``parents (5,)`` (-1 for the root), ``weights (V,5)``,
``head_model_id``. Output coordinates are Blender's (+Z up, face toward -Y).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .rotations import to_blender

JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
"""FLAME joint order; also the bone names of the rig."""


class RigDataError(ValueError):
    """The rig dict lacks a key or has arrays of inconsistent shapes."""


@dataclass
class BoneSpec:
    """One bone in armature space (Blender world at the armature's rest)."""

    name: str
    head: np.ndarray   # (3,)
    tail: np.ndarray   # (3,)
    parent: str | None


@dataclass
class RigData:
    """A FLAME rig in Blender coordinates."""

    vertices: np.ndarray           # (V,3) float64
    faces: np.ndarray              # (F,3) int32
    expression_dirs: np.ndarray    # (E,V,3) float64, per unit coefficient
    expression_names: list[str]
    bones: list[BoneSpec]
    weights: np.ndarray            # (V,J) float64, rows sum to 1
    joint_names: list[str]
    head_model_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_expr(self) -> int:
        return int(self.expression_dirs.shape[0])


def _array(rig: dict, key: str, dtype, ndim: int) -> np.ndarray:
    if key not in rig:
        raise RigDataError(f"rig data lacks {key!r}; the backend's get_rig must send it")
    a = np.asarray(rig[key], dtype=dtype)
    if a.ndim != ndim:
        raise RigDataError(f"rig {key!r} must have {ndim} dimensions, got shape {a.shape}")
    return a


def rig_from_dict(rig: dict) -> RigData:
    """Validate a ``get_rig`` dict (numpy arrays or nested lists) and map it to Blender's world."""
    verts = _array(rig, "vertices", np.float64, 2)
    faces = _array(rig, "faces", np.int64, 2)
    dirs = _array(rig, "expression_dirs", np.float64, 3)
    joints = _array(rig, "joints", np.float64, 2)
    parents = _array(rig, "parents", np.int64, 1)
    weights = _array(rig, "weights", np.float64, 2)
    v = verts.shape[0]
    if verts.shape[1] != 3 or faces.shape[1] != 3:
        raise RigDataError(f"vertices must be (V,3) and faces (F,3); got {verts.shape}, {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= v):
        raise RigDataError(f"faces index vertices outside [0, {v})")
    if dirs.shape[1:] != (v, 3):
        raise RigDataError(f"expression_dirs must be (E,{v},3), got {dirs.shape}")
    j = joints.shape[0]
    if joints.shape != (j, 3) or parents.shape != (j,) or weights.shape != (v, j):
        raise RigDataError(
            f"joints (J,3), parents (J,), weights (V,J) disagree: {joints.shape}, {parents.shape}, {weights.shape}")
    joint_names = [str(n) for n in rig.get("joint_names", JOINT_NAMES[:j])]
    if len(joint_names) != j or len(set(joint_names)) != j:
        raise RigDataError(f"joint_names must be {j} distinct names, got {joint_names}")
    names = [str(n) for n in rig.get("expression_names", [])] or [f"expr_{i:03d}" for i in range(dirs.shape[0])]
    if len(names) != dirs.shape[0] or len(set(names)) != len(names):
        raise RigDataError(f"expression_names must be {dirs.shape[0]} distinct names, got {len(names)}")
    for i, p in enumerate(parents):
        if p >= i or (p < 0 and i != 0):
            raise RigDataError(f"parents must list each joint after its parent with -1 only at 0: {parents}")

    vb = to_blender(verts)
    jb = to_blender(joints)
    size = float(np.ptp(vb, axis=0).max()) or 1.0
    up, forward = np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if p >= 0:
            children.setdefault(int(p), []).append(i)
    bones = []
    for i, name in enumerate(joint_names):
        head = jb[i]
        if name.startswith("eye"):
            tail = head + forward * 0.1 * size
        elif name == "jaw":
            tail = head + (forward * 0.35 + up * -0.1) * size
        else:
            # point at the one child that lies above (neck for root), else straight up
            above = [c for c in children.get(i, []) if jb[c][2] - head[2] > 0.02 * size]
            tail = jb[above[0]] if len(above) == 1 else head + up * 0.3 * size
        if np.linalg.norm(tail - head) < 1e-4 * size:
            tail = head + up * 0.1 * size
        bones.append(BoneSpec(name, head, tail, None if parents[i] < 0 else joint_names[int(parents[i])]))

    w = np.clip(weights, 0.0, None)
    sums = w.sum(axis=1, keepdims=True)
    w = np.where(sums > 0, w / np.where(sums > 0, sums, 1.0), 0.0)
    return RigData(
        vertices=vb, faces=faces.astype(np.int32), expression_dirs=to_blender(dirs),
        expression_names=names, bones=bones, weights=w, joint_names=joint_names,
        head_model_id=str(rig.get("head_model_id", "")),
    )
