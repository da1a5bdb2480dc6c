"""Animating canonical Gaussians equals posing the subdivided FLAME; rotations follow the surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffavatar.animate import Animator
from ffavatar.flame import FlameModel
from ffavatar.flame.io import validate
from ffavatar.flame.subdivide import subdivide
from ffavatar.gaussians import Gaussians
from ffavatar.rotations import matrix_to_quat, quat_multiply, quat_to_matrix

F64 = torch.float64


@pytest.fixture
def rig(tiny_flame):
    m = validate(tiny_flame)
    dense = subdivide(m, 1)
    flame = FlameModel(m, dtype=F64)
    return m, dense, flame, Animator(flame, dense["upsample"])


def _canonical(animator, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    n = animator.num_points
    offsets = 0.002 * torch.randn(batch + (n, 3), generator=g, dtype=F64)
    return Gaussians(means=animator.anchors().expand(batch + (n, 3)) + offsets,
                     quats=torch.randn(batch + (n, 4), generator=g, dtype=F64),
                     log_scales=torch.full(batch + (n, 3), -6.0, dtype=F64),
                     opacity_logits=torch.zeros(batch + (n,), dtype=F64),
                     sh=torch.rand(batch + (n, 1, 3), generator=g, dtype=F64)), offsets


def test_matches_posing_the_subdivided_model(rig):
    m, dense, flame, anim = rig
    canon, offsets = _canonical(anim)
    rng = np.random.default_rng(0)
    kw = dict(shape=torch.as_tensor(rng.normal(size=(3, 6))), expression=torch.as_tensor(rng.normal(size=(3, 4))),
              pose=torch.as_tensor(rng.normal(size=(3, 5, 3)) * 0.3))
    posed = anim(canon, translation=torch.ones(3, 3, dtype=F64), **kw)
    ref = FlameModel(dense, dtype=F64)(offsets=offsets.expand(3, -1, -1), **kw).vertices + 1
    torch.testing.assert_close(posed.means, ref, atol=1e-10, rtol=0)
    assert posed.means.shape == (3, anim.num_points, 3)
    torch.testing.assert_close(anim.anchors(), torch.as_tensor(dense["v_template"]), atol=1e-12, rtol=0)


def test_rest_pose_is_identity_and_global_rotation_rotates_gaussians(rig):
    _, _, _, anim = rig
    canon, _ = _canonical(anim, batch=(2,))
    rest = anim(canon, pose=torch.zeros(2, 5, 3, dtype=F64))
    torch.testing.assert_close(rest.means, canon.means, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_matrix(rest.quats), quat_to_matrix(canon.quats), atol=1e-12, rtol=0)
    pose = torch.zeros(2, 5, 3, dtype=F64)
    pose[:, 0] = torch.tensor([0.3, -0.5, 0.2], dtype=F64)  # root: every point gets the same rotation
    posed = anim(canon, pose=pose)
    r = quat_to_matrix(posed.quats) @ quat_to_matrix(canon.quats).transpose(-1, -2)
    r0 = r[0, 0]
    torch.testing.assert_close(r, r0.expand_as(r), atol=1e-10, rtol=0)
    angle = torch.arccos(((r0.trace() - 1) / 2).clamp(-1, 1))
    assert abs(float(angle) - float(pose[0, 0].norm())) < 1e-8


def test_quaternion_helpers_round_trip():
    q = torch.nn.functional.normalize(torch.randn(1000, 4, dtype=F64), dim=-1)
    q = q * torch.sign(q[:, :1])
    torch.testing.assert_close(matrix_to_quat(quat_to_matrix(q)), q, atol=1e-10, rtol=0)
    a, b = q[:500], q[500:]
    torch.testing.assert_close(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-10, rtol=0)


def test_gradients_reach_gaussians_and_flame_parameters(rig):
    _, _, _, anim = rig
    canon, _ = _canonical(anim)
    canon.means.requires_grad_(True)
    canon.quats.requires_grad_(True)
    expr = torch.zeros(1, 4, dtype=F64, requires_grad=True)
    pose = torch.full((1, 5, 3), 0.1, dtype=F64, requires_grad=True)
    posed = anim(canon, expression=expr, pose=pose)
    (posed.means.square().sum() + posed.quats[..., 1].sum()).backward()
    for t in (canon.means, canon.quats, expr, pose):
        assert t.grad is not None and t.grad.abs().sum() > 0
