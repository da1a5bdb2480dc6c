"""Gaussian head: per-anchor features -> canonical 3D Gaussians on dense surface points.

The coarse anchor features (B, Q, D) are lifted to N dense points with a fixed sparse matrix
``upsample (N, Q)`` (rows sum to 1, e.g. from mesh subdivision), plus a Fourier embedding of each
dense point. A per-point MLP predicts, for each of G Gaussians per point: an offset
(tanh * max_offset, added to the point), SH colour, opacity logit, a scale bounded in
[scale_min, scale_max] (sigmoid in log space) and a rotation quaternion (normalised).

Untrained, the head already gives a sensible surface: zero offsets (means == dense points),
mid-grey colour, opacity ``init_opacity``, scales equal to the local point spacing, identity rotations.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffavatar.errors import InvalidInput
from ffavatar.model.config import GaussianHeadConfig
from ffavatar.model.query_former import fourier_dim, fourier_embed

log = logging.getLogger(__name__)

OUT_STD = 1e-3
"""Init std of the output layer's non-offset weights: near the set biases, but gradients flow."""


def as_sparse_coo(upsample, n: int, q: int) -> tuple[Tensor, Tensor]:
    """Normalise an upsample matrix (torch sparse COO/CSR, dense torch, or scipy.sparse) of shape
    (n, q) to coalesced COO ``indices (2, nnz) int64`` and ``values (nnz,) float32``; checks that
    every row sums to 1."""
    if hasattr(upsample, "tocoo") and not isinstance(upsample, Tensor):  # scipy.sparse
        c = upsample.tocoo()
        t = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([c.row, c.col]).astype(np.int64)),
            torch.from_numpy(np.asarray(c.data, dtype=np.float32)),
            c.shape, check_invariants=True,
        )
    elif isinstance(upsample, Tensor):
        if upsample.layout == torch.strided:
            t = upsample.detach().to_sparse()
        elif upsample.layout == torch.sparse_coo:
            t = upsample.detach()
        elif upsample.layout == torch.sparse_csr:
            t = upsample.detach().to_sparse_coo()
        else:
            raise InvalidInput(f"upsample has unsupported sparse layout {upsample.layout}",
                               hint="pass a COO or CSR tensor")
    else:
        raise InvalidInput(f"upsample must be a torch or scipy sparse matrix, got {type(upsample).__name__}")
    if tuple(t.shape) != (n, q):
        raise InvalidInput(f"upsample has shape {tuple(t.shape)}, expected (N, Q) = {(n, q)}")
    t = t.coalesce()
    indices, values = t.indices().cpu(), t.values().float().cpu()
    row_sums = torch.zeros(n).index_add_(0, indices[0], values)
    worst = (row_sums - 1).abs().max().item() if n else 0.0
    if worst > 1e-4:
        raise InvalidInput(f"upsample rows must sum to 1 (each dense point a blend of anchors); "
                           f"worst row is off by {worst:.3g}")
    return indices, values


