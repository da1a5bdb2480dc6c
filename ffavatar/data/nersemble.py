"""NeRSemble multi-view captures read in place as an *identity source* (see ``sampler.py``).

Supported releases and their layouts (``ROOT`` is what you pass; ``<p>`` a numeric participant folder
such as ``018``; ``<S>`` a sequence such as ``EMO-1-shout+laugh``; ``<serial>`` a camera serial):

1. **NeRSemble v1** (``nersemble`` repository, per-timestep frames)::

       ROOT/<p>/sequences/<S>/[timesteps/]frame_<t:05d>/images-<N>x[-73fps]/cam_<serial>.jpg|png
       ROOT/<p>/sequences/<S>/[timesteps/]frame_<t:05d>/alpha_map[-73fps]/cam_<serial>.png      (optional)
       ROOT/<p>/camera_params.json    (or ROOT/camera_params/<p>/[<S>/]camera_params.json)

2. **NeRSemble v2** as downloaded (``nersemble-data``: videos only)::

       ROOT/<p>/calibration/camera_params.json
       ROOT/<p>/sequences/<S>/images/cam_<serial>.mp4
       ROOT/<p>/sequences/<S>/alpha_maps/cam_<serial>.mp4                                      (optional)

3. **NeRSemble photorealistic-avatar benchmark** (``nersemble-benchmark``): the same video layout one
   level down, per task (``ROOT`` may be the benchmark folder or one task folder)::

       ROOT/{nvs,mono_flame_avatar}/<p>/calibration/camera_params.json      (intrinsics per camera)
       ROOT/{nvs,mono_flame_avatar}/<p>/sequences/<S>/images/cam_<serial>.mp4
       ROOT/{nvs,mono_flame_avatar}/<p>/sequences/<S>/alpha_maps/cam_<serial>.mp4
       ROOT/mono_flame_avatar/<p>/sequences/<S>/tracking/flame2023_tracking_v2.npz

4. Frames extracted from the videos (``ffavatar data extract``, or VHAP's preprocessing)::

       ROOT/<p>/[sequences/]<S>/images[_<N>]/cam_<serial>_<t:05d>.jpg|png
       ROOT/<p>/[sequences/]<S>/alpha_maps/cam_<serial>_<t:05d>.png|jpg                        (optional)

   (``images`` when ``scale=1``, ``images_<N>`` otherwise.) For a sequence, per-timestep frames win,
   then extracted frames at the requested ``scale``, then the videos (decoded on the fly, at their size).

Calibration ``{"intrinsics": 3x3 (shared) or {serial: 3x3}, "world_2_cam": {serial: 4x4}}``, optional
``"width"``/``"height"``; the first of ``ROOT/camera_params/<p>/<S>/``, ``ROOT/camera_params/<p>/``,
``<p>/calibration/`` and ``<p>/``. ``world_2_cam`` is OpenCV world-to-camera and becomes our
``viewmat`` unchanged (**the world is NeRSemble's calibration frame**, metres), unless FLAME tracking
is read (``tracking=True``): then each frame's cameras are expressed in FLAME's frame (see
``nersemble_tracking``).

Intrinsics are right at every delivered resolution. The resolution a ``K`` refers to is the file's
``width``/``height`` when it states them; otherwise it is read from ``K`` itself: the principal point
sits near the centre of the images it was calibrated for, so ``K`` is taken as given when
``(cx, cy)`` is near the centre of the delivered image (the benchmark's per-camera intrinsics at
1100×1604 or 512×512) and as full-resolution (``calib_size``, 2200×3208) when it is near the centre of
that (v1 and v2: one shared ``K`` for 2200×3208, e.g. cx = 1099.70, cy = 1603.50), then scaled per
axis. Neither fitting is an error. NeRSemble's ``K`` uses OpenCV's pixel convention (pixel centres at
integers: the released cy = 1603.50 is (3208 − 1) / 2, OpenCV's initial principal point); ours puts
pixel centres at +0.5, so 0.5 is added to cx and cy before scaling (``pixel_centers="integer"``; pass
``"continuous"`` for a K that already uses ours). Lens distortion and NeRSemble's colour correction
are not applied.

Identity = participant (frames = all kept timesteps of all its sequences, in name order), or one
identity per (participant, sequence) with ``per_sequence=True`` (id ``<p>_<S>``, sanitised); views =
cameras (``view`` = index of the serial in the sorted calibration serials); masks = alpha maps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import ImageDecodeError, InvalidInput, NotFound
from ..images import decode_image, image_dimensions, load_image, save_image, to_float
from .folder import CameraRecord, FrameRecord, IdentityRecord, ViewRecord, check_id
from .nersemble_tracking import FlameTracking, find_tracking
from .video import sanitize_id

log = logging.getLogger(__name__)

DEFAULT_CALIB_SIZE = (2200, 3208)
"""(width, height) of full-resolution NeRSemble images, which the v1/v2 intrinsics refer to."""
BENCHMARK_TASKS = ("nvs", "mono_flame_avatar")
"""Task folders of the nersemble-benchmark download."""
PIXEL_CENTERS = ("integer", "continuous")
NOT_SEQUENCES = frozenset({"BACKGROUND", "CALIB", "CALIB_COLOR", "calibration", "annotations",
                           "distinctive_frames", "camera_params", "color_correction"})
_FRAME = re.compile(r"^frame_(\d+)$")
_CAM = re.compile(r"^cam_([A-Za-z0-9]+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_CAM_T = re.compile(r"^cam_([A-Za-z0-9]+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_CAM_VIDEO = re.compile(r"^cam_([A-Za-z0-9]+)\.(mp4|mkv|mov|avi|webm)$", re.IGNORECASE)
_PARTICIPANT = re.compile(r"^\d+$")
_CENTER_TOLERANCE = 0.15  # principal point within 15% of the image size from its centre


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
    W/W_cal and H/H_cal (continuous pixel coordinates). Refuses a scale whose aspect differs by more
    than 2% (wrong calib size)."""
    sx, sy = image_size[0] / calib_size[0], image_size[1] / calib_size[1]
    if abs(sx / sy - 1.0) > 0.02:
        raise InvalidInput(f"{where}: images are {image_size[0]}x{image_size[1]} but the calibration is for "
                           f"{calib_size[0]}x{calib_size[1]} (different aspect)",
                           hint="pass the calibrated image size as calib_size=(width, height)")
    out = np.array(K, dtype=np.float64)
    out[0] *= sx
    out[1] *= sy
    return out


