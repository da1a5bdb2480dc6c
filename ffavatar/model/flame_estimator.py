"""FLAME estimator: expression psi, pose theta and camera pi (and optionally shape) from one image.

It reads the shared encoder's tokens of one view through attention pooling and small MLP heads.
The final layers start at zero, so an untrained estimator outputs a neutral face, zero pose and the
default frontal camera (``init_cam_distance`` m along +Z, looking at the origin, focal
``init_focal`` x width).

Camera convention (OpenCV, world +Y up, the face looks along +Z)::

    viewmat = [[R, t], [0, 1]],  R = diag(1, -1, -1) @ rodrigues(cam_rot),  t = cam_t
    K = [[f W, 0, W/2], [0, f W, H/2], [0, 0, 1]],  f = focal (normalised by the width W)

``cam_t`` is the world origin (head centre) in camera coordinates; at identity ``cam_rot`` the
camera sits at (0, 0, cam_t.z) looking toward -Z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ffavatar.errors import InvalidInput
from ffavatar.model.config import EstimatorConfig
from ffavatar.model.query_former import POS2D_DIM, Attention, patch_uv_features

JOINTS = ("root", "neck", "jaw", "eye_L", "eye_R")
"""FLAME joint order of ``EstimatedFlame.pose``."""


@dataclass(eq=False)
class EstimatedFlame:
    """Per-image FLAME parameters and camera.

    expr (B, n_expr); pose (B, 5, 3) axis-angle for root, neck, jaw, eye_L, eye_R; cam_rot (B, 3)
    axis-angle; cam_t (B, 3) meters; focal (B,) in units of the image width; shape (B, n_shape)
    or None.
    """

    expr: Tensor
    pose: Tensor
    cam_rot: Tensor
    cam_t: Tensor
    focal: Tensor
    shape: Tensor | None = None

    @property
    def global_pose(self) -> Tensor:
        """(B, 3) root rotation."""
        return self.pose[:, 0]

    @property
    def neck_pose(self) -> Tensor:
        return self.pose[:, 1]

    @property
    def jaw_pose(self) -> Tensor:
        return self.pose[:, 2]

    @property
    def eye_pose(self) -> Tensor:
        """(B, 6) left then right eye, as FLAME expects."""
        return self.pose[:, 3:5].reshape(-1, 6)

    def camera(self, width: int, height: int) -> tuple[Tensor, Tensor]:
        """(K (B, 3, 3), viewmat (B, 4, 4)) for an image of width x height pixels."""
        return camera_matrices(self.cam_rot, self.cam_t, self.focal, width, height)

    def detach(self) -> EstimatedFlame:
        return EstimatedFlame(
            self.expr.detach(), self.pose.detach(), self.cam_rot.detach(), self.cam_t.detach(),
            self.focal.detach(), None if self.shape is None else self.shape.detach(),
        )


def axis_angle_to_matrix(r: Tensor) -> Tensor:
    """Rodrigues: axis-angle (..., 3) -> rotation matrix (..., 3, 3); smooth (and exact) near zero."""
    theta2 = (r * r).sum(-1)[..., None, None]
    small = theta2 < 1e-8
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = t2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(t)) / t2)
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def camera_matrices(
    cam_rot: Tensor, cam_t: Tensor, focal: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """The one camera function: (cam_rot (B,3), cam_t (B,3), focal (B,), W, H) ->
    (K (B, 3, 3) pixels, viewmat (B, 4, 4) world-to-camera, OpenCV). See the module docstring."""
    b = cam_rot.shape[0]
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=cam_rot.dtype, device=cam_rot.device)
    rot = flip[:, None] * axis_angle_to_matrix(cam_rot)  # diag(1,-1,-1) @ R
    top = torch.cat([rot, cam_t[:, :, None]], dim=2)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype, device=rot.device).expand(b, 1, 4)
    viewmat = torch.cat([top, bottom], dim=1)
    fx = focal * width
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    k = torch.stack([
        fx, zero, zero + width / 2,
        zero, fx, zero + height / 2,
        zero, zero, one,
    ], dim=-1).reshape(b, 3, 3)
    return k, viewmat


def pool_shape(shape: Tensor, view_mask: Tensor | None = None) -> Tensor:
    """Masked mean over views: shape (B, V, S), view_mask (B, V) bool | None -> (B, S)."""
    if view_mask is None:
        return shape.mean(dim=1)
    w = view_mask.to(shape.dtype)[..., None]
    count = w.sum(dim=1)
    if bool((count == 0).any()):
        raise InvalidInput("pool_shape: a sample has no valid view")
    return (shape * w).sum(dim=1) / count


class FlameEstimator(nn.Module):
    """forward(tokens (B, P, C), cls (B, C), grid (gh, gw)) -> EstimatedFlame."""

    def __init__(self, cfg: EstimatorConfig, token_dim: int, n_expr: int, n_shape: int):
        super().__init__()
        self.cfg = cfg
        self.n_expr = n_expr
        self.n_shape = n_shape if cfg.predict_shape else 0
        d = cfg.hidden
        self.token_proj = nn.Linear(token_dim, d)
        self.pos2d = nn.Linear(POS2D_DIM, d)
        self.norm_kv = nn.LayerNorm(d)
        self.pool_queries = nn.Parameter(torch.randn(cfg.pool_queries, d) * 0.02)
        self.pool = Attention(d, cfg.heads)
        self.cls_proj = nn.Linear(token_dim, d)
        self.mlp = nn.Sequential(
            nn.LayerNorm((cfg.pool_queries + 1) * d), nn.Linear((cfg.pool_queries + 1) * d, d), nn.GELU(),
            nn.Linear(d, d), nn.GELU(),
        )
        self.expr_head = nn.Linear(d, n_expr)
        self.pose_head = nn.Linear(d, len(JOINTS) * 3)
        self.cam_head = nn.Linear(d, 7)  # rot(3), t_xy(2), log depth(1), log focal(1)
        self.shape_head = nn.Linear(d, self.n_shape) if self.n_shape else None
        for head in (self.expr_head, self.pose_head, self.cam_head, self.shape_head):
            if head is not None:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, tokens: Tensor, cls: Tensor, grid: tuple[int, int]) -> EstimatedFlame:
        b, p, _ = tokens.shape
        if grid[0] * grid[1] != p:
            raise InvalidInput(f"patch grid {grid} does not hold {p} tokens")
        kv = self.token_proj(tokens) + self.pos2d(patch_uv_features(*grid, tokens.device, tokens.dtype))
        pooled = self.pool(self.pool_queries.expand(b, -1, -1), self.norm_kv(kv))
        h = self.mlp(torch.cat([pooled.flatten(1), self.cls_proj(cls)], dim=-1))
        cam = self.cam_head(h)
        dist = self.cfg.init_cam_distance
        depth = dist * torch.exp(cam[:, 5:6])
        return EstimatedFlame(
            expr=self.expr_head(h),
            pose=self.pose_head(h).view(b, len(JOINTS), 3),
            cam_rot=cam[:, 0:3],
            cam_t=torch.cat([cam[:, 3:5] * dist, depth], dim=-1),
            focal=self.cfg.init_focal * torch.exp(cam[:, 6]),
            shape=self.shape_head(h) if self.shape_head is not None else None,
        )
