"""Images and clips as users have them: decode/encode, EXIF rotation, face detection and crop, video frames.

All images are RGB ``uint8 (H, W, 3)`` numpy arrays at this boundary; the model converts to float.
Face detection uses the Haar cascades that ship inside opencv-python(-headless) 4.x: no downloads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageDecodeError, InvalidInput, LimitExceeded, NoFaceFound
from .sequence import natural_key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)
"""The model's background (``api.Reconstructor.background``, white): transparent pixels of RGBA
portraits and frames are composited over it before detection and crop."""
FIT_PIXELS = 16_000_000
"""Photos with more pixels are downscaled while loading (:func:`load_image`): a 48 MP phone photo
becomes ~12 MP, plenty for a face crop of a few hundred pixels."""
MAX_IMAGE_SIDE = 32_766
"""Longest accepted image side (OpenCV's warps and resizes need sides below 2**15 - 1)."""
MAX_ASPECT = 20
"""Largest aspect ratio of an accepted portrait or frame: no face fits a thinner one, and OpenCV's
detection downscale would shrink its short side to nothing."""
MAX_IMAGE_FILE_BYTES = 512 * 2**20
"""Largest image file :func:`load_image` reads."""


IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"))
"""Leading bytes of the image formats decode_image accepts (WebP: ``RIFF`` + size + ``WEBP``; AVIF,
which datasets such as Ava-256 use, is an ISO-BMFF ``ftyp`` box of brand ``avif``/``avis``).
Everything else, including formats OpenCV could decode (PNM, PFM, HDR, Sun raster, JPEG 2000, GIF,
EXR...), is refused before any decoder sees it."""


def _image_format(head: bytes) -> str | None:
    fmt = next((f for magic, f in IMAGE_MAGIC if head.startswith(magic)), None)
    if fmt == "WEBP" and head[8:12] != b"WEBP":
        return None
    if fmt is None and head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return fmt


def _header_reader(fmt: str):
    """Pillow's image class for ``fmt``: constructing it parses the header only (no pixels)."""
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngImageFile as reader
    elif fmt == "JPEG":
        from PIL.JpegImagePlugin import JpegImageFile as reader
    elif fmt == "BMP":
        from PIL.BmpImagePlugin import BmpImageFile as reader
    elif fmt == "TIFF":
        from PIL.TiffImagePlugin import TiffImageFile as reader
    elif fmt == "AVIF":
        from PIL.AvifImagePlugin import AvifImageFile as reader
    else:
        from PIL.WebPImagePlugin import WebPImageFile as reader
    return reader


def image_header(data: bytes | bytearray | memoryview) -> tuple[str, int, int]:
    """``(format, width, height)`` from an image's header, without decoding its pixels.

    The format comes from the leading bytes (:data:`IMAGE_MAGIC`); the header is parsed by Pillow's
    plugin for that format alone. Raises :class:`ImageDecodeError` when the bytes are not PNG, JPEG,
    BMP, WebP, TIFF or AVIF, or the header is unreadable."""
    fmt = _image_format(bytes(data[:12]))
    if fmt is None:
        raise ImageDecodeError("not a PNG, JPEG, BMP, WebP, TIFF or AVIF image")
    try:
        im = _header_reader(fmt)(io.BytesIO(data))
        try:
            w, h = im.size
        finally:
            im.close()
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError, TypeError, struct.error) as e:
        raise ImageDecodeError(f"unreadable {fmt} header ({type(e).__name__}: {str(e)[:120]})") from None
    return fmt, int(w), int(h)


