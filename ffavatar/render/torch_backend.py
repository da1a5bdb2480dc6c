"""Tile-based, differentiable 3D Gaussian rasterizer in pure PyTorch (runs on CPU and any device).

It follows gsplat 1.5.3's ``rasterization(..., packed=False, rasterize_mode="classic",
camera_model="pinhole", sh_degree=None)`` conventions, so the two backends agree:

* projection: EWA with the perspective Jacobian whose x/z, y/z are clamped to 1.3x the field of view;
  ``eps2d`` added to the 2D covariance diagonal (no opacity compensation); conic = its inverse.
* culling (radii = 0): depth outside ``[near_plane, far_plane]``, non-positive determinant,
  opacity < 1/255, both radii <= ``radius_clip``, radius box entirely outside the image.
* radii per axis: ``ceil(extend * sqrt(cov2d_xx))`` / ``..._yy`` with the opacity-aware
  ``extend = min(3.33, sqrt(2 ln(255 opacity)))``; the box holds every pixel where alpha >= 1/255.
* compositing: pixel centres ``(x+0.5, y+0.5)``, ``sigma = 0.5 d^T conic d`` with ``d = mean - pixel``,
  ``alpha = min(0.999, opacity exp(-sigma))``, skip ``alpha < 1/255`` (gsplat's ``sigma < 0`` skip
  cannot fire for a positive-definite conic), front to back by depth; a pixel stops at the Gaussian
  that would bring its transmittance to <= 1e-4 (that one is not composited);
  ``colors + (1 - alpha) * background``; "ED" depth normalized by ``alpha``.
* gradients: like gsplat's backward, none through a clamped alpha, a skipped one or past the stop.

Gaussians are binned to ``tile_size`` tiles by their radius box and sorted by (camera, tile, depth).
Tiles are composited in batches, ``_CHUNK`` Gaussians of every tile at a time, and a tile leaves the
batch once all its pixels are done. A custom autograd function recomputes the chunks in backward
(front to back, with the final transmittance and colour saved from forward), so no per-chunk
intermediate is kept alive between forward and backward.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ffavatar.errors import InvalidInput, LimitExceeded

log = logging.getLogger(__name__)

ALPHA_THRESHOLD = 1.0 / 255.0
"""Alphas below this are skipped (gsplat's ``ALPHA_THRESHOLD``)."""
ALPHA_MAX = 0.999
"""Alpha clamp of gsplat 1.5.3's classic rasterizer."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to <= this."""
RADIUS_EXTEND = 3.33
"""Largest box half-size in standard deviations (gsplat's bound before the opacity-aware one)."""
FOV_CLAMP = 0.3
"""x/z and y/z are clamped to the image edges plus this fraction of the half field of view."""
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")

_CHUNK = 64
"""Gaussians per tile composited per step."""
_BATCH_ELEMENTS = 1 << 21
"""Upper bound on tiles x pixels x Gaussians evaluated per step (bounds memory)."""
MAX_INTERSECTIONS = 1 << 25
"""Refuse scenes with more Gaussian-tile pairs than this (their index lists alone need GBs)."""


@dataclass
class Projection:
    """Per-camera screen-space Gaussians (gsplat's ``fully_fused_projection``, unpacked).

    Attributes: ``radii (C,N,2) int32`` (0 = culled), ``means2d (C,N,2)`` pixels, ``depths (C,N)``
    camera z, ``conics (C,N,3)`` upper triangle of the inverse 2D covariance (a, b, c),
    ``opacities (C,N)``. Values of culled Gaussians are finite but meaningless.
    """

    radii: Tensor
    means2d: Tensor
    depths: Tensor
    conics: Tensor
    opacities: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N,4) wxyz quaternions, normalized here -> (N,3,3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, *, near_plane: float = 0.01, far_plane: float = 1e10,
    eps2d: float = 0.3, radius_clip: float = 0.0,
) -> Projection:
    """EWA-project (N,...) Gaussians into C pinhole cameras; differentiable except ``radii``."""
    rot_cam = viewmats[:, :3, :3]  # (C,3,3)
    means_c = torch.einsum("cij,nj->cni", rot_cam, means) + viewmats[:, None, :3, 3]
    x, y, z = means_c.unbind(-1)  # (C,N)
    depth_ok = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(depth_ok, z, torch.ones_like(z))  # keeps culled Gaussians' gradients finite
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_x_pos = (width - cx) / fx + FOV_CLAMP * 0.5 * width / fx
    lim_x_neg = cx / fx + FOV_CLAMP * 0.5 * width / fx
    lim_y_pos = (height - cy) / fy + FOV_CLAMP * 0.5 * height / fy
    lim_y_neg = cy / fy + FOV_CLAMP * 0.5 * height / fy
    tx = zs * torch.clamp(x / zs, min=-lim_x_neg, max=lim_x_pos)
    ty = zs * torch.clamp(y / zs, min=-lim_y_neg, max=lim_y_pos)

    # cov2d = J R S S^T R^T J^T with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    m_cam = torch.einsum("cij,njk->cnik", rot_cam, quat_to_rotmat(quats) * scales[:, None, :])
    rz = 1.0 / zs
    t0 = (fx * rz)[..., None] * m_cam[..., 0, :] - (fx * tx * rz * rz)[..., None] * m_cam[..., 2, :]
    t1 = (fy * rz)[..., None] * m_cam[..., 1, :] - (fy * ty * rz * rz)[..., None] * m_cam[..., 2, :]
    cov_a = (t0 * t0).sum(-1) + eps2d
    cov_b = (t0 * t1).sum(-1)
    cov_c = (t1 * t1).sum(-1) + eps2d
    det = cov_a * cov_c - cov_b * cov_b
    det_ok = det > 0
    inv_det = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([cov_c * inv_det, -cov_b * inv_det, cov_a * inv_det], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    opac = opacities[None, :].expand_as(z)
    with torch.no_grad():
        op_ok = opac >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log((opac / ALPHA_THRESHOLD).clamp_min(1.0)))
        extend = extend.clamp_max(RADIUS_EXTEND)
        rx = torch.ceil(extend * cov_a.clamp_min(0).sqrt())
        ry = torch.ceil(extend * cov_c.clamp_min(0).sqrt())
        mx, my = means2d.unbind(-1)
        keep = depth_ok & det_ok & op_ok & ~((rx <= radius_clip) & (ry <= radius_clip))
        keep &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(keep[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d))
        radii = radii.to(torch.int32)
    return Projection(radii=radii, means2d=means2d, depths=z, conics=conics, opacities=opac)


