"""Portraits before they are sent (no bpy): the downscaled size of a photo over the backend's pixel
limit, and its EXIF block carried over to the downscaled JPEG.

Phones store many photos sideways with an EXIF orientation tag. Blender ignores that tag when it
loads an image (checked on 4.2 and 5.2) and writes none, so the add-on copies the original's EXIF
segment into the downscaled file: the backend then turns the smaller picture upright exactly as it
would have turned the original.
"""

from __future__ import annotations

import math


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest ``(w, h)`` with the aspect of ``width x height`` and ``w * h <= max_pixels``."""
    if width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * s)), max(1, int(height * s))
    while w * h > max_pixels:
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def exif_segment(jpeg: bytes) -> bytes | None:
    """The whole APP1 Exif segment (marker, length and payload) of a JPEG, or None."""
    if jpeg[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        if marker in (0xD9, 0xDA):               # end of image / start of scan: no more metadata
            return None
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker == 0xE1 and jpeg[i + 4:i + 10] == b"Exif\x00\x00":
            return jpeg[i:i + 2 + length]
        i += 2 + length
    return None


def with_exif(jpeg: bytes, segment: bytes | None) -> bytes:
    """``jpeg`` with ``segment`` (from :func:`exif_segment`) right after its start marker; any Exif
    segment it had is replaced."""
    if not segment or jpeg[:2] != b"\xff\xd8":
        return jpeg
    old = exif_segment(jpeg)
    if old is not None:
        jpeg = jpeg.replace(old, b"", 1)
    return jpeg[:2] + segment + jpeg[2:]
