"""Automatic retargeting by geometry (no bpy): per-frame shape-key weights of any target mesh that
best reproduce the FLAME motion at a few corresponding points.

For P picked pairs (FLAME rig vertex, target vertex), the FLAME motion at frame t is the displacement
of the FLAME vertices by the expression blendshapes and the face joints (jaw, eyes), without the head
rotation (root, neck), which goes to bones. The target's K shape keys give a basis of displacements
at the target points. Per frame: ``w_t = argmin_{w >= 0} ||D w - s * d_t||^2 + ridge ||w||^2`` with
``D (3P,K)`` and ``d_t (3P,)``; ``s`` rescales FLAME's head size to the target's.
"""

from __future__ import annotations

import numpy as np

from .nnls import nnls_batch
from .rigdata import RigData
from .rotations import axis_angle_to_matrix, to_blender

FACE_JOINTS = ("jaw", "eye_L", "eye_R")
"""Joints whose motion counts as facial motion (head rotation is left to bones)."""


def flame_displacements(rig: RigData, expression: np.ndarray, pose: np.ndarray, vertex_ids: np.ndarray,
                        joints: tuple[str, ...] = FACE_JOINTS) -> np.ndarray:
    """Displacements ``(T,P,3)`` (Blender world) of rig vertices ``vertex_ids (P,)`` for a track:
    expression ``(T,E)`` blendshapes then linear blend skinning with ``pose (T,J,3)`` (FLAME axis-angle),
    only the ``joints`` named rotating."""
    ids = np.asarray(vertex_ids, dtype=np.int64)
    expression = np.asarray(expression, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    t = expression.shape[0]
    e = min(expression.shape[1], rig.n_expr)
    rest = rig.vertices[ids]                                                   # (P,3)
    shaped = rest[None] + np.einsum("te,epc->tpc", expression[:, :e], rig.expression_dirs[:e, ids])
    heads = np.stack([b.head for b in rig.bones])                              # (J,3)
    parents = [rig.joint_names.index(b.parent) if b.parent else -1 for b in rig.bones]
    keep = np.array([n in joints for n in rig.joint_names], dtype=np.float64)
    rots = axis_angle_to_matrix(to_blender(pose) * keep[None, :, None])        # (T,J,3,3)
    # world transform of each joint: G_j = G_parent [R_j | J_j - J_parent]; skinning A_j = G_j T(-J_j)
    g_rot = np.empty_like(rots)
    g_pos = np.empty((t, len(heads), 3))
    for j, p in enumerate(parents):
        if p < 0:
            g_rot[:, j], g_pos[:, j] = rots[:, j], np.broadcast_to(heads[j], (t, 3))
        else:
            g_rot[:, j] = g_rot[:, p] @ rots[:, j]
            g_pos[:, j] = g_pos[:, p] + np.einsum("tab,b->ta", g_rot[:, p], heads[j] - heads[p])
    w = rig.weights[ids]                                                       # (P,J)
    per_joint = np.einsum("tjab,tjpb->tjpa", g_rot, shaped[:, None] - heads[None, :, None]) + g_pos[:, :, None]
    posed = np.einsum("pj,tjpa->tpa", w, per_joint)
    return posed - rest[None]


def correspondence_scale(source_points: np.ndarray, target_points: np.ndarray) -> float:
    """Size ratio target/source of two corresponding point sets ``(P,3)`` (RMS distance to their
    centroids); 1.0 for fewer than two points."""
    src = np.asarray(source_points, dtype=np.float64)
    dst = np.asarray(target_points, dtype=np.float64)
    if len(src) < 2:
        return 1.0
    rs = np.sqrt(((src - src.mean(0)) ** 2).sum(1).mean())
    rd = np.sqrt(((dst - dst.mean(0)) ** 2).sum(1).mean())
    return float(rd / rs) if rs > 1e-12 else 1.0


def fit_weights(target_deltas: np.ndarray, source_displacements: np.ndarray, *, scale: float = 1.0,
                ridge: float = 0.0) -> np.ndarray:
    """Shape-key weights ``(T,K)`` >= 0 from the target's key deltas at the target points
    ``(K,P,3)`` and the FLAME displacements at the matching source points ``(T,P,3)``."""
    d = np.asarray(target_deltas, dtype=np.float64)
    s = np.asarray(source_displacements, dtype=np.float64)
    if d.ndim != 3 or s.ndim != 3 or d.shape[1:] != s.shape[1:]:
        raise ValueError(f"target deltas (K,P,3) {d.shape} and displacements (T,P,3) {s.shape} disagree")
    a = d.reshape(d.shape[0], -1).T                     # (3P,K)
    b = (scale * s).reshape(s.shape[0], -1).T           # (3P,T)
    return nnls_batch(a, b, ridge=ridge)