def prepare_inputs(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, backgrounds: Tensor | None,
    render_mode: str, tile_size: int = 16,
) -> tuple[Tensor, Tensor | None]:
    """Check shapes/dtypes; returns colors as (C,N,D) (a view when broadcast) and backgrounds."""
    if render_mode not in RENDER_MODES:
        raise InvalidInput(f"render_mode {render_mode!r} is not supported", hint=f"use one of {RENDER_MODES}")
    if means.ndim != 2 or means.shape[-1] != 3:
        raise InvalidInput(f"means must be (N,3), got {tuple(means.shape)}")
    n = means.shape[0]
    expect = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,))}
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise InvalidInput(f"{name} must be {shape} for N={n} Gaussians, got {tuple(t.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise InvalidInput(f"viewmats must be (C,4,4) world-to-camera, got {tuple(viewmats.shape)}")
    cams = viewmats.shape[0]
    if tuple(Ks.shape) != (cams, 3, 3):
        raise InvalidInput(f"Ks must be ({cams},3,3) to match viewmats, got {tuple(Ks.shape)}")
    if colors.ndim == 2 and colors.shape[0] == n:
        colors = colors[None].expand(cams, n, colors.shape[-1])
    elif not (colors.ndim == 3 and colors.shape[:2] == (cams, n)):
        raise InvalidInput(f"colors must be (N,D) or (C,N,D) with C={cams}, N={n}; got {tuple(colors.shape)}")
    if backgrounds is not None and tuple(backgrounds.shape) != (cams, colors.shape[-1]):
        raise InvalidInput(f"backgrounds must be ({cams},{colors.shape[-1]}), got {tuple(backgrounds.shape)}")
    if int(width) <= 0 or int(height) <= 0 or int(tile_size) <= 0:
        raise InvalidInput(f"width, height and tile_size must be positive, got {width}, {height}, {tile_size}")
    tensors = [means, quats, scales, opacities, colors, viewmats, Ks]
    if backgrounds is not None:
        tensors.append(backgrounds)
    if len({t.dtype for t in tensors}) != 1 or not means.dtype.is_floating_point:
        raise InvalidInput(
            "all tensors must share one floating dtype", hint="cast them all to float32 (or float64)"
        )
    if len({t.device for t in tensors}) != 1:
        raise InvalidInput("all tensors must be on one device")
    return colors, backgrounds


def add_depth_channel(
    colors: Tensor, depths: Tensor, backgrounds: Tensor | None, render_mode: str
) -> tuple[Tensor, Tensor | None]:
    """Append (or use only) the depth channel for the depth render modes, like gsplat."""
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(backgrounds.shape[0], 1)], -1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(backgrounds.shape[0], 1)
    return colors, backgrounds