def check_image_size(data: bytes | bytearray | memoryview, max_pixels: int = MAX_PIXELS, *,
                     reduce: int = 1) -> tuple[str, int, int]:
    """:func:`image_header`, refusing with :class:`LimitExceeded` an image whose header declares more
    than ``max_pixels`` pixels or a side over :data:`MAX_IMAGE_SIDE`, and a TIFF whose tiles or strips
    would need a larger buffer (decoders allocate a whole tile at once, however small the image),
    before any pixel is decoded; :class:`InvalidInput` for a sliver no face fits in. ``reduce``: a
    JPEG decoded at 1/reduce of its size (:func:`decode_image`) is held to ``max_pixels`` at that size
    (other formats decode whole first)."""
    fmt, w, h = image_header(data)
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"the image header declares an empty {w}x{h} image")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise InvalidInput(f"image is {w}x{h}: too thin to hold a face (the longer side may be at most "
                           f"{MAX_ASPECT} times the shorter)")
    r = reduce if fmt == "JPEG" else 1
    if -(-w // r) * -(-h // r) > max_pixels:
        raise LimitExceeded(f"image is {w}x{h} ({w * h:,} pixels); the limit is {max_pixels:,} pixels"
                            + (f" at 1/{r} of its size" if r > 1 else ""))
    if max(w, h) > MAX_IMAGE_SIDE:
        raise LimitExceeded(f"image is {w}x{h}; a side may have at most {MAX_IMAGE_SIDE} pixels")
    if fmt == "TIFF":
        im = _header_reader(fmt)(io.BytesIO(data))
        try:
            tags = im.tag_v2
            tw, th, rows = tags.get(322), tags.get(323), tags.get(278)
        finally:
            im.close()
        if tw and th and int(tw) * int(th) > max_pixels:
            raise LimitExceeded(f"TIFF tiles of {tw}x{th} pixels are over the limit of {max_pixels:,} pixels")
        if rows and int(rows) < 2**32 - 1 and w * int(rows) > max_pixels:
            raise LimitExceeded(f"TIFF strips of {w}x{rows} pixels are over the limit of {max_pixels:,} pixels")
    return fmt, w, h


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image header (PNG, JPEG, BMP, WebP, TIFF, AVIF), else None."""
    try:
        _, w, h = image_header(data)
    except ImageDecodeError:
        return None
    return w, h


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, *, reduce: int = 1) -> np.ndarray:
    """Decode PNG/JPEG/BMP/WebP/TIFF/AVIF bytes to RGB uint8 (H,W,3), honouring EXIF orientation.
    Transparent pixels (RGBA, grey+alpha, palette transparency) are composited over :data:`BACKGROUND`.
    ``reduce`` 2, 4 or 8 decodes at 1/reduce of the size (JPEG does that while decoding). The header
    is checked first (:func:`check_image_size`): no decoder runs on a format outside
    :data:`IMAGE_MAGIC` or on an image over ``max_pixels``."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError("empty or non-binary image data")
    fmt, _, _ = check_image_size(data, max_pixels, reduce=reduce)  # refuse decompression bombs before decoding
    buf = np.frombuffer(data, dtype=np.uint8)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    img = cv2.imdecode(buf, flags)  # applies EXIF orientation
    if img is None:
        raise ImageDecodeError("could not decode the image (not a PNG/JPEG/BMP/WebP/TIFF/AVIF, or corrupt)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise LimitExceeded(f"image is {img.shape[1]}x{img.shape[0]}; the limit is {max_pixels} pixels")
    if fmt != "JPEG":                           # JPEG has no alpha; other formats may
        img = _composite_alpha(buf, img, reduce)
    return np.ascontiguousarray(img[..., ::-1])


_ORIENTATIONS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1],
                 lambda a: a.swapaxes(0, 1), lambda a: a.swapaxes(0, 1)[::-1], lambda a: a.swapaxes(0, 1)[:, ::-1],
                 lambda a: a.swapaxes(0, 1)[::-1, ::-1])
"""The 8 EXIF orientations as array transforms (identity first)."""