def _center_offset(K: np.ndarray, size: tuple[int, int]) -> float:
    """How far K's principal point is from the centre of a ``size`` (W, H) image, in image fractions."""
    return max(abs(K[0, 2] / size[0] - 0.5), abs(K[1, 2] / size[1] - 0.5))


def resolve_intrinsics(K: np.ndarray, image_size: tuple[int, int], *, declared: tuple[int, int] | None,
                       full_size: tuple[int, int] = DEFAULT_CALIB_SIZE, pixel_centers: str = "integer",
                       where: str = "") -> np.ndarray:
    """K (3, 3) of a NeRSemble calibration → K for the delivered ``image_size`` (W, H), in our pixel
    convention (centres at +0.5). See the module docstring for how the calibrated size is found.

    Raises:
        InvalidInput: the principal point is near the centre neither of the delivered image nor of
            the full-resolution one (pass ``calib_size``), or the aspects differ.
    """
    K = np.array(K, dtype=np.float64)
    if pixel_centers not in PIXEL_CENTERS:
        raise InvalidInput(f"pixel_centers must be one of {PIXEL_CENTERS}, got {pixel_centers!r}")
    if declared is not None:
        calib = declared
    else:
        fits = [(_center_offset(K, s), s) for s in (tuple(image_size), tuple(full_size))
                if abs((image_size[0] / s[0]) / (image_size[1] / s[1]) - 1.0) <= 0.02]
        if not fits or min(fits)[0] > _CENTER_TOLERANCE:
            raise InvalidInput(
                f"{where}: the principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) fits neither the delivered "
                f"{image_size[0]}x{image_size[1]} images nor the full-resolution {full_size[0]}x{full_size[1]} ones",
                hint="pass the size the intrinsics were calibrated for as calib_size=WxH")
        calib = min(fits)[1]
    if pixel_centers == "integer":
        K[0, 2] += 0.5
        K[1, 2] += 0.5
    return scaled_intrinsics(K, calib, image_size, where)


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
    """Per-serial K (3,3), world-to-camera (4,4) and the calibrated size (W, H) when the file states it."""

    K: dict[str, np.ndarray]
    world_2_cam: dict[str, np.ndarray]
    size: tuple[int, int] | None = None

    @classmethod
    def load(cls, path: Path) -> NeRSembleCalibration:
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
        size = (int(doc["width"]), int(doc["height"])) if "width" in doc and "height" in doc else None
        return cls(K=Ks, world_2_cam=w2c, size=size)


