"""Multi-View Query-Former: canonical FLAME anchor queries attend to the tokens of all views.

Queries are the canonical anchor points (a buffer, e.g. the FLAME template vertices): a Fourier
embedding of their coordinates through an MLP plus a learned per-anchor embedding. Keys/values are
the patch tokens of every view, concatenated: each token gets a projection of itself, a 2D position
embedding of its patch, and a view embedding computed from that view's own cls token, so nothing
depends on a view's index and the output is invariant to the order of the views. Padded views are
excluded through a key padding mask and have no effect on the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffavatar.errors import InvalidInput, LimitExceeded
from ffavatar.model.config import QueryFormerConfig
from ffavatar.model.encoder import Mlp


def fourier_embed(x: Tensor, n_freqs: int, scale: float) -> Tensor:
    """x (..., C) -> (..., C * (1 + 2 n_freqs)): [u, sin(2^k pi u), cos(2^k pi u)], u = x / scale."""
    u = x / scale
    if n_freqs == 0:
        return u
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    ang = (u[..., None] * freqs).flatten(-2)
    return torch.cat([u, ang.sin(), ang.cos()], dim=-1)


def fourier_dim(channels: int, n_freqs: int) -> int:
    """Width of :func:`fourier_embed` for ``channels`` inputs."""
    return channels * (1 + 2 * n_freqs)


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``.

    forward(x (B, Nq, D), context (B, Nk, Dk) | None, key_mask (B, Nk) bool | None) -> (B, Nq, D);
    ``context`` None is self-attention; ``key_mask`` True marks keys that may be attended to.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        b, nq, d = x.shape
        h = self.heads
        q = self.q(x).view(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class LatentMixer(nn.Module):
    """O(Q*M) stand-in for query self-attention: M learned latents gather from all queries, then
    every query reads from the latents. forward(x (B, Q, D) normed) -> update (B, Q, D)."""

    def __init__(self, dim: int, heads: int, num_latents: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.gather = Attention(dim, heads)
        self.scatter = Attention(dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.gather(self.norm(lat), x)
        return self.scatter(x, lat)


class QueryBlock(nn.Module):
    """Pre-LN: self-attention among queries, cross-attention to all views' tokens, MLP."""

    def __init__(self, cfg: QueryFormerConfig):
        super().__init__()
        d = cfg.dim
        self.norm_self = nn.LayerNorm(d)
        if cfg.self_attention == "full":
            self.self_attn: nn.Module = Attention(d, cfg.heads)
        else:
            self.self_attn = LatentMixer(d, cfg.heads, cfg.num_latents)
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.heads)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def forward(self, q: Tensor, kv: Tensor, key_mask: Tensor | None) -> Tensor:
        q = q + self.self_attn(self.norm_self(q))
        q = q + self.cross_attn(self.norm_q(q), self.norm_kv(kv), key_mask)
        return q + self.mlp(self.norm_mlp(q))


POS2D_FREQS = 4
"""Octaves of the 2D patch-position Fourier embedding (coordinates in [-1, 1])."""
POS2D_DIM = fourier_dim(2, POS2D_FREQS)


def patch_uv_features(gh: int, gw: int, device=None, dtype=torch.float32) -> Tensor:
    """Fourier features (gh * gw, POS2D_DIM) of patch centres (u right, v down, in [-1, 1]), row-major."""
    ys = (torch.arange(gh, device=device, dtype=dtype) + 0.5) / gh * 2 - 1
    xs = (torch.arange(gw, device=device, dtype=dtype) + 0.5) / gw * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    uv = torch.stack([xx, yy], dim=-1).reshape(gh * gw, 2)
    return fourier_embed(uv, POS2D_FREQS, 1.0)


class QueryFormer(nn.Module):
    """Fuses any number of views into one feature per canonical anchor.

    forward(tokens (B, V, P, C), cls (B, V, C), grid (gh, gw), view_mask (B, V) bool | None)
        -> (B, Q, dim); P = gh * gw patches in row-major order, C = the encoder's out_dim.
    """

    def __init__(self, cfg: QueryFormerConfig, anchors: Tensor, token_dim: int):
        super().__init__()
        if anchors.ndim != 2 or anchors.shape[1] != 3 or anchors.shape[0] == 0:
            raise InvalidInput(f"anchors must be (Q, 3) with Q > 0, got {tuple(anchors.shape)}")
        if anchors.shape[0] > cfg.max_queries:
            raise LimitExceeded(
                f"{anchors.shape[0]} anchors exceed query_former.max_queries={cfg.max_queries}",
                hint="use the coarse FLAME vertices as anchors or raise max_queries",
            )
        self.cfg = cfg
        d = cfg.dim
        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)
        self.anchor_mlp = nn.Sequential(
            nn.Linear(fourier_dim(3, cfg.fourier_freqs), d), nn.GELU(), nn.Linear(d, d)
        )
        self.anchor_embed = nn.Parameter(torch.randn(anchors.shape[0], d) * 0.02)
        self.token_proj = nn.Linear(token_dim, d)
        self.view_mlp = nn.Sequential(nn.Linear(token_dim, d), nn.GELU(), nn.Linear(d, d))
        self.pos2d = nn.Linear(POS2D_DIM, d)
        self.blocks = nn.ModuleList(QueryBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d)

    @property
    def num_queries(self) -> int:
        return self.anchors.shape[0]

    def queries(self) -> Tensor:
        """Initial queries (Q, dim) from the anchor coordinates and the learned per-anchor embedding."""
        emb = fourier_embed(self.anchors, self.cfg.fourier_freqs, self.cfg.coord_scale)
        return self.anchor_mlp(emb) + self.anchor_embed

    def patch_positions(self, gh: int, gw: int, device, dtype) -> Tensor:
        """2D position embedding (gh * gw, dim) of the patch centres."""
        return self.pos2d(patch_uv_features(gh, gw, device, dtype))

    def forward(
        self, tokens: Tensor, cls: Tensor, grid: tuple[int, int], view_mask: Tensor | None = None
    ) -> Tensor:
        if tokens.ndim != 4 or cls.shape != tokens.shape[:2] + tokens.shape[-1:]:
            raise InvalidInput(
                f"query former expects tokens (B, V, P, C) and cls (B, V, C), got "
                f"{tuple(tokens.shape)} and {tuple(cls.shape)}"
            )
        b, v, p, _ = tokens.shape
        gh, gw = grid
        if gh * gw != p:
            raise InvalidInput(f"patch grid {gh}x{gw} does not hold {p} tokens")
        kv = self.token_proj(tokens) + self.view_mlp(cls)[:, :, None, :]
        kv = kv + self.patch_positions(gh, gw, tokens.device, kv.dtype)
        kv = kv.reshape(b, v * p, -1)
        key_mask = None
        if view_mask is not None:
            if view_mask.shape != (b, v) or view_mask.dtype != torch.bool:
                raise InvalidInput(f"view_mask must be bool (B, V) = {(b, v)}, got "
                                   f"{view_mask.dtype} {tuple(view_mask.shape)}")
            if not bool(view_mask.any(dim=1).all()):
                raise InvalidInput("every sample needs at least one valid view (view_mask row all False)")
            if not bool(view_mask.all()):
                key_mask = view_mask.repeat_interleave(p, dim=1)
        q = self.queries().to(kv.dtype).expand(b, -1, -1)
        for blk in self.blocks:
            q = blk(q, kv, key_mask)
        return self.norm_out(q)
