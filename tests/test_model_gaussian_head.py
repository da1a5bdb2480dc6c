"""Gaussian head: sparse lift, sensible initial Gaussians, bounded attributes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
import torch

from ffavatar.errors import InvalidInput
from ffavatar.gaussians import Gaussians
from ffavatar.model.config import GaussianHeadConfig
from ffavatar.model.gaussian_head import GaussianHead


def _grid_setup(spacing=0.005, n_side=12):
    """Coarse anchors on a planar grid (2*spacing apart) and dense points = anchors + edge midpoints."""
    c = torch.arange(n_side, dtype=torch.float32) * 2 * spacing
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    anchors = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(-1, 3)
    q = anchors.shape[0]
    rows, cols, vals = list(range(q)), list(range(q)), [1.0] * q
    n = q
    for i in range(n_side):
        for j in range(n_side):
            a = i * n_side + j
            for b in ([a + 1] if j + 1 < n_side else []) + ([a + n_side] if i + 1 < n_side else []):
                rows += [n, n]
                cols += [a, b]
                vals += [0.5, 0.5]
                n += 1
    up = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (n, q), check_invariants=True)
    dense = up.to_dense() @ anchors
    return anchors, dense, up


def test_initial_gaussians_are_a_sensible_surface():
    torch.manual_seed(0)
    anchors, dense, up = _grid_setup(spacing=0.005)
    cfg = GaussianHeadConfig(sh_degree=2, hidden=32, init_opacity=0.9, scale_min=1e-4, scale_max=0.05)
    head = GaussianHead(cfg, in_dim=16, dense_points=dense, upsample=up)
    g = head(torch.randn(2, anchors.shape[0], 16))
    assert isinstance(g, Gaussians)
    n = dense.shape[0]
    assert g.means.shape == (2, n, 3) and g.sh.shape == (2, n, 9, 3) and g.opacity_logits.shape == (2, n)
    assert torch.equal(g.means, dense.expand(2, n, 3))  # zero offsets
    torch.testing.assert_close(g.opacities, torch.full((2, n), 0.9), atol=0.02, rtol=0)
    torch.testing.assert_close(g.rgb, torch.full((2, n, 3), 0.5), atol=0.05, rtol=0)
    torch.testing.assert_close(g.rotations, torch.tensor([1.0, 0, 0, 0]).expand(2, n, 4), atol=0.02, rtol=0)
    # scale = RMS distance to the 3 nearest points. Interior anchors: 4 edge midpoints at 5 mm;
    # interior edge midpoints: 2 anchors at 5 mm, then midpoints at 5*sqrt(2) -> sqrt(100/3) mm
    interior = (dense[:, :2] > 0.012).all(1) & (dense[:, :2] < 0.098).all(1)
    is_anchor = torch.arange(n) < anchors.shape[0]
    s = g.scales[0]
    corner = s[interior & is_anchor]
    torch.testing.assert_close(corner, torch.full_like(corner, 0.005), rtol=0.01, atol=0)
    mid = s[interior & ~is_anchor]
    torch.testing.assert_close(mid, torch.full_like(mid, math.sqrt(100 / 3) * 1e-3), rtol=0.01, atol=0)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_lift_is_the_sparse_product_for_every_input_format():
    torch.manual_seed(0)
    anchors, dense, up = _grid_setup(n_side=5)
    cfg = GaussianHeadConfig(hidden=16)
    feats = torch.randn(3, anchors.shape[0], 8)
    expected = torch.einsum("nq,bqd->bnd", up.to_dense(), feats)
    sp = up.coalesce()
    scipy_up = scipy.sparse.csr_matrix((sp.values().numpy(), sp.indices().numpy()), shape=tuple(up.shape))
    for u in (up, up.to_dense(), up.to_sparse_csr(), scipy_up):
        head = GaussianHead(cfg, in_dim=8, dense_points=dense, upsample=u)
        torch.testing.assert_close(head.lift(feats), expected)


def test_rejects_bad_upsample():
    anchors, dense, up = _grid_setup(n_side=4)
    bad = up.to_dense()
    bad[3, 0] += 0.2
    with pytest.raises(InvalidInput, match="sum to 1"):
        GaussianHead(GaussianHeadConfig(), 8, dense, bad)
    with pytest.raises(InvalidInput, match="shape"):
        GaussianHead(GaussianHeadConfig(), 8, dense[:-1], up)


def test_attributes_stay_bounded_when_pushed_hard():
    torch.manual_seed(0)
    anchors, dense, up = _grid_setup(n_side=6)
    cfg = GaussianHeadConfig(hidden=16, max_offset=0.01, scale_min=1e-3, scale_max=0.02, gaussians_per_point=3)
    head = GaussianHead(cfg, in_dim=8, dense_points=dense, upsample=up)
    with torch.no_grad():
        head.out.weight.normal_(std=50.0)
    g = head(torch.randn(1, anchors.shape[0], 8) * 10)
    n = dense.shape[0]
    assert g.means.shape == (1, 3 * n, 3)
    offsets = g.means[0].view(n, 3, 3) - dense[:, None, :]
    assert offsets.abs().max() <= 0.01 + 1e-7 and offsets.abs().max() > 0.009
    assert g.scales.min() >= 1e-3 * (1 - 1e-5) and g.scales.max() <= 0.02 * (1 + 1e-5)
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(1, 3 * n))
    assert g.scales.log().std() > 0.5  # scales really vary across the allowed range
    assert math.isfinite(g.opacity_logits.sum().item())


def test_gradients_reach_the_anchor_features():
    torch.manual_seed(0)
    anchors, dense, up = _grid_setup(n_side=5)
    head = GaussianHead(GaussianHeadConfig(hidden=16), 8, dense, up)
    feats = torch.randn(2, anchors.shape[0], 8, requires_grad=True)
    g = head(feats)
    (g.sh.square().sum() + g.means.sum() + g.log_scales.sum() + g.opacity_logits.sum()).backward()
    assert feats.grad.abs().min() > 0  # every anchor feeds at least one dense point
    assert head.out.weight.grad[0:3].abs().sum() > 0  # the zero-init offset weights get gradient too
    np.testing.assert_equal(torch.isfinite(feats.grad).all().item(), True)
