"""The ``Gaussians`` container: raw (pre-activation) 3D Gaussian parameters, optionally batched.

Raw storage is what optimizers and networks work on; the activations live here and only here:
``scales = exp(log_scales)``, ``opacities = sigmoid(opacity_logits)``, ``rotations = quats / |quats|``.
Colors are real spherical-harmonic coefficients in the 3DGS convention: ``sh[..., 0, :]`` is the DC
term and the base color is ``rgb = C0 * dc + 0.5`` (see :func:`sh_dc_to_rgb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ffavatar.errors import CheckpointError, InvalidInput

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic, 1 / (2 sqrt(pi)), as used by 3DGS and gsplat."""


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """RGB (..., 3) in [0, 1] -> DC SH coefficient (..., 3) such that ``rgb = C0 * dc + 0.5``."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """DC SH coefficient (..., 3) -> RGB (..., 3) (unclamped)."""
    return dc * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for a degree: (degree + 1) ** 2."""
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Inverse of :func:`num_sh_bases`; raises :class:`InvalidInput` if ``k`` is not a square."""
    d = math.isqrt(k) - 1
    if k < 1 or (d + 1) ** 2 != k:
        raise InvalidInput(f"{k} SH coefficients per channel is not (degree + 1)**2 for any degree")
    return d


@dataclass(eq=False)
class Gaussians:
    """A set of 3D Gaussians with batch dims ``*B`` and ``N`` points.

    Attributes (raw, unactivated):
        means: (*B, N, 3) centers, meters.
        quats: (*B, N, 4) rotations as wxyz quaternions, not necessarily unit.
        log_scales: (*B, N, 3) log of the per-axis standard deviations.
        opacity_logits: (*B, N) logit of the opacity.
        sh: (*B, N, K, 3) SH coefficients, K = (sh_degree + 1) ** 2; ``sh[..., 0, :]`` is DC.
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise InvalidInput(f"Gaussians.{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise InvalidInput(f"Gaussians.{name} must be floating point, got {value.dtype}")
        m = self.means
        if m.ndim < 2 or m.shape[-1] != 3:
            raise InvalidInput(f"Gaussians.means must be (*B, N, 3), got {tuple(m.shape)}")
        lead = tuple(m.shape[:-1])  # (*B, N)
        expected = {
            "quats": lead + (4,),
            "log_scales": lead + (3,),
            "opacity_logits": lead,
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise InvalidInput(
                    f"Gaussians.{name} has shape {got}, expected {shape} to match means {tuple(m.shape)}"
                )
        sh = self.sh
        if sh.ndim != m.ndim + 1 or tuple(sh.shape[:-2]) != lead or sh.shape[-1] != 3:
            raise InvalidInput(
                f"Gaussians.sh has shape {tuple(sh.shape)}, expected {lead + ('K', 3)} "
                f"to match means {tuple(m.shape)}"
            )
        sh_degree_from_bases(sh.shape[-2])
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if value.device != m.device or value.dtype != m.dtype:
                raise InvalidInput(
                    f"Gaussians.{name} is {value.dtype} on {value.device} but means is {m.dtype} on "
                    f"{m.device}",
                    hint="move all fields to one device and dtype",
                )

    # ------------------------------------------------------------------ activations and sizes
    @property
    def scales(self) -> Tensor:
        """(*B, N, 3) per-axis standard deviations (exp of ``log_scales``)."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        """(*B, N) opacities in (0, 1) (sigmoid of ``opacity_logits``)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        """(*B, N, 4) unit wxyz quaternions."""
        return F.normalize(self.quats, dim=-1)

    @property
    def rgb(self) -> Tensor:
        """(*B, N, 3) view-independent base color from the DC term (unclamped)."""
        return sh_dc_to_rgb(self.sh[..., 0, :])

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[-2])

    @property
    def num_points(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __repr__(self) -> str:
        return (
            f"Gaussians(batch_shape={tuple(self.batch_shape)}, num_points={self.num_points}, "
            f"sh_degree={self.sh_degree}, dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_rgb(
        cls,
        means: Tensor,
        rgb: Tensor,
        scales: Tensor,
        opacities: Tensor,
        quats: Tensor | None = None,
        sh_degree: int = 0,
    ) -> Gaussians:
        """Build from activated values: rgb (*B,N,3), scales (*B,N,3) > 0, opacities (*B,N) in (0,1).

        ``quats`` (*B,N,4) wxyz defaults to identity. Higher SH bands start at zero. Opacities are
        clamped to [1e-6, 1 - 1e-6] before the logit so the result stays finite.
        """
        if sh_degree < 0:
            raise InvalidInput(f"sh_degree must be >= 0, got {sh_degree}")
        if bool((scales <= 0).any()):
            raise InvalidInput("Gaussians.from_rgb: scales must be positive (they are stored as logs)")
        if quats is None:
            quats = torch.zeros(*means.shape[:-1], 4, dtype=means.dtype, device=means.device)
            quats[..., 0] = 1.0
        sh = torch.zeros(*rgb.shape[:-1], num_sh_bases(sh_degree), 3, dtype=rgb.dtype, device=rgb.device)
        sh[..., 0, :] = rgb_to_sh_dc(rgb)
        return cls(
            means=means,
            quats=quats,
            log_scales=scales.log(),
            opacity_logits=torch.logit(opacities, eps=1e-6),
            sh=sh,
        )

    # ------------------------------------------------------------------ tensor plumbing
    def _map(self, fn) -> Gaussians:
        return Gaussians(**{name: fn(getattr(self, name)) for name in _FIELDS})

    def to(self, *args, **kwargs) -> Gaussians:
        """Like ``Tensor.to`` (device and/or dtype) on every field."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(Tensor.detach)

    def clone(self) -> Gaussians:
        return self._map(Tensor.clone)

    def __getitem__(self, index) -> Gaussians:
        """Index the batch dims only, e.g. ``g[0]`` or ``g[1:3]``; use :meth:`select` for points."""
        nb = len(self.batch_shape)
        idx = index if isinstance(index, tuple) else (index,)
        if nb == 0:
            raise InvalidInput("these Gaussians have no batch dims to index", hint="use .select() for points")
        if len(idx) > nb or any(i is Ellipsis or i is None for i in idx):
            raise InvalidInput(
                f"index {index!r} reaches past the {nb} batch dim(s)", hint="use .select() for points"
            )
        return self._map(lambda t: t[idx])

    def select(self, mask_or_index: Tensor | Sequence[int]) -> Gaussians:
        """Keep a subset of points: a bool mask (N,) or an integer index (M,), shared by the batch."""
        sel = torch.as_tensor(mask_or_index, device=self.device)
        if sel.ndim != 1:
            raise InvalidInput(f"select expects a 1-D mask or index, got shape {tuple(sel.shape)}")
        if sel.dtype == torch.bool:
            if sel.numel() != self.num_points:
                raise InvalidInput(f"mask has {sel.numel()} entries for {self.num_points} points")
            sel = sel.nonzero().squeeze(-1)
        elif sel.is_floating_point():
            raise InvalidInput(f"select expects a bool mask or integer index, got {sel.dtype}")
        dim = len(self.batch_shape)
        return self._map(lambda t: t.index_select(dim, sel.long()))

    def with_sh_degree(self, degree: int) -> Gaussians:
        """Pad the higher SH bands with zeros or truncate them to reach ``degree``."""
        if degree < 0:
            raise InvalidInput(f"sh degree must be >= 0, got {degree}")
        k_new, k_old = num_sh_bases(degree), self.sh.shape[-2]
        if k_new == k_old:
            return self
        if k_new < k_old:
            sh = self.sh[..., :k_new, :]
        else:
            pad = self.sh.new_zeros(*self.sh.shape[:-2], k_new - k_old, 3)
            sh = torch.cat([self.sh, pad], dim=-2)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    @staticmethod
    def _common_degree(items: Sequence[Gaussians], op: str) -> list[Gaussians]:
        if len(items) == 0:
            raise InvalidInput(f"Gaussians.{op} needs at least one Gaussians")
        degree = max(g.sh_degree for g in items)
        return [g.with_sh_degree(degree) for g in items]

    @staticmethod
    def cat(items: Sequence[Gaussians]) -> Gaussians:
        """Concatenate along the points dim; batch shapes must match; SH is padded to the max degree."""
        items = Gaussians._common_degree(items, "cat")
        shapes = {tuple(g.batch_shape) for g in items}
        if len(shapes) != 1:
            raise InvalidInput(f"Gaussians.cat needs equal batch shapes, got {sorted(shapes)}")
        dim = len(items[0].batch_shape)
        return Gaussians(**{n: torch.cat([getattr(g, n) for g in items], dim=dim) for n in _FIELDS})

    @staticmethod
    def stack(items: Sequence[Gaussians]) -> Gaussians:
        """Stack into a new leading batch dim; shapes must match; SH is padded to the max degree."""
        items = Gaussians._common_degree(items, "stack")
        shapes = {(tuple(g.batch_shape), g.num_points) for g in items}
        if len(shapes) != 1:
            raise InvalidInput(f"Gaussians.stack needs equal (batch shape, N), got {sorted(shapes)}")
        return Gaussians(**{n: torch.stack([getattr(g, n) for g in items], dim=0) for n in _FIELDS})

    # ------------------------------------------------------------------ serialization
    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Plain dict of contiguous tensors (safetensors-ready), keys ``prefix + field``."""
        return {prefix + n: getattr(self, n).contiguous() for n in _FIELDS}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> Gaussians:
        """Inverse of :meth:`state_dict`; raises :class:`CheckpointError` on missing keys."""
        missing = [prefix + n for n in _FIELDS if prefix + n not in state]
        if missing:
            raise CheckpointError(
                f"Gaussians state is missing {missing}", hint="was this file written by Gaussians.state_dict?"
            )
        return cls(**{n: state[prefix + n] for n in _FIELDS})


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Gaussians))
"""Field names in declaration order (also the state_dict keys)."""
