"""FFAvatarNet (tiny config): shapes, padding and view-order invariance, gradients, initial outputs."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from ffavatar.errors import InvalidInput
from ffavatar.gaussians import Gaussians
from ffavatar.model.config import ModelConfig
from ffavatar.model.network import PARAMETER_GROUPS, FFAvatarNet

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


def head_points(q: int, n: int, seed: int = 0):
    """Anchors (q,3) on a 0.1 m Fibonacci sphere; dense points = anchors + midpoints of nearby pairs."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(q, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / q)
    theta = math.pi * (1 + 5**0.5) * i
    anchors = (0.1 * torch.stack([phi.sin() * theta.cos(), phi.cos(), phi.sin() * theta.sin()], -1)).float()
    a = torch.randint(0, q, (n - q,), generator=g)
    b = (a + torch.randint(1, 4, (n - q,), generator=g)) % q  # Fibonacci neighbours are index-close
    rows = torch.cat([torch.arange(q), torch.arange(q, n).repeat_interleave(2)])
    cols = torch.cat([torch.arange(q), torch.stack([a, b], 1).reshape(-1)])
    vals = torch.cat([torch.ones(q), torch.full((2 * (n - q),), 0.5)])
    up = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, q), check_invariants=True).coalesce()
    dense = torch.sparse.mm(up, anchors)
    return anchors, dense, up


@pytest.fixture(scope="module")
def net() -> FFAvatarNet:
    torch.manual_seed(0)
    anchors, dense, up = head_points(1000, 2000)
    return FFAvatarNet(ModelConfig.preset("tiny"), anchors, dense, up).eval()


def _images(b, v, seed, size=112):
    return torch.rand(b, v, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_same(g1: Gaussians, g2: Gaussians, atol=1e-5):
    for f in FIELDS:
        torch.testing.assert_close(getattr(g1, f), getattr(g2, f), atol=atol, rtol=1e-5, msg=f)


@pytest.mark.parametrize("views", [1, 2, 4, 7])
def test_reconstruct_shapes(net, views):
    b = 2 if views == 2 else 1
    with torch.no_grad():
        g = net.reconstruct(_images(b, views, seed=views))
    n = net.num_gaussians
    assert isinstance(g, Gaussians)
    assert g.means.shape == (b, n, 3) and g.quats.shape == (b, n, 4) and g.log_scales.shape == (b, n, 3)
    assert g.opacity_logits.shape == (b, n) and g.sh.shape == (b, n, 4, 3)
    assert all(torch.isfinite(getattr(g, f)).all() for f in FIELDS)


def test_images_of_other_sizes_are_resized_inside(net):
    assert net.input_size(112, 112) == (112, 112)
    assert net.input_size(300, 300) == (112, 112)
    assert net.input_size(480, 360) == (112, 84)
    with torch.no_grad():
        g = net.reconstruct(torch.rand(1, 2, 3, 480, 360))
        est = net.estimate(torch.rand(2, 3, 200, 200))
    assert g.means.shape == (1, net.num_gaussians, 3)
    assert est.expr.shape == (2, 50)


def test_padded_views_change_nothing(net):
    imgs = _images(2, 4, seed=1)
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    padded = imgs.clone()
    padded[0, 1] = float("nan")  # padding content must never be read
    padded[0, 3] = 5.0
    with torch.no_grad():
        both = net.reconstruct(padded, mask)
        first = net.reconstruct(imgs[:1, [0, 2]])
        second = net.reconstruct(imgs[1:])
    _assert_same(both[0:1], first)
    _assert_same(both[1:2], second)


def test_view_order_does_not_matter(net):
    imgs = _images(1, 4, seed=2)
    with torch.no_grad():
        ref = net.reconstruct(imgs)
        _assert_same(net.reconstruct(imgs.flip(1)), ref)
        _assert_same(net.reconstruct(imgs[:, [2, 0, 3, 1]]), ref)
        mask = torch.tensor([[True, True, False, True]])
        a = net.reconstruct(imgs, mask)
        b = net.reconstruct(imgs[:, [3, 2, 1, 0]], mask.flip(1))
        _assert_same(a, b)
        other = net.reconstruct(_images(1, 4, seed=3))
    assert (other.sh - ref.sh).abs().max() > 1e-5  # the output does depend on the images


def test_initial_outputs_are_neutral(net):
    with torch.no_grad():
        g = net.reconstruct(_images(1, 2, seed=4))
        est = net.estimate(_images(1, 3, seed=5)[0])
    assert torch.equal(g.means[0], net.dense_points)  # zero offsets
    torch.testing.assert_close(g.opacities, torch.full_like(g.opacities, 0.9), atol=0.02, rtol=0)
    assert torch.all(est.expr == 0) and torch.all(est.pose == 0) and torch.all(est.shape == 0)
    torch.testing.assert_close(est.cam_t, torch.tensor([[0.0, 0.0, 0.6]]).expand(3, 3))
    k, vm = est.camera(112, 112)
    origin = k @ vm[:, :3, 3:]  # the world origin through each camera
    torch.testing.assert_close(origin[:, :2, 0] / origin[:, 2:, 0], torch.full((3, 2), 56.0))


def test_gradients_reach_every_parameter_group():
    torch.manual_seed(0)
    anchors, dense, up = head_points(300, 600)
    net = FFAvatarNet(ModelConfig.preset("tiny"), anchors, dense, up)
    src = _images(2, 3, seed=6)
    out = net(src, torch.tensor([[True, True, True], [True, False, True]]), targets=_images(2, 2, seed=7))
    g, est = out.gaussians, out.targets
    assert est.expr.shape == (4, 50) and out.shape.shape == (2, 50)
    w = torch.Generator().manual_seed(8)
    loss = sum((getattr(g, f) * torch.randn(getattr(g, f).shape, generator=w)).sum() for f in FIELDS)
    loss = loss + est.expr.sum() + est.pose.sum() + est.cam_t.sum() + est.focal.sum()
    loss = loss + est.cam_rot.sum() + out.shape.sum()
    loss.backward()
    groups = net.parameter_groups()
    assert set(groups) == set(PARAMETER_GROUPS)
    for name, params in groups.items():
        assert sum(p.grad.abs().sum().item() for p in params if p.grad is not None) > 0, name
    # every trainable tensor of the Gaussian path gets a nonzero gradient (no dead parameters)
    for part in ("encoder", "query_former", "gaussian_head"):
        for pname, p in getattr(net, part).named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{part}.{pname}"
    for head in ("expr_head", "pose_head", "cam_head", "shape_head"):
        assert getattr(net.estimator, head).weight.grad.abs().sum() > 0, head


def test_parameter_groups_partition_the_trainable_parameters(net):
    groups = net.parameter_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters() if p.requires_grad}
    assert not net.encoder.backbone.mask_token.requires_grad


