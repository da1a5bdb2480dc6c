"""The tile-based PyTorch rasterizer: analytic cases, the dense twin, gradients, camera batches."""

from __future__ import annotations

import math

import pytest
import torch

from ffavatar.errors import InvalidInput
from ffavatar.render import torch_backend as tb
from ffavatar.render.dense import rasterize_dense
from ffavatar.render.torch_backend import ALPHA_MAX, rasterize_torch

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny renders: one intra-op thread avoids stalls on a busy shared CPU (values unchanged)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def look_at(eye, target=(0.0, 0.0, 0.0), down=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera 4x4 (OpenCV: x right, y down, z forward) for a camera at ``eye``."""
    eye, target, down = (torch.tensor(v, dtype=F64) for v in (eye, target, down))
    z = (target - eye) / (target - eye).norm()
    x = torch.linalg.cross(down, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])
    view = torch.eye(4, dtype=F64)
    view[:3, :3], view[:3, 3] = rot, -rot @ eye
    return view


def intrinsics(f: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=F64)


def random_scene(n: int, width: int, height: int, cams: int = 1, dim: int = 3, seed: int = 0,
                 opacity_hi: float = 0.95):
    """Random Gaussians in a 30 cm box seen by ``cams`` cameras 0.6 m away (float64)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * 0.3
    quats = torch.randn(n, 4, generator=g, dtype=F64) * 2.0  # not normalized on purpose
    scales = torch.exp(torch.empty(n, 3, dtype=F64).uniform_(math.log(0.004), math.log(0.04), generator=g))
    opacities = 0.05 + (opacity_hi - 0.05) * torch.rand(n, generator=g, dtype=F64)
    colors = torch.rand(n, dim, generator=g, dtype=F64)
    views, ks = [], []
    for c in range(cams):
        ang = 0.5 * c
        views.append(look_at((0.6 * math.sin(ang), 0.04 * c, -0.6 * math.cos(ang))))
        f = 1.1 * max(width, height)
        ks.append(intrinsics(f, width / 2 + 2 * c, height / 2 - c))
    return means, quats, scales, opacities, colors, torch.stack(views), torch.stack(ks)


def one_camera(width: int, height: int, f: float = 100.0):
    """Identity rotation, camera at the origin; pixel (i, j) centre sits on the optical axis
    for cx = i + 0.5, cy = j + 0.5."""
    return torch.eye(4, dtype=F64)[None], intrinsics(f, width // 2 + 0.5, height // 2 + 0.5)[None]


def gaussian(xyz, scale, opacity, color, quat=(1.0, 0.0, 0.0, 0.0)):
    return (torch.tensor([xyz], dtype=F64), torch.tensor([quat], dtype=F64),
            torch.tensor([scale], dtype=F64), torch.tensor([opacity], dtype=F64),
            torch.tensor([color], dtype=F64))


def cat_gaussians(*gs):
    return tuple(torch.cat(parts) for parts in zip(*gs))


# --- analytic single-Gaussian cases ---------------------------------------------------------------

@pytest.mark.parametrize("opacity", [0.7, 0.9999])
def test_single_gaussian_centre_alpha_and_colour(opacity):
    w, h = 33, 20
    view, K = one_camera(w, h)
    g = gaussian((0.0, 0.0, 1.0), (0.01, 0.02, 0.01), opacity, (0.2, 0.5, 1.0))
    render, alpha, meta = rasterize_torch(*g, view, K, w, h)
    expect = min(opacity, ALPHA_MAX)  # sigma = 0 at the centre pixel; alpha clamped at 0.999
    cy, cx = h // 2, w // 2
    assert alpha[0, cy, cx, 0].item() == pytest.approx(expect, abs=1e-12)
    assert render[0, cy, cx].tolist() == pytest.approx([expect * c for c in (0.2, 0.5, 1.0)], abs=1e-12)
    assert meta["means2d"][0, 0].tolist() == pytest.approx([cx + 0.5, cy + 0.5], abs=1e-12)
    assert meta["depths"][0, 0].item() == pytest.approx(1.0)
    assert alpha[0, cy, cx, 0] == alpha.max()


def test_offset_pixel_alpha_and_radii_match_analytic():
    w, h, f, z, op = 40, 30, 100.0, 2.0, 0.8
    sx, sy = 0.03, 0.05
    view, K = one_camera(w, h, f)
    # A non-normalized identity quaternion: normalization happens inside, like gsplat.
    g = gaussian((0.0, 0.0, z), (sx, sy, 0.02), op, (1.0,), quat=(3.0, 0.0, 0.0, 0.0))
    var_x, var_y = (f * sx / z) ** 2 + 0.3, (f * sy / z) ** 2 + 0.3  # J S S^T J^T + eps2d
    _, alpha, meta = rasterize_torch(*g, view, K, w, h)
    cy, cx = h // 2, w // 2
    for dx, dy in [(3, -2), (-1, 4), (2, 0)]:
        sigma = 0.5 * (dx * dx / var_x + dy * dy / var_y)
        assert alpha[0, cy + dy, cx + dx, 0].item() == pytest.approx(op * math.exp(-sigma), rel=1e-12)
    extend = min(3.33, math.sqrt(2.0 * math.log(255.0 * op)))
    radii = [math.ceil(extend * math.sqrt(var_x)), math.ceil(extend * math.sqrt(var_y))]
    assert meta["radii"][0, 0].tolist() == radii and radii[0] < radii[1]
    assert meta["conics"][0, 0].tolist() == pytest.approx([1 / var_x, 0.0, 1 / var_y], rel=1e-12)
    # eps2d enters the covariance: without it the same pixel is darker.
    _, alpha0, _ = rasterize_torch(*g, view, K, w, h, eps2d=0.0)
    sigma0 = 0.5 * 9 / (f * sx / z) ** 2
    assert alpha0[0, cy, cx + 3, 0].item() == pytest.approx(op * math.exp(-sigma0), rel=1e-12)


def test_pixels_below_alpha_threshold_are_skipped():
    w, h = 41, 41
    view, K = one_camera(w, h)
    op, std = 0.5, 3.0  # px
    g = gaussian((0.0, 0.0, 1.0), (std / 100.0, std / 100.0, 0.01), op, (1.0,))
    _, alpha, _ = rasterize_torch(*g, view, K, w, h, eps2d=0.0)
    row = alpha[0, h // 2, :, 0]
    dx = torch.arange(w, dtype=F64) - w // 2
    analytic = op * torch.exp(-0.5 * dx * dx / std**2)
    expect = torch.where(analytic >= 1 / 255, analytic, torch.zeros_like(analytic))
    assert torch.allclose(row, expect, atol=1e-12)
    assert (row == 0).any() and (row > 0).sum() < w


def test_near_gaussian_occludes_far_one_in_any_input_order():
    w, h = 24, 24
    view, K = one_camera(w, h)
    near = gaussian((0.0, 0.0, 1.0), (0.05, 0.05, 0.05), 0.9, (1.0, 0.0, 0.0))
    far = gaussian((0.0, 0.0, 2.0), (0.1, 0.1, 0.1), 0.8, (0.0, 0.0, 1.0))
    outs = [rasterize_torch(*cat_gaussians(a, b), view, K, w, h) for a, b in [(near, far), (far, near)]]
    (r1, a1, _), (r2, a2, _) = outs
    assert torch.equal(r1, r2) and torch.equal(a1, a2)
    c = h // 2
    assert r1[0, c, c].tolist() == pytest.approx([0.9, 0.0, 0.1 * 0.8], abs=1e-12)
    assert a1[0, c, c, 0].item() == pytest.approx(1 - 0.1 * 0.2, abs=1e-12)


def test_background_blend_is_exact():
    scene = random_scene(60, 37, 29, cams=2)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]], dtype=F64)
    r0, a0, _ = rasterize_torch(*scene, 37, 29)
    r1, a1, _ = rasterize_torch(*scene, 37, 29, backgrounds=bg)
    assert torch.equal(a0, a1)
    assert torch.allclose(r1, r0 + (1 - a0) * bg[:, None, None, :], atol=1e-14)
    assert (a0 < 0.5).any()  # the background is visible somewhere


