"""Images and clips as users have them: decode/encode, EXIF rotation, face detection and crop, video frames.

All images are RGB ``uint8 (H, W, 3)`` numpy arrays at this boundary; the model converts to float.
Face detection uses the Haar cascades that ship inside opencv-python(-headless) 4.x: no downloads.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageDecodeError, InvalidInput, LimitExceeded, NoFaceFound

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MAX_PIXELS = 64_000_000


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding pixels, else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
    return None


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/... bytes to RGB uint8 (H,W,3), honouring EXIF orientation; alpha is dropped."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError("empty or non-binary image data")
    dims = image_dimensions(bytes(data[:65536]))
    if dims is not None and dims[0] * dims[1] > max_pixels:  # refuse decompression bombs before decoding
        raise LimitExceeded(f"image is {dims[0]}x{dims[1]}; the limit is {max_pixels} pixels")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # applies EXIF orientation
    if img is None:
        raise ImageDecodeError("could not decode the image (not a PNG/JPEG/BMP/WebP/TIFF, or corrupt)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise LimitExceeded(f"image is {img.shape[1]}x{img.shape[0]}; the limit is {max_pixels} pixels")
    return np.ascontiguousarray(img[..., ::-1])


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H,W,3)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read image {p}: {e.strerror or e}") from e
    try:
        return decode_image(data)
    except ImageDecodeError as e:
        raise ImageDecodeError(f"{p.name}: {e}") from e


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """Encode RGB uint8 (H,W,3) (or (H,W) grey) as PNG or JPEG bytes."""
    fmt = fmt.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise InvalidInput(f"unknown image format {fmt!r}; use 'png' or 'jpeg'")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise InvalidInput(f"encode_image expects uint8, got {arr.dtype}")
    bgr = arr[..., ::-1] if arr.ndim == 3 else arr
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt != "png" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, out = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(bgr), params)
    if not ok:
        raise InvalidInput("image encoding failed")
    return out.tobytes()


def save_image(path: str | Path, img: np.ndarray) -> Path:
    """Write an RGB uint8 image (format from the suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(encode_image(img, "jpeg" if p.suffix.lower() in (".jpg", ".jpeg") else "png"))
    return p


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) → float32 in [0,1]."""
    return np.asarray(img, dtype=np.float32) / 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float in [0,1] → uint8 (rounded, clipped)."""
    return np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- faces
@dataclass
class FaceBox:
    """A detected face: pixel box (x, y, w, h) and which cascade found it."""

    x: int
    y: int
    w: int
    h: int
    source: str


class FaceDetector:
    """Largest-face detector over OpenCV's bundled Haar cascades (frontal, then profiles both ways)."""

    _CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml",
                 "haarcascade_profileface.xml")

    def __init__(self) -> None:
        root = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "")
        self.cascades = []
        for name in self._CASCADES:
            c = cv2.CascadeClassifier(str(root / name))
            if not c.empty():
                self.cascades.append((name, c))
        if not self.cascades:
            raise NoFaceFound("OpenCV's face cascades are missing from this installation",
                              hint="install opencv-python-headless 4.x, or pass crop=False with pre-cropped portraits")

    def detect(self, img: np.ndarray) -> FaceBox | None:
        """The largest face in RGB uint8 ``img``, or None."""
        grey = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
        scale = min(1.0, 640.0 / max(grey.shape))
        small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
        min_size = max(24, int(0.08 * min(small.shape)))
        for name, cascade in self.cascades:
            for flip in ((False, True) if "profile" in name else (False,)):
                src = small[:, ::-1] if flip else small
                found = cascade.detectMultiScale(np.ascontiguousarray(src), scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(min_size, min_size))
                if len(found):
                    x, y, w, h = max(found, key=lambda b: b[2] * b[3])
                    if flip:
                        x = src.shape[1] - x - w
                    s = 1.0 / scale
                    return FaceBox(int(x * s), int(y * s), int(w * s), int(h * s), name + (":flipped" if flip else ""))
        return None


_detector: FaceDetector | None = None


def crop_portrait(img: np.ndarray, size: int, *, detect: bool = True, margin: float = 1.9) -> np.ndarray:
    """Square head crop of ``size`` px: face box (scaled by ``margin`` to include hair and chin) when
    ``detect``, else the centred square; borders padded by edge replication. Raises NoFaceFound."""
    global _detector
    h, w = img.shape[:2]
    if detect:
        _detector = _detector or FaceDetector()
        box = _detector.detect(img)
        if box is None:
            raise NoFaceFound("no face found in the image", hint="use a portrait where the face is clearly "
                              "visible, or disable detection for pre-cropped images")
        cx, cy = box.x + box.w / 2, box.y + box.h * 0.45
        side = max(box.w, box.h) * margin
    else:
        cx, cy, side = w / 2, h / 2, min(w, h)
    m = np.array([[size / side, 0, size / 2 - cx * size / side], [0, size / side, size / 2 - cy * size / side]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------- clips
def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural (name) order."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def video_fps(path: str | Path) -> float:
    """Frame rate of a video file (25 when the container does not say)."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    cap.release()
    return float(fps) if fps and fps > 0 else 25.0


def read_frames(source: str | Path | bytes | Sequence[str | Path], max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Frames (RGB uint8) of a driver clip: a video file, video bytes, an image folder or a list of images."""
    if isinstance(source, (bytes, bytearray)):
        yield from _video_bytes(bytes(source), max_frames)
        return
    if isinstance(source, (list, tuple)):
        paths: list[Path] = [Path(p) for p in source]
    else:
        p = Path(source)
        if p.is_dir():
            paths = list_images(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            paths = [p]
        elif p.is_file():
            yield from _video_file(p, max_frames)
            return
        else:
            raise InvalidInput(f"driver clip not found: {p}")
    for i, path in enumerate(paths):
        if max_frames is not None and i >= max_frames:
            return
        yield load_image(path)


def _video_file(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageDecodeError(f"could not open the video {path.name} (unknown codec or corrupt)")
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(frame[..., ::-1])
    finally:
        cap.release()
    if n == 0:
        raise ImageDecodeError(f"the video {path.name} has no decodable frames")


def _video_bytes(data: bytes, max_frames: int | None) -> Iterator[np.ndarray]:
    fd, name = tempfile.mkstemp(suffix=".mp4", prefix="ffavatar-clip-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield from _video_file(Path(name), max_frames)
    finally:
        os.unlink(name)


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write RGB uint8 frames as an MP4 (mp4v) video."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not len(frames):
        raise InvalidInput("no frames to write")
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not vw.isOpened():
        raise InvalidInput(f"cannot write video {p}")
    for fr in frames:
        vw.write(np.ascontiguousarray(fr[..., ::-1]))
    vw.release()
    return p
