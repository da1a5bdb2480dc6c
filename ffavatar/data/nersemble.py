"""NeRSemble multi-view captures read in place as an *identity source* (see ``sampler.py``).

Supported on-disk layouts (``ROOT`` is what you pass; ``<p>`` is a numeric participant folder such
as ``018``; ``<S>`` a sequence such as ``EMO-1-shout+laugh``; ``<serial>`` a camera serial):

1. Per-timestep folders (NeRSemble v1 release / processed layout)::

       ROOT/<p>/sequences/<S>/timesteps/frame_<t:05d>/images-<N>x/cam_<serial>.jpg|png
       ROOT/<p>/sequences/<S>/timesteps/frame_<t:05d>/alpha_map/cam_<serial>.png       (optional)

   also without the ``timesteps/`` level and with the ``-73fps`` folder suffix of the original
   ``nersemble`` repository (``frame_<t>/images-2x-73fps``, ``alpha_map-73fps``).
2. Flat per-sequence folders (VHAP's preprocessing of v1 or of the v2 videos)::

       ROOT/<p>/[sequences/]<S>/images[_<N>]/cam_<serial>_<t>.jpg|png
       ROOT/<p>/[sequences/]<S>/alpha_maps/cam_<serial>_<t>.png|jpg                    (optional)

   (``images`` when ``scale=1``, ``images_<N>`` otherwise.)

Calibration, the first of::

    ROOT/camera_params/<p>/<S>/camera_params.json
    ROOT/camera_params/<p>/camera_params.json
    ROOT/<p>/calibration/camera_params.json
    ROOT/<p>/camera_params.json

holding ``{"intrinsics": 3x3 (shared) or {serial: 3x3}, "world_2_cam": {serial: 4x4}}`` and
optionally ``"width"``/``"height"`` of the calibrated images. ``world_2_cam`` is OpenCV
world-to-camera and becomes our ``viewmat`` unchanged: **the world frame is NeRSemble's calibration
frame as given** (not FLAME's: the head is neither at the origin nor +Y up; units as in the file,
metres in the releases). ``intrinsics`` are for the full-resolution images (``calib_size``, default
2200×3208, W×H, unless the file says) and are scaled per axis to each camera's actual image size;
the principal point is taken as given (continuous pixel coordinates). Lens distortion and NeRSemble's
colour correction are not applied. The v2 raw videos (``images/cam_<serial>.mp4``) are not read:
extract frames first (e.g. with VHAP) into layout 2.

Identity = participant (frames = all kept timesteps of all its sequences, in name order), or one
identity per (participant, sequence) with ``per_sequence=True`` (id ``<p>_<S>``, sanitised); views =
cameras (``view`` = index of the serial in the sorted calibration serials); masks = alpha maps.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import InvalidInput, NotFound
from ..images import decode_image, image_dimensions, load_image, to_float
from .folder import CameraRecord, FrameRecord, IdentityRecord, ViewRecord, check_id
from .video import sanitize_id

log = logging.getLogger(__name__)

DEFAULT_CALIB_SIZE = (2200, 3208)
"""(width, height) of full-resolution NeRSemble images, which the calibrated intrinsics refer to."""
NOT_SEQUENCES = frozenset({"BACKGROUND", "CALIB", "CALIB_COLOR", "calibration", "annotations",
                           "distinctive_frames", "camera_params", "color_correction"})
_FRAME = re.compile(r"^frame_(\d+)$")
_CAM = re.compile(r"^cam_([A-Za-z0-9]+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_CAM_T = re.compile(r"^cam_([A-Za-z0-9]+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_PARTICIPANT = re.compile(r"^\d+$")


def safe_relpath(rel: str) -> PurePosixPath:
    """A relative POSIX path with no ``..``, no root and no backslashes (refused otherwise)."""
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or p.is_absolute() or any(part in ("..", "") for part in p.parts):
        raise InvalidInput(f"unsafe path {rel!r} in a dataset record")
    return p


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 (h, w) mask resized to (height, width) (area when shrinking, linear otherwise)."""
    if mask.shape == (height, width):
        return mask
    interp = cv2.INTER_AREA if mask.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(mask, (width, height), interpolation=interp)


