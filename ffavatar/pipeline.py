"""The whole method as one module: network + FLAME + animation + rendering (few-to-many).

``AvatarPipeline`` owns the head model (coarse FLAME, its subdivision into dense Gaussian anchors,
the animator) and the learned ``FFAvatarNet``. Its ``forward`` is one few-to-many pass: K source
views build a canonical avatar, each of M target frames is tracked by the estimator (ψ, θ, π) and
rendered, so a photometric loss on the targets trains everything end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from .animate import Animator
from .errors import InvalidInput
from .flame.model import FlameModel, head_model_id
from .flame.subdivide import subdivide_cached
from .gaussians import Gaussians
from .model.config import ModelConfig
from .model.flame_estimator import EstimatedFlame
from .model.network import FFAvatarNet
from .render import RenderOutput, rasterize
from .render.camera import Camera


@dataclass(eq=False)
class PipelineOutput:
    """canonical (B,N) Gaussians; shape (B,S) or None; targets: EstimatedFlame (B*M);
    render: RenderOutput of the targets (B*M,H,W,·)."""

    canonical: Gaussians
    shape: Tensor | None
    targets: EstimatedFlame
    render: RenderOutput


class AvatarPipeline(nn.Module):
    """Network + head model. ``head`` is a validated FLAME dict; ``subdivision`` sets the anchor density."""

    def __init__(self, config: ModelConfig, head: dict[str, np.ndarray], subdivision: int = 1,
                 model_id: str | None = None):
        super().__init__()
        self.config = config
        self.subdivision = subdivision
        self.head_model_id = model_id or head_model_id(head)
        self.flame = FlameModel(head, n_shape=min(config.n_shape, _file_shape(head)), n_expr=config.n_expr,
                                model_id=self.head_model_id)
        dense = subdivide_cached(head, subdivision, self.head_model_id)
        u = dense["upsample"]
        per_point = config.gaussian_head.gaussians_per_point
        self.net = FFAvatarNet(config, self.flame.v_template.clone(),
                               torch.as_tensor(dense["v_template"], dtype=torch.float32), u)
        if per_point > 1:  # each anchor carries several Gaussians, laid out point-major
            u = scipy.sparse.csr_matrix(u)[np.repeat(np.arange(u.shape[0]), per_point)]
        self.animator = Animator(self.flame, u)
        self.faces = dense["f"]

    @property
    def device(self) -> torch.device:
        return self.flame.v_template.device

    def _shape(self, shape: Tensor | None, b: int) -> Tensor | None:
        if shape is None:
            return None
        return shape[:, : self.flame.n_shape].expand(b, -1) if shape.shape[0] in (1, b) else shape

    def pose(self, canonical: Gaussians, flame: EstimatedFlame, shape: Tensor | None = None) -> Gaussians:
        """Canonical (N,) or (B,N) Gaussians posed by estimated FLAME parameters (B) → (B,N)."""
        b = flame.expr.shape[0]
        return self.animator(canonical, expression=flame.expr, pose=flame.pose, shape=self._shape(shape, b))

    def cameras(self, flame: EstimatedFlame, width: int, height: int) -> Camera:
        """The estimated cameras (B) at an image size."""
        k, viewmat = flame.camera(width, height)
        return Camera(K=k, viewmat=viewmat, width=width, height=height)

    def render(self, canonical: Gaussians, flame: EstimatedFlame, shape: Tensor | None, cameras: Camera,
               background: Tensor | None = None, backend: str = "auto") -> RenderOutput:
        """Pose and render: one camera per FLAME sample (pairwise)."""
        return rasterize(self.pose(canonical, flame, shape), cameras, background, backend=backend)

    def forward(self, source: Tensor, targets: Tensor, source_mask: Tensor | None = None,
                background: Tensor | None = None, backend: str = "auto") -> PipelineOutput:
        """Few-to-many pass.

        source (B,K,3,H,W) in [0,1] with source_mask (B,K) bool; targets (B,M,3,H,W). Each target is
        tracked by the estimator and rendered from its own estimated camera at the target's size.
        """
        if targets.ndim != 5:
            raise InvalidInput(f"targets must be (B, M, 3, H, W), got {tuple(targets.shape)}")
        b, m, _, h, w = targets.shape
        out = self.net(source, source_mask, targets)
        est = out.targets
        canonical = out.gaussians
        idx = torch.arange(b, device=targets.device).repeat_interleave(m)
        per_target = Gaussians(**{f: getattr(canonical, f)[idx] for f in
                                  ("means", "quats", "log_scales", "opacity_logits", "sh")})
        shape = None if out.shape is None else out.shape[idx]
        render = self.render(per_target, est, shape, self.cameras(est, w, h), background, backend)
        return PipelineOutput(canonical=canonical, shape=out.shape, targets=est, render=render)


def _file_shape(head: dict[str, np.ndarray]) -> int:
    total = head["shapedirs"].shape[2]
    return int(head["n_shape"]) if "n_shape" in head else min(300, total)
