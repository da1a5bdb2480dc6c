"""Rendering: one ``rasterize`` over two backends that agree (gsplat on CUDA, tiled PyTorch anywhere).

``rasterize`` takes the model-level ``Gaussians`` and ``Camera``; it evaluates view-dependent colour
(spherical harmonics) once in PyTorch and hands activated tensors to the chosen backend's raw
function (``torch_backend.rasterize_torch`` / ``gsplat_backend.rasterize_gsplat``, same signature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidInput
from ..gaussians import Gaussians
from .camera import Camera

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """rgb (C,H,W,3), alpha (C,H,W,1), depth (C,H,W,1) expected depth or None."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor | None = None


def choose_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend to use on ``device``: gsplat on CUDA (when importable), else torch."""
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    if backend == "gsplat" and device.type != "cuda":
        raise InvalidInput("the gsplat backend needs a CUDA device", hint="use backend='torch' on CPU")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        try:
            import gsplat  # noqa: F401
            return "gsplat"
        except ImportError:
            return "torch"
    return "torch"


def _colors(g: Gaussians, cameras: Camera) -> Tensor:
    """Per-camera RGB (C,N,3) from SH (view dependent) or (N,3) for degree 0."""
    from .sh import sh_to_rgb

    if g.sh_degree == 0:
        return g.rgb
    dirs = g.means[None] - cameras.position[:, None].to(g.means.dtype)
    return sh_to_rgb(g.sh_degree, g.sh[None].expand((len(cameras),) + g.sh.shape), dirs)


def rasterize(gaussians: Gaussians, cameras: Camera, background: Tensor | None = None, *,
              backend: str = "auto", with_depth: bool = False, near_plane: float = 0.01,
              far_plane: float = 100.0) -> RenderOutput:
    """Render Gaussians into cameras.

    Args:
        gaussians: unbatched (N,) rendered into every camera, or batched (B,N) with B cameras
            (one camera per Gaussian set; rendered pairwise).
        cameras: C cameras sharing one image size.
        background: (3,) or (C,3) colour behind the head; black when None.
        backend: "auto" (gsplat on CUDA, torch elsewhere), "torch" or "gsplat". The torch backend
            uses 8-pixel tiles (same image, 1.5-2x faster on CPU: more tiles stop early).
        with_depth: also return the expected depth.
    """
    if gaussians.means.dim() == 3:
        if gaussians.means.shape[0] != len(cameras):
            raise InvalidInput(f"{gaussians.means.shape[0]} Gaussian sets but {len(cameras)} cameras")
        outs = [rasterize(gaussians[i], cameras[i:i + 1], None if background is None else
                          (background if background.dim() == 1 else background[i]),
                          backend=backend, with_depth=with_depth, near_plane=near_plane, far_plane=far_plane)
                for i in range(len(cameras))]
        cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
        return RenderOutput(cat([o.rgb for o in outs]), cat([o.alpha for o in outs]), cat([o.depth for o in outs]))
    if gaussians.means.dim() != 2:
        raise InvalidInput(f"Gaussians must be (N,) or (B,N), got means {tuple(gaussians.means.shape)}")
    name = choose_backend(gaussians.means.device, backend)
    if name == "gsplat":
        from .gsplat_backend import rasterize_gsplat as raw
    else:
        from .torch_backend import rasterize_torch as raw
    dtype, dev = gaussians.means.dtype, gaussians.means.device
    c = len(cameras)
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=dtype, device=dev).reshape(-1, 3).expand(c, 3)
    render, alpha, _ = raw(
        gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities, _colors(gaussians, cameras),
        cameras.viewmat.to(dev, dtype), cameras.K.to(dev, dtype), cameras.width, cameras.height,
        near_plane=near_plane, far_plane=far_plane, backgrounds=bg,
        render_mode="RGB+ED" if with_depth else "RGB", **({"tile_size": 8} if name == "torch" else {}))
    if with_depth:
        return RenderOutput(render[..., :3], alpha, render[..., 3:])
    return RenderOutput(render, alpha)
