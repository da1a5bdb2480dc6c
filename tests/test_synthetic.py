"""Synthetic data: deterministic bytes, readable back, ground truth consistent with the images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ffavatar.data.folder import FolderDataset
from ffavatar.data.synthetic import SynthConfig, SyntheticHead, generate


@pytest.fixture(scope="module")
def head():
    return SyntheticHead()


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_read_back(tmp_path, head):
    cfg = SynthConfig(identities=2, frames=2, views=2, size=48, seed=3)
    a = generate(cfg, tmp_path / "a", head=head)
    b = generate(cfg, tmp_path / "b", head=head)
    assert _digest(a) == _digest(b)
    c = generate(SynthConfig(identities=2, frames=2, views=2, size=48, seed=4), tmp_path / "c", head=head)
    assert _digest(a) != _digest(c)
    ds = FolderDataset(a)
    assert ds.kind == "multiview" and ds.identities == ["id00000", "id00001"]
    assert ds.info["head_model_id"] == head.flame.model_id and ds.info["n_expr"] == head.flame.n_expr
    rec = ds.identity("id00001")
    assert len(rec.frames) == 2 and len(rec.frames[0].views) == 2
    assert len(rec.frames[0].expression) == head.flame.n_expr and np.array(rec.frames[0].pose).shape == (5, 3)
    rgb, mask = ds.load_view("id00001", rec.frames[1].views[1])
    assert rgb.shape == (48, 48, 3) and mask.shape == (48, 48)
    # the head is in the picture, framed: foreground covers a good part but not all of the image
    assert 0.1 < mask.mean() < 0.8
    # background is the configured white where the mask is empty, the head is not white
    assert rgb[mask == 0].min() > 0.99 and rgb[mask > 0.99].mean() < 0.9


def test_cameras_project_the_head_into_the_image(tmp_path, head):
    import torch

    root = generate(SynthConfig(identities=1, frames=1, views=3, size=64, seed=0), tmp_path / "d", head=head)
    ds = FolderDataset(root)
    rec = ds.identity("id00000")
    frame = rec.frames[0]
    verts = head.flame(shape=torch.tensor([rec.shape], dtype=torch.float32),
                       expression=torch.tensor([frame.expression], dtype=torch.float32),
                       pose=torch.tensor([frame.pose], dtype=torch.float32)).vertices[0]
    for view in frame.views:
        cam = view.camera.to_camera()
        uv = cam.project(verts[None])[0]
        _, mask = ds.load_view("id00000", view)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 64)
        px = uv[inside].long()
        assert inside.float().mean() > 0.9
        assert mask[px[:, 1], px[:, 0]].mean() > 0.8  # projected surface points land on the mask