class VideoFrames:
    """Random access to frames of local videos (RGB uint8), keeping a few decoders open per process;
    reading frames in order decodes each frame once."""

    def __init__(self, max_open: int = 32):
        self.max_open = max_open
        self._open: OrderedDict[Path, list] = OrderedDict()  # path -> [capture, next frame index]
        self._pid = os.getpid()

    def _capture(self, path: Path) -> list:
        if self._pid != os.getpid():  # decoders are not shared with forked DataLoader workers
            self._open, self._pid = OrderedDict(), os.getpid()
        entry = self._open.pop(path, None)
        if entry is None:
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                raise ImageDecodeError(f"could not open the video {path} (unknown codec or corrupt)")
            entry = [cap, 0]
        self._open[path] = entry
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1][0].release()
        return entry

    def info(self, path: Path) -> tuple[int, int, int]:
        """(width, height, frame count) from the container (the count is decoded when it is unknown)."""
        cap = self._capture(path)[0]
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n <= 0:
            probe = cv2.VideoCapture(str(path))
            n = 0
            while probe.grab():
                n += 1
            probe.release()
        if w <= 0 or h <= 0 or n <= 0:
            raise ImageDecodeError(f"the video {path} has no decodable frames")
        return w, h, n

    def read(self, path: Path, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as RGB uint8 (H, W, 3)."""
        entry = self._capture(path)
        cap = entry[0]
        if entry[1] != index:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        if not ok:
            entry[1] = -1
            raise ImageDecodeError(f"the video {path} has no frame {index}")
        entry[1] = index + 1
        return np.ascontiguousarray(frame[..., ::-1])


_VIDEOS = VideoFrames()


@dataclass
class _Sequence:
    participant: str
    name: str
    path: Path
    pdir: Path


@dataclass
class _Step:
    """One timestep of a sequence: its frame index and {serial: (image ref, mask ref | None)}."""

    t: int
    views: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def participant_dirs(root: Path) -> list[Path]:
    """Participant folders of a NeRSemble tree: ``ROOT/<p>`` and the benchmark's ``ROOT/<task>/<p>``."""
    out = [d for d in sorted(root.iterdir()) if d.is_dir() and _PARTICIPANT.match(d.name)]
    for task in BENCHMARK_TASKS:
        if (root / task).is_dir():
            out += [d for d in sorted((root / task).iterdir()) if d.is_dir() and _PARTICIPANT.match(d.name)]
    return out


def sequences_of(pdir: Path) -> list[_Sequence]:
    base = pdir / "sequences" if (pdir / "sequences").is_dir() else pdir
    return [_Sequence(pdir.name, d.name, d, pdir) for d in sorted(base.iterdir())
            if d.is_dir() and d.name not in NOT_SEQUENCES]


def root_joints(flame: Any, shape: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """(T, 3) FLAME root joint ``J0 = J_regressor[0] @ (v_template + shapedirs @ [shape, expression])`` of a
    :class:`~ffavatar.flame.FlameModel` for one shape (S,) and T expressions (T, E), without skinning
    (the root joint does not move under the pose)."""
    jr0 = flame.J_regressor[0].detach().double().cpu().numpy()
    base = jr0 @ flame.v_template.detach().double().cpu().numpy()
    dirs = np.einsum("v,vck->ck", jr0, flame.shapedirs.detach().double().cpu().numpy())  # (3, n_shape + n_expr)
    coeffs = np.zeros((len(expression), flame.n_shape + flame.n_expr))
    coeffs[:, :len(shape)] = shape
    coeffs[:, flame.n_shape:flame.n_shape + expression.shape[1]] = expression
    return base + coeffs @ dirs.T


class NeRSembleSource:
    """Identity source over a NeRSemble tree (releases and layouts in the module docstring).

    Args:
        root: the dataset folder (or the benchmark folder, or one of its task folders).
        per_sequence: one identity per (participant, sequence) instead of per participant.
        participants, sequences, cameras: keep only these (participant ids as "018" or 18; sequence
            names; camera serials). None keeps all.
        scale: extracted-frame folder to read (``images-2x`` / ``images_2`` for 2; ``images`` for 1);
            videos are decoded at their own size whatever ``scale`` is.
        every: keep every ``every``-th timestep of each sequence.
        max_frames: at most this many frames per identity (evenly spaced).
        calib_size: (W, H) of full-resolution images, for intrinsics whose file does not say.
        masks: read alpha maps when present.
        pixel_centers: the calibration's pixel convention (``"integer"``: OpenCV's, NeRSemble's).
        tracking: read ``tracking/flame2023_tracking_v2.npz`` of each sequence (an error when one is
            missing): frames get FLAME ``expression`` and ``pose`` (root = the tracked head rotation),
            identities the tracked ``shape``, and cameras are expressed in FLAME's frame, exactly
            (needs ``flame``). Frames without a tracked row are left out (logged).
        flame: the FLAME 2023 model file the tracking was made with (else ``$FFAVATAR_FLAME``).
    """

    kind = "multiview"

    def __init__(self, root: str | Path, *, per_sequence: bool = False, participants: Sequence[str | int] | None = None,
                 sequences: Sequence[str] | None = None, cameras: Sequence[str] | None = None, scale: int = 2,
                 every: int = 1, max_frames: int | None = None,
                 calib_size: tuple[int, int] = DEFAULT_CALIB_SIZE, masks: bool = True,
                 pixel_centers: str = "integer", tracking: bool = False, flame: str | Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"NeRSemble folder not found: {self.root}")
        if int(scale) < 1 or int(every) < 1 or (max_frames is not None and int(max_frames) < 1):
            raise InvalidInput("NeRSemble: need scale >= 1, every >= 1 and max_frames >= 1 (or None)")
        if pixel_centers not in PIXEL_CENTERS:
            raise InvalidInput(f"NeRSemble: pixel_centers must be one of {PIXEL_CENTERS}")
        self.scale, self.every, self.max_frames = int(scale), int(every), max_frames
        self.calib_size = (int(calib_size[0]), int(calib_size[1]))
        self.masks, self.pixel_centers, self.tracking = bool(masks), pixel_centers, bool(tracking)
        self.flame_path: Path | None = None
        if self.tracking:
            from ..flame import resolve_flame_path

            self.flame_path = resolve_flame_path(flame)
            if self.flame_path is None:
                raise InvalidInput("NeRSemble: tracking=true needs the FLAME 2023 model the tracking was made "
                                   "with, to convert it exactly", hint="pass flame=PATH or set FFAVATAR_FLAME")
        self._flame: Any = None
        self.cameras = None if cameras is None else {str(c).removeprefix("cam_") for c in cameras}
        wanted_p = None if participants is None else {int(p) for p in participants}
        wanted_s = None if sequences is None else set(sequences)
        self._groups: dict[str, list[_Sequence]] = {}
        for pdir in participant_dirs(self.root):
            if wanted_p is not None and int(pdir.name) not in wanted_p:
                continue
            seqs = [s for s in sequences_of(pdir) if wanted_s is None or s.name in wanted_s]
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
            raise InvalidInput(f"two NeRSemble participants or sequences map to the identity id {ident!r}",
                               hint="open one benchmark task folder at a time, or use per_sequence=true")
        self._groups[ident] = seqs

    # ------------------------------------------------------------------ calibration
    def calibration(self, seq: _Sequence) -> NeRSembleCalibration:
        """The camera_params.json that applies to one sequence (first match of the documented paths)."""
        r, p = self.root, seq.participant
        for path in (r / "camera_params" / p / seq.name / "camera_params.json",
                     r / "camera_params" / p / "camera_params.json",
                     seq.pdir / "calibration" / "camera_params.json",
                     seq.pdir / "camera_params.json"):
            if path.is_file():
                if path not in self._calib:
                    self._calib[path] = NeRSembleCalibration.load(path)
                return self._calib[path]
        raise NotFound(f"no camera_params.json for participant {p} sequence {seq.name} under {r}",
                       hint="expected <p>/calibration/camera_params.json, <p>/camera_params.json or "
                            "ROOT/camera_params/<p>[/<S>]/camera_params.json")

    # ------------------------------------------------------------------ scanning
    def _image_dirs(self) -> tuple[list[str], list[str]]:
        n = self.scale
        per_t = [f"images-{n}x", f"images-{n}x-73fps"] + (["images", "images-73fps"] if n == 1 else [])
        flat = ["images"] if n == 1 else [f"images_{n}"]
        return per_t, flat

    def _wanted(self, serial: str) -> bool:
        return self.cameras is None or serial in self.cameras

    def _scan(self, seq: _Sequence) -> list[_Step]:
        """All timesteps of a sequence (before ``every``), paths relative to the participant folder;
        a video frame is ``<video path>#<frame index>``."""
        pdir = seq.pdir
        per_t_dirs, flat_dirs = self._image_dirs()
        tdir = seq.path / "timesteps" if (seq.path / "timesteps").is_dir() else seq.path
        frames = sorted((int(m.group(1)), d) for d in tdir.iterdir() if d.is_dir() and (m := _FRAME.match(d.name)))
        if frames:
            steps = []
            for t, fdir in frames:
                img_dir = next((fdir / n for n in per_t_dirs if (fdir / n).is_dir()), None)
                if img_dir is None:
                    continue
                alpha_dir = next((fdir / n for n in ("alpha_map", "alpha_map-73fps", "alpha_maps")
                                  if (fdir / n).is_dir()), None) if self.masks else None
                alphas = {m.group(1): f.name for f in alpha_dir.iterdir() if (m := _CAM.match(f.name))} \
                    if alpha_dir is not None else {}
                step = _Step(t)
                for f in sorted(img_dir.iterdir()):
                    m = _CAM.match(f.name)
                    if m and self._wanted(m.group(1)):
                        s = m.group(1)
                        mask = (alpha_dir / alphas[s]).relative_to(pdir).as_posix() if s in alphas else None
                        step.views[s] = (f.relative_to(pdir).as_posix(), mask)
                if step.views:
                    steps.append(step)
            return steps
        img_dir = next((seq.path / n for n in flat_dirs if (seq.path / n).is_dir()), None)
        by_t: dict[int, _Step] = {}
        if img_dir is not None:
            alpha_dir = seq.path / "alpha_maps" if self.masks and (seq.path / "alpha_maps").is_dir() else None
            alphas = {(m.group(1), int(m.group(2))): f.name for f in alpha_dir.iterdir()
                      if (m := _CAM_T.match(f.name))} if alpha_dir is not None else {}
            for f in img_dir.iterdir():
                m = _CAM_T.match(f.name)
                if m and self._wanted(m.group(1)):
                    key = (m.group(1), int(m.group(2)))
                    mask = (alpha_dir / alphas[key]).relative_to(pdir).as_posix() if key in alphas else None
                    by_t.setdefault(key[1], _Step(key[1])).views[key[0]] = (f.relative_to(pdir).as_posix(), mask)
        if by_t:
            return [_Step(t, dict(sorted(by_t[t].views.items()))) for t in sorted(by_t)]
        return self._scan_videos(seq)

    def _scan_videos(self, seq: _Sequence) -> list[_Step]:
        vdir = seq.path / "images"
        videos = {m.group(1): f for f in sorted(vdir.iterdir()) if (m := _CAM_VIDEO.match(f.name))} \
            if vdir.is_dir() else {}
        videos = {s: f for s, f in videos.items() if self._wanted(s)}
        if not videos:
            return []
        adir = seq.path / "alpha_maps"
        alphas = {m.group(1): f for f in adir.iterdir() if (m := _CAM_VIDEO.match(f.name))} \
            if self.masks and adir.is_dir() else {}
        counts = {s: _VIDEOS.info(f)[2] for s, f in videos.items()}
        n = min(counts.values())
        if max(counts.values()) != n:
            log.warning("NeRSemble %s/%s: the camera videos have %d..%d frames; the first %d are used",
                        seq.participant, seq.name, n, max(counts.values()), n)
        rel = {s: f.relative_to(seq.pdir).as_posix() for s, f in videos.items()}
        arel = {s: f.relative_to(seq.pdir).as_posix() for s, f in alphas.items()}
        return [_Step(t, {s: (f"{rel[s]}#{t}", f"{arel[s]}#{t}" if s in arel else None) for s in sorted(videos)})
                for t in range(n)]

    def _dims(self, seq: _Sequence, ref: str) -> tuple[int, int]:
        rel, _, t = ref.partition("#")
        path = seq.pdir / safe_relpath(rel)
        if t:
            w, h, _ = _VIDEOS.info(path)
            return w, h
        with open(path, "rb") as fh:
            dims = image_dimensions(fh.read(65536))
        if dims is None:
            h, w = decode_image(path.read_bytes()).shape[:2]
            dims = (w, h)
        return dims

    # ------------------------------------------------------------------ FLAME tracking
    def _flame_model(self) -> Any:
        if self._flame is None:
            from ..flame import FlameModel, load_head_model

            import torch

            self._flame = FlameModel(load_head_model(self.flame_path), dtype=torch.float64)
        return self._flame

    def _tracked(self, seq: _Sequence, steps: list[_Step]) -> tuple[list[_Step], FlameTracking, np.ndarray, dict]:
        """Steps that have a tracking row, the tracking, its tau (T, 3) and {t: row}."""
        path = find_tracking(seq.path)
        if path is None:
            raise NotFound(f"NeRSemble {seq.participant}/{seq.name}: tracking=true but there is no "
                           f"tracking/flame2023_tracking_v2.npz in {seq.path}")
        tr = FlameTracking.load(path)
        flame = self._flame_model()
        if len(tr.shape) > flame.n_shape or tr.expression.shape[1] > flame.n_expr:
            raise InvalidInput(f"{path}: tracked with {len(tr.shape)} shape / {tr.expression.shape[1]} expression "
                               f"components; the head model {self.flame_path} has {flame.n_shape} / {flame.n_expr}",
                               hint="pass the FLAME 2023 model the tracking was made with")
        n_frames = max(s.t for s in steps) + 1
        rows = tr.rows_for(n_frames)
        kept = [s for s in steps if s.t in rows]
        if len(kept) < len(steps):
            log.warning("NeRSemble %s/%s: %d of %d frames have no FLAME tracking; left out", seq.participant,
                        seq.name, len(steps) - len(kept), len(steps))
        return kept, tr, tr.flame_translation(root_joints(flame, tr.shape, tr.expression)), rows

    # ------------------------------------------------------------------ identity source
    def identity(self, identity: str) -> IdentityRecord:
        """Frames (timesteps) × views (cameras) of one identity, cameras in OpenCV K / viewmat."""
        if identity not in self._groups:
            raise NotFound(f"no NeRSemble identity {identity!r}")
        if identity in self._records:
            return self._records[identity]
        frames: list[FrameRecord] = []
        shapes: list[np.ndarray] = []
        for seq in self._groups[identity]:
            steps = self._scan(seq)
            if not steps:
                log.warning("NeRSemble %s/%s: no frames and no camera videos; skipped", seq.participant, seq.name)
                continue
            calib = self.calibration(seq)
            order = {s: i for i, s in enumerate(sorted(calib.world_2_cam))}
            skipped = sorted({s for st in steps for s in st.views} - set(order))
            if skipped:
                log.warning("NeRSemble %s/%s: cameras %s have no calibration; ignored", seq.participant, seq.name,
                            skipped)
            track = None
            if self.tracking:
                steps, tr, tau, rows = self._tracked(seq, steps)
                pose, track = tr.pose(), (tr, tau, rows)
                shapes.append(tr.shape)
            cams: dict[str, CameraRecord] = {}
            for st in steps[::self.every]:
                vr = []
                for s, (img, mask) in sorted(st.views.items()):
                    if s not in order:
                        continue
                    if s not in cams:
                        w, h = self._dims(seq, img)
                        K = resolve_intrinsics(calib.K[s], (w, h), declared=calib.size, full_size=self.calib_size,
                                               pixel_centers=self.pixel_centers,
                                               where=f"NeRSemble {seq.participant}/{seq.name} cam_{s}")
                        cams[s] = CameraRecord(K=K.tolist(), viewmat=calib.world_2_cam[s].tolist(), width=w, height=h)
                    cam = cams[s]
                    if track is not None:
                        tr, tau, rows = track
                        r = rows[st.t]
                        vm = tr.camera_in_flame(calib.world_2_cam[s], tau[r:r + 1])[0]
                        cam = CameraRecord(K=cam.K, viewmat=vm.tolist(), width=cam.width, height=cam.height)
                    vr.append(ViewRecord(view=order[s], image=img, mask=mask, camera=cam))
                if not vr:
                    continue
                fr = FrameRecord(index=len(frames), views=vr)
                if track is not None:
                    r = track[2][st.t]
                    fr.expression, fr.pose = track[0].expression[r].tolist(), pose[r].tolist()
                frames.append(fr)
        if not frames:
            per_t, flat = self._image_dirs()
            raise InvalidInput(f"NeRSemble identity {identity!r} has no images",
                               hint=f"expected frame_*/{{{','.join(per_t)}}}/cam_<serial>.jpg, "
                                    f"{'/'.join(flat)}/cam_<serial>_<t>.jpg or images/cam_<serial>.mp4 "
                                    f"(is scale={self.scale} right?)")
        if self.max_frames is not None and len(frames) > self.max_frames:
            keep = np.unique(np.linspace(0, len(frames) - 1, int(self.max_frames)).round().astype(int))
            frames = [FrameRecord(index=k, views=frames[i].views, expression=frames[i].expression,
                                  pose=frames[i].pose) for k, i in enumerate(keep)]
        shape = None
        if shapes:
            if all(np.allclose(s, shapes[0], atol=1e-6) for s in shapes):
                shape = shapes[0].tolist()
            else:
                log.warning("NeRSemble %s: the sequences were tracked with different FLAME shapes; the identity "
                            "has no shape (use per_sequence=true to keep each)", identity)
        record = IdentityRecord(id=identity, frames=frames, shape=shape)
        self._records[identity] = record
        return record

    def _pixels(self, pdir: Path, ref: str) -> np.ndarray:
        rel, _, t = ref.partition("#")
        path = pdir / safe_relpath(rel)
        if t:
            if not t.isdigit():
                raise InvalidInput(f"bad video frame reference {ref!r}")
            return _VIDEOS.read(path, int(t))
        return load_image(path)

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB float32 (H,W,3) in [0,1] and the alpha map float32 (H,W) at the image size, or None."""
        if identity not in self._groups:
            raise NotFound(f"no NeRSemble identity {identity!r}")
        pdir = self._groups[identity][0].pdir
        rgb = to_float(self._pixels(pdir, view.image))
        mask = None
        if view.mask:
            mask = to_float(self._pixels(pdir, view.mask))[..., 0]
            mask = resize_mask(mask, rgb.shape[1], rgb.shape[0])
        return rgb, mask


# ---------------------------------------------------------------------------------------- extraction
@dataclass
class Extraction:
    """What :func:`extract_frames` did: frames written / already there, per ``<p>/<S>``."""

    root: Path
    written: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)


def extract_frames(root: str | Path, out: str | Path | None = None, *, scale: int = 2, every: int = 1,
                   participants: Sequence[str | int] | None = None, sequences: Sequence[str] | None = None,
                   cameras: Sequence[str] | None = None, fmt: str = "jpg",
                   progress: Callable[[int], None] | None = None) -> Extraction:
    """Extract the frames of NeRSemble v2 / benchmark videos into the extracted-frame layout.

    ``<p>/sequences/<S>/images/cam_<serial>.mp4`` → ``images_<scale>/cam_<serial>_<t:05d>.jpg`` (``images``
    for scale 1) and ``alpha_maps/cam_<serial>.mp4`` → ``alpha_maps/cam_<serial>_<t:05d>.png``, beside the
    videos (``out`` None) or in the same relative place under ``out`` (then calibration and tracking
    files are copied too). Frames are shrunk by ``scale`` (area filter); the adapter rescales K from the
    image size. Existing files are kept (resumable); nothing is deleted.

    Args:
        every: keep every ``every``-th frame (frame names keep the video frame index).
        fmt: ``"jpg"`` (quality 95) or ``"png"`` for the images; alpha maps are always PNG.
        progress: called with the number of frames written after each video.
    """
    src = Path(root)
    dst = src if out is None else Path(out)
    if fmt not in ("jpg", "png") or int(scale) < 1 or int(every) < 1:
        raise InvalidInput("extract: need fmt jpg|png, scale >= 1 and every >= 1")
    wanted_p = None if participants is None else {int(p) for p in participants}
    wanted_c = None if cameras is None else {str(c).removeprefix("cam_") for c in cameras}
    report = Extraction(root=dst)
    folder = "images" if scale == 1 else f"images_{scale}"
    for pdir in participant_dirs(src):
        if wanted_p is not None and int(pdir.name) not in wanted_p:
            continue
        prel = pdir.relative_to(src)
        if dst != src:
            for calib in (pdir / "calibration").glob("*.json"):
                _copy_once(calib, dst / prel / "calibration" / calib.name)
            if (pdir / "camera_params.json").is_file():
                _copy_once(pdir / "camera_params.json", dst / prel / "camera_params.json")
        for seq in sequences_of(pdir):
            if sequences is not None and seq.name not in sequences:
                continue
            key = f"{pdir.name}/{seq.name}"
            srel = seq.path.relative_to(src)
            if dst != src:
                for tr in (seq.path / "tracking").glob("*.npz"):
                    _copy_once(tr, dst / srel / "tracking" / tr.name)
            jobs = []
            for kind, sub, ext in (("images", folder, fmt), ("alpha_maps", "alpha_maps", "png")):
                vdir = seq.path / kind
                if vdir.is_dir():
                    jobs += [(f, m.group(1), dst / srel / sub, ext, kind == "alpha_maps")
                             for f in sorted(vdir.iterdir()) if (m := _CAM_VIDEO.match(f.name))
                             and (wanted_c is None or m.group(1) in wanted_c)]
            for video, serial, target, ext, alpha in jobs:
                w, e = _extract_video(video, target, serial, scale, every, ext, alpha)
                report.written[key] = report.written.get(key, 0) + w
                report.existing[key] = report.existing.get(key, 0) + e
                if progress is not None:
                    progress(w)
    if not report.written and not report.existing:
        raise NotFound(f"no NeRSemble videos (<p>/sequences/<S>/images/cam_<serial>.mp4) under {src}")
    return report


def _copy_once(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _extract_video(video: Path, target: Path, serial: str, scale: int, every: int, ext: str,
                   alpha: bool) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ImageDecodeError(f"could not open the video {video} (unknown codec or corrupt)")
    written = existing = t = 0
    try:
        while True:
            ok = cap.grab()
            if not ok:
                break
            if t % every == 0:
                path = target / f"cam_{serial}_{t:05d}.{ext}"
                if path.exists():
                    existing += 1
                else:
                    ok, frame = cap.retrieve()
                    if not ok:
                        raise ImageDecodeError(f"the video {video} has no decodable frame {t}")
                    img = frame[..., 0] if alpha else np.ascontiguousarray(frame[..., ::-1])
                    if scale > 1:
                        h, w = img.shape[:2]
                        img = cv2.resize(img, (max(1, round(w / scale)), max(1, round(h / scale))),
                                         interpolation=cv2.INTER_AREA)
                    tmp = path.with_name(f".{path.stem}.tmp.{ext}")
                    save_image(tmp, img)
                    os.replace(tmp, path)
                    written += 1
            t += 1
    finally:
        cap.release()
    if t == 0:
        raise ImageDecodeError(f"the video {video} has no decodable frames")
    return written, existing


__all__ = ["BENCHMARK_TASKS", "DEFAULT_CALIB_SIZE", "Extraction", "NeRSembleCalibration", "NeRSembleSource",
           "VideoFrames", "extract_frames", "participant_dirs", "resize_mask", "resolve_intrinsics", "safe_relpath",
           "scaled_intrinsics"]
