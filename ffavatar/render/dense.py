"""Naive dense reference compositor: every pixel against every visible Gaussian (small scenes only).

The twin of :mod:`ffavatar.render.torch_backend` (as gsplat's ``_torch_impl`` is of its kernels):
same projection, same alpha rules and early stop, but no tiles, no chunks, plain autograd and the
sigma formula evaluated directly as ``0.5 (a dx^2 + c dy^2) + b dx dy``. Tests hold the tiled
renderer against it. Memory is O(C * H * W * N): keep scenes to a few thousand Gaussians at 64^2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ffavatar.errors import LimitExceeded
from ffavatar.render.torch_backend import (
    ALPHA_MAX, ALPHA_THRESHOLD, TRANSMITTANCE_MIN, add_depth_channel, finish_render,
    prepare_inputs, project_gaussians,
)

MAX_PAIRS = 1 << 24
"""Refuse more pixel-Gaussian pairs per camera than this (the dense tensors would not fit)."""


def composite_dense(
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, depths: Tensor,
    visible: Tensor, width: int, height: int,
) -> tuple[Tensor, Tensor]:
    """One camera: (N,2), (N,3), (N,), (N,D), (N,), (N,) bool -> colors (H,W,D), alphas (H,W,1)."""
    idx = torch.nonzero(visible).squeeze(1)
    idx = idx[torch.sort(depths.detach()[idx], stable=True).indices]
    if idx.numel() * width * height > MAX_PAIRS:
        raise LimitExceeded(
            f"dense compositing of {idx.numel()} Gaussians at {width}x{height} is too large",
            hint="use rasterize_torch (tiled) for big scenes",
        )
    dt, dev = means2d.dtype, means2d.device
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dt, device=dev) + 0.5,
        torch.arange(width, dtype=dt, device=dev) + 0.5, indexing="ij",
    )
    dx = means2d[idx, 0][None, :] - xs.reshape(-1, 1)  # (P,N)
    dy = means2d[idx, 1][None, :] - ys.reshape(-1, 1)
    a, b, c = conics[idx].unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp(opacities[idx] * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    ones = torch.ones_like(alpha[:, :1])
    trans = torch.cumprod(torch.cat([ones, 1.0 - alpha], dim=1), dim=1)  # (P,N+1), before each
    composited = trans[:, 1:] > TRANSMITTANCE_MIN  # a prefix: T only decreases
    weights = torch.where(composited, alpha * trans[:, :-1], torch.zeros_like(alpha))
    render = weights @ colors[idx]
    t_final = trans.gather(1, composited.sum(1, keepdim=True))
    return render.reshape(height, width, -1), (1.0 - t_final).reshape(height, width, 1)


def rasterize_dense(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float = 0.01,
    far_plane: float = 1e10, eps2d: float = 0.3, radius_clip: float = 0.0,
    backgrounds: Tensor | None = None, render_mode: str = "RGB", tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """Same signature and outputs as :func:`~ffavatar.render.torch_backend.rasterize_torch`.

    ``tile_size`` is accepted for signature parity and ignored.
    """
    width, height = int(width), int(height)
    colors, backgrounds = prepare_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
        render_mode, tile_size,
    )
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
    )
    colors, backgrounds = add_depth_channel(colors, proj.depths, backgrounds, render_mode)
    visible = (proj.radii > 0).all(-1)
    renders, alphas = zip(*(
        composite_dense(proj.means2d[c], proj.conics[c], proj.opacities[c], colors[c],
                        proj.depths[c], visible[c], width, height)
        for c in range(viewmats.shape[0])
    ))
    render, alpha = torch.stack(renders), torch.stack(alphas)
    render = finish_render(render, alpha, backgrounds, render_mode)
    meta = {
        "radii": proj.radii, "means2d": proj.means2d, "depths": proj.depths, "conics": proj.conics,
        "opacities": proj.opacities, "width": width, "height": height,
        "n_cameras": viewmats.shape[0], "n_visible": int(visible.sum()),
    }
    return render, alpha, meta
