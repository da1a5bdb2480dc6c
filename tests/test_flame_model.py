"""FlameModel against an independent numpy LBS and smplx.lbs; joint locality; ids; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from smplx.lbs import lbs as smplx_lbs

from ffavatar.errors import InvalidInput
from ffavatar.flame import FlameModel, head_model_id
from ffavatar.flame.io import validate
from ffavatar_testdata import make_tiny_flame


def _rodrigues(r: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(r)
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def numpy_flame(m: dict, coeffs: np.ndarray, pose: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Independent FLAME: blendshapes, pose correctives, forward kinematics, LBS (one sample)."""
    v = m["v_template"] + m["shapedirs"][:, :, : len(coeffs)] @ coeffs
    joints = m["J_regressor"] @ v
    rots = [_rodrigues(p) for p in pose]
    feat = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v = v + m["posedirs"] @ feat
    parents = [-1, 0, 1, 1, 1]
    world = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if parents[j] >= 0 else 0)
        world.append(local if parents[j] < 0 else world[parents[j]] @ local)
    skin = []
    for j in range(5):
        a = world[j].copy()
        a[:3, 3] -= a[:3, :3] @ joints[j]
        skin.append(a)
    t = np.einsum("vj,jab->vab", m["weights"], np.stack(skin))
    return np.einsum("vab,vb->va", t[:, :3, :3], v) + t[:, :3, 3] + trans


@pytest.fixture
def model64(tiny_flame):
    return validate(tiny_flame), FlameModel(validate(tiny_flame), dtype=torch.float64)


def test_matches_independent_numpy_lbs_and_smplx(model64):
    m, fm = model64
    rng = np.random.default_rng(1)
    shape, expr = rng.normal(size=(3, 6)), rng.normal(size=(3, 4))
    pose, trans = rng.normal(size=(3, 5, 3)) * 0.3, rng.normal(size=(3, 3)) * 0.1
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    out = fm(t(shape), t(expr), t(pose), t(trans))
    for i in range(3):
        ref = numpy_flame(m, np.concatenate([shape[i], expr[i]]), pose[i], trans[i])
        np.testing.assert_allclose(out.vertices[i].numpy(), ref, atol=1e-8)  # smplx adds 1e-8 to angles
    verts, joints = smplx_lbs(t(np.concatenate([shape, expr], 1)), t(pose.reshape(3, 15)), fm.v_template,
                              fm.shapedirs, fm.posedirs, fm.J_regressor, fm.parents, fm.lbs_weights)
    torch.testing.assert_close(out.vertices, verts + t(trans)[:, None], atol=1e-12, rtol=0)
    torch.testing.assert_close(out.joints, joints + t(trans)[:, None], atol=1e-12, rtol=0)


def test_zero_parameters_give_template(model64):
    m, fm = model64
    out = fm(pose=torch.zeros(2, 5, 3, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[1].numpy(), m["v_template"], atol=1e-14)
    np.testing.assert_allclose(out.joints[0].numpy(), m["J_regressor"] @ m["v_template"], atol=1e-14)


def test_jaw_moves_only_jaw_weighted_vertices():
    d = make_tiny_flame()
    d["posedirs"] = np.zeros_like(d["posedirs"])
    w = d["weights"]
    w[w < 0.2] = 0
    d["weights"] = w / w.sum(1, keepdims=True)
    fm = FlameModel(validate(d), dtype=torch.float64)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2, 0] = 0.4  # jaw opens about x
    moved = (fm(pose=pose).vertices[0] - fm.v_template).norm(dim=1) > 1e-12
    jaw_w = fm.lbs_weights[:, 2] > 0
    assert moved.any()
    assert torch.equal(moved, jaw_w)
    pose.zero_()
    pose[0, 3, 1] = 0.5  # left eye only
    moved = (fm(pose=pose).vertices[0] - fm.v_template).norm(dim=1) > 1e-12
    assert torch.equal(moved, fm.lbs_weights[:, 3] > 0)


def test_transforms_offsets_and_landmarks(model64):
    m, fm = model64
    rng = np.random.default_rng(2)
    pose = torch.as_tensor(rng.normal(size=(2, 5, 3)) * 0.3)
    off = torch.as_tensor(rng.normal(size=(2, fm.num_vertices, 3)) * 0.01)
    base = fm(pose=pose, return_transforms=True)
    out = fm(pose=pose, offsets=off, return_transforms=True)
    torch.testing.assert_close(out.vertices - base.vertices, torch.einsum("bvij,bvj->bvi", out.rotations, off))
    torch.testing.assert_close(out.joints, base.joints)  # offsets do not move the skeleton
    rest = fm(translation=torch.ones(1, 3, dtype=torch.float64), return_transforms=True)
    torch.testing.assert_close(rest.rotations[0], torch.eye(3, dtype=torch.float64).expand(fm.num_vertices, 3, 3))
    torch.testing.assert_close(rest.translations[0], torch.ones(fm.num_vertices, 3, dtype=torch.float64))
    tri = m["f"][m["lmk_face_idx"]]
    ref = np.einsum("lkc,lk->lc", out.vertices[1].numpy()[tri], m["lmk_b_coords"])
    np.testing.assert_allclose(out.landmarks[1].numpy(), ref, atol=1e-12)


def test_component_counts_and_ids(tiny_flame):
    m = validate(tiny_flame)
    fm = FlameModel(m, n_shape=3, n_expr=2)
    assert fm.shapedirs.shape[2] == 5
    torch.testing.assert_close(fm.shapedirs[..., 3], torch.as_tensor(m["shapedirs"][..., 6], dtype=torch.float32))
    out = fm(shape=torch.ones(1, 2), expression=torch.ones(1, 1))  # fewer coefficients are zero-padded
    assert out.vertices.shape == (1, fm.num_vertices, 3)
    assert head_model_id(m) == head_model_id(validate(make_tiny_flame())) == fm.model_id
    assert head_model_id(m) != head_model_id(validate(make_tiny_flame(seed=1)))
    with pytest.raises(InvalidInput, match="10 shape"):
        FlameModel(m, n_shape=10)
    with pytest.raises(InvalidInput, match=r"pose must be \(B, 5, 3\)"):
        fm(pose=torch.zeros(1, 15))
    with pytest.raises(InvalidInput, match="batch size"):
        fm(shape=torch.zeros(2, 3), expression=torch.zeros(3, 2))
