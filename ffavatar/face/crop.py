"""Head crops: where to cut (from landmarks or a detector box), how to cut (padded, never smeared),
and how to follow a face through a clip (smoothed boxes; frames without a face held or interpolated).

Framing: a landmark crop frames the head as the training renders do (calibrated on the demo head's
synthetic renders; see :data:`LANDMARK_SIDE`): the crop side is a multiple of the face's
rotation-invariant size (RMS 3D distance of the 478 landmarks from their centroid) and its centre
is the projected head centre, found behind the face along its normal. A detector-only box uses the Haar
convention of ``ffavatar.images.crop_portrait`` (side = 1.9 x box, centre at 45% of its height).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidInput, NoFaceFound
from ..images import BACKGROUND
from .landmarker import Face, FaceFinder, shared_finder

log = logging.getLogger(__name__)

# Landmark framing, calibrated on 21 synthetic training renders (SynthConfig views, yaw up to 60 deg):
# residual std of the predicted image centre 0.04 (x) and 0.16 (y) face sizes.
LANDMARK_SIDE = 6.5
"""Crop side / face size (RMS 3D landmark distance from their centroid)."""
HEAD_DEPTH = 0.8
"""The crop centre is the head centre: this many face sizes behind the landmark centroid (along the
face normal), projected, ..."""
HEAD_DROP = 0.31
"""... plus this many face sizes down the image (the training cameras aim at the mesh centroid,
which the neck pulls down)."""
HAAR_MARGIN = 1.9     # crop side = this x the detector's box side (hair and chin)
HAAR_CENTER_Y = 0.45  # crop centre at this fraction of the detector box height
MAX_LEADING_MISSES = 250  # a clip whose first this-many frames have no face is refused


@dataclass(frozen=True)
class CropBox:
    """A square crop: centre (cx, cy) and side, in source-image pixels."""

    cx: float
    cy: float
    side: float

    def as_array(self) -> np.ndarray:
        return np.array([self.cx, self.cy, self.side], dtype=np.float64)

    @classmethod
    def from_array(cls, a) -> CropBox:
        return cls(float(a[0]), float(a[1]), float(a[2]))

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Source-pixel points (..., >=2) -> crop pixels of a ``size`` px crop (x, y; z scaled too)."""
        s = size / self.side
        out = np.array(points, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] - (self.cx - self.side / 2)) * s
        out[..., 1] = (out[..., 1] - (self.cy - self.side / 2)) * s
        if out.shape[-1] > 2:
            out[..., 2:] *= s
        return out


def face_size(points: np.ndarray) -> float:
    """Rotation-invariant face size: RMS 3D distance of the landmarks from their centroid (pixels)."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()))


def face_box(face: Face) -> CropBox:
    """The crop box of one face (landmark framing when it has landmarks, else the detector box's)."""
    if face.points is not None:
        p = face.points.astype(np.float64)
        s = face_size(p)
        c = p.mean(0)
        n = np.linalg.svd(p - c, full_matrices=False)[2][2]  # face normal (least-variance axis)
        n = -n if n[2] > 0 else n  # toward the camera (MediaPipe z: smaller is nearer)
        return CropBox(float(c[0] - HEAD_DEPTH * s * n[0]), float(c[1] - HEAD_DEPTH * s * n[1] + HEAD_DROP * s),
                       LANDMARK_SIDE * s)
    x0, y0, x1, y1 = face.box
    w, h = x1 - x0, y1 - y0
    return CropBox(x0 + w / 2, y0 + HAAR_CENTER_Y * h, HAAR_MARGIN * max(w, h))


def crop_image(img: np.ndarray, box: CropBox, size: int, background=BACKGROUND) -> np.ndarray:
    """Cut ``box`` out of RGB uint8 ``img`` as a ``size`` x ``size`` image (sub-pixel exact).

    Parts of the box outside the image are filled with the constant ``background`` colour (never
    smeared edge pixels). Large reductions are pre-filtered (area resampling) against aliasing.
    """
    if box.side <= 0 or not all(map(math.isfinite, (box.cx, box.cy, box.side))):
        raise InvalidInput(f"invalid crop box {box}")
    src = img
    if box.side / size > 1.25:  # area-shrink the source to the crop's scale first; the warp then only shifts
        pre = size / box.side
        h, w = img.shape[:2]
        nw, nh = max(1, round(w * pre)), max(1, round(h * pre))
        src = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        pre_x, pre_y = nw / w, nh / h
    else:
        pre_x = pre_y = 1.0
    s = size / box.side
    # map source pixel centres: crop = (src/pre - (c - side/2)) * s, in continuous pixel coordinates
    m = np.array([[s / pre_x, 0.0, (-(box.cx - box.side / 2) * s) + 0.5 * (s / pre_x) - 0.5],
                  [0.0, s / pre_y, (-(box.cy - box.side / 2) * s) + 0.5 * (s / pre_y) - 0.5]])
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=tuple(int(c) for c in background))


