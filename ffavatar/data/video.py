"""Monocular videos (or image folders) → the generic folder format, one identity per clip.

Each clip becomes a ``monocular`` identity (id = the file stem, or the folder name, sanitised to the
:func:`~ffavatar.data.folder.check_id` alphabet), except a multi-view video set: ``cam_<serial>.mp4``
clips of one folder (NeRSemble's ``<p>/sequences/<S>/images/``) are ONE identity ``<p>_<S>`` with a
view per camera (:func:`group_clips`; the dataset is then ``multiview``; crops are per camera and
carry no calibration — read NeRSemble in place to keep it). Frames are face-cropped to ``size`` squares:

* ``crop="detect"``: pass 1 decodes the clip and runs the face landmarker (``ffavatar.face``; OpenCV's
  detector when it is unavailable, with a warning) on every kept frame
  (or every ``detect_every``-th, interpolating between); the boxes (centre x, centre y, side) are
  checked against a running median for outliers and smoothed by a Gaussian-weighted local line fit
  so the crop neither jitters nor lags; pass 2 decodes again and cuts the smoothed boxes (two passes
  keep memory bounded for long clips). Frames without a face are skipped and counted. Crops that
  reach past the frame are padded with white. With the landmarker, each identity also gets
  ``landmarks.npz`` (:func:`read_landmarks`): 478 landmarks and 52 ARKit scores per written frame,
  for landmark losses as weak supervision.
* ``crop="center"``: the centred square of each frame (no detection).

Masks and cameras are absent (monocular data). Conversion is resumable: a clip whose identity
folder already holds an ``identity.json`` is skipped unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FFAvatarError, InvalidInput
from ..face.crop import CropBox, crop_image, face_box, smooth_boxes
from ..face.landmarker import ARKIT_NAMES, FaceFinder
from ..images import IMAGE_SUFFIXES, read_frames, save_image
from .folder import FrameRecord, IdentityRecord, ViewRecord, check_id, write_dataset_index, write_identity

log = logging.getLogger(__name__)

CROPS = ("detect", "center")
LANDMARKS_FILE = "landmarks.npz"  # per identity: the landmarker's output on the written crops


@dataclass
class VideoConversion:
    """What :func:`convert_videos` did. Counts are per identity id."""

    root: Path
    identities: list[str] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)
    skipped_no_face: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped_no_face.values())


def sanitize_id(name: str, fallback: str = "clip") -> str:
    """A valid identity id from a file stem: other characters become ``_``, leading ``_.-`` dropped,
    at most 128 characters."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip("_.-")[:128].rstrip(".")
    return check_id(s or fallback)


def _unique_ids(names: Sequence[str]) -> list[str]:
    """Sanitised ids, made unique in input order by ``-2``, ``-3``, ... suffixes."""
    used: set[str] = set()
    out = []
    for name in names:
        base = sanitize_id(name)
        ident, n = base, 1
        while ident in used:
            n += 1
            ident = check_id(f"{base[:120]}-{n}")
        used.add(ident)
        out.append(ident)
    return out


_CAMERA_CLIP = re.compile(r"^cam_([A-Za-z0-9]+)$")