def finish_render(
    render: Tensor, alphas: Tensor, backgrounds: Tensor | None, render_mode: str
) -> Tensor:
    """(C,H,W,D) foreground + (1 - alpha) background, then the "ED" depth divided by alpha."""
    if backgrounds is not None:
        render = render + (1.0 - alphas) * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    return render


@dataclass
class TilePlan:
    """Gaussian lists per tile, padded to ``_CHUNK``-long rows (non-differentiable bookkeeping).

    ``chunk_ids (K,_CHUNK)``: flat ``camera * N + gaussian`` ids, ``pad_id`` in the padding;
    tile ``t`` owns rows ``chunk_start[t] : chunk_start[t] + n_chunks[t]`` in depth order.
    ``origin (n_tiles,2)``: each tile's centre in pixels; ``inside (n_tiles,P)``: pixel in image.
    ``groups``: tile ids composited together (non-empty tiles only).
    """

    cams: int
    width: int
    height: int
    tile_size: int
    tiles_x: int
    tiles_y: int
    pad_id: int
    chunk_ids: Tensor
    chunk_start: Tensor
    n_chunks: Tensor
    origin: Tensor
    inside: Tensor
    groups: list[Tensor]
    stats: dict

    @property
    def n_tiles(self) -> int:
        return self.cams * self.tiles_y * self.tiles_x


