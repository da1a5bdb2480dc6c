"""Tiny PNG writer for test fixtures (zlib only: the bpy venv has no imaging library)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def png_bytes(rgb: np.ndarray) -> bytes:
    """RGB uint8 (H,W,3) -> PNG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, c = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    color = {3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def face_image(seed: int, size: int = 96) -> np.ndarray:
    """A smooth synthetic 'portrait': skin-coloured ellipse on a background, varying with ``seed``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    cx, cy = 0.5 + 0.05 * rng.normal(), 0.5 + 0.05 * rng.normal()
    inside = ((x - cx) / 0.3) ** 2 + ((y - cy) / 0.4) ** 2 < 1
    img = np.empty((size, size, 3), np.float64)
    img[:] = rng.uniform(0.1, 0.4, 3)
    img[inside] = [0.85, 0.65, 0.55]
    mouth = inside & (np.abs(y - cy - 0.2) < 0.02 + 0.02 * (seed % 3)) & (np.abs(x - cx) < 0.1)
    img[mouth] = [0.5, 0.1, 0.1]
    return (img * 255).astype(np.uint8)


def write_sequence(folder: Path, count: int, size: int = 96, prefix: str = "drv") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = folder / f"{prefix}_{i + 1:04d}.png"
        p.write_bytes(png_bytes(face_image(100 + i, size)))
        out.append(p)
    return out