def group_clips(paths: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Clips → identities: ``cam_<serial>.mp4`` videos in one folder are ONE multi-view identity (one
    view per camera, in serial order), named ``<participant>_<sequence>`` for NeRSemble's
    ``<p>/sequences/<S>/images/`` and after the folder otherwise; every other clip is its own
    identity, named after its stem. Returns (name, clips) in input order of first appearance."""
    groups: dict[object, tuple[str, list[Path]]] = {}
    for p in paths:
        if p.is_file() and _CAMERA_CLIP.match(p.stem):
            folder = p.parent.resolve()
            if folder.name == "images" and folder.parent.parent.name == "sequences":
                name = f"{folder.parent.parent.parent.name}_{folder.parent.name}"
            else:
                name = folder.parent.name if folder.name == "images" else folder.name
            groups.setdefault(("cams", folder), (name, []))[1].append(p)
        else:
            groups[("clip", len(groups))] = (p.name if p.is_dir() else p.stem, [p])
    return [(name, sorted(clips, key=lambda c: c.stem) if len(clips) > 1 else clips)
            for name, clips in groups.values()]


def crop_box(img: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square ``side`` px box centred at (cx, cy) of RGB uint8 ``img``, resized to ``size``;
    outside the image it is padded with white (the models' background), never smeared."""
    return crop_image(img, CropBox(float(cx), float(cy), float(side)), size)


def _kept(source: Path, every: int) -> Iterator[tuple[int, np.ndarray]]:
    """(source frame index, RGB uint8 frame) for every ``every``-th frame of a clip."""
    for i, frame in enumerate(read_frames(source)):
        if i % every == 0:
            yield i, frame


def _detect_boxes(source: Path, every: int, max_frames: int | None, detector: FaceFinder, smooth: float,
                  detect_every: int = 1, faces: dict | None = None) -> tuple[list[int], np.ndarray, int]:
    """Pass 1: detect faces on every ``detect_every``-th kept frame, smooth the boxes over time and
    interpolate them to the frames in between (a frame needs a face on the detections either side of
    it). Returns (source frame indices to write, their (N, 3) boxes, kept frames without a face);
    ``faces`` (when given) receives {source frame index: Face} of the detections."""
    detector.reset_video()
    kept: list[int] = []
    det_k, det_box = [], []
    for k, (i, frame) in enumerate(_kept(source, every)):
        if max_frames is not None and len(det_k) * detect_every >= max_frames + detect_every:
            break
        kept.append(i)
        if k % detect_every:
            continue
        found = detector.find(frame, timestamp_ms=40 * i)
        if not found:
            continue
        det_k.append(k)
        det_box.append(face_box(found[0]).as_array())
        if faces is not None:
            faces[i] = found[0]
    if not det_k:
        return [], np.zeros((0, 3)), len(kept)
    t = np.asarray(det_k, dtype=np.float64)
    boxes = smooth_boxes(t, np.asarray(det_box, dtype=np.float64), sigma=max(smooth, float(detect_every)))
    found = set(det_k)
    idx, out = [], []
    for k, i in enumerate(kept):
        s0 = k - k % detect_every
        s1 = s0 + detect_every
        if s0 not in found or (k != s0 and s1 < len(kept) and s1 not in found):
            continue  # no face here, or not on both detections around this frame
        idx.append(i)
        if k > det_k[-1] and len(det_k) > 1:  # the few frames after the last detection: extrapolate
            slope = (boxes[-1] - boxes[-2]) / (t[-1] - t[-2])
            out.append(boxes[-1] + slope * (k - t[-1]))
        else:
            out.append([np.interp(k, t, boxes[:, c]) for c in range(3)])
    return idx, np.asarray(out, dtype=np.float64).reshape(-1, 3), len(kept) - len(idx)


def _convert_one(source: Path, ident: str, root: Path, *, size: int, every: int, max_frames: int | None,
                 crop: str, fmt: str, smooth: float, detector: FaceFinder | None,
                 detect_every: int = 1, view: int = 0, frames: list[FrameRecord] | None = None) -> tuple[int, int]:
    """Write one clip's frames as ``view`` of an identity, and its identity.json unless ``frames`` (a
    list to append the frame records to) is given; returns (frames written, frames without a face)."""
    folder = root / ident
    own = frames is None
    frames = [] if frames is None else frames

    def write(i: int, img: np.ndarray) -> None:
        name = f"images/{i:06d}_{view:02d}.{fmt}"
        save_image(folder / name, img)
        frames.append(FrameRecord(index=i, views=[ViewRecord(view=view, image=name)]))

    skipped = 0
    if crop == "detect":
        assert detector is not None
        faces: dict = {}
        idx, boxes, skipped = _detect_boxes(source, every, max_frames, detector, smooth, detect_every, faces)
        if max_frames is not None:
            idx, boxes = idx[:max_frames], boxes[:max_frames]
        if idx:
            lookup = {i: k for k, i in enumerate(idx)}
            for i, frame in _kept(source, every):
                if i > idx[-1]:
                    break
                if i in lookup:
                    cx, cy, side = boxes[lookup[i]]
                    write(i, crop_box(frame, cx, cy, side, size))
            _write_landmarks(folder, idx, boxes, faces, view)
    else:
        for i, frame in _kept(source, every):
            if max_frames is not None and len(frames) >= max_frames:
                break
            h, w = frame.shape[:2]
            write(i, crop_box(frame, w / 2, h / 2, min(w, h), size))
    if frames and own:
        write_identity(root, IdentityRecord(id=ident, frames=frames), [])
    return len(frames), skipped


def _convert_group(clips: list[Path], ident: str, root: Path, **kw) -> tuple[int, int]:
    """One identity from several camera clips of the same capture: view v = clips[v]; frames are the
    source frame indices where any camera has a face. Returns (frames, frame-views without a face)."""
    by_index: dict[int, list[ViewRecord]] = {}
    skipped = 0
    for v, clip in enumerate(clips):
        frames: list[FrameRecord] = []
        skipped += _convert_one(clip, ident, root, view=v, frames=frames, **kw)[1]
        for f in frames:
            by_index.setdefault(f.index, []).extend(f.views)
    records = [FrameRecord(index=i, views=by_index[i]) for i in sorted(by_index)]
    if records:
        write_identity(root, IdentityRecord(id=ident, frames=records), [])
    return len(records), skipped


def landmarks_file(view: int = 0) -> str:
    """``landmarks.npz`` for view 0 (every monocular clip), ``landmarks_vNN.npz`` for other views."""
    return LANDMARKS_FILE if view == 0 else f"landmarks_v{view:02d}.npz"


def _write_landmarks(folder: Path, idx: list[int], boxes: np.ndarray, faces: dict, view: int = 0) -> None:
    """Per written frame of ``view``, the landmarker's points in its crop (see read_landmarks)."""
    if not idx or not any(f.points is not None for f in faces.values()):
        return
    n = len(idx)
    lmk = np.zeros((n, 478, 2), np.float32)
    arkit = np.zeros((n, len(ARKIT_NAMES)), np.float32)
    has = np.zeros(n, bool)
    for k, i in enumerate(idx):
        f = faces.get(i)
        if f is not None and f.points is not None:
            lmk[k] = CropBox.from_array(boxes[k]).to_crop(f.points[:, :2], 1)
            arkit[k] = f.arkit if f.arkit is not None else 0
            has[k] = True
    meta = {"landmarks": "MediaPipe 478 (x, y) in the written crop, normalised to [0, 1]",
            "arkit_names": list(ARKIT_NAMES)}
    with open(folder / landmarks_file(view), "wb") as fh:
        np.savez(fh, frames=np.asarray(idx, np.int64), landmarks=lmk, arkit=arkit, has=has,
                 meta=np.array(json.dumps(meta)))


def read_landmarks(folder: str | Path, view: int = 0) -> dict[str, np.ndarray] | None:
    """An identity folder's landmarks of ``view`` (:func:`landmarks_file`): ``frames (N,)`` source frame indices (as the
    identity's frame records), ``landmarks (N, 478, 2)`` in [0, 1] of the crop, ``arkit (N, 52)``,
    ``has (N,)`` bool (frames between detections have none), ``arkit_names``; None when absent."""
    p = Path(folder) / landmarks_file(view)
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        out = {k: z[k] for k in ("frames", "landmarks", "arkit", "has")}
        out["arkit_names"] = np.array(json.loads(str(z["meta"]))["arkit_names"])
    return out


def convert_videos(videos: Sequence[str | Path], out_dir: str | Path, size: int = 256, every: int = 1,
                   max_frames: int | None = None, crop: str = "detect", progress: Callable[[int], None] | None = None,
                   *, fmt: str = "png", smooth: float = 2.0, detect_every: int = 1, min_frames: int = 2,
                   overwrite: bool = False) -> VideoConversion:
    """Convert clips to a monocular folder dataset at ``out_dir`` (created or extended).

    Args:
        videos: video files (anything OpenCV decodes) and/or folders of images (one identity each).
        size: output crop side in pixels.
        every: keep every ``every``-th source frame.
        max_frames: at most this many frames written per identity.
        crop: ``"detect"`` (smoothed face box) or ``"center"`` (centred square).
        progress: called with 1 after each clip (``tqdm.update`` fits).
        fmt: ``"png"`` or ``"jpg"`` image files.
        smooth: Gaussian σ of the box smoothing, in kept frames.
        detect_every: run the (slow) face detector on every n-th kept frame only and interpolate the
            boxes in between (frames between a face and a miss are skipped).
        min_frames: identities with fewer written frames are dropped (few-to-many needs 2 images).
        overwrite: redo identities that already have an identity.json (else they are kept and skipped).
    Returns:
        A :class:`VideoConversion` report. A clip that fails to decode is recorded in ``failed`` and
        the others go on; ``dataset.json`` lists the old and the new identities.
    """
    if crop not in CROPS:
        raise InvalidInput(f"crop must be one of {CROPS}, got {crop!r}")
    if fmt not in ("png", "jpg"):
        raise InvalidInput(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    if int(size) < 8 or int(every) < 1 or (max_frames is not None and max_frames < 1) or min_frames < 1 \
            or int(detect_every) < 1:
        raise InvalidInput("need size >= 8, every >= 1, detect_every >= 1, max_frames >= 1 (or None) and "
                           "min_frames >= 1")
    paths = [Path(v) for v in videos]
    for p in paths:
        if not p.exists():
            raise InvalidInput(f"clip not found: {p}")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            raise InvalidInput(f"{p} is a single image; give a video or a folder of images per identity")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    groups = group_clips(paths)
    kind = "multiview" if any(len(clips) > 1 for _, clips in groups) else "monocular"
    index = root / "dataset.json"
    known: list[str] = []
    if index.is_file():
        from .folder import FolderDataset

        ds = FolderDataset(root)
        if ds.kind != kind:
            raise InvalidInput(f"{root} holds a {ds.kind} dataset and these clips make a {kind} one; convert them "
                               "into another folder")
        known = list(ds.identities)
    detector = FaceFinder() if crop == "detect" else None
    report = VideoConversion(root=root)
    for (_, clips), ident in zip(groups, _unique_ids([name for name, _ in groups])):
        path = clips[0] if len(clips) == 1 else clips[0].parent
        folder = root / ident
        if (folder / "identity.json").is_file() and not overwrite:
            report.existing.append(ident)
        else:
            if folder.exists():
                shutil.rmtree(folder)
            try:
                kw = dict(size=int(size), every=int(every), max_frames=max_frames, crop=crop, fmt=fmt,
                          smooth=smooth, detector=detector, detect_every=int(detect_every))
                n, skipped = (_convert_one(path, ident, root, **kw) if len(clips) == 1
                              else _convert_group(clips, ident, root, **kw))
            except FFAvatarError as e:
                log.warning("skipping %s: %s", path, e)
                report.failed[ident] = str(e)
                shutil.rmtree(folder, ignore_errors=True)
                n, skipped = 0, 0
            else:
                report.skipped_no_face[ident] = skipped
                if n < min_frames:
                    log.info("%s: %d usable frame(s) (< %d); dropped", path, n, min_frames)
                    report.dropped.append(ident)
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    report.identities.append(ident)
                    report.frames[ident] = n
        if progress is not None:
            progress(1)
    gone = set(report.dropped) | set(report.failed)
    listed = [i for i in known if i not in gone]
    listed += [i for i in report.identities + report.existing if i not in set(listed)]
    write_dataset_index(root, kind, listed, extra={"generator": "ffavatar.video", "crop": crop,
                                                           "size": int(size), "every": int(every)})
    log.info("%s: %d identities written, %d frames without a face skipped", root, len(report.identities),
             report.total_skipped)
    return report


__all__ = ["LANDMARKS_FILE", "VideoConversion", "convert_videos", "crop_box", "landmarks_file", "read_landmarks", "sanitize_id",
           "smooth_boxes"]