def isect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian-tile intersections sorted by (camera, tile, depth), like gsplat's ``isect_tiles``.

    Returns ``tiles_per_gauss (C,N)`` int32, ``tile_keys (M,)`` (``camera * n_tiles + tile``) and
    ``flatten_ids (M,)`` (``camera * N + gaussian``), both int64 in sorted order.
    """
    cams, n = depths.shape
    dev = depths.device
    m = means2d.detach() / tile_size
    r = radii.to(means2d.dtype) / tile_size
    lo = torch.floor(m - r)
    hi = torch.ceil(m + r)
    lo_x, hi_x = lo[..., 0].clamp(0, tiles_x).long(), hi[..., 0].clamp(0, tiles_x).long()
    lo_y, hi_y = lo[..., 1].clamp(0, tiles_y).long(), hi[..., 1].clamp(0, tiles_y).long()
    visible = (radii > 0).all(-1)
    counts = ((hi_x - lo_x) * (hi_y - lo_y)) * visible  # (C,N)
    total = int(counts.sum())
    if total > MAX_INTERSECTIONS:
        raise LimitExceeded(
            f"{total} Gaussian-tile intersections exceed the limit of {MAX_INTERSECTIONS}",
            hint="render fewer or smaller Gaussians, or a smaller image",
        )
    # Walk Gaussians in (camera, depth) order so a stable sort by tile keeps depth order.
    order = torch.sort(depths.detach(), dim=-1, stable=True).indices  # (C,N)
    flat = (order + torch.arange(cams, device=dev)[:, None] * n).reshape(-1)
    cnt = counts.reshape(-1)[flat]
    gid = torch.repeat_interleave(flat, cnt)
    start = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(total, device=dev) - torch.repeat_interleave(start, cnt)
    box_w = (hi_x - lo_x).reshape(-1)[gid]
    tx = lo_x.reshape(-1)[gid] + local % box_w.clamp_min(1)
    ty = lo_y.reshape(-1)[gid] + local // box_w.clamp_min(1)
    keys = (gid // n) * (tiles_x * tiles_y) + ty * tiles_x + tx
    keys, perm = torch.sort(keys, stable=True)
    return counts.to(torch.int32), keys, gid[perm]


def build_plan(proj: Projection, width: int, height: int, tile_size: int) -> tuple[TilePlan, dict]:
    """Bin projected Gaussians to tiles and lay out the padded per-tile chunks; also gsplat-like meta."""
    cams, n = proj.depths.shape
    dev = proj.depths.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = cams * tiles_x * tiles_y
    tiles_per_gauss, keys, flatten_ids = isect_tiles(
        proj.means2d, proj.radii, proj.depths, tile_size, tiles_x, tiles_y
    )
    counts = torch.bincount(keys, minlength=n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    n_chunks = (counts + _CHUNK - 1) // _CHUNK
    chunk_start = torch.cumsum(n_chunks, 0) - n_chunks
    pad_id = cams * n
    chunk_ids = torch.full((int(n_chunks.sum()) * _CHUNK,), pad_id, dtype=torch.long, device=dev)
    pos = chunk_start[keys] * _CHUNK + torch.arange(keys.numel(), device=dev) - offsets[keys]
    chunk_ids[pos] = flatten_ids
    chunk_ids = chunk_ids.reshape(-1, _CHUNK)

    tile = torch.arange(n_tiles, device=dev) % (tiles_x * tiles_y)
    x0 = (tile % tiles_x) * tile_size
    y0 = (tile // tiles_x) * tile_size
    origin = torch.stack([x0, y0], -1).to(proj.means2d.dtype) + 0.5 * tile_size
    pix = torch.arange(tile_size, device=dev)
    in_x = x0[:, None, None] + pix[None, None, :] < width
    inside = (in_x & (y0[:, None, None] + pix[None, :, None] < height)).reshape(n_tiles, -1)

    # Group non-empty tiles with similar chunk counts; each group is one batch of tiles.
    nonempty = torch.nonzero(n_chunks > 0).squeeze(1)
    nonempty = nonempty[torch.sort(n_chunks[nonempty], descending=True, stable=True).indices]
    per_group = max(1, _BATCH_ELEMENTS // (tile_size * tile_size * (_CHUNK + 1)))
    groups = list(nonempty.split(per_group)) if nonempty.numel() else []
    stats = {
        "n_isects": int(keys.numel()),
        "n_nonempty_tiles": int(nonempty.numel()),
        "max_per_tile": int(counts.max()) if n_tiles else 0,
        "n_chunks": int(n_chunks.sum()),
    }
    plan = TilePlan(
        cams=cams, width=width, height=height, tile_size=tile_size, tiles_x=tiles_x, tiles_y=tiles_y,
        pad_id=pad_id, chunk_ids=chunk_ids, chunk_start=chunk_start, n_chunks=n_chunks,
        origin=origin, inside=inside, groups=groups, stats=stats,
    )
    meta = {
        "tile_width": tiles_x, "tile_height": tiles_y, "tile_size": tile_size,
        "tiles_per_gauss": tiles_per_gauss, "flatten_ids": flatten_ids,
        "isect_offsets": offsets.reshape(cams, tiles_y, tiles_x).to(torch.int32),
        "tile_counts": counts.reshape(cams, tiles_y, tiles_x), **stats,
    }
    return plan, meta


def _pixel_features(tile_size: int, dtype: torch.dtype, device) -> Tensor:
    """(P,6) monomials [x^2, xy, y^2, x, y, 1] of pixel centres relative to the tile centre."""
    c = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - 0.5 * tile_size
    py, px = torch.meshgrid(c, c, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    return torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], dim=-1)


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value`` (so ``x > _below(v)`` means ``x >= v``)."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v)))


_EXP_FLOOR = -30.0
"""Exponents are clamped here first: exp(-30) < 1/255 is skipped anyway, and exp of large negative
arguments takes a slow underflow path on CPU (about 20x slower)."""


class _Workspace:
    """Reusable scratch buffers: fresh multi-MB tensors every step cost page faults on CPU."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self.bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=self.dtype, device=self.device)
            self.bufs[name] = buf
        return buf[:n].view(shape)