def smooth_boxes(times: np.ndarray, boxes: np.ndarray, sigma: float = 2.0, median: int = 5,
                 outlier: float = 0.2) -> np.ndarray:
    """Temporally smoothed crop boxes.

    Args:
        times: (N,) frame times (any unit; ``sigma`` is in the same unit), increasing.
        boxes: (N, 3) per-frame (centre x, centre y, side) in pixels.
        sigma: width of the Gaussian-weighted local linear fit (steady motion is followed without
            lag, also at the ends); 0 disables it.
        median: odd window (in samples) of a running median; a box that differs from it by more than
            ``outlier`` x its side (a false or jumpy detection) is replaced by the median first.
    Returns:
        (N, 3) smoothed boxes. Frames more than 3 sigma apart do not influence each other, so a gap in
        the detections (a cut) is not smeared across.
    """
    t = np.asarray(times, dtype=np.float64)
    b = np.asarray(boxes, dtype=np.float64)
    n = len(b)
    if n == 0:
        return b.reshape(0, 3)
    if median > 1:
        h = median // 2
        med = np.stack([np.median(b[max(0, i - h):i + h + 1], axis=0) for i in range(n)])
        bad = (np.abs(b - med) > outlier * np.abs(med[:, 2:3])).any(axis=1)
        b = np.where(bad[:, None], med, b)
    if sigma <= 0:
        return b
    out = np.empty_like(b)
    lo = np.searchsorted(t, t - 3 * sigma, side="left")
    hi = np.searchsorted(t, t + 3 * sigma, side="right")
    for i in range(n):  # Gaussian-weighted local line fit, evaluated at t_i (no lag on steady motion)
        d = t[lo[i]:hi[i]] - t[i]
        w = np.exp(-0.5 * (d / sigma) ** 2)
        y = b[lo[i]:hi[i]]
        s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
        y0, y1 = (w[:, None] * y).sum(0), ((w * d)[:, None] * y).sum(0)
        det = s0 * s2 - s1 * s1
        out[i] = (s2 * y0 - s1 * y1) / det if det > 1e-9 * max(s0 * s2, 1e-30) else y0 / s0
    return out


