"""Few-to-many sampling: per identity, K source images (1..Kmax) build the avatar and M other frames
(other expressions, poses, views) are the targets it must reproduce.

Works over any *identity source*: an object with ``kind``, ``identities``, ``identity(id) ->
IdentityRecord`` and ``load_view(id, ViewRecord) -> (rgb float32 (H,W,3), mask (H,W) | None)``
(``FolderDataset`` and the dataset adapters implement it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InvalidInput
from .folder import CameraRecord, FrameRecord, IdentityRecord, ViewRecord


class IdentitySource(Protocol):
    kind: str
    identities: list[str]

    def identity(self, identity: str) -> IdentityRecord: ...

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]: ...


class ConcatSource:
    """Several identity sources as one; identities are addressed as ``"<source index>:<id>"``."""

    def __init__(self, sources: list[IdentitySource]):
        kinds = {s.kind for s in sources}
        self.kind = kinds.pop() if len(kinds) == 1 else "mixed"
        self.sources = sources
        self.identities = [f"{i}:{ident}" for i, s in enumerate(sources) for ident in s.identities]

    def _split(self, identity: str) -> tuple[IdentitySource, str]:
        i, ident = identity.split(":", 1)
        return self.sources[int(i)], ident

    def identity(self, identity: str) -> IdentityRecord:
        src, ident = self._split(identity)
        return src.identity(ident)

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        src, ident = self._split(identity)
        return src.load_view(ident, view)


@dataclass
class SamplerConfig:
    """K sources drawn uniformly from 1..max_sources; M targets; images resized to ``size``.

    ``sources_same_frame``: on multi-view data, take the sources from one frame (a capture) and the
    targets from other frames and views (the paper's few-to-many); else any frames.
    """

    max_sources: int = 4
    targets: int = 2
    size: int = 128
    sources_same_frame: bool = False


def _resize(img: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Pad to a centred square (``fill``), keeping the aspect, then resize to ``size``."""
    h, w = img.shape[:2]
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        img = cv2.copyMakeBorder(img, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT,
                                 value=(fill,) * (img.shape[2] if img.ndim == 3 else 1))
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def normalized_focal(camera: CameraRecord) -> float:
    """fx in units of the side of the square the image becomes: :func:`_resize` pads a W×H image to
    max(W, H) before resizing, so the focal the network sees is ``fx / max(W, H)`` (not ``fx / W``,
    which is off by H/W on portrait images)."""
    return float(camera.K[0][0]) / max(int(camera.width), int(camera.height))


def sample_few_to_many(record: IdentityRecord, load: Callable[[ViewRecord], tuple[np.ndarray, np.ndarray | None]],
                       rng: np.random.Generator, cfg: SamplerConfig) -> dict[str, torch.Tensor]:
    """One training sample of an identity.

    Returns source (Kmax,3,S,S), source_mask (Kmax,) bool, target (M,3,S,S), target_alpha (M,S,S)
    (ones when the data has no masks), target_has_alpha (M,) bool; when the data is calibrated
    target_viewmat (M,4,4) and target_focal (M,) (:func:`normalized_focal`); and when the record has FLAME
    parameters for the targets: target_expression (M,E), target_pose (M,5,3).
    """
    views: list[tuple[FrameRecord, ViewRecord]] = [(f, v) for f in record.frames for v in f.views]
    if len(views) < 2:
        raise InvalidInput(f"identity {record.id} has {len(views)} image(s); few-to-many needs at least 2")
    k = int(rng.integers(1, cfg.max_sources + 1))
    k = min(k, len(views) - 1)
    if cfg.sources_same_frame and len(record.frames) > 1:
        frame = record.frames[int(rng.integers(len(record.frames)))]
        pool = [i for i, (f, _) in enumerate(views) if f is frame]
        src_idx = list(rng.permutation(pool)[:k])
    else:
        src_idx = list(rng.permutation(len(views))[:k])
    rest = [i for i in range(len(views)) if i not in set(src_idx)]
    tgt_idx = list(rng.choice(rest, size=cfg.targets, replace=len(rest) < cfg.targets))
    s = cfg.size

    def image(i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        rgb, mask = load(views[i][1])
        rgb = torch.from_numpy(np.ascontiguousarray(_resize(rgb, s, 1.0))).permute(2, 0, 1)
        alpha = torch.from_numpy(_resize(mask, s, 0.0)) if mask is not None else torch.ones(s, s)
        return rgb.float(), alpha.float(), mask is not None

    source = torch.zeros(cfg.max_sources, 3, s, s)
    source_mask = torch.zeros(cfg.max_sources, dtype=torch.bool)
    for j, i in enumerate(src_idx):
        source[j] = image(i)[0]
        source_mask[j] = True
    tgts = [image(i) for i in tgt_idx]
    out = {"source": source, "source_mask": source_mask, "target": torch.stack([t[0] for t in tgts]),
           "target_alpha": torch.stack([t[1] for t in tgts]),
           "target_has_alpha": torch.tensor([t[2] for t in tgts])}
    frames = [views[i][0] for i in tgt_idx]
    cams = [views[i][1].camera for i in tgt_idx]
    if all(c is not None for c in cams):  # calibrated: world-to-camera and focal / side of the padded square
        out["target_viewmat"] = torch.tensor([c.viewmat for c in cams], dtype=torch.float32)
        out["target_focal"] = torch.tensor([normalized_focal(c) for c in cams], dtype=torch.float32)
    if all(f.expression is not None and f.pose is not None for f in frames):
        out["target_expression"] = torch.tensor([f.expression for f in frames], dtype=torch.float32)
        out["target_pose"] = torch.tensor([f.pose for f in frames], dtype=torch.float32)
    return out


class FewToManyDataset(Dataset):
    """Map-style dataset indexed by *sample keys*: key k draws an identity and its few-to-many sample
    with an RNG seeded by (seed, k). A run that feeds keys step·G + rank·B + j (see
    ``train.trainer.StepBatches``) is deterministic across ranks and workers and resumes from a step."""

    def __init__(self, source: IdentitySource, cfg: SamplerConfig, seed: int = 0):
        if not source.identities:
            raise InvalidInput("the dataset has no identities")
        self.source, self.cfg, self.seed = source, cfg, seed

    def __len__(self) -> int:
        return len(self.source.identities)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(key)])
        ident = self.source.identities[int(rng.integers(len(self.source.identities)))]
        record = self.source.identity(ident)
        return sample_few_to_many(record, lambda v: self.source.load_view(ident, v), rng, self.cfg)