class _Chunk:
    """One step: ``_CHUNK`` Gaussians of each of A tiles against the tiles' P pixels, (A,P,L).

    ``log(opacity) - sigma`` is evaluated as one (P,6) x (6,L) product of pixel monomials and
    per-Gaussian quadratic coefficients in tile-centred coordinates (instead of a dozen elementwise
    passes), so ``alpha = exp(.)`` directly. A positive-definite conic gives sigma >= 0 in exact
    arithmetic, so gsplat's ``sigma < 0`` skip never fires; it is not applied here because the
    expansion can round a centre's sigma to -1e-7, and skipping that Gaussian would be wrong.
    """

    def __init__(self, ws: _Workspace, feats: Tensor, g: Tensor, colors: Tensor, origin: Tensor,
                 carry: Tensor, keep_alpha: bool):
        # g (A,L,6): mx, my, a, b, c, opacity; colors (A,L,D)
        self.mx = g[..., 0] - origin[:, None, 0]
        self.my = g[..., 1] - origin[:, None, 1]
        self.a, self.b, self.c = g[..., 2], g[..., 3], g[..., 4]
        self.op = g[..., 5].clamp_min(1e-30)  # padding has opacity 0 -> alpha ~ 0 -> skipped
        a, b, c, mx, my = self.a, self.b, self.c, self.mx, self.my
        bx, by = a * mx + b * my, b * mx + c * my
        neg = [-0.5 * a, -b, -0.5 * c, bx, by, torch.log(self.op) - 0.5 * (bx * mx + by * my)]
        n_a, n_l = g.shape[:2]
        n_p = feats.shape[0]
        alpha = ws.get("alpha", (n_a, n_p, n_l))
        torch.matmul(feats, torch.stack(neg, dim=1), out=alpha)  # opacity * exp(-sigma) = exp(.)
        alpha.clamp_(min=_EXP_FLOOR).exp_()
        torch.nn.functional.threshold(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0, inplace=True)
        alpha.clamp_(max=ALPHA_MAX)
        # t_all[..., i]: transmittance before Gaussian i (carry = 0 for finished pixels).
        t_all = ws.get("t_all", (n_a, n_p, n_l + 1))
        t_all[..., 0] = carry
        torch.sub(alpha.new_ones(()), alpha, out=t_all[..., 1:])
        torch.cumprod(t_all, -1, out=t_all)
        self.t_all, self.t_last = t_all, t_all[..., -1]
        if keep_alpha:
            self.alpha = alpha
            self.weights = torch.mul(alpha, t_all[..., :-1], out=ws.get("weights", alpha.shape))
        else:
            self.alpha, self.weights = None, alpha.mul_(t_all[..., :-1])
        self.colors = colors
        # Pixels that stop inside this chunk: zero the weights from the stopping Gaussian on.
        stops = (self.t_last <= TRANSMITTANCE_MIN) & (carry > 0)
        self.stop_rows = torch.nonzero(stops.view(-1)).squeeze(1)
        self.stop_comp = None
        if self.stop_rows.numel():
            self.stop_comp = t_all.view(n_a * n_p, n_l + 1)[self.stop_rows, 1:] > TRANSMITTANCE_MIN
            w = self.weights.view(n_a * n_p, n_l)
            w[self.stop_rows] = w[self.stop_rows] * self.stop_comp

    def advance(self, t_final: Tensor, done: Tensor) -> tuple[Tensor, Tensor]:
        """New (A,P) transmittance and done flags after this chunk."""
        t_new = torch.where(done, t_final, self.t_last)
        done = done | (self.t_last <= TRANSMITTANCE_MIN)
        if self.stop_rows.numel():
            k = self.stop_comp.sum(-1, keepdim=True)
            rows = self.t_all.view(-1, self.t_all.shape[-1])[self.stop_rows]
            t_new.view(-1)[self.stop_rows] = rows.gather(-1, k).squeeze(-1)
        return t_new, done