def describe_frames(indices: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (frame numbers as users read them in messages)."""
    idx = sorted(set(int(i) for i in indices))
    runs: list[str] = []
    start = prev = None
    for i in idx + [None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(runs)


# ----------------------------------------------------------------------------------- clips
@dataclass
class ClipFace:
    """One frame of a clip with its face.

    index: frame number (0-based). frame: the RGB uint8 frame. box: the smoothed crop box.
    face: this frame's detection (None where the frame had no face). points (478, 3) / arkit (52,):
    the frame's landmarks and ARKit scores in frame pixels (interpolated from the neighbours, or
    held, where ``filled``); None when the finder gives no landmarks.
    """

    index: int
    frame: np.ndarray
    box: CropBox
    face: Face | None
    points: np.ndarray | None
    arkit: np.ndarray | None
    filled: bool

    def crop(self, size: int, background=BACKGROUND) -> np.ndarray:
        return crop_image(self.frame, self.box, size, background)

    def without_pixels(self) -> ClipFace:
        """The same face with ``frame`` dropped (to keep per-frame results of long clips small)."""
        return ClipFace(self.index, None, self.box, self.face, self.points, self.arkit, self.filled)

    def crop_points(self, size: int) -> np.ndarray | None:
        """Landmarks (478, 3) in the pixels of a ``size`` px crop, or None."""
        return None if self.points is None else self.box.to_crop(self.points, size)


@dataclass
class _Row:
    index: int
    frame: np.ndarray
    face: Face | None
    box: np.ndarray | None


class FaceCropper:
    """Follows the face through a clip: per-frame detection, smoothed crop boxes, gaps filled.

    Streaming: frames go in one at a time and come out ``lookahead`` frames later (the smoothing
    looks ahead that far), so long clips never sit in memory. A frame without a face gets the
    box, landmarks and ARKit scores interpolated between the nearest frames with a face (held at
    the clip's ends and across gaps longer than the lookahead); :attr:`missing` lists those frames
    and one warning names them when the clip ends. A clip without any face raises NoFaceFound.

    Args:
        finder: a :class:`FaceFinder` (default: the shared one).
        sigma: Gaussian width of the box smoothing, in frames (0: none).
        fps: frame rate (timestamps for the landmarker's tracking mode).
        name: what to call the clip in messages (e.g. the user's file name).
    """

    def __init__(self, finder: FaceFinder | None = None, *, sigma: float = 2.0, fps: float = 25.0,
                 name: str = "the clip"):
        self.finder = finder or shared_finder()
        self.sigma = float(sigma)
        self.lookahead = max(1, int(math.ceil(3 * self.sigma)))
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.name = name
        self.missing: list[int] = []
        self.frames = 0

    def _detect(self, i: int, frame: np.ndarray) -> _Row:
        faces = self.finder.find(frame, timestamp_ms=int(round(i * 1000.0 / self.fps)))
        if not faces:
            return _Row(i, frame, None, None)
        f = faces[0]
        return _Row(i, frame, f, face_box(f).as_array())

    def _emit(self, row: _Row, known: list[_Row]) -> ClipFace:
        """Output for ``row`` given the detections ``known`` (sorted, within the smoothing reach)."""
        t = np.array([k.index for k in known], dtype=np.float64)
        boxes = smooth_boxes(t, np.stack([k.box for k in known]), sigma=self.sigma)
        i = row.index
        box = CropBox.from_array([np.interp(i, t, boxes[:, c]) for c in range(3)])
        if row.face is not None:
            return ClipFace(i, row.frame, box, row.face, row.face.points, row.face.arkit, False)
        before = [k for k in known if k.index < i]
        after = [k for k in known if k.index > i]
        a = before[-1] if before else None
        b = after[0] if after else None

        def mix(get):
            va = get(a) if a is not None else None
            vb = get(b) if b is not None else None
            if va is None or vb is None:
                return va if va is not None else vb
            w = (i - a.index) / (b.index - a.index)
            return ((1 - w) * va + w * vb).astype(np.float32)

        return ClipFace(i, row.frame, box, None, mix(lambda k: k.face.points), mix(lambda k: k.face.arkit), True)

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[ClipFace]:
        """Yield a :class:`ClipFace` per frame, in order."""
        self.finder.reset_video()
        reach = self.lookahead + 1
        pending: deque[_Row] = deque()     # frames not yet emitted
        history: deque[_Row] = deque()     # detections behind the emitted frames (smoothing reach)
        self.missing, self.frames = [], 0

        def known_for(i: int) -> list[_Row]:
            rows = [r for r in list(history) + list(pending) if r.box is not None]
            near = [r for r in rows if abs(r.index - i) <= reach]
            return near or [min(rows, key=lambda r: abs(r.index - i))]  # a long gap: hold the nearest

        for i, frame in enumerate(frames):
            row = self._detect(i, frame)
            self.frames += 1
            pending.append(row)
            have_face = any(r.box is not None for r in pending) or bool(history)
            if not have_face:
                if len(pending) >= MAX_LEADING_MISSES:
                    raise NoFaceFound(f"no face in frames 0-{len(pending) - 1} of {self.name}",
                                      hint="is the face visible and at least ~40 px wide?")
                continue
            while pending and (pending[-1].index - pending[0].index >= self.lookahead):
                yield self._pop(pending, history, known_for)
        if self.frames == 0:
            raise InvalidInput(f"{self.name} has no frames")
        if not history and not any(r.box is not None for r in pending):
            raise NoFaceFound(f"no face in any of the {self.frames} frame(s) of {self.name}",
                              hint="is the face visible and at least ~40 px wide?")
        while pending:
            yield self._pop(pending, history, known_for)
        if self.missing:
            log.warning("%s: no face in frame(s) %s of %d; their crop, landmarks and scores were interpolated "
                        "from the neighbouring frames (held at the ends)", self.name,
                        describe_frames(self.missing), self.frames)

    def _pop(self, pending: deque, history: deque, known_for) -> ClipFace:
        row = pending.popleft()
        out = self._emit(row, known_for(row.index))
        if row.box is None:
            self.missing.append(row.index)
        else:
            history.append(_Row(row.index, None, row.face, row.box))  # keep no frame pixels
        while history and history[0].index < row.index - self.lookahead - 1 and len(history) > 1:
            history.popleft()
        return out


def head_matte(points: np.ndarray, size: int, feather: float = 0.04) -> np.ndarray:
    """A soft head mask (size, size) float32 in [0, 1] from landmarks (478, >=2) in crop pixels: an
    ellipse from the chin to above the forehead (hair) and a little wider than the face, feathered
    by ``feather`` x size. A heuristic matte for photos whose background the model cannot explain
    (it renders its own plain background): composite the crop over that colour outside it."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    x0, x1 = p[:, 0].min(), p[:, 0].max()
    top, chin = p[:, 1].min(), p[:, 1].max()
    face_h = chin - top
    top_hair = top - 0.45 * face_h
    cx, cy = (x0 + x1) / 2, (chin + 0.05 * face_h + top_hair) / 2
    ax, ay = 0.62 * (x1 - x0), 0.5 * (chin + 0.05 * face_h - top_hair)
    m = np.zeros((size, size), np.float32)
    cv2.ellipse(m, (int(round(cx * 4)), int(round(cy * 4))), (int(round(ax * 4)), int(round(ay * 4))), 0, 0, 360,
                1.0, -1, lineType=cv2.LINE_AA, shift=2)
    k = max(1, int(round(feather * size)))
    return cv2.GaussianBlur(m, (0, 0), k)


def composite(img: np.ndarray, matte: np.ndarray, background=BACKGROUND) -> np.ndarray:
    """``img`` (H, W, 3) uint8 over a constant ``background`` through ``matte`` (H, W) in [0, 1]."""
    a = np.clip(matte, 0, 1)[..., None]
    return np.clip(img * a + np.asarray(background, np.float32) * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def crop_portrait(img: np.ndarray, size: int, *, finder: FaceFinder | None = None, name: str = "the image",
                  background=BACKGROUND) -> tuple[np.ndarray, Face]:
    """One portrait: the largest face's head crop (``size`` px) and the face. Raises NoFaceFound."""
    finder = finder or shared_finder()
    face = finder.find_one(img, name, thorough=True)
    if face.source != "landmarker":
        log.info("%s: face found by %s", name, face.source)
    return crop_image(img, face_box(face), size, background), face


@dataclass
class PersonCrop:
    """One photo's crop of the chosen person: ``image`` (size, size, 3) uint8 (composited over the
    background through a head matte when asked), ``face``, ``points`` (478, 3) in crop pixels, and
    ``distance``: identity distance to the reference (None for the reference or without identity)."""

    image: np.ndarray
    face: Face
    points: np.ndarray | None
    distance: float | None


def person_crops(images: list[np.ndarray], size: int, *, finder: FaceFinder | None = None, identity=None,
                 background=BACKGROUND, matte: bool = True, names: list[str] | None = None) -> list[PersonCrop]:
    """Head crops of one person across photos that may show others too.

    The person is the largest face of the first photo; in the others, the face most similar to it
    (``identity``: a :class:`~ffavatar.face.identity.FaceIdentity`), else each photo's largest face.
    With ``matte`` the crops are composited over ``background`` through :func:`head_matte` (the
    model renders a plain background and cannot explain a real one)."""
    finder = finder or shared_finder()
    names = names or [f"image {i}" for i in range(len(images))]
    out: list[PersonCrop] = []
    ref = None
    for img, name in zip(images, names):
        faces = finder.find(img, thorough=True)
        if not faces:
            raise NoFaceFound(f"no face found in {name}")
        face, dist = faces[0], None
        if identity is not None:
            if ref is None:
                ref = identity.descriptor(img, face)
            else:
                face, dist = identity.pick(img, faces, ref)
        box = face_box(face)
        crop = crop_image(img, box, size, background)
        pts = None if face.points is None else box.to_crop(face.points, size)
        if matte and pts is not None:
            crop = composite(crop, head_matte(pts, size), background)
        out.append(PersonCrop(crop, face, pts, dist))
    return out
