"""Driver clips (no bpy): a movie file, or an image sequence (a folder, or one numbered file of it).

Image sequences play in natural order (``frame_2`` before ``frame_10``), by the same rule as the
CLI (``ffavatar/sequence.py``, bundled into the extension). Image sequences are streamed to the backend in chunks read lazily (``animate`` with ``stream``);
movies are sent whole (``video``) and decoded by the backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .backend.sequence import natural_key

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MOVIE_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}
_NUMBER = re.compile(r"^(.*?)(\d+)$")


class DriverError(ValueError):
    """The driver clip cannot be used (missing, empty, unknown type); the message says what to pick."""


@dataclass
class DriverClip:
    """``kind`` ``"images"`` (``paths`` in frame order) or ``"video"`` (``paths[0]``)."""

    kind: str
    paths: list[Path]

    @property
    def frame_count(self) -> int | None:
        """Frames of an image sequence; None for a movie (the backend counts them)."""
        return len(self.paths) if self.kind == "images" else None

    def select(self, first: int = 0, count: int = 0) -> DriverClip:
        """Frames ``first .. first+count-1`` of an image sequence (count 0: to the end)."""
        if self.kind != "images":
            return self
        if first < 0 or first >= len(self.paths):
            raise DriverError(f"the clip has {len(self.paths)} frames; frame offset {first} is outside it")
        end = len(self.paths) if count <= 0 else min(len(self.paths), first + count)
        return DriverClip("images", self.paths[first:end])

    def chunks(self, size: int = 8) -> Iterator[list[bytes]]:
        """Encoded frames of an image sequence, ``size`` per chunk (files read lazily)."""
        for i in range(0, len(self.paths), size):
            yield [p.read_bytes() for p in self.paths[i:i + size]]

    def video_bytes(self) -> bytes:
        return self.paths[0].read_bytes()


def resolve(path: str | Path) -> DriverClip:
    """What a driver path means: a folder of images, a numbered image (its whole sequence), a single
    image (a one-frame clip) or a movie."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file()), key=lambda f: natural_key(f.name))
        if not files:
            raise DriverError(f"{p} holds no images ({', '.join(sorted(IMAGE_EXTS))}); pick a movie or an image folder")
        return DriverClip("images", files)
    if not p.exists():
        raise DriverError(f"driver clip {p} does not exist")
    ext = p.suffix.lower()
    if ext in MOVIE_EXTS:
        if p.stat().st_size == 0:
            raise DriverError(f"the driver clip {p.name} is empty (0 bytes); was it copied completely?")
        return DriverClip("video", [p])
    if ext not in IMAGE_EXTS:
        raise DriverError(f"{p.name}: not a movie ({', '.join(sorted(MOVIE_EXTS))}) or an image sequence")
    m = _NUMBER.match(p.stem)
    if m is None:
        return DriverClip("images", [p])
    prefix = m.group(1)
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(p.suffix) + "$")
    numbered = [f for f in p.parent.iterdir() if pattern.match(f.name) and f.is_file()]
    return DriverClip("images", sorted(numbered, key=lambda f: natural_key(f.name)))


def name_inputs(message: str, label: str, paths: list[Path] | None) -> str:
    """A backend message that counts inputs (``"driver frame 3: ..."``, ``"image 1: ..."``) with the
    user's file names added: ``"driver frame 3 (frame_4.png): ..."``."""
    if not paths:
        return message

    def named(m: re.Match) -> str:
        i = int(m.group(1))
        return f"{m.group(0)} ({paths[i].name})" if 0 <= i < len(paths) else m.group(0)

    return re.sub(rf"\b{re.escape(label)} (\d+)\b(?! \()", named, message, count=1)
