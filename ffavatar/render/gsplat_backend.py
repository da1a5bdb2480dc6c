"""gsplat backend (CUDA only): a thin wrapper over ``gsplat.rasterization``.

Same signature and outputs as :func:`ffavatar.render.torch_backend.rasterize_torch`; the call is
pinned to ``sh_degree=None, packed=False, rasterize_mode="classic", camera_model="pinhole"`` so
the two backends implement the same image formation. gsplat is imported lazily: it JIT-compiles
its CUDA extension on first use and cannot render on CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ffavatar.errors import InvalidInput
from ffavatar.render.torch_backend import prepare_inputs


def rasterize_gsplat(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float = 0.01,
    far_plane: float = 1e10, eps2d: float = 0.3, radius_clip: float = 0.0,
    backgrounds: Tensor | None = None, render_mode: str = "RGB", tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """Render with gsplat on CUDA: colors (C,H,W,D[+1]), alphas (C,H,W,1), gsplat's meta dict."""
    colors, backgrounds = prepare_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height), backgrounds,
        render_mode, tile_size,
    )
    if means.device.type != "cuda":
        raise InvalidInput(
            f"gsplat renders on CUDA only, got tensors on {means.device}",
            hint="use ffavatar.render.torch_backend.rasterize_torch on CPU",
        )
    if means.dtype != torch.float32:
        raise InvalidInput(f"gsplat needs float32 tensors, got {means.dtype}", hint="cast with .float()")
    from gsplat import rasterization

    return rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
        sh_degree=None, packed=False, tile_size=int(tile_size), backgrounds=backgrounds,
        render_mode=render_mode, rasterize_mode="classic", camera_model="pinhole",
    )
