"""The generic dataset folder format (documented in docs/datasets.md): read and write.

```
ROOT/dataset.json                     {"format": "ffavatar-dataset", "version": 1, "kind": ..., "identities": [...]}
ROOT/<identity>/identity.json         frames → views → image, mask, camera; optional FLAME parameters
ROOT/<identity>/images/<frame>_<view>.png
ROOT/<identity>/masks/<frame>_<view>.png
```
Monocular identities have one view per frame and may omit cameras and FLAME parameters.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, NotFound
from ..images import load_image, save_image, to_float
from ..render.camera import Camera

FORMAT = "ffavatar-dataset"
VERSION = 1
KINDS = ("multiview", "monocular")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REL = re.compile(r"^(images|masks)/[A-Za-z0-9_.-]+\.(png|jpg|jpeg)$")


def check_id(identity: str) -> str:
    """An identity id safe to use as a folder name (letters, digits, ``_.-``; no paths)."""
    if not isinstance(identity, str) or not _ID.match(identity) or identity in (".", ".."):
        raise InvalidInput(f"invalid identity id {identity!r}: use letters, digits, '_', '.', '-'")
    return identity


@dataclass
class CameraRecord:
    """A pinhole camera: K (3x3, pixels), viewmat (4x4 world-to-camera, OpenCV), image size."""

    K: list[list[float]]
    viewmat: list[list[float]]
    width: int
    height: int

    @classmethod
    def from_camera(cls, cam: Camera) -> CameraRecord:
        return cls(K=cam.K[0].double().tolist(), viewmat=cam.viewmat[0].double().tolist(), width=cam.width,
                   height=cam.height)

    def to_camera(self, dtype: torch.dtype = torch.float32) -> Camera:
        return Camera(K=torch.tensor(self.K, dtype=dtype), viewmat=torch.tensor(self.viewmat, dtype=dtype),
                      width=self.width, height=self.height)


@dataclass
class ViewRecord:
    view: int
    image: str
    mask: str | None = None
    camera: CameraRecord | None = None


@dataclass
class FrameRecord:
    """One time step: its views and, when known, FLAME expression (E,) and pose (5,3)."""

    index: int
    views: list[ViewRecord]
    expression: list[float] | None = None
    pose: list[list[float]] | None = None


@dataclass
class IdentityRecord:
    id: str
    frames: list[FrameRecord] = field(default_factory=list)
    shape: list[float] | None = None
    appearance_seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentityRecord:
        try:
            frames = [FrameRecord(index=int(f["index"]), expression=f.get("expression"), pose=f.get("pose"),
                                  views=[ViewRecord(view=int(v["view"]), image=v["image"], mask=v.get("mask"),
                                                    camera=CameraRecord(**v["camera"]) if v.get("camera") else None)
                                         for v in f["views"]])
                      for f in d["frames"]]
            return cls(id=check_id(d["id"]), frames=frames, shape=d.get("shape"), appearance_seed=d.get("appearance_seed"))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInput(f"malformed identity.json: {type(e).__name__}: {e}") from e


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_identity(root: str | Path, record: IdentityRecord, images: list[list[tuple[np.ndarray, np.ndarray | None]]]) -> Path:
    """Write one identity's images/masks (``images[frame][view] = (rgb uint8, mask uint8|None)``) and JSON."""
    folder = Path(root) / check_id(record.id)
    for frame, frame_images in zip(record.frames, images):
        for view, (rgb, mask) in zip(frame.views, frame_images):
            save_image(folder / view.image, rgb)
            if mask is not None and view.mask:
                save_image(folder / view.mask, mask)
    _write_json(folder / "identity.json", asdict(record))
    return folder


def write_dataset_index(root: str | Path, kind: str, identities: list[str], head_model_id: str | None = None,
                        n_shape: int | None = None, n_expr: int | None = None, extra: dict | None = None) -> Path:
    """Write ``dataset.json`` listing the identities."""
    if kind not in KINDS:
        raise InvalidInput(f"dataset kind must be one of {KINDS}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, "kind": kind, "identities": [check_id(i) for i in identities],
           "head_model_id": head_model_id, "n_shape": n_shape, "n_expr": n_expr, **(extra or {})}
    _write_json(root / "dataset.json", doc)
    return root / "dataset.json"


class FolderDataset:
    """Reads a dataset folder: the index, identities' records, and their images as float arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index = self.root / "dataset.json"
        if not index.is_file():
            raise NotFound(f"no dataset.json in {self.root}", hint="see docs/datasets.md for the folder format")
        try:
            self.info = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{index} is not valid JSON: {e}") from e
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise InvalidInput(f"{index}: not an {FORMAT} v{VERSION} index")
        self.kind: str = self.info["kind"]
        self.identities: list[str] = [check_id(i) for i in self.info["identities"]]
        self._records: dict[str, IdentityRecord] = {}

    def __len__(self) -> int:
        return len(self.identities)

    def identity(self, identity: str) -> IdentityRecord:
        """The record of one identity (cached)."""
        check_id(identity)
        if identity not in self._records:
            path = self.root / identity / "identity.json"
            if not path.is_file():
                raise NotFound(f"identity {identity!r} has no identity.json under {self.root}")
            self._records[identity] = IdentityRecord.from_dict(json.loads(path.read_text()))
        return self._records[identity]

    def _file(self, identity: str, rel: str) -> Path:
        if not _REL.match(rel):
            raise InvalidInput(f"image path {rel!r} is not of the form images|masks/<name>.png")
        return self.root / check_id(identity) / rel

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB float32 (H,W,3) in [0,1] and mask float32 (H,W) or None."""
        rgb = to_float(load_image(self._file(identity, view.image)))
        mask = None
        if view.mask:
            mask = to_float(load_image(self._file(identity, view.mask)))[..., 0]
        return rgb, mask
