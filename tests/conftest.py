"""Shared fixtures: a small, valid FLAME-layout model built in code (no FLAME file needed)."""

from __future__ import annotations

import numpy as np
import pytest


def _octasphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed unit sphere mesh: octahedron with midpoint subdivision, projected to the sphere."""
    from ffavatar.flame.subdivide import upsample_matrix

    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    u, f = upsample_matrix(f, len(v), level)
    v = u @ v
    return v / np.linalg.norm(v, axis=1, keepdims=True), f


def make_tiny_flame(seed: int = 0, n_shape: int = 6, n_expr: int = 4, level: int = 3) -> dict:
    """A FLAME-layout dict on a 0.1 m sphere 'head' with 5 joints and smooth random blendshapes."""
    rng = np.random.default_rng(seed)
    v, f = _octasphere(level)
    v = v * 0.1
    n = len(v)
    k = n_shape + n_expr
    freq = rng.normal(size=(k, 3)) * 10
    phase = rng.uniform(0, 2 * np.pi, size=(k, 3))
    shapedirs = 0.003 * np.sin((v @ freq.T)[:, None, :] + phase.T[None])  # (n,3,k)
    posedirs = 1e-3 * rng.normal(size=(n, 3, 36))
    joints = np.array([[0, -0.05, 0], [0, -0.02, 0], [0, -0.03, 0.05], [0.03, 0.03, 0.08], [-0.03, 0.03, 0.08]])
    d = np.linalg.norm(v[:, None] - joints[None], axis=-1)
    w = np.exp(-(d / 0.04) ** 2)
    w /= w.sum(1, keepdims=True)
    jr = np.exp(-(d.T / 0.02) ** 2)
    jr /= jr.sum(1, keepdims=True)
    return {
        "v_template": v, "f": f, "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": jr,
        "weights": w, "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "n_shape": np.array(n_shape), "lmk_face_idx": np.array([0, 5, 17]),
        "lmk_b_coords": np.array([[1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]),
    }


@pytest.fixture
def tiny_flame() -> dict:
    return make_tiny_flame()
