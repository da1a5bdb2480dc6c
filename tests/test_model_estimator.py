"""FLAME estimator: camera math, neutral untrained outputs, shape pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ffavatar.errors import InvalidInput
from ffavatar.model.config import EstimatorConfig
from ffavatar.model.flame_estimator import (
    EstimatedFlame,
    FlameEstimator,
    axis_angle_to_matrix,
    camera_matrices,
    pool_shape,
)


def _project(k, viewmat, x):
    """World points (M,3) through one camera -> pixels (M,2), depth (M,)."""
    xc = x @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = xc @ k.T
    return uv[:, :2] / uv[:, 2:], xc[:, 2]


def test_default_camera_sits_on_plus_z_looking_at_the_face():
    k, vm = camera_matrices(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 0.6]]), torch.tensor([1.3]), 640, 480)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]])
    torch.testing.assert_close(vm[0], expected)
    torch.testing.assert_close(k[0], torch.tensor([[1.3 * 640, 0, 320], [0, 1.3 * 640, 240], [0, 0, 1.0]]))
    centre = -vm[0, :3, :3].T @ vm[0, :3, 3]
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.0, 0.6]))
    pts = torch.tensor([[0.0, 0, 0], [0, 0.1, 0], [0.1, 0, 0], [0, 0, 0.1]])
    uv, z = _project(k[0], vm[0], pts)
    torch.testing.assert_close(uv[0], torch.tensor([320.0, 240.0]))  # origin -> image centre
    assert uv[1, 1] < 240 and abs(uv[1, 0] - 320) < 1e-4  # world up -> image up
    assert uv[2, 0] > 320  # world +X (the subject's left) -> image right, as in a frontal photo
    assert z[3] < z[0]  # the nose side (+Z) is closer to the camera
    torch.testing.assert_close(uv[1, 1], torch.tensor(240 - 1.3 * 640 * 0.1 / 0.6))


def test_camera_rotation_turns_the_head():
    rot = torch.tensor([[0.0, math.pi / 2, 0.0]])  # head turned 90 deg about world up
    k, vm = camera_matrices(rot, torch.tensor([[0.0, 0.0, 0.6]]), torch.tensor([1.0]), 100, 100)
    r = vm[0, :3, :3]
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.linalg.det(r) > 0.999
    # the nose direction (+Z) now points along world +X, i.e. toward image right, not the camera
    _, z = _project(k[0], vm[0], torch.tensor([[0.0, 0.0, 0.1]]))
    torch.testing.assert_close(z, torch.tensor([0.6]), atol=1e-6, rtol=0)


def test_axis_angle_matches_scipy_and_is_smooth_at_zero():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(16, 3)) * 1.5
    ours = axis_angle_to_matrix(torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(r).as_matrix(), atol=1e-10)
    tiny = torch.tensor([[1e-6, -2e-6, 3e-7], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    m = axis_angle_to_matrix(tiny)
    np.testing.assert_allclose(m.detach().numpy(), Rotation.from_rotvec(tiny.detach().numpy()).as_matrix(),
                               atol=1e-12)
    m[:, 0, 1].sum().backward()
    assert torch.isfinite(tiny.grad).all()
    torch.testing.assert_close(tiny.grad[1], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))


def test_untrained_estimator_is_neutral_with_the_default_camera():
    torch.manual_seed(0)
    cfg = EstimatorConfig(hidden=64, heads=4, pool_queries=2, init_cam_distance=0.6, init_focal=1.3)
    est = FlameEstimator(cfg, token_dim=32, n_expr=10, n_shape=7)
    out = est(torch.randn(3, 16, 32), torch.randn(3, 32), (4, 4))
    assert isinstance(out, EstimatedFlame)
    assert out.expr.shape == (3, 10) and torch.all(out.expr == 0)
    assert out.pose.shape == (3, 5, 3) and torch.all(out.pose == 0)
    assert out.shape.shape == (3, 7) and torch.all(out.shape == 0)
    assert torch.all(out.cam_rot == 0)
    torch.testing.assert_close(out.cam_t, torch.tensor([[0.0, 0.0, 0.6]]).expand(3, 3))
    torch.testing.assert_close(out.focal, torch.full((3,), 1.3))
    k, vm = out.camera(200, 100)
    uv, _ = _project(k[0], vm[0], torch.zeros(1, 3))
    torch.testing.assert_close(uv[0], torch.tensor([100.0, 50.0]))
    assert out.eye_pose.shape == (3, 6) and out.jaw_pose.shape == (3, 3)
    no_shape = FlameEstimator(EstimatorConfig(hidden=64, predict_shape=False), 32, 10, 7)
    assert no_shape(torch.randn(1, 4, 32), torch.randn(1, 32), (2, 2)).shape is None


def test_estimator_outputs_depend_on_the_image_once_trained():
    torch.manual_seed(0)
    est = FlameEstimator(EstimatorConfig(hidden=64), token_dim=32, n_expr=5, n_shape=0)
    for head in (est.expr_head, est.pose_head, est.cam_head):
        torch.nn.init.normal_(head.weight, std=0.1)
    a = est(torch.randn(1, 16, 32), torch.randn(1, 32), (4, 4))
    b = est(torch.randn(1, 16, 32), torch.randn(1, 32), (4, 4))
    assert not torch.allclose(a.expr, b.expr) and not torch.allclose(a.cam_t, b.cam_t)
    assert torch.all(a.cam_t[:, 2] > 0) and torch.all(a.focal > 0)
    loss = a.expr.sum() + a.pose.sum() + a.cam_t.sum() + a.focal.sum()
    loss.backward()
    for name, p in est.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pool_shape_is_a_masked_mean():
    shape = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(pool_shape(shape, mask), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))
    torch.testing.assert_close(pool_shape(shape), shape.mean(1))
    with pytest.raises(InvalidInput, match="no valid view"):
        pool_shape(shape, torch.tensor([[False, False, False], [True, True, True]]))
