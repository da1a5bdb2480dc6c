"""Received frames on disk (no bpy): one numbered image file per scene frame.

File ``<folder>/<prefix>_<scene frame:06d>.<png|jpg>`` holds driver frame ``index`` at scene frame
``frame_start + index``, so an image sequence that starts at ``frame_start`` with offset
``frame_start - 1`` shows file N at scene frame N.
"""

from __future__ import annotations

import os
from pathlib import Path

EXTENSIONS = {"png": "png", "jpeg": "jpg"}


class FrameWriter:
    """Writes frame events' encoded images; remembers what it wrote."""

    def __init__(self, folder: str | Path, *, prefix: str = "frame", frame_start: int = 1):
        self.folder = Path(folder)
        self.prefix = prefix
        self.frame_start = int(frame_start)
        self.written: dict[int, Path] = {}
        self.size: tuple[int, int] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, index: int, fmt: str) -> Path:
        if fmt not in EXTENSIONS:
            raise ValueError(f"frames in format {fmt!r} cannot be written; ask the backend for png or jpeg")
        return self.folder / f"{self.prefix}_{self.frame_start + int(index):06d}.{EXTENSIONS[fmt]}"

    def write(self, event: dict) -> Path:
        """Write a ``frame`` event's image atomically; returns its path."""
        path = self.path_for(event["index"], event.get("format", "png"))
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(event["image"])
        os.replace(tmp, path)
        self.written[int(event["index"])] = path
        if event.get("width") and event.get("height"):
            self.size = (int(event["width"]), int(event["height"]))
        return path

    @property
    def count(self) -> int:
        return len(self.written)

    def first(self) -> Path | None:
        return self.written[min(self.written)] if self.written else None

    def missing(self, count: int) -> list[int]:
        """Driver indices in ``0..count-1`` with no file."""
        return [i for i in range(count) if i not in self.written]

    def clear_old(self) -> int:
        """Remove earlier frames of this prefix from the folder (a new run replaces the last one)."""
        n = 0
        for p in self.folder.glob(f"{self.prefix}_*.*"):
            if p.suffix.lstrip(".") in EXTENSIONS.values():
                p.unlink()
                n += 1
        return n
