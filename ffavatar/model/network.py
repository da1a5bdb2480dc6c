"""FFAvatarNet: encoder + Multi-View Query-Former + Gaussian head + FLAME estimator.

The network does not own FLAME: it gets the canonical anchors (Q, 3), the dense points (N, 3) and
the sparse upsample matrix (N, Q) as constant, non-persistent buffers (so ``state_dict`` holds only
learned weights; the checkpoint records the head-model id instead). Images of any size are resized
inside to the encoder's ``image_size`` (longer side, aspect kept, rounded to the patch size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffavatar.errors import InvalidInput
from ffavatar.model.config import ModelConfig
from ffavatar.model.encoder import ImageEncoder
from ffavatar.model.flame_estimator import EstimatedFlame, FlameEstimator, pool_shape
from ffavatar.model.gaussian_head import GaussianHead
from ffavatar.model.query_former import QueryFormer

log = logging.getLogger(__name__)

PARAMETER_GROUPS = ("encoder", "query_former", "gaussian_head", "estimator")


@dataclass(eq=False)
class NetOutput:
    """What :meth:`FFAvatarNet.forward` returns.

    gaussians: canonical Gaussians, batch (B, N); shape: (B, n_shape) identity shape pooled over the
    valid source views (None when the estimator predicts no shape); targets: EstimatedFlame of the
    target frames flattened to batch B*M (None when no targets were given).
    """

    gaussians: object
    shape: Tensor | None
    targets: EstimatedFlame | None


class FFAvatarNet(nn.Module):
    def __init__(self, config: ModelConfig, anchors: Tensor, dense_points: Tensor, upsample):
        super().__init__()
        if upsample.shape[1] != anchors.shape[0]:
            raise InvalidInput(
                f"upsample has {upsample.shape[1]} columns but there are {anchors.shape[0]} anchors",
                hint="build anchors, dense points and upsample from the same head model",
            )
        self.config = config
        enc = config.encoder
        self.encoder = ImageEncoder(enc)
        self.query_former = QueryFormer(config.query_former, anchors, enc.out_dim)
        self.gaussian_head = GaussianHead(config.gaussian_head, config.query_former.dim, dense_points, upsample)
        self.estimator = FlameEstimator(config.estimator, enc.out_dim, config.n_expr, config.n_shape)
        log.debug(
            "FFAvatarNet: %d anchors, %d Gaussians, %.1fM parameters", anchors.shape[0], self.num_gaussians,
            sum(p.numel() for p in self.parameters()) / 1e6,
        )

    # ------------------------------------------------------------------ constants
    @property
    def anchors(self) -> Tensor:
        """(Q, 3) canonical anchor points (the queries)."""
        return self.query_former.anchors

    @property
    def dense_points(self) -> Tensor:
        """(N, 3) canonical dense points the Gaussians are attached to."""
        return self.gaussian_head.dense_points

    @property
    def num_gaussians(self) -> int:
        return self.gaussian_head.num_points * self.config.gaussian_head.gaussians_per_point

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: "encoder", "query_former", "gaussian_head", "estimator"."""
        return {
            name: [p for p in getattr(self, name).parameters() if p.requires_grad] for name in PARAMETER_GROUPS
        }

    def load_encoder_weights(self, path) -> None:
        """Load DINOv2 weights (local safetensors, DINOv2 or HF layout) into the encoder backbone."""
        self.encoder.load_pretrained(path)

    # ------------------------------------------------------------------ images
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Encoder input size for an image of height x width: longer side -> image_size, aspect kept,
        both rounded to multiples of the patch size."""
        size, p = self.config.encoder.image_size, self.config.encoder.patch_size
        if height == width:
            return size, size
        s = size / max(height, width)
        return max(p, round(height * s / p) * p), max(p, round(width * s / p) * p)

    def _resize(self, images: Tensor) -> Tensor:
        """(M, 3, H, W) -> (M, 3, h, w) at :meth:`input_size`."""
        h, w = images.shape[-2:]
        th, tw = self.input_size(h, w)
        if (th, tw) == (h, w):
            return images
        return F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False,
                             antialias=th < h or tw < w)

    def _grid(self, images: Tensor) -> tuple[int, int]:
        th, tw = self.input_size(*images.shape[-2:])
        return self.encoder.grid_size(th, tw)

    @staticmethod
    def _check_views(images: Tensor, view_mask: Tensor | None) -> None:
        if images.ndim != 5 or images.shape[2] != 3:
            raise InvalidInput(f"expected images (B, V, 3, H, W), got {tuple(images.shape)}")
        if view_mask is not None and (view_mask.shape != images.shape[:2] or view_mask.dtype != torch.bool):
            raise InvalidInput(f"view_mask must be bool (B, V) = {tuple(images.shape[:2])}, got "
                               f"{view_mask.dtype} {tuple(view_mask.shape)}")

    # ------------------------------------------------------------------ the method
    def encode(self, images: Tensor, view_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images (B, V, 3, H, W) in [0, 1] -> tokens (B, V, P, C), cls (B, V, C).

        Padded views (view_mask False) are not encoded; their tokens and cls are zeros.
        """
        self._check_views(images, view_mask)
        b, v = images.shape[:2]
        flat = images.reshape(b * v, *images.shape[2:])
        if view_mask is None or bool(view_mask.all()):
            tokens, cls = self.encoder(self._resize(flat))
            return tokens.view(b, v, *tokens.shape[1:]), cls.view(b, v, -1)
        idx = view_mask.reshape(-1).nonzero().squeeze(1)
        tok, c = self.encoder(self._resize(flat.index_select(0, idx)))
        tokens = tok.new_zeros(b * v, *tok.shape[1:]).index_copy(0, idx, tok)
        cls = c.new_zeros(b * v, c.shape[-1]).index_copy(0, idx, c)
        return tokens.view(b, v, *tok.shape[1:]), cls.view(b, v, -1)

    def reconstruct(self, images: Tensor, view_mask: Tensor | None = None):
        """images (B, V, 3, H, W), view_mask (B, V) | None -> canonical Gaussians, batch (B, N)."""
        tokens, cls = self.encode(images, view_mask)
        return self._reconstruct_from_tokens(tokens, cls, self._grid(images), view_mask)

    def _reconstruct_from_tokens(self, tokens, cls, grid, view_mask):
        return self.gaussian_head(self.query_former(tokens, cls, grid, view_mask))

    def estimate(self, images: Tensor) -> EstimatedFlame:
        """images (B, 3, H, W) in [0, 1] -> per-image FLAME expression, pose, camera (and shape)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInput(f"estimate expects images (B, 3, H, W), got {tuple(images.shape)}")
        tokens, cls = self.encoder(self._resize(images))
        return self.estimator(tokens, cls, self._grid(images))

    def forward(
        self, source: Tensor, source_mask: Tensor | None = None, targets: Tensor | None = None
    ) -> NetOutput:
        """One training pass (a single ``forward`` for DDP).

        source (B, V, 3, H, W) + source_mask (B, V) -> canonical Gaussians and the identity shape
        pooled from the estimator on the source tokens; targets (B, M, 3, H', W') | None -> their
        EstimatedFlame, flattened to batch B*M.
        """
        tokens, cls = self.encode(source, source_mask)
        grid = self._grid(source)
        gaussians = self._reconstruct_from_tokens(tokens, cls, grid, source_mask)
        shape = None
        if self.estimator.n_shape:
            b, v = source.shape[:2]
            src = self.estimator(tokens.flatten(0, 1), cls.flatten(0, 1), grid)
            shape = pool_shape(src.shape.view(b, v, -1), source_mask)
        est = None
        if targets is not None:
            self._check_views(targets, None)
            est = self.estimate(targets.flatten(0, 1))
        return NetOutput(gaussians=gaussians, shape=shape, targets=est)
