"""gsplat (CUDA) against the PyTorch tile renderer: same images, alphas and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ffavatar.errors import InvalidInput
from ffavatar.render.gsplat_backend import rasterize_gsplat
from ffavatar.render.torch_backend import rasterize_torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat renders on CUDA only; no GPU here")


def head_scene(n: int, width: int, height: int, cams: int, dim: int, seed: int):
    """Gaussians on a head-sized ellipsoid shell, cameras 0.6 m away around it (float32, CUDA)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True) * torch.tensor([0.08, 0.11, 0.10])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(math.log(0.002) + math.log(4.0) * torch.rand(n, 3, generator=g))
    opacities = 0.1 + 0.899 * torch.rand(n, generator=g)
    colors = torch.rand(n, dim, generator=g)
    views, ks = [], []
    for c in range(cams):
        ang = 0.6 * c - 0.6
        rot = torch.tensor([[math.cos(ang), 0, -math.sin(ang)], [0, 1, 0], [math.sin(ang), 0, math.cos(ang)]])
        view = torch.eye(4)
        view[:3, :3], view[2, 3] = rot, 0.6
        views.append(view)
        f = 1.2 * width
        ks.append(torch.tensor([[f, 0, width / 2 + c], [0, f, height / 2 - c], [0, 0, 1]]))
    out = [means, quats, scales, opacities, colors, torch.stack(views), torch.stack(ks)]
    return [t.cuda() for t in out]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).item()


def test_gsplat_rejects_cpu_tensors():
    scene = [t.cpu() for t in (torch.zeros(2, 3), torch.ones(2, 4), torch.ones(2, 3), torch.ones(2),
                               torch.ones(2, 3), torch.eye(4)[None], torch.eye(3)[None])]
    with pytest.raises(InvalidInput, match="CUDA"):
        rasterize_gsplat(*scene, 8, 8)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    "n,width,height,cams,dim,mode",
    [(800, 64, 48, 1, 3, "RGB"), (3000, 130, 100, 2, 3, "RGB+ED"), (6000, 160, 160, 3, 5, "RGB")],
)
def test_gsplat_matches_torch_backend(n, width, height, cams, dim, mode):
    scene = head_scene(n, width, height, cams, dim, seed=n)
    bg = torch.rand(cams, dim, device="cuda")
    r1, a1, m1 = rasterize_gsplat(*scene, width, height, backgrounds=bg, render_mode=mode)
    r2, a2, m2 = rasterize_torch(*scene, width, height, backgrounds=bg, render_mode=mode)
    assert r1.shape == r2.shape and a1.shape == a2.shape
    assert (r1[..., :dim] - r2[..., :dim]).abs().mean() <= 1e-3
    assert (a1 - a2).abs().mean() <= 1e-3
    assert a2.max() > 0.99 and a2.min() == 0
    if mode == "RGB+ED":
        covered = a2[..., 0] > 0.5
        assert (r1[..., -1][covered] - r2[..., -1][covered]).abs().mean() < 1e-3  # metres
    visible = (m1["radii"] > 0).all(-1)
    assert (visible == (m2["radii"] > 0).all(-1)).float().mean() > 0.999
    assert torch.allclose(m1["means2d"][visible], m2["means2d"][visible], atol=1e-3)
    assert torch.allclose(m1["conics"][visible], m2["conics"][visible], rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("n,width,height,cams", [(500, 48, 40, 1), (2000, 96, 80, 2), (4000, 128, 96, 3)])
def test_gsplat_gradients_match_torch_backend(n, width, height, cams):
    scene = head_scene(n, width, height, cams, 3, seed=7 + n)
    bg = torch.rand(cams, 3, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    wr = torch.rand(cams, height, width, 3, device="cuda", generator=g)
    wa = torch.rand(cams, height, width, 1, device="cuda", generator=g)
    grads = []
    for fn in (rasterize_gsplat, rasterize_torch):
        params = [t.clone().requires_grad_(True) for t in scene[:5]] + [bg.clone().requires_grad_(True)]
        r, a, _ = fn(*params[:5], *scene[5:], width, height, backgrounds=params[5])
        ((r * wr).sum() + (a * wa).sum()).backward()
        grads.append([p.grad for p in params])
    names = ["means", "quats", "scales", "opacities", "colors", "backgrounds"]
    for name, x, y in zip(names, *grads):
        assert _cosine(x, y) > 0.99, name
        assert (x - y).norm() <= 0.05 * y.norm(), name