def point_spacing(points: Tensor, k: int = 3) -> Tensor:
    """(N,) RMS distance of each point to its k nearest other points (3DGS-style scale init)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    if len(pts) < 2:
        return torch.full((len(pts),), float("nan"))
    k = min(k, len(pts) - 1)
    dist, _ = cKDTree(pts).query(pts, k=k + 1)
    return torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(axis=1))).float()


class GaussianHead(nn.Module):
    """forward(features (B, Q, in_dim)) -> Gaussians with batch (B, N * G), G = gaussians_per_point.

    Gaussians of dense point i are at indices i*G .. i*G + G-1.
    """

    def __init__(self, cfg: GaussianHeadConfig, in_dim: int, dense_points: Tensor, upsample):
        super().__init__()
        if dense_points.ndim != 2 or dense_points.shape[1] != 3 or dense_points.shape[0] == 0:
            raise InvalidInput(f"dense_points must be (N, 3) with N > 0, got {tuple(dense_points.shape)}")
        self.cfg = cfg
        n = dense_points.shape[0]
        self.num_anchors = upsample.shape[1]
        indices, values = as_sparse_coo(upsample, n, self.num_anchors)
        self.register_buffer("dense_points", dense_points.detach().float().clone(), persistent=False)
        self.register_buffer("up_indices", indices, persistent=False)
        self.register_buffer("up_values", values, persistent=False)

        self.log_min, self.log_max = math.log(cfg.scale_min), math.log(cfg.scale_max)
        spacing = point_spacing(self.dense_points).nan_to_num(cfg.scale_max)
        log.debug("dense point spacing: median %.2g m (min %.2g, max %.2g)",
                  spacing.median().item(), spacing.min().item(), spacing.max().item())
        frac = ((spacing.log() - self.log_min) / (self.log_max - self.log_min)).clamp(0.01, 0.99)
        self.register_buffer("scale_logit0", torch.logit(frac), persistent=False)  # (N,)

        k = (cfg.sh_degree + 1) ** 2
        self.num_sh = k
        self.channels = 3 + 3 * k + 1 + 3 + 4  # offset, sh, opacity, scale, quat
        self.point_mlp = nn.Sequential(
            nn.Linear(fourier_dim(3, cfg.fourier_freqs), in_dim), nn.GELU(), nn.Linear(in_dim, in_dim)
        )
        self.trunk = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
        )
        self.out = nn.Linear(cfg.hidden, cfg.gaussians_per_point * self.channels)
        self._init_out()

    def _init_out(self) -> None:
        g, c, k = self.cfg.gaussians_per_point, self.channels, self.num_sh
        with torch.no_grad():
            w = self.out.weight.view(g, c, -1)
            b = self.out.bias.view(g, c)
            nn.init.normal_(w, std=OUT_STD)
            w[:, 0:3] = 0.0  # offsets start at exactly zero
            b.zero_()
            b[:, 3 + 3 * k] = math.log(self.cfg.init_opacity / (1 - self.cfg.init_opacity))
            b[:, 7 + 3 * k] = 1.0  # quaternion w
        # scale raw = 0 + per-point logit0 -> local spacing; sh = 0 -> rgb 0.5

    @property
    def num_points(self) -> int:
        """Dense points N (the output has N * gaussians_per_point Gaussians)."""
        return self.dense_points.shape[0]

    def lift(self, features: Tensor) -> Tensor:
        """Coarse (B, Q, D) -> dense (B, N, D) = upsample @ features (sparse, never (N, Q) dense)."""
        b, q, d = features.shape
        if q != self.num_anchors:
            raise InvalidInput(f"features have {q} anchors, the upsample matrix expects {self.num_anchors}")
        up = torch.sparse_coo_tensor(
            self.up_indices, self.up_values, (self.num_points, q), is_coalesced=True, check_invariants=False,
        )
        flat = features.permute(1, 0, 2).reshape(q, b * d)
        with torch.autocast(features.device.type, enabled=False):  # sparse kernels: float32 only
            dense = torch.sparse.mm(up, flat.float())
        return dense.to(features.dtype).view(self.num_points, b, d).permute(1, 0, 2)

    def forward(self, features: Tensor):
        from ffavatar.gaussians import Gaussians

        b = features.shape[0]
        n, g, k, cfg = self.num_points, self.cfg.gaussians_per_point, self.num_sh, self.cfg
        pts = self.dense_points.to(features.dtype)
        h = self.lift(features) + self.point_mlp(fourier_embed(pts, cfg.fourier_freqs, cfg.coord_scale))
        raw = self.out(self.trunk(h)).view(b, n, g, self.channels)
        means = pts[None, :, None, :] + torch.tanh(raw[..., 0:3]) * cfg.max_offset
        sh = raw[..., 3 : 3 + 3 * k].reshape(b, n, g, k, 3)
        opacity = raw[..., 3 + 3 * k]
        scale_raw = raw[..., 4 + 3 * k : 7 + 3 * k] + self.scale_logit0.to(raw.dtype)[None, :, None, None]
        log_scales = self.log_min + torch.sigmoid(scale_raw) * (self.log_max - self.log_min)
        quats = F.normalize(raw[..., 7 + 3 * k :], dim=-1)
        m = n * g
        return Gaussians(
            means=means.reshape(b, m, 3),
            quats=quats.reshape(b, m, 4),
            log_scales=log_scales.reshape(b, m, 3),
            opacity_logits=opacity.reshape(b, m),
            sh=sh.reshape(b, m, k, 3),
        )