def test_near_and_far_plane_culling():
    w, h = 16, 16
    view, K = one_camera(w, h)
    g = gaussian((0.0, 0.0, 0.05), (0.001, 0.001, 0.001), 0.9, (1.0,))
    _, alpha, meta = rasterize_torch(*g, view, K, w, h, near_plane=0.1)
    assert meta["radii"].abs().sum() == 0 and alpha.abs().sum() == 0
    _, alpha, meta = rasterize_torch(*g, view, K, w, h, near_plane=0.01)
    assert (meta["radii"] > 0).all() and alpha.max() > 0.5
    _, alpha, meta = rasterize_torch(*g, view, K, w, h, far_plane=0.04)
    assert meta["radii"].abs().sum() == 0 and alpha.abs().sum() == 0
    behind = gaussian((0.0, 0.0, -1.0), (0.1, 0.1, 0.1), 0.9, (1.0,))
    _, alpha, meta = rasterize_torch(*behind, view, K, w, h)
    assert meta["radii"].abs().sum() == 0 and alpha.abs().sum() == 0


def test_empty_scene_renders_background():
    view, K = one_camera(20, 10)
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=F64)
    empty = tuple(torch.zeros((0,) + s, dtype=F64) for s in [(3,), (4,), (3,), (), (3,)])
    render, alpha, meta = rasterize_torch(*empty, view, K, 20, 10, backgrounds=bg)
    assert render.shape == (1, 10, 20, 3) and alpha.abs().sum() == 0
    assert torch.equal(render, bg[:, None, None, :].expand(1, 10, 20, 3))
    assert meta["n_isects"] == 0