def scaled_intrinsics(K: np.ndarray, calib_size: tuple[int, int], image_size: tuple[int, int],
                      where: str = "") -> np.ndarray:
    """K (3,3) calibrated at ``calib_size`` (W, H) → K for ``image_size`` (W, H): rows 0/1 scaled by
    W/W_cal and H/H_cal. Refuses a scale whose aspect differs by more than 2% (wrong calib size)."""
    sx, sy = image_size[0] / calib_size[0], image_size[1] / calib_size[1]
    if abs(sx / sy - 1.0) > 0.02:
        raise InvalidInput(f"{where}: images are {image_size[0]}x{image_size[1]} but the calibration is for "
                           f"{calib_size[0]}x{calib_size[1]} (different aspect)",
                           hint="pass the calibrated image size as calib_size=(width, height)")
    out = np.array(K, dtype=np.float64)
    out[0] *= sx
    out[1] *= sy
    return out


def _matrix(value: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} is not a numeric matrix: {e}") from None
    if m.shape == (3, 4) and shape == (4, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != shape or not np.isfinite(m).all():
        raise InvalidInput(f"{what} must be a finite {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    return m


@dataclass
class NeRSembleCalibration:
    """Per-serial full-resolution K (3,3), world-to-camera (4,4) and the calibrated size (W, H)."""

    K: dict[str, np.ndarray]
    world_2_cam: dict[str, np.ndarray]
    size: tuple[int, int]

    @classmethod
    def load(cls, path: Path, default_size: tuple[int, int]) -> NeRSembleCalibration:
        try:
            doc = json.loads(path.read_text())
            w2c_doc, intr = doc["world_2_cam"], doc["intrinsics"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidInput(f"{path}: not a NeRSemble camera_params.json ({type(e).__name__}: {e})") from None
        if not isinstance(w2c_doc, dict) or not w2c_doc:
            raise InvalidInput(f"{path}: world_2_cam must map camera serials to 4x4 matrices")
        w2c = {str(k).removeprefix("cam_"): _matrix(v, (4, 4), f"{path}: world_2_cam[{k}]") for k, v in w2c_doc.items()}
        if isinstance(intr, dict):
            Ks = {str(k).removeprefix("cam_"): _matrix(v, (3, 3), f"{path}: intrinsics[{k}]") for k, v in intr.items()}
            missing = sorted(set(w2c) - set(Ks))
            if missing:
                raise InvalidInput(f"{path}: no intrinsics for cameras {missing}")
        else:
            shared = _matrix(intr, (3, 3), f"{path}: intrinsics")
            Ks = {s: shared for s in w2c}
        size = (int(doc.get("width", default_size[0])), int(doc.get("height", default_size[1])))
        return cls(K=Ks, world_2_cam=w2c, size=size)


@dataclass
class _Sequence:
    participant: str
    name: str
    path: Path


class NeRSembleSource:
    """Identity source over a NeRSemble tree (layouts in the module docstring).

    Args:
        root: the dataset folder.
        per_sequence: one identity per (participant, sequence) instead of per participant.
        participants, sequences, cameras: keep only these (participant ids as "018" or 18; sequence
            names; camera serials). None keeps all.
        scale: image downscale folder to read (``images-2x`` / ``images_2`` for 2; ``images`` for 1).
        every: keep every ``every``-th timestep of each sequence.
        max_frames: at most this many frames per identity (evenly spaced).
        calib_size: (W, H) the intrinsics refer to when camera_params.json does not say.
        masks: read alpha maps when present.
    """

    kind = "multiview"

    def __init__(self, root: str | Path, *, per_sequence: bool = False, participants: Sequence[str | int] | None = None,
                 sequences: Sequence[str] | None = None, cameras: Sequence[str] | None = None, scale: int = 2,
                 every: int = 1, max_frames: int | None = None,
                 calib_size: tuple[int, int] = DEFAULT_CALIB_SIZE, masks: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"NeRSemble folder not found: {self.root}")
        if int(scale) < 1 or int(every) < 1 or (max_frames is not None and int(max_frames) < 1):
            raise InvalidInput("NeRSemble: need scale >= 1, every >= 1 and max_frames >= 1 (or None)")
        self.scale, self.every, self.max_frames = int(scale), int(every), max_frames
        self.calib_size = (int(calib_size[0]), int(calib_size[1]))
        self.masks = bool(masks)
        self.cameras = None if cameras is None else {str(c).removeprefix("cam_") for c in cameras}
        wanted_p = None if participants is None else {int(p) for p in participants}
        wanted_s = None if sequences is None else set(sequences)
        self._groups: dict[str, list[_Sequence]] = {}
        for pdir in sorted(d for d in self.root.iterdir() if d.is_dir() and _PARTICIPANT.match(d.name)):
            if wanted_p is not None and int(pdir.name) not in wanted_p:
                continue
            seqs = [s for s in self._sequences(pdir) if wanted_s is None or s.name in wanted_s]
            if not seqs:
                continue
            if per_sequence:
                for s in seqs:
                    self._add_group(sanitize_id(f"{pdir.name}_{s.name}"), [s])
            else:
                self._add_group(check_id(pdir.name), seqs)
        if not self._groups:
            raise NotFound(f"no NeRSemble participants with sequences under {self.root}",
                           hint="expected ROOT/<participant>/sequences/<SEQUENCE>/... (see docs/datasets.md)")
        self.identities: list[str] = list(self._groups)
        self._records: dict[str, IdentityRecord] = {}
        self._calib: dict[Path, NeRSembleCalibration] = {}

    def _add_group(self, ident: str, seqs: list[_Sequence]) -> None:
        if ident in self._groups:
            raise InvalidInput(f"two NeRSemble sequences map to the identity id {ident!r}")
        self._groups[ident] = seqs

    @staticmethod
    def _sequences(pdir: Path) -> list[_Sequence]:
        base = pdir / "sequences" if (pdir / "sequences").is_dir() else pdir
        return [_Sequence(pdir.name, d.name, d) for d in sorted(base.iterdir())
                if d.is_dir() and d.name not in NOT_SEQUENCES]

    # ------------------------------------------------------------------ calibration
    def calibration(self, participant: str, sequence: str) -> NeRSembleCalibration:
        """The camera_params.json that applies to one sequence (first match of the documented paths)."""
        r = self.root
        for path in (r / "camera_params" / participant / sequence / "camera_params.json",
                     r / "camera_params" / participant / "camera_params.json",
                     r / participant / "calibration" / "camera_params.json",
                     r / participant / "camera_params.json"):
            if path.is_file():
                if path not in self._calib:
                    self._calib[path] = NeRSembleCalibration.load(path, self.calib_size)
                return self._calib[path]
        raise NotFound(f"no camera_params.json for participant {participant} sequence {sequence} under {r}",
                       hint="expected ROOT/camera_params/<p>[/<S>]/camera_params.json or "
                            "ROOT/<p>/calibration/camera_params.json")

    # ------------------------------------------------------------------ scanning
    def _image_dirs(self) -> tuple[list[str], list[str]]:
        n = self.scale
        per_t = [f"images-{n}x", f"images-{n}x-73fps"] + (["images", "images-73fps"] if n == 1 else [])
        flat = ["images"] if n == 1 else [f"images_{n}"]
        return per_t, flat

    def _scan(self, seq: _Sequence) -> list[dict[str, tuple[str, str | None]]]:
        """Kept timesteps of a sequence: per timestep {serial: (image rel path, mask rel path | None)},
        paths relative to the participant folder."""
        pdir = self.root / seq.participant
        per_t_dirs, flat_dirs = self._image_dirs()
        tdir = seq.path / "timesteps" if (seq.path / "timesteps").is_dir() else seq.path
        frames = sorted(((int(m.group(1)), d) for d in tdir.iterdir() if d.is_dir() and (m := _FRAME.match(d.name))),
                        key=lambda x: x[0])
        steps: list[dict[str, tuple[str, str | None]]] = []
        if frames:
            for _, fdir in frames[::self.every]:
                img_dir = next((fdir / n for n in per_t_dirs if (fdir / n).is_dir()), None)
                if img_dir is None:
                    continue
                alpha_dir = next((fdir / n for n in ("alpha_map", "alpha_map-73fps", "alpha_maps")
                                  if (fdir / n).is_dir()), None) if self.masks else None
                alphas = {}
                if alpha_dir is not None:
                    alphas = {m.group(1): f.name for f in alpha_dir.iterdir() if (m := _CAM.match(f.name))}
                views = {}
                for f in sorted(img_dir.iterdir()):
                    m = _CAM.match(f.name)
                    if m and (self.cameras is None or m.group(1) in self.cameras):
                        s = m.group(1)
                        mask = (alpha_dir / alphas[s]).relative_to(pdir).as_posix() if s in alphas else None
                        views[s] = (f.relative_to(pdir).as_posix(), mask)
                if views:
                    steps.append(views)
            return steps
        img_dir = next((seq.path / n for n in flat_dirs if (seq.path / n).is_dir()), None)
        if img_dir is None:
            log.warning("NeRSemble %s/%s: no frame_* folders and no %s folder; skipped", seq.participant, seq.name,
                        " or ".join(flat_dirs))
            return []
        alpha_dir = seq.path / "alpha_maps" if self.masks and (seq.path / "alpha_maps").is_dir() else None
        alphas = {}
        if alpha_dir is not None:
            alphas = {(m.group(1), int(m.group(2))): f.name for f in alpha_dir.iterdir() if (m := _CAM_T.match(f.name))}
        by_t: dict[int, dict[str, tuple[str, str | None]]] = {}
        for f in img_dir.iterdir():
            m = _CAM_T.match(f.name)
            if m and (self.cameras is None or m.group(1) in self.cameras):
                key = (m.group(1), int(m.group(2)))
                mask = (alpha_dir / alphas[key]).relative_to(pdir).as_posix() if key in alphas else None
                by_t.setdefault(key[1], {})[key[0]] = (f.relative_to(pdir).as_posix(), mask)
        return [dict(sorted(by_t[t].items())) for t in sorted(by_t)[::self.every]]

    def _camera(self, seq: _Sequence, calib: NeRSembleCalibration, serial: str, image_rel: str,
                cache: dict[tuple[str, str], CameraRecord]) -> CameraRecord:
        key = (seq.name, serial)
        if key not in cache:
            path = self.root / seq.participant / image_rel
            with open(path, "rb") as fh:
                dims = image_dimensions(fh.read(65536))
            if dims is None:
                h, w = decode_image(path.read_bytes()).shape[:2]
                dims = (w, h)
            K = scaled_intrinsics(calib.K[serial], calib.size, dims, where=f"NeRSemble {seq.participant}/{seq.name} "
                                                                          f"cam_{serial}")
            cache[key] = CameraRecord(K=K.tolist(), viewmat=calib.world_2_cam[serial].tolist(), width=dims[0],
                                      height=dims[1])
        return cache[key]

    # ------------------------------------------------------------------ identity source
    def identity(self, identity: str) -> IdentityRecord:
        """Frames (timesteps) × views (cameras) of one identity, cameras in OpenCV K / viewmat."""
        if identity not in self._groups:
            raise NotFound(f"no NeRSemble identity {identity!r}")
        if identity in self._records:
            return self._records[identity]
        frames: list[FrameRecord] = []
        cams: dict[tuple[str, str], CameraRecord] = {}
        for seq in self._groups[identity]:
            steps = self._scan(seq)
            if not steps:
                continue
            calib = self.calibration(seq.participant, seq.name)
            order = {s: i for i, s in enumerate(sorted(calib.world_2_cam))}
            for views in steps:
                vr = [ViewRecord(view=order[s], image=img, mask=mask,
                                 camera=self._camera(seq, calib, s, img, cams))
                      for s, (img, mask) in sorted(views.items()) if s in order]
                skipped = sorted(set(views) - set(order))
                if skipped:
                    log.warning("NeRSemble %s/%s: cameras %s have no calibration; ignored", seq.participant,
                                seq.name, skipped)
                if vr:
                    frames.append(FrameRecord(index=len(frames), views=vr))
        if not frames:
            per_t, flat = self._image_dirs()
            raise InvalidInput(f"NeRSemble identity {identity!r} has no images",
                               hint=f"expected frame_*/{{{','.join(per_t)}}}/cam_<serial>.jpg or "
                                    f"{'/'.join(flat)}/cam_<serial>_<t>.jpg (is scale={self.scale} right?)")
        if self.max_frames is not None and len(frames) > self.max_frames:
            keep = np.unique(np.linspace(0, len(frames) - 1, int(self.max_frames)).round().astype(int))
            frames = [FrameRecord(index=k, views=frames[i].views) for k, i in enumerate(keep)]
        record = IdentityRecord(id=identity, frames=frames)
        self._records[identity] = record
        return record

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB float32 (H,W,3) in [0,1] and the alpha map float32 (H,W) at the image size, or None."""
        if identity not in self._groups:
            raise NotFound(f"no NeRSemble identity {identity!r}")
        pdir = self.root / self._groups[identity][0].participant
        rgb = to_float(load_image(pdir / safe_relpath(view.image)))
        mask = None
        if view.mask:
            mask = to_float(load_image(pdir / safe_relpath(view.mask)))[..., 0]
            mask = resize_mask(mask, rgb.shape[1], rgb.shape[0])
        return rgb, mask


__all__ = ["DEFAULT_CALIB_SIZE", "NeRSembleCalibration", "NeRSembleSource", "resize_mask", "safe_relpath",
           "scaled_intrinsics"]
