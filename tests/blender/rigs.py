"""Rig dicts and tracks built in code for Blender-side tests (the ``get_rig`` layout, our world)."""

from __future__ import annotations

import numpy as np

EXPRESSION_NAMES = ["smile_L", "smile_R", "blink_L", "blink_R", "brow_raise_L", "brow_raise_R", "pucker",
                    "cheek_puff_L", "cheek_puff_R", "lip_funnel"]
JOINTS = np.array([[0.0, -0.13, -0.018], [0.0, -0.045, -0.02], [0.0, -0.012, 0.002],
                   [0.032, 0.018, 0.069], [-0.032, 0.018, 0.069]])


def uv_sphere(rings: int = 12, segments: int = 16, radius: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A closed triangle sphere ``(V,3)``, ``(F,3)``."""
    verts = [[0.0, radius, 0.0]]
    for r in range(1, rings):
        th = np.pi * r / rings
        for s in range(segments):
            ph = 2 * np.pi * s / segments
            verts.append([radius * np.sin(th) * np.cos(ph), radius * np.cos(th), radius * np.sin(th) * np.sin(ph)])
    verts.append([0.0, -radius, 0.0])
    faces = []
    ring = lambda r, s: 1 + (r - 1) * segments + (s % segments)  # noqa: E731
    for s in range(segments):
        faces.append([0, ring(1, s + 1), ring(1, s)])
        faces.append([len(verts) - 1, ring(rings - 1, s), ring(rings - 1, s + 1)])
    for r in range(1, rings - 1):
        for s in range(segments):
            a, b, c, d = ring(r, s), ring(r, s + 1), ring(r + 1, s), ring(r + 1, s + 1)
            faces += [[a, b, d], [a, d, c]]
    return np.array(verts), np.array(faces)


def rig_dict(seed: int = 0, names: list[str] | None = None) -> dict:
    """A FLAME-layout rig: sphere head, smooth named expression fields, LBS weights to 5 joints."""
    rng = np.random.default_rng(seed)
    v, f = uv_sphere()
    names = list(names or EXPRESSION_NAMES)
    freq = rng.normal(size=(len(names), 3)) * 20
    phase = rng.uniform(0, 2 * np.pi, size=(len(names), 3))
    dirs = 0.004 * np.sin((v @ freq.T)[:, :, None] + phase[None])        # (V,E,3)
    d = np.linalg.norm(v[:, None] - JOINTS[None], axis=-1)
    w = np.exp(-(d / 0.05) ** 2) + 1e-3
    w /= w.sum(1, keepdims=True)
    return {"vertices": v.astype(np.float32), "faces": f.astype(np.int32),
            "expression_dirs": np.transpose(dirs, (1, 0, 2)).astype(np.float32), "expression_names": names,
            "joints": JOINTS.astype(np.float32), "joint_names": ["root", "neck", "jaw", "eye_L", "eye_R"],
            "parents": np.array([-1, 0, 1, 1, 1], np.int32), "weights": w.astype(np.float32),
            "head_model_id": f"test-{seed}"}


def track_arrays(frames: int = 30, n_expr: int = 10, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random ``expression (T,E)`` and ``pose (T,5,3)`` (axis-angle, up to ~0.5 rad)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, frames)[:, None]
    expr = np.sin(t * rng.uniform(0.5, 2, n_expr) + rng.uniform(0, 6, n_expr)) * rng.uniform(0.2, 1.5, n_expr)
    pose = 0.4 * np.sin(t[:, :, None] * rng.uniform(0.5, 2, (5, 3)) + rng.uniform(0, 6, (5, 3)))
    return expr, pose