def _composite_alpha(buf: np.ndarray, bgr: np.ndarray, reduce: int) -> np.ndarray:
    """``bgr`` (OpenCV's colour decode) composited over :data:`BACKGROUND` where the file has alpha.

    The alpha plane comes from an unchanged decode, which skips EXIF orientation: it is oriented
    like ``bgr`` by the transform that maps the unchanged colours onto ``bgr``."""
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3 or raw.shape[2] != 4:
        return bgr
    if raw.dtype != np.uint8:
        raw = (raw.astype(np.float32) * (255.0 / np.iinfo(raw.dtype).max) + 0.5).astype(np.uint8)
    if reduce > 1:
        raw = cv2.resize(raw, None, fx=1 / reduce, fy=1 / reduce, interpolation=cv2.INTER_AREA)
    best = None
    for t in _ORIENTATIONS:
        cand = t(raw)
        if cand.shape[:2] != bgr.shape[:2]:
            continue
        err = float(np.abs(cand[..., :3].astype(np.int16) - bgr.astype(np.int16)).mean())
        if best is None or err < best[0]:
            best = (err, cand)
        if err < 1.0:
            break
    if best is None:
        return bgr
    alpha = best[1][..., 3:4].astype(np.float32) / 255.0
    if alpha.min() >= 1.0:
        return bgr
    bg = np.array(BACKGROUND[::-1], dtype=np.float32)       # BGR
    out = bgr.astype(np.float32) * alpha + bg * (1.0 - alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def load_image(path: str | Path, fit_pixels: int | None = FIT_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H,W,3), of any size: a photo over ``fit_pixels`` (None: no
    limit but :data:`MAX_PIXELS`) is downscaled while loading, a JPEG by decoding it at 1/2, 1/4 or
    1/8 of its size (never at full size), so a 48 or 200 MP phone photo loads in bounded memory."""
    p = Path(path)
    try:
        if p.exists() and not p.is_file():  # a device such as /dev/zero would never end
            raise ImageDecodeError(f"cannot read image {p}: not a regular file (a folder, device or pipe)")
        if p.exists() and p.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise LimitExceeded(f"image {p} is {p.stat().st_size:,} bytes; the limit is {MAX_IMAGE_FILE_BYTES:,}")
        data = p.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read image {p}: {e.strerror or e}") from e
    try:
        dims = image_dimensions(data[:65536])
        reduce = 1
        if fit_pixels and dims is not None and dims[0] * dims[1] > fit_pixels and data[:2] == b"\xff\xd8":
            # the least reduction that decodes within MAX_PIXELS; fit_image does the rest
            reduce = next((r for r in (2, 4) if dims[0] * dims[1] / r ** 2 <= MAX_PIXELS), 8)
        img = decode_image(data, max_pixels=MAX_PIXELS, reduce=reduce)
        return fit_image(img, fit_pixels) if fit_pixels else img
    except (ImageDecodeError, LimitExceeded) as e:
        raise type(e)(f"{p.name}: {e}") from e


def fit_image(img: np.ndarray, max_pixels: int) -> np.ndarray:
    """``img`` downscaled (area filter, aspect kept) to at most ``max_pixels`` pixels; as is when smaller."""
    h, w = img.shape[:2]
    if h * w <= max_pixels:
        return img
    s = (max_pixels / (h * w)) ** 0.5
    size = (max(1, int(w * s)), max(1, int(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


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
    """Image files of a folder in natural order (``frame_2`` before ``frame_10``: :mod:`ffavatar.sequence`,
    the same rule as the Blender add-on)."""
    files = sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InvalidInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


VIDEO_CONTAINERS = ("MP4/MOV (ISO base media)", "AVI", "Matroska/WebM")
_BMFF_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def video_container(head: bytes) -> str | None:
    """The container of a video from its first 12 bytes: ``"mp4"`` (ISO base media: MP4, MOV, M4V),
    ``"avi"``, ``"mkv"`` (Matroska, WebM), or None for anything else. Only these are opened: the
    demuxers of text formats (ffconcat, HLS/DASH playlists, image sequences) follow references to
    other files or URLs, so a file is never handed to the video decoder on its name alone."""
    if len(head) >= 8 and head[4:8] in _BMFF_FIRST_BOXES:
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    return None


def check_video(head: bytes, label: str) -> str:
    """:func:`video_container`, or :class:`ImageDecodeError` naming ``label`` (the user's clip)."""
    kind = video_container(head)
    if kind is None:
        raise ImageDecodeError(f"the video {label} is not a video file this product reads: by its content it is "
                               f"none of {', '.join(VIDEO_CONTAINERS)}",
                               hint="convert it to MP4, or send the frames as images")
    return kind


@contextlib.contextmanager
def private_video_file(data: bytes, label: str = "sent as bytes") -> Iterator[Path]:
    """Video bytes (an upload) as a file for the decoder: the container is checked by content first
    (:func:`check_video`), then the bytes are written into a new private (0700), empty folder under
    a fixed name, removed afterwards. Nothing else is there for a demuxer to find."""
    kind = check_video(bytes(data[:12]), label) if len(data) else "mp4"  # empty: reported as such when read
    with tempfile.TemporaryDirectory(prefix="ffavatar-video-") as folder:
        path = Path(folder) / f"clip.{kind}"
        with open(path, "xb") as fh:
            fh.write(data)
        yield path


def open_video(path: str | Path) -> cv2.VideoCapture:
    """A capture that returns frames upright: phone clips store frames sideways with a rotation in
    their metadata, and whether OpenCV applies it by default has changed between 4.x releases, so it
    is asked for explicitly (``CAP_PROP_ORIENTATION_AUTO``, honoured by the FFmpeg backend). Only the
    FFmpeg backend is used (never the image-sequence one, which reads a name as a pattern); callers
    check the container first (:func:`check_video`)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if cap.isOpened() and hasattr(cv2, "CAP_PROP_ORIENTATION_AUTO"):
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def video_fps(path: str | Path) -> float:
    """Frame rate of a video file (25 when the container does not say)."""
    cap = open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    cap.release()
    return float(fps) if fps and fps > 0 else 25.0


def mp4_incomplete(data: bytes) -> str | None:
    """Why an MP4/MOV (ISO media) file looks cut short, or None: a top-level box runs past the end of
    the file, or the index (``moov``) is missing, as when a recording or a copy was interrupted."""
    if len(data) < 8 or data[4:8] not in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip"):
        return None        # not ISO media: nothing to say
    i, boxes = 0, set()
    while i + 8 <= len(data):
        size, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        if size == 1 and i + 16 <= len(data):
            size = int.from_bytes(data[i + 8:i + 16], "big")
        elif size == 0:
            size = len(data) - i
        if size < 8:
            return None
        boxes.add(kind)
        if i + size > len(data):
            return f"its '{kind.decode('latin-1')}' box needs {i + size} bytes but the file ends at {len(data)}"
        i += size
    return None if b"moov" in boxes else "it has no index ('moov' box)"


def _video_problem(path: Path, label: str) -> str:
    """What to tell the user about a video that yields no frames."""
    try:
        size = path.stat().st_size
        head = path.read_bytes() if size <= 64 << 20 else b""
    except OSError:
        size, head = -1, b""
    if size == 0:
        return f"the video {label} is empty (0 bytes)"
    why = mp4_incomplete(head) if head else None
    if why:
        return f"the video {label} looks incomplete: {why} (was the recording or the copy interrupted?)"
    return f"could not open the video {label} (unknown codec or corrupt)"


def read_frames(source: str | Path | bytes | Sequence[str | Path], max_frames: int | None = None, *,
                first: int = 0, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Iterator[np.ndarray]:
    """Frames (RGB uint8, upright) of a driver clip: a video file, video bytes, an image folder or a
    list of images; from frame ``first`` on (a video's earlier frames are skipped without being
    converted), at most ``max_frames``. ``name`` is what errors call a video (default: its file
    name; give the user's file name when ``source`` is a temporary copy or bytes). Videos must be
    one of :data:`VIDEO_CONTAINERS` by content; frames over ``max_pixels`` are refused before decoding."""
    if isinstance(source, (bytes, bytearray)):
        with private_video_file(bytes(source), name or "sent as bytes") as path:
            yield from _video_file(path, max_frames, name or "sent as bytes", first, max_pixels)
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
            yield from _video_file(p, max_frames, name, first, max_pixels)
            return
        elif p.exists():
            raise InvalidInput(f"driver clip {p} is not a video file, an image file or a folder of images")
        else:
            raise InvalidInput(f"driver clip not found: {p}")
    for i, path in enumerate(paths[first:]):
        if max_frames is not None and i >= max_frames:
            return
        yield load_image(path)


def _video_file(path: Path, max_frames: int | None, name: str | None = None, first: int = 0,
                max_pixels: int = MAX_PIXELS) -> Iterator[np.ndarray]:
    label = name or path.name
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as e:
        raise ImageDecodeError(f"cannot read the video {label}: {e.strerror or e}") from None
    if head:  # an empty file is reported as such below
        check_video(head, label)
    cap = open_video(path)
    if not cap.isOpened():
        cap.release()
        raise ImageDecodeError(_video_problem(path, label))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if w * h > max_pixels:
        cap.release()
        raise LimitExceeded(f"the video {label} has {w}x{h} frames; the limit is {max_pixels:,} pixels per frame")
    n = skipped = 0
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    try:
        while skipped < first and cap.grab():
            skipped += 1
        if skipped < first:
            raise InvalidInput(f"the video {label} has {skipped} frames; frame offset {first} is outside it")
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(frame[..., ::-1])
    finally:
        cap.release()
    if n and max_frames is None and declared > first + n + 1:
        log.warning("the video %s ended after %d of the %d frames it declares; it looks incomplete",
                    label, first + n, declared)
    if n == 0 and first == 0:
        why = _video_problem(path, label)
        raise ImageDecodeError(why if "incomplete" in why or "empty" in why else
                               f"the video {label} has no decodable frames")


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
