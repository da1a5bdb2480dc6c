"""Received frames on disk (no bpy): one numbered image file per scene frame.

File ``<folder>/<prefix>_<scene frame:06d>.<png|jpg>`` holds the driver frame shown at that scene
frame, so an image sequence that starts at ``frame_start`` with offset ``frame_start - 1`` shows
file N at scene frame N. The clip keeps its real timing: driver frame ``index`` (at
``index / clip fps`` seconds) starts at scene frame ``frame_start + index * step`` with ``step =
scene fps / clip fps``, and is held until the next one starts (a 12 fps clip in a 24 fps scene fills
two scene frames per driver frame; of several driver frames within one scene frame the last shows).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

EXTENSIONS = {"png": "png", "jpeg": "jpg"}


def folder_name(name: str) -> str:
    """A run name as one safe folder name: letters, digits, ``-`` and ``_`` only (anything else,
    dots included, becomes ``_``), never empty, ``.`` or ``..``, at most 64 characters."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))[:64].strip("_")
    return safe or "frames"


class FrameWriter:
    """Writes frame events' encoded images; remembers what it wrote."""

    def __init__(self, folder: str | Path, *, prefix: str = "frame", frame_start: int = 1, step: float = 1.0):
        if not step > 0:
            raise ValueError(f"step (scene fps / clip fps) must be positive, got {step}")
        self.folder = Path(folder)
        self.prefix = prefix
        self.frame_start = int(frame_start)
        self.step = float(step)
        self.written: dict[int, Path] = {}     # driver index -> its file
        self.files: dict[int, Path] = {}       # scene frame -> file (what the timeline shows)
        self.size: tuple[int, int] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def scene_frame(self, index: float) -> int:
        """The scene frame where driver frame ``index`` starts (nearest whole frame)."""
        return int(np.floor(self.frame_start + float(index) * self.step + 0.5 + 1e-9))

    def path_for(self, index: int, fmt: str, scene_frame: int | None = None) -> Path:
        if fmt not in EXTENSIONS:
            raise ValueError(f"frames in format {fmt!r} cannot be written; ask the backend for png or jpeg")
        f = self.scene_frame(index) if scene_frame is None else scene_frame
        return self.folder / f"{self.prefix}_{f:06d}.{EXTENSIONS[fmt]}"

    def write(self, event: dict) -> Path:
        """Write a ``frame`` event's image atomically at its scene frame (and the scene frames it is
        held over); returns its path."""
        index, fmt = int(event["index"]), event.get("format", "png")
        first, end = self.scene_frame(index), max(self.scene_frame(index + 1), self.scene_frame(index) + 1)
        path = self.path_for(index, fmt, first)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(event["image"])
        os.replace(tmp, path)
        self.files[first] = path
        for f in range(first + 1, end):            # held over the scene frames until the next one
            copy = self.path_for(index, fmt, f)
            tmp = copy.with_name(f".{copy.name}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, copy)
            self.files[f] = copy
        self.written[index] = path
        if event.get("width") and event.get("height"):
            self.size = (int(event["width"]), int(event["height"]))
        return path

    @property
    def count(self) -> int:
        return len(self.written)

    def first(self) -> Path | None:
        return self.files[min(self.files)] if self.files else None

    def scene_range(self) -> tuple[int, int] | None:
        """``(first, last)`` scene frames that have a file."""
        return (min(self.files), max(self.files)) if self.files else None

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
