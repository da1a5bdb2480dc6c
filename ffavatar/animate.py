"""Posing canonical Gaussians with FLAME parameters (blendshapes + LBS; rotations follow the surface).

Dense Gaussian anchors are the head mesh subdivided (``U (N, V)``, see ``flame.subdivide``). Every
linear FLAME quantity of a dense point is ``U @`` the coarse one, so posing runs FLAME on the coarse
mesh (V ≈ 5k) and lifts its displacement and skinning transforms to the N Gaussians with one sparse
product each: the exact result of posing the subdivided model, at a fraction of the memory.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from .flame.model import FlameModel
from .gaussians import Gaussians
from .rotations import matrix_to_quat, quat_multiply


def sparse_tensor(u: scipy.sparse.spmatrix, dtype: torch.dtype = torch.float32) -> Tensor:
    """A scipy sparse matrix as a torch sparse COO tensor."""
    coo = u.tocoo()
    idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=dtype), coo.shape,
                                   check_invariants=True).coalesce()


class Animator(nn.Module):
    """Poses canonical Gaussians (B, N) anchored on ``U @ v_template`` of ``flame``.

    Args:
        flame: the coarse head model (V vertices).
        upsample: ``U (N, V)`` scipy sparse, rows summing to 1, mapping coarse vertices to anchors.
    """

    def __init__(self, flame: FlameModel, upsample: scipy.sparse.spmatrix):
        super().__init__()
        self.flame = flame
        self.register_buffer("upsample", sparse_tensor(upsample, flame.v_template.dtype))

    @property
    def num_points(self) -> int:
        return self.upsample.shape[0]

    def anchors(self) -> Tensor:
        """Canonical anchor positions (N, 3): the subdivided template."""
        return self.lift(self.flame.v_template[None])[0]

    def lift(self, x: Tensor) -> Tensor:
        """Coarse per-vertex values (B, V, *F) → dense (B, N, *F) through ``U``."""
        b, v = x.shape[:2]
        flat = x.reshape(b, v, -1).permute(1, 0, 2).reshape(v, -1)
        dense = torch.sparse.mm(self.upsample, flat)
        return dense.reshape(-1, b, flat.shape[1] // b).permute(1, 0, 2).reshape((b, -1) + x.shape[2:])

    def forward(self, gaussians: Gaussians, expression: Tensor | None = None, pose: Tensor | None = None,
                shape: Tensor | None = None, translation: Tensor | None = None) -> Gaussians:
        """Posed Gaussians (B, N) from canonical ``gaussians`` (B, N) or (N,) and FLAME parameters.

        expression (B, E), pose (B, 5, 3) axis-angle, shape (B, S), translation (B, 3); a canonical
        set without batch dims is shared by all B frames.
        """
        flame = self.flame
        out = flame(shape=shape, expression=expression, pose=pose, return_transforms=True)
        b = out.vertices.shape[0]
        if gaussians.means.dim() == 2:
            gaussians = Gaussians(**{f.name: getattr(gaussians, f.name).expand((b,) + getattr(gaussians, f.name).shape)
                                     for f in fields(gaussians)})
        # rest-pose displacement of the surface (blendshapes + pose correctives) and skinning transform
        rest = out.rest - flame.v_template
        transform = torch.cat([out.rotations, out.translations[..., None]], dim=-1)  # (B,V,3,4)
        dense_t = self.lift(torch.cat([rest[..., None], transform], dim=-1))  # (B,N,3,5)
        disp, rot, trans = dense_t[..., 0], dense_t[..., 1:4], dense_t[..., 4]
        if translation is not None:
            trans = trans + translation[:, None]
        means = torch.einsum("bnij,bnj->bni", rot, gaussians.means + disp) + trans
        quats = quat_multiply(matrix_to_quat(rot), gaussians.rotations)
        return Gaussians(means=means, quats=quats, log_scales=gaussians.log_scales,
                         opacity_logits=gaussians.opacity_logits, sh=gaussians.sh)
