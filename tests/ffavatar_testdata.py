"""Test data built in code: a small valid FLAME-layout model (no FLAME file needed), a small folder
dataset, and training overrides for fast CPU steps."""

from __future__ import annotations

import numpy as np


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


def make_folder_dataset(root, identities: int = 3, frames: int = 3, views: int = 2, size: int = 32, seed: int = 0):
    """A small multi-view folder dataset of smooth random images (learnable colour blobs) with masks."""
    from ffavatar.data.folder import FrameRecord, IdentityRecord, ViewRecord, write_dataset_index, write_identity

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ids = []
    for i in range(identities):
        rec = IdentityRecord(id=f"p{i:02d}")
        base = rng.uniform(0.2, 0.8, 3)
        images = []
        for f in range(frames):
            rec.frames.append(FrameRecord(index=f, expression=[0.0] * 4, pose=[[0.0] * 3] * 5, views=[
                ViewRecord(view=v, image=f"images/{f:06d}_{v:02d}.png", mask=f"masks/{f:06d}_{v:02d}.png")
                for v in range(views)]))
            row = []
            for v in range(views):
                blob = np.exp(-((xx - 0.5 - 0.1 * v) ** 2 + (yy - 0.5) ** 2) / 0.05)
                rgb = np.clip(1 - blob[..., None] * (1 - base) + 0.02 * rng.normal(size=(size, size, 3)), 0, 1)
                row.append(((rgb * 255).astype(np.uint8), (blob > 0.3).astype(np.uint8) * 255))
            images.append(row)
        write_identity(root, rec, images)
        ids.append(rec.id)
    write_dataset_index(root, "multiview", ids)
    return root


TINY_TRAIN = ["batch_size=2", "sampler.size=32", "sampler.max_sources=2", "sampler.targets=1",
              "model.n_shape=6", "model.n_expr=4", "model.encoder.image_size=56", "model.encoder.pos_embed_size=56",
              "grid_every=0", "log_every=1", "checkpoint_every=0", "optim.warmup_steps=2", "optim.lr=1e-3"]
"""Overrides that make a training step take well under a second on 2 CPU cores."""