def test_state_dict_is_safetensors_ready_and_round_trips(net, tmp_path):
    sd = net.state_dict()
    assert not any(k.endswith(("anchors", "dense_points", "up_indices", "up_values")) for k in sd)
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.manual_seed(123)
    anchors, dense, up = head_points(1000, 2000)
    other = FFAvatarNet(ModelConfig.preset("tiny"), anchors, dense, up).eval()
    other.load_state_dict(load_file(str(path)))
    imgs = _images(1, 2, seed=9)
    with torch.no_grad():
        _assert_same(other.reconstruct(imgs), net.reconstruct(imgs), atol=0)


def test_input_errors(net):
    with pytest.raises(InvalidInput, match="at least one valid view"):
        net.reconstruct(_images(1, 2, seed=0), torch.tensor([[False, False]]))
    with pytest.raises(InvalidInput, match=r"\(B, V, 3, H, W\)"):
        net.reconstruct(torch.rand(2, 3, 112, 112))
    with pytest.raises(InvalidInput, match="view_mask"):
        net.reconstruct(_images(1, 2, seed=0), torch.tensor([[1, 0]]))
    anchors, dense, up = head_points(100, 150)
    with pytest.raises(InvalidInput, match="columns"):
        FFAvatarNet(ModelConfig.preset("tiny"), anchors[:50], dense, up)


def test_flame_sized_head_trains_a_step():
    """~5k anchors and ~20k dense points, as with FLAME subdivided once; one optimiser step."""
    torch.manual_seed(0)
    anchors, dense, up = head_points(5023, 20000)
    net = FFAvatarNet(ModelConfig.preset("tiny"), anchors, dense, up)
    opt = torch.optim.Adam([{"params": ps} for ps in net.parameter_groups().values()], lr=1e-3)
    src = _images(1, 2, seed=10)
    g = net.reconstruct(src)
    assert g.means.shape == (1, 20000, 3)
    loss = (g.rgb - 0.8).square().mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = (net.reconstruct(src).rgb - 0.8).square().mean()
    assert after < loss.item()


@pytest.mark.cuda
def test_cuda_matches_cpu(net):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    imgs = _images(2, 3, seed=11)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        ref = net.reconstruct(imgs, mask)
        gpu = net.to("cuda")
        try:
            out = gpu.reconstruct(imgs.cuda(), mask.cuda()).to("cpu")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                half = gpu.reconstruct(imgs.cuda(), mask.cuda())
        finally:
            net.to("cpu")
    _assert_same(out, ref, atol=1e-4)
    assert torch.isfinite(half.means).all() and half.means.shape == ref.means.shape