# --- the dense twin -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "width,height,cams,dim,mode,tile",
    [
        (50, 37, 1, 3, "RGB", 16),
        (64, 48, 2, 5, "RGB+ED", 16),
        (33, 70, 3, 1, "RGB", 16),
        (45, 31, 2, 3, "RGB+ED", 8),
        (17, 17, 1, 2, "ED", 16),
    ],
)
def test_tiled_matches_dense(width, height, cams, dim, mode, tile):
    scene = random_scene(250, width, height, cams, dim, seed=width, opacity_hi=0.9999)
    bg = torch.rand(cams, dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    r1, a1, m1 = rasterize_torch(*scene, width, height, backgrounds=bg, render_mode=mode, tile_size=tile)
    r2, a2, m2 = rasterize_dense(*scene, width, height, backgrounds=bg, render_mode=mode)
    assert r1.shape == r2.shape == (cams, height, width, 1 if mode == "ED" else dim + ("+" in mode))
    assert torch.allclose(r1, r2, atol=1e-6, rtol=0) and torch.allclose(a1, a2, atol=1e-6, rtol=0)
    assert a1.max() > 0.99 and (a1 == 0).any()  # opaque and empty regions both present
    assert torch.equal(m1["radii"], m2["radii"])


def test_tiled_matches_dense_float32():
    scene = [t.float() for t in random_scene(400, 48, 40, cams=2, seed=3)]
    r1, a1, _ = rasterize_torch(*scene, 48, 40)
    r2, a2, _ = rasterize_dense(*scene, 48, 40)
    assert r1.dtype == torch.float32
    assert (r1 - r2).abs().max() < 1e-4 and (a1 - a2).abs().max() < 1e-4


def test_tile_lists_are_sorted_by_depth_and_complete():
    scene = random_scene(120, 70, 45, cams=2, seed=5)
    _, _, meta = rasterize_torch(*scene, 70, 45)
    ids, offsets = meta["flatten_ids"], meta["isect_offsets"].reshape(-1).tolist()
    depths = meta["depths"].reshape(-1)
    bounds = offsets + [ids.numel()]
    for t in range(len(offsets)):
        d = depths[ids[bounds[t]:bounds[t + 1]]]
        assert (d[1:] >= d[:-1]).all()
    counts = torch.bincount(ids, minlength=depths.numel())
    assert torch.equal(counts, meta["tiles_per_gauss"].reshape(-1).long())
    assert ((meta["radii"] > 0).all(-1).reshape(-1) == (counts > 0)).all()


def test_early_termination_matches_analytic_and_dense():
    w, h = 18, 18
    view, K = one_camera(w, h)
    n = 100  # stacked on the axis: T = 0.9^k reaches 1e-4 at the 88th, in the 2nd chunk of 64
    cols = torch.rand(n, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    means = torch.zeros(n, 3, dtype=F64)
    means[:, 2] = torch.linspace(1.0, 2.0, n, dtype=F64)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    scene = [means[order], torch.tensor([[1.0, 0, 0, 0]], dtype=F64).expand(n, 4),
             means[order, 2:].expand(n, 3) * 0.05, torch.full((n,), 0.1, dtype=F64), cols[order]]
    scene = [t.clone().requires_grad_(True) for t in scene]
    r1, a1, _ = rasterize_torch(*scene, view, K, w, h)
    c = h // 2
    k = math.floor(math.log(1e-4) / math.log(0.9))  # composited: those keeping T > 1e-4
    assert 0.9 ** (k + 1) <= 1e-4 < 0.9**k and k > 64
    weights = 0.1 * 0.9 ** torch.arange(k, dtype=F64)
    assert r1[0, c, c].tolist() == pytest.approx((weights @ cols[:k]).tolist(), abs=1e-12)
    assert a1[0, c, c, 0].item() == pytest.approx(1 - 0.9**k, abs=1e-12)
    r2, a2, _ = rasterize_dense(*scene, view, K, w, h)
    assert torch.allclose(r1, r2, atol=1e-12) and torch.allclose(a1, a2, atol=1e-12)
    wr = torch.rand(r1.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    g1 = torch.autograd.grad((r1 * wr).sum() + a1.sum(), scene, retain_graph=True)
    g2 = torch.autograd.grad((r2 * wr).sum() + a2.sum(), scene)
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y, atol=1e-10, rtol=1e-8)
    # The centre pixel's colour depends on the first k colours (weight 0.1 * 0.9^i), no others.
    g_centre = torch.autograd.grad(r1[0, c, c].sum(), scene[4])[0][order.argsort()]
    assert torch.allclose(g_centre[:k], weights[:, None].expand(k, 3), atol=1e-14)
    assert (g_centre[k:] == 0).all()


# --- gradients ------------------------------------------------------------------------------------

def test_gradients_match_dense_autograd():
    scene = random_scene(150, 40, 36, cams=2, dim=4, seed=11, opacity_hi=0.9999)
    scene[3][:5] = 0.9995  # some alphas reach the 0.999 clamp
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    bg = torch.rand(2, 4, dtype=F64, requires_grad=True)
    wr = torch.randn(2, 36, 40, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    wa = torch.randn(2, 36, 40, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (rasterize_torch, rasterize_dense):
        r, a, _ = fn(*params, *scene[5:], 40, 36, backgrounds=bg, render_mode="RGB+ED")
        grads.append(torch.autograd.grad((r * wr).sum() + (a * wa).sum(), params + [bg]))
    for x, y in zip(*grads):
        assert torch.allclose(x, y, atol=1e-9, rtol=1e-7)
        assert y.abs().max() > 0


def test_clamped_alpha_passes_no_gradient_through_sigma_or_opacity():
    w, h = 21, 21
    view, K = one_camera(w, h)
    front = gaussian((0.0, 0.0, 1.0), (0.05, 0.05, 0.05), 0.9999, (1.0, 0.2, 0.1))
    back = gaussian((0.0, 0.0, 2.0), (0.1, 0.1, 0.1), 0.7, (0.1, 0.3, 1.0))
    scene = [t.clone().requires_grad_(True) for t in cat_gaussians(front, back)]
    r1, a1, _ = rasterize_torch(*scene, view, K, w, h)
    c = w // 2
    assert a1[0, c, c, 0].item() == pytest.approx(ALPHA_MAX + (1 - ALPHA_MAX) * 0.7, abs=1e-12)
    assert r1[0, c, c].tolist() == pytest.approx([0.999 + 0.0007 * 0.1, 0.999 * 0.2 + 0.0007 * 0.3,
                                                  0.999 * 0.1 + 0.0007 * 1.0], abs=1e-12)
    # Only the centre pixel is clamped: its alpha does not depend on the front opacity.
    g_op = torch.autograd.grad(a1[0, c, c, 0], scene[3], retain_graph=True)[0]
    assert g_op[0] == 0 and g_op[1] != 0
    g_op = torch.autograd.grad(a1[0, c, c + 1, 0], scene[3], retain_graph=True)[0]
    assert g_op[0] > 0
    r2, a2, _ = rasterize_dense(*scene, view, K, w, h)
    wr = torch.rand(r1.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    g1 = torch.autograd.grad((r1 * wr).sum() + a1.sum(), scene)
    g2 = torch.autograd.grad((r2 * wr).sum() + a2.sum(), scene)
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y, atol=1e-10, rtol=1e-8)


def test_gradients_match_finite_differences():
    w, h = 20, 16
    scene = list(random_scene(5, w, h, cams=1, dim=3, seed=7))
    scene[0] = scene[0] * 0.3  # keep all five inside the small image
    scene[3][0] = 0.9995  # one Gaussian hits the alpha clamp near its centre
    bg = torch.tensor([[0.3, 0.6, 0.9]], dtype=F64)
    wr = torch.randn(1, h, w, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    wa = torch.randn(1, h, w, 1, dtype=F64, generator=torch.Generator().manual_seed(4))

    def loss(means, quats, scales, opacities, colors, backgrounds):
        r, a, _ = rasterize_torch(means, quats, scales, opacities, colors, scene[5], scene[6], w, h,
                                  backgrounds=backgrounds)
        return (r * wr).sum() + (a * wa).sum()

    inputs = [t.clone().requires_grad_(True) for t in scene[:5]] + [bg.clone().requires_grad_(True)]
    analytic = torch.autograd.grad(loss(*inputs), inputs)
    eps = 1e-7
    with torch.no_grad():
        for i, (x, g) in enumerate(zip(inputs, analytic)):
            flat, numeric = x.detach().clone().reshape(-1), torch.empty(x.numel(), dtype=F64)
            for k in range(x.numel()):
                args = [t.detach() for t in inputs]
                plus, minus = flat.clone(), flat.clone()
                plus[k] += eps
                minus[k] -= eps
                args[i] = plus.reshape(x.shape)
                lp = loss(*args)
                args[i] = minus.reshape(x.shape)
                numeric[k] = (lp - loss(*args)) / (2 * eps)
            assert torch.allclose(g.reshape(-1), numeric, atol=1e-5, rtol=1e-4), f"input {i}"
            assert numeric.abs().max() > 1e-3


# --- cameras, shapes, validation ------------------------------------------------------------------

def test_camera_batch_equals_single_renders():
    scene = random_scene(200, 30, 26, cams=3, dim=3, seed=2)
    per_cam = torch.rand(3, 200, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for colors in (scene[4], per_cam):
        r, a, meta = rasterize_torch(*scene[:4], colors, *scene[5:], 30, 26)
        for c in range(3):
            col = colors if colors.ndim == 2 else colors[c:c + 1]
            rc, ac, mc = rasterize_torch(*scene[:4], col, scene[5][c:c + 1], scene[6][c:c + 1], 30, 26)
            assert torch.allclose(r[c:c + 1], rc, atol=1e-12) and torch.allclose(a[c:c + 1], ac, atol=1e-12)
            assert torch.equal(meta["radii"][c:c + 1], mc["radii"])
    assert not torch.allclose(r[0], r[1])


def test_batches_are_bounded():
    scene = random_scene(300, 96, 80, cams=2, seed=4)
    proj = tb.project_gaussians(*scene[:4], *scene[5:], 96, 80)
    plan, meta = tb.build_plan(proj, 96, 80, 16)
    per_step = max(g.numel() for g in plan.groups) * 256 * (tb._CHUNK + 1)
    assert per_step <= tb._BATCH_ELEMENTS
    assert sum(g.numel() for g in plan.groups) == meta["n_nonempty_tiles"] > 0


def test_invalid_inputs_raise():
    scene = random_scene(5, 16, 16)
    with pytest.raises(InvalidInput, match="quats"):
        rasterize_torch(scene[0], scene[1][:, :3], *scene[2:], 16, 16)
    with pytest.raises(InvalidInput, match="colors"):
        rasterize_torch(*scene[:4], scene[4][:4], *scene[5:], 16, 16)
    with pytest.raises(InvalidInput, match="render_mode"):
        rasterize_torch(*scene, 16, 16, render_mode="RGBA")
    with pytest.raises(InvalidInput, match="dtype"):
        rasterize_torch(*scene[:4], scene[4].float(), *scene[5:], 16, 16)
    with pytest.raises(InvalidInput, match="backgrounds"):
        rasterize_torch(*scene, 16, 16, backgrounds=torch.zeros(2, 3, dtype=F64))
