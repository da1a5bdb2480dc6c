"""ViT/14 image encoder in the DINOv2 parameter layout, with multi-layer feature fusion.

``DinoViT`` holds exactly the parameters of DINOv2's ``DinoVisionTransformer`` (block_chunks=0), so
official weights converted to safetensors load strictly; Hugging Face ``Dinov2Model`` /
``Dinov2WithRegistersModel`` safetensors load too (names mapped, q/k/v merged). ``ImageEncoder`` adds
ImageNet normalisation and the fusion of several blocks' normed outputs into ``out_dim`` tokens.
Weights are only ever read from a local file; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffavatar.errors import CheckpointError, InvalidInput
from ffavatar.model.config import EncoderConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerScale(nn.Module):
    """Per-channel residual scale ``gamma (D,)`` (DINOv2 ``ls1``/``ls2``)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (DINOv2 ``attn``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block with LayerScale (DINOv2 ``blocks.i``)."""

    def __init__(self, dim: int, heads: int, ls_init: float, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, ls_init)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection ``proj`` (Conv2d, kernel = stride = patch)."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> (B, H/p * W/p, D), row-major patches."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """The DINOv2 ViT backbone; parameter names match DINOv2's state dict exactly.

    Token order inside: [cls, registers (R), patches (P)]; ``pos_embed (1, 1+G*G, D)`` covers cls
    and a GxG patch grid (G = pos_embed_size / patch) and is added before registers are inserted.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, r = cfg.embed_dim, cfg.num_registers
        self.patch_size = cfg.patch_size
        self.num_registers = r
        self.pos_grid = cfg.pos_embed_size // cfg.patch_size
        # DINOv2 hub models: no registers -> offset 0.1, no antialias; registers -> exact size, antialias.
        self.interpolate_offset = 0.0 if r else 0.1
        self.interpolate_antialias = bool(r)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, d))
        if r:
            self.register_tokens = nn.Parameter(torch.zeros(1, r, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d), requires_grad=False)  # kept for strict loading
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.layerscale_init) for _ in range(cfg.num_blocks)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.num_registers:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """``pos_embed`` resampled (bicubic) to a grid_h x grid_w patch grid -> (1, 1 + gh*gw, D)."""
        g = self.pos_grid
        if grid_h == g and grid_w == g:
            return self.pos_embed
        pos = self.pos_embed.float()
        d = pos.shape[-1]
        patch = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            off = self.interpolate_offset
            kwargs = {"scale_factor": ((grid_h + off) / g, (grid_w + off) / g)}
        else:
            kwargs = {"size": (grid_h, grid_w)}
        patch = F.interpolate(patch, mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
        if patch.shape[-2:] != (grid_h, grid_w):  # pragma: no cover - guards float rounding
            patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic")
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, d)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + R + P, D) with positions added."""
        b, _, h, w = x.shape
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.interpolate_pos_embed(h // self.patch_size, w // self.patch_size)
        if self.num_registers:
            t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        return t

    def intermediate(self, x: Tensor, layers: tuple[int, ...]) -> list[Tensor]:
        """Normed outputs (B, 1 + R + P, D) of the given blocks (0-based), in the given order."""
        t = self.prepare_tokens(x)
        wanted = set(layers)
        outs: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(layers) + 1]):
            t = blk(t)
            if i in wanted:
                outs[i] = self.norm(t)
        return [outs[i] for i in layers]


class ImageEncoder(nn.Module):
    """Images in [0, 1] -> fused patch tokens and a cls summary.

    forward(images (B, 3, H, W)) -> (tokens (B, P, out_dim), cls (B, out_dim)), P = H/14 * W/14
    in row-major order. Features: concat of the normed outputs of ``cfg.fuse_layers`` -> Linear.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = DinoViT(cfg)
        self.fuse = nn.Linear(len(cfg.fuse_layers) * cfg.embed_dim, cfg.out_dim)
        nn.init.trunc_normal_(self.fuse.weight, std=0.02)
        nn.init.zeros_(self.fuse.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) for an input of height x width pixels."""
        return height // self.cfg.patch_size, width // self.cfg.patch_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInput(f"encoder expects images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise InvalidInput(f"image size {h}x{w} is not a multiple of the patch size {p}",
                               hint="resize or crop the images first")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        feats = torch.cat(self.backbone.intermediate(x, self.cfg.fuse_layers), dim=-1)
        fused = self.fuse(feats)
        return fused[:, 1 + self.cfg.num_registers :], fused[:, 0]

    def load_pretrained(self, path: str | Path) -> None:
        """Load DINOv2 backbone weights from a local ``.safetensors`` file (DINOv2 or HF layout).

        Strict: any missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError`
        naming the keys. The fusion layer keeps its own initialisation.
        """
        state = read_safetensors(path)
        if is_hf_layout(state):
            state = hf_to_dinov2(state)
        load_backbone_state(self.backbone, state, source=str(path))
        log.info("loaded DINOv2 weights from %s (%d tensors)", path, len(state))


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read every tensor of a local safetensors file onto the CPU; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"encoder weights file {path} does not exist")
    if path.suffix in (".pth", ".pt", ".bin", ".pkl"):
        raise CheckpointError(
            f"{path} looks like a pickle; pickled weights are never loaded",
            hint="convert it once to .safetensors (safetensors.torch.save_file(state_dict, ...))",
        )
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def is_hf_layout(state: dict[str, Tensor]) -> bool:
    """True when the keys follow Hugging Face ``Dinov2Model`` naming."""
    return any(k.startswith(("embeddings.", "encoder.layer.")) for k in state)


def hf_to_dinov2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename HF ``Dinov2Model`` keys to DINOv2 names; merge query/key/value into ``attn.qkv``.

    Keys it does not know are passed through unchanged (so strict loading reports them by name).
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        i, rest = int(m.group(1)), m.group(2)
        am = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if am:
            qkv.setdefault((i, am.group(2)), {})[am.group(1)] = value
            continue
        lm = re.match(r"^layer_scale([12])\.lambda1$", rest)
        if lm:
            out[f"blocks.{i}.ls{lm.group(1)}.gamma"] = value
            continue
        mod, _, param = rest.rpartition(".")
        if mod in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[mod]}.{param}"] = value
        else:
            out[key] = value
    for (i, param), parts in sorted(qkv.items()):
        missing = [n for n in ("query", "key", "value") if n not in parts]
        if missing:
            names = [f"encoder.layer.{i}.attention.attention.{n}.{param}" for n in missing]
            raise CheckpointError(f"HF checkpoint lacks {names}", hint="the file is incomplete")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def load_backbone_state(backbone: DinoViT, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy a DINOv2-layout state dict into ``backbone``; strict on keys and shapes."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise CheckpointError(
            f"{source} does not match the encoder: " + "; ".join(parts),
            hint="check encoder.size, encoder.depth and encoder.num_registers against the weights",
        )
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        hint = "check encoder.size/depth/num_registers"
        if any(k.startswith("pos_embed") for k in bad):
            g = math.isqrt(state["pos_embed"].shape[1] - 1)
            hint += f"; the file's pos_embed is a {g}x{g} grid: set encoder.pos_embed_size={g * backbone.patch_size}"
        raise CheckpointError(f"{source} has shape mismatches: {bad}", hint=hint)
    with torch.no_grad():
        params = dict(backbone.named_parameters())
        params.update(dict(backbone.named_buffers()))
        for k, target in params.items():
            target.copy_(state[k].to(dtype=target.dtype, device=target.device))