class _Walker:
    """Steps over (active tiles, chunk index) and carries each pixel's transmittance and done flag.

    ``steps()`` decides the schedule (tiles leave once all their pixels are done) and records it;
    ``replay(schedule)`` runs the same steps again (backward), recomputing every chunk. A yielded
    chunk lives in reused buffers: consume it before asking for the next one.
    """

    def __init__(self, plan: TilePlan, params: Tensor, colors: Tensor, keep_alpha: bool):
        # Gather every chunk's Gaussians once: per step, whole (L,6) / (L,D) rows are selected.
        self.chunk_params = params[plan.chunk_ids]  # (K,L,6)
        self.chunk_colors = colors[plan.chunk_ids]  # (K,L,D)
        self.plan, self.keep_alpha = plan, keep_alpha
        self.ws = _Workspace(params.dtype, params.device)
        self.feats = _pixel_features(plan.tile_size, params.dtype, params.device)
        n_pix = plan.tile_size * plan.tile_size
        self.t_final = torch.ones(plan.n_tiles, n_pix, dtype=params.dtype, device=params.device)
        self.done = ~plan.inside
        self.schedule: list[tuple[Tensor, int]] = []

    def _chunk(self, act: Tensor, j: int) -> tuple[Tensor, _Chunk]:
        plan = self.plan
        carry = self.t_final[act].masked_fill_(self.done[act], 0.0)
        rows = plan.chunk_start[act] + j
        chunk = _Chunk(self.ws, self.feats, self.chunk_params[rows], self.chunk_colors[rows],
                       plan.origin[act], carry, self.keep_alpha)
        return rows, chunk

    def _advance(self, act: Tensor, chunk: _Chunk) -> None:
        self.t_final[act], self.done[act] = chunk.advance(self.t_final[act], self.done[act])

    def steps(self):
        """Yield (act, rows, chunk) front to back; the state advances after each yield."""
        for group in self.plan.groups:
            group_chunks = self.plan.n_chunks[group]
            for j in range(int(group_chunks.max())):
                alive = (group_chunks > j) & ~self.done[group].all(-1)
                if not bool(alive.any()):
                    break
                act = group[alive]
                self.schedule.append((act, j))
                rows, chunk = self._chunk(act, j)
                yield act, rows, chunk
                self._advance(act, chunk)

    def replay(self, schedule: list[tuple[Tensor, int]]):
        """Yield the recorded steps again, recomputing each chunk."""
        for act, j in schedule:
            rows, chunk = self._chunk(act, j)
            yield act, rows, chunk
            self._advance(act, chunk)


