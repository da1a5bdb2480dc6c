"""Dataclass configs of the FFAvatar network and its presets.

Every config has JSON-safe ``to_dict()`` / strict ``from_dict()`` (unknown keys, wrong types and
out-of-range values raise :class:`~ffavatar.errors.InvalidInput`). ``from_dict`` starts from the
class defaults; ``cfg.override(d)`` applies a (partial, nested) dict on top of an existing config,
e.g. a preset: ``ModelConfig.preset("tiny").override({"query_former": {"depth": 3}})``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ffavatar.errors import InvalidInput

C = TypeVar("C", bound="_Config")

ENCODER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
"""size -> (embed dim D, blocks, heads), the DINO/DINOv2 ViT-{Ti,S,B,L}/14 layouts."""


class _Config:
    """Mixin: JSON-safe dict round trip with strict key and type checks, and validation."""

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples become lists), safe for ``json.dumps``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a (possibly partial) dict; missing keys take the class defaults."""
        return cls().override(data)

    def override(self: C, data: dict[str, Any], _where: str = "") -> C:
        """A copy with the keys of ``data`` replaced; nested configs accept partial dicts."""
        name = _where or type(self).__name__
        if not isinstance(data, dict):
            raise InvalidInput(f"{name} expects a dict, got {type(data).__name__}")
        hints = typing.get_type_hints(type(self))
        known = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"unknown {name} key(s) {unknown}", hint=f"valid keys are {sorted(known)}"
            )
        changes = {}
        for key, value in data.items():
            where = f"{_where}.{key}" if _where else key
            changes[key] = _coerce(hints[key], value, getattr(self, key), where)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _to_plain(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(tp: Any, value: Any, current: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples, ints to floats."""
    if isinstance(tp, type) and issubclass(tp, _Config):
        if isinstance(value, tp):
            return value
        return (current if current is not None else tp()).override(value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, current, where)
            except InvalidInput:
                pass
        raise InvalidInput(f"{where} has the wrong type {type(value).__name__}: expected {tp}")
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise InvalidInput(f"{where} must be a list, got {type(value).__name__}")
        return tuple(_coerce(item, v, None, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidInput(f"{where} must be a string, got {value!r}")
        return value
    raise InvalidInput(f"{where}: unsupported config type {tp}")  # pragma: no cover


def _check(ok: bool, message: str, hint: str | None = None) -> None:
    if not ok:
        raise InvalidInput(message, hint=hint)


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """ViT/14 image encoder in the DINOv2 layout.

    ``fuse_layers`` are 0-based block indices whose (normed) outputs are concatenated and projected
    to ``out_dim``; blocks after the last fused one are not evaluated. ``pos_embed_size`` is the
    image size the stored ``pos_embed`` grid corresponds to (518 px -> 37x37 for official DINOv2
    weights); inputs of other sizes use a bicubic resample of it. ``depth`` overrides the size's
    block count (the CPU "tiny" preset uses 4).
    """

    size: str = "base"
    image_size: int = 224
    patch_size: int = 14
    num_registers: int = 0
    fuse_layers: tuple[int, ...] = (2, 5, 8, 11)
    out_dim: int = 512
    depth: int | None = None
    pos_embed_size: int = 518
    layerscale_init: float = 0.1

    def __post_init__(self) -> None:
        _check(self.size in ENCODER_SIZES, f"encoder.size {self.size!r} is not one of {sorted(ENCODER_SIZES)}")
        _check(self.patch_size > 0, f"encoder.patch_size must be positive, got {self.patch_size}")
        for key in ("image_size", "pos_embed_size"):
            v = getattr(self, key)
            _check(
                v > 0 and v % self.patch_size == 0,
                f"encoder.{key}={v} is not a positive multiple of the patch size {self.patch_size}",
            )
        _check(self.num_registers in (0, 4), f"encoder.num_registers must be 0 or 4, got {self.num_registers}")
        _check(self.depth is None or self.depth > 0, f"encoder.depth must be positive, got {self.depth}")
        _check(len(self.fuse_layers) > 0, "encoder.fuse_layers must name at least one block")
        bad = [i for i in self.fuse_layers if not 0 <= i < self.num_blocks]
        _check(not bad, f"encoder.fuse_layers {bad} are outside 0..{self.num_blocks - 1}")
        _check(len(set(self.fuse_layers)) == len(self.fuse_layers), "encoder.fuse_layers has repeats")
        _check(self.out_dim > 0, f"encoder.out_dim must be positive, got {self.out_dim}")
        _check(self.layerscale_init > 0, "encoder.layerscale_init must be positive")

    @property
    def embed_dim(self) -> int:
        return ENCODER_SIZES[self.size][0]

    @property
    def num_blocks(self) -> int:
        return self.depth if self.depth is not None else ENCODER_SIZES[self.size][1]

    @property
    def num_heads(self) -> int:
        return ENCODER_SIZES[self.size][2]


@dataclass(frozen=True)
class QueryFormerConfig(_Config):
    """Multi-View Query-Former: anchor queries x tokens of all views.

    ``self_attention``: "full" (SDPA over all queries, the GPU default) or "latent" (queries talk
    through ``num_latents`` learned latents per block: O(Q*M) instead of O(Q^2), for CPU configs).
    ``fourier_freqs`` octaves of sin/cos of anchor coordinates divided by ``coord_scale`` (m).
    """

    dim: int = 512
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    fourier_freqs: int = 8
    coord_scale: float = 0.25
    max_queries: int = 16384
    self_attention: str = "full"
    num_latents: int = 128

    def __post_init__(self) -> None:
        _check(self.dim > 0 and self.heads > 0 and self.dim % self.heads == 0,
               f"query_former.dim={self.dim} must be a positive multiple of heads={self.heads}")
        _check(self.depth >= 1, f"query_former.depth must be >= 1, got {self.depth}")
        _check(self.mlp_ratio > 0, "query_former.mlp_ratio must be positive")
        _check(self.fourier_freqs >= 0, "query_former.fourier_freqs must be >= 0")
        _check(self.coord_scale > 0, "query_former.coord_scale must be positive (meters)")
        _check(self.max_queries > 0, "query_former.max_queries must be positive")
        _check(self.self_attention in ("full", "latent"),
               f"query_former.self_attention must be 'full' or 'latent', got {self.self_attention!r}")
        _check(self.num_latents > 0, "query_former.num_latents must be positive")


@dataclass(frozen=True)
class GaussianHeadConfig(_Config):
    """Per-dense-point Gaussian attributes. Lengths in meters; scales are standard deviations."""

    sh_degree: int = 1
    max_offset: float = 0.03
    scale_min: float = 2e-4
    scale_max: float = 0.02
    hidden: int = 128
    gaussians_per_point: int = 1
    fourier_freqs: int = 6
    coord_scale: float = 0.25
    init_opacity: float = 0.9

    def __post_init__(self) -> None:
        _check(0 <= self.sh_degree <= 3, f"gaussian_head.sh_degree must be 0..3, got {self.sh_degree}")
        _check(self.max_offset > 0, "gaussian_head.max_offset must be positive (meters)")
        _check(0 < self.scale_min < self.scale_max,
               f"gaussian_head needs 0 < scale_min < scale_max, got {self.scale_min}, {self.scale_max}")
        _check(self.hidden > 0, "gaussian_head.hidden must be positive")
        _check(self.gaussians_per_point >= 1, "gaussian_head.gaussians_per_point must be >= 1")
        _check(self.fourier_freqs >= 0, "gaussian_head.fourier_freqs must be >= 0")
        _check(self.coord_scale > 0, "gaussian_head.coord_scale must be positive (meters)")
        _check(0 < self.init_opacity < 1, "gaussian_head.init_opacity must be in (0, 1)")


@dataclass(frozen=True)
class EstimatorConfig(_Config):
    """FLAME estimator (expression, pose, camera, optional shape) from one view's tokens.

    ``n_expr`` None follows ``ModelConfig.n_expr``. The untrained estimator puts the camera at
    ``init_cam_distance`` (m) on +Z with focal ``init_focal`` x image width.
    """

    n_expr: int | None = None
    hidden: int = 256
    heads: int = 4
    pool_queries: int = 4
    predict_shape: bool = True
    init_cam_distance: float = 0.6
    init_focal: float = 1.3

    def __post_init__(self) -> None:
        _check(self.n_expr is None or self.n_expr > 0, "estimator.n_expr must be positive")
        _check(self.hidden > 0 and self.heads > 0 and self.hidden % self.heads == 0,
               f"estimator.hidden={self.hidden} must be a positive multiple of heads={self.heads}")
        _check(self.pool_queries >= 1, "estimator.pool_queries must be >= 1")
        _check(self.init_cam_distance > 0, "estimator.init_cam_distance must be positive (meters)")
        _check(self.init_focal > 0, "estimator.init_focal must be positive (x image width)")


PRESETS: tuple[str, ...] = ("tiny", "small", "base", "large")


@dataclass(frozen=True)
class ModelConfig(_Config):
    """The whole network. Defaults are the "base" (GPU) preset."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    query_former: QueryFormerConfig = field(default_factory=QueryFormerConfig)
    gaussian_head: GaussianHeadConfig = field(default_factory=GaussianHeadConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    n_shape: int = 100
    n_expr: int = 100

    presets: ClassVar[tuple[str, ...]] = PRESETS

    def __post_init__(self) -> None:
        _check(self.n_shape >= 0, f"n_shape must be >= 0, got {self.n_shape}")
        _check(self.n_expr > 0, f"n_expr must be positive, got {self.n_expr}")
        e = self.estimator.n_expr
        _check(e is None or e == self.n_expr,
               f"estimator.n_expr={e} differs from n_expr={self.n_expr}",
               hint="set only n_expr (leave estimator.n_expr unset)")

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """"tiny" (CPU tests), "small", "base" (GPU default: ViT-B/14), "large" (ViT-L/14-reg4)."""
        if name == "tiny":
            return cls(
                encoder=EncoderConfig(size="tiny", image_size=112, depth=4, fuse_layers=(1, 3),
                                      out_dim=128, pos_embed_size=112),
                query_former=QueryFormerConfig(dim=128, depth=2, heads=4, mlp_ratio=2.0, fourier_freqs=6,
                                               self_attention="latent", num_latents=64),
                gaussian_head=GaussianHeadConfig(sh_degree=1, hidden=64, fourier_freqs=4),
                estimator=EstimatorConfig(hidden=128, heads=4, pool_queries=2),
                n_shape=50,
                n_expr=50,
            )
        if name == "small":
            return cls(
                encoder=EncoderConfig(size="small", image_size=224, out_dim=384),
                query_former=QueryFormerConfig(dim=384, depth=6, heads=6),
                gaussian_head=GaussianHeadConfig(hidden=128),
                estimator=EstimatorConfig(hidden=256),
            )
        if name == "base":
            return cls()
        if name == "large":
            return cls(
                encoder=EncoderConfig(size="large", image_size=448, num_registers=4,
                                      fuse_layers=(5, 11, 17, 23), out_dim=768),
                query_former=QueryFormerConfig(dim=768, depth=10, heads=12),
                gaussian_head=GaussianHeadConfig(hidden=192, sh_degree=2),
                estimator=EstimatorConfig(hidden=384),
            )
        raise InvalidInput(f"unknown model preset {name!r}", hint=f"choose one of {list(PRESETS)}")