def _flat_params(means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """(C*N+1, 6) [mx, my, a, b, c, opacity] with a zero row for padding (alpha 0 there)."""
    p = torch.cat([means2d, conics, opacities[..., None]], dim=-1).reshape(-1, 6)
    return torch.cat([p, p.new_zeros(1, 6)], dim=0)


def _to_image(plan: TilePlan, t: Tensor) -> Tensor:
    """(n_tiles, P, D) tile layout -> (C,H,W,D)."""
    ts = plan.tile_size
    d = t.shape[-1]
    img = t.reshape(plan.cams, plan.tiles_y, plan.tiles_x, ts, ts, d).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(plan.cams, plan.tiles_y * ts, plan.tiles_x * ts, d)
    return img[:, : plan.height, : plan.width]


def _to_tiles(plan: TilePlan, img: Tensor) -> Tensor:
    """(C,H,W,D) -> (n_tiles, P, D) tile layout (zero padded)."""
    ts = plan.tile_size
    d = img.shape[-1]
    pad = img.new_zeros(plan.cams, plan.tiles_y * ts, plan.tiles_x * ts, d)
    pad[:, : plan.height, : plan.width] = img
    t = pad.reshape(plan.cams, plan.tiles_y, ts, plan.tiles_x, ts, d).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(plan.n_tiles, ts * ts, d)


class _TileComposite(torch.autograd.Function):
    """Front-to-back tile compositing: (means2d, conics, opacities, colors) -> (fg colors, alphas).

    Backward walks the same steps front to back. With T_i the transmittance before Gaussian i,
    w_j = alpha_j T_j, g = dL/dcolor, T_f the final transmittance and C_fg the foreground colour:
    ``dL/dalpha_i = (g.c_i) T_i + (sum_{j<=i} w_j g.c_j + T_f dL/dA - g.C_fg) / (1 - alpha_i)``.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan: TilePlan):
        cams, n, dim = colors.shape
        params = _flat_params(means2d, conics, opacities)
        flat_colors = torch.cat([colors.reshape(cams * n, dim), colors.new_zeros(1, dim)], 0)
        fg = params.new_zeros(plan.n_tiles, plan.tile_size * plan.tile_size, dim)
        walker = _Walker(plan, params, flat_colors, keep_alpha=False)
        for act, _, chunk in walker.steps():
            out = walker.ws.get("fg", (act.numel(), dim, fg.shape[1]))
            torch.bmm(chunk.colors.transpose(1, 2), chunk.weights.transpose(1, 2), out=out)
            fg[act] += out.transpose(1, 2)
        ctx.plan, ctx.schedule = plan, walker.schedule
        ctx.save_for_backward(params, flat_colors, fg, walker.t_final)
        ctx.shape = (cams, n, dim)
        return _to_image(plan, fg), 1.0 - _to_image(plan, walker.t_final[..., None])

    @staticmethod
    def backward(ctx, grad_render, grad_alpha):
        plan: TilePlan = ctx.plan
        params, flat_colors, fg, t_fin = ctx.saved_tensors
        cams, n, dim = ctx.shape
        need_geo, need_col = any(ctx.needs_input_grad[:3]), ctx.needs_input_grad[3]
        g = _to_tiles(plan, grad_render)  # (T,P,D)
        k_const = t_fin * _to_tiles(plan, grad_alpha)[..., 0] - (g * fg).sum(-1)
        g_prefix = torch.zeros_like(t_fin)
        walker = _Walker(plan, params, flat_colors, keep_alpha=need_geo)
        feats_t = walker.feats.t().contiguous()
        v_chunk_params = torch.zeros_like(walker.chunk_params)  # each chunk row is visited once
        v_chunk_colors = torch.zeros_like(walker.chunk_colors)
        for act, rows, ch in walker.replay(ctx.schedule):
            g_act = g[act]
            if need_col:  # dL/dc_i = sum over pixels of w_i g
                v_chunk_colors[rows] = torch.bmm(g_act.transpose(1, 2), ch.weights).transpose(1, 2)
            if need_geo:
                u = _alpha_grad_times_alpha(walker, act, ch, g_act, g_prefix, k_const)
                v_chunk_params[rows] = _coefficient_chain(ch, torch.matmul(feats_t, u))
        ids = plan.chunk_ids.view(-1)
        v_params = v_colors = None
        if need_geo:
            v_params = torch.zeros_like(params).index_add_(0, ids, v_chunk_params.view(-1, 6))
            v_params = v_params[:-1].reshape(cams, n, 6)
        if need_col:
            v_colors = torch.zeros_like(flat_colors).index_add_(0, ids, v_chunk_colors.view(-1, dim))
            v_colors = v_colors[:-1].reshape(cams, n, dim)
        if v_params is None:
            return None, None, None, v_colors, None
        return v_params[..., :2], v_params[..., 2:5], v_params[..., 5], v_colors, None


def _alpha_grad_times_alpha(walker: _Walker, act: Tensor, ch: _Chunk, g_act: Tensor,
                            g_prefix: Tensor, k_const: Tensor) -> Tensor:
    """(A,P,L) ``dL/dalpha * alpha`` where alpha was neither clamped, skipped nor past the stop.

    Advances ``g_prefix`` (per pixel ``sum_j w_j g.c_j`` so far). Masks are applied as float
    multiplies: boolean ops on big tensors are several times slower on CPU.
    """
    ws = walker.ws
    shape = ch.alpha.shape
    gc = torch.bmm(g_act, ch.colors.transpose(1, 2), out=ws.get("gc", shape))  # g.c_i per pixel
    g_incl = torch.mul(ch.weights, gc, out=ws.get("g_incl", shape))
    torch.cumsum(g_incl, -1, out=g_incl).add_(g_prefix[act][..., None])
    g_prefix[act] = g_incl[..., -1]
    g_incl.add_(k_const[act][..., None])
    g_incl.div_(torch.sub(ch.alpha.new_ones(()), ch.alpha, out=ws.get("denom", shape)))
    u = gc.mul_(ch.t_all[..., :-1]).add_(g_incl)  # dL/dalpha
    u.mul_(ch.alpha).mul_((~walker.done[act]).to(u.dtype)[..., None])
    if bool((ch.op > ALPHA_MAX).any()):  # only these can reach the clamp
        u.masked_fill_(ch.alpha >= ALPHA_MAX, 0.0)
    if ch.stop_rows.numel():
        uf = u.view(-1, shape[-1])
        uf[ch.stop_rows] = uf[ch.stop_rows] * ch.stop_comp
    return u


def _coefficient_chain(ch: _Chunk, s: Tensor) -> Tensor:
    """(A,L,6) grads of [mx, my, a, b, c, opacity] from ``s (A,6,L)``, the pixel sums of
    ``u = dL/dalpha * alpha`` times [x^2, xy, y^2, x, y, 1]. Since alpha = exp(k . monomials),
    dL/dk = s; the chain runs through k's formulas in :class:`_Chunk`."""
    a, b, c, mx, my = ch.a, ch.b, ch.c, ch.mx, ch.my
    bx, by = a * mx + b * my, b * mx + c * my
    v_mx = a * s[:, 3] + b * s[:, 4] - bx * s[:, 5]
    v_my = b * s[:, 3] + c * s[:, 4] - by * s[:, 5]
    v_a = -0.5 * s[:, 0] + mx * s[:, 3] - 0.5 * mx * mx * s[:, 5]
    v_b = -s[:, 1] + my * s[:, 3] + mx * s[:, 4] - mx * my * s[:, 5]
    v_c = -0.5 * s[:, 2] + my * s[:, 4] - 0.5 * my * my * s[:, 5]
    return torch.stack([v_mx, v_my, v_a, v_b, v_c, s[:, 5] / ch.op], -1)


def rasterize_torch(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float = 0.01,
    far_plane: float = 1e10, eps2d: float = 0.3, radius_clip: float = 0.0,
    backgrounds: Tensor | None = None, render_mode: str = "RGB", tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C cameras (gsplat's ``rasterization`` semantics, classic mode).

    means (N,3), quats (N,4) wxyz, scales (N,3) > 0, opacities (N,) in (0,1), colors (N,D) or
    (C,N,D), viewmats (C,4,4) world-to-camera (OpenCV), Ks (C,3,3), backgrounds (C,D) or None.
    Returns colors (C,H,W,D) (D+1 with the depth modes "RGB+D"/"RGB+ED"; 1 for "D"/"ED"),
    alphas (C,H,W,1) and meta (radii, means2d, depths, conics, opacities, tile statistics).
    """
    width, height, tile_size = int(width), int(height), int(tile_size)
    colors, backgrounds = prepare_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
        render_mode, tile_size,
    )
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
    )
    colors, backgrounds = add_depth_channel(colors, proj.depths, backgrounds, render_mode)
    with torch.no_grad():
        plan, meta = build_plan(proj, width, height, tile_size)
    log.debug("rasterize_torch %dx%d, %d cameras: %s", width, height, plan.cams, plan.stats)
    render, alphas = _TileComposite.apply(proj.means2d, proj.conics, proj.opacities, colors, plan)
    render = finish_render(render, alphas, backgrounds, render_mode)
    meta.update(
        radii=proj.radii, means2d=proj.means2d, depths=proj.depths, conics=proj.conics,
        opacities=proj.opacities, width=width, height=height, n_cameras=viewmats.shape[0],
    )
    return render, alphas, meta
