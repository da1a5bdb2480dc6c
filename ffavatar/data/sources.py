"""Dataset specs → identity sources: one string names any training data.

Spec grammar: ``[SCHEME:]PATH[?key=value&key=value]``

=================  ====================================================================================
``PATH``           auto-detected: ``dataset.json`` → folder; ``index.json``/``*.tar`` → shards;
                   ``<capture>/decoder/`` → Ava-256; ``<participant>/``, ``camera_params/``, ``nvs/`` or
                   ``mono_flame_avatar/`` → NeRSemble
``folder:PATH``    :class:`~ffavatar.data.folder.FolderDataset`
``nersemble:PATH`` :class:`~ffavatar.data.nersemble.NeRSembleSource` (options: per_sequence, participants,
                   sequences, cameras, scale, every, max_frames, calib_size=WxH, masks, pixel_centers,
                   tracking, flame)
``ava256:PATH``    :class:`~ffavatar.data.ava256.Ava256Source` (options: every, max_frames, cameras,
                   segments, head_frame, calib_size=WxH, masks, background_labels, units)
``shards:PATH``    a :class:`~ffavatar.data.shards.ShardSpec` (a folder of tar shards or one .tar)
=================  ====================================================================================

List options are comma-separated (``?participants=018,030``), booleans ``true``/``false``.
Shards are a *stream*: ``open_source`` returns a :class:`ShardSpec`, not a map-style source; the
trainer checks ``getattr(src, "is_stream", False)`` and builds ``src.dataset(cfg.sampler, seed)``
(a :class:`~ffavatar.data.shards.ShardDataset`) for a ``DataLoader(batch_size=B, num_workers=W)``.
Any map-style use of a ShardSpec (``.identities``, ``.identity()``) raises a clear InvalidInput.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import InvalidInput, NotFound
from ..images import VIDEO_SUFFIXES
from .ava256 import Ava256Source
from .folder import FolderDataset
from .nersemble import BENCHMARK_TASKS, NeRSembleSource
from .shards import SHARD_FORMAT, ShardSpec, list_shards

SCHEMES = ("folder", "nersemble", "ava256", "shards")


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _list(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def _size(v: str) -> tuple[int, int]:
    w, h = v.lower().replace(",", "x").split("x")
    return int(w), int(h)


_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "nersemble": {"per_sequence": _bool, "participants": _list, "sequences": _list, "cameras": _list, "scale": int,
                  "every": int, "max_frames": int, "calib_size": _size, "masks": _bool, "pixel_centers": str,
                  "tracking": _bool, "flame": str},
    "ava256": {"every": int, "max_frames": int, "cameras": _list, "segments": _list, "head_frame": _bool,
               "calib_size": _size, "masks": _bool, "background_labels": lambda v: [int(x) for x in _list(v)],
               "units": float},
    "folder": {},
    "shards": {},
}


def parse_spec(spec: str | Path) -> tuple[str | None, Path, dict[str, str]]:
    """(scheme or None, path, raw options) of a spec string."""
    text = str(spec)
    scheme = None
    head, sep, rest = text.partition(":")
    if sep and head in SCHEMES:
        scheme, text = head, rest
    options: dict[str, str] = {}
    if "?" in text and scheme is not None:
        text, query = text.rsplit("?", 1)
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except ValueError as e:
            raise InvalidInput(f"dataset spec {spec!r}: bad options {query!r} ({e})") from None
    if not text:
        raise InvalidInput(f"dataset spec {spec!r} names no path")
    return scheme, Path(text), options


def _typed(scheme: str, raw: dict[str, str], spec: str) -> dict[str, Any]:
    table = _OPTIONS[scheme]
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise InvalidInput(f"dataset spec {spec!r}: unknown option(s) {unknown} for {scheme}",
                           hint=f"known: {sorted(table) or 'none'}")
    out = {}
    for k, v in raw.items():
        try:
            out[k] = table[k](v)
        except ValueError as e:
            raise InvalidInput(f"dataset spec {spec!r}: option {k}={v!r}: {e}") from None
    return out


def detect_scheme(path: Path) -> str:
    """Which adapter reads ``path`` (see the module docstring); raises when none does."""
    if path.is_file():
        if path.name.endswith((".tar", ".tar.gz", ".tgz")):
            return "shards"
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise InvalidInput(f"{path} is a video: convert it to a dataset first",
                               hint="ffavatar data from-video VIDEO... -o DIR (ffavatar.data.video.convert_videos)")
        raise InvalidInput(f"{path} is not a dataset (expected a folder, or a .tar shard)")
    if not path.is_dir():
        raise NotFound(f"dataset not found: {path}")
    if (path / "dataset.json").is_file():
        return "folder"
    if (path / "index.json").is_file():
        try:
            if json.loads((path / "index.json").read_text()).get("format") == SHARD_FORMAT:
                return "shards"
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    children = [d for d in path.iterdir()]
    if any(c.is_file() and c.name.endswith((".tar", ".tar.gz", ".tgz")) for c in children):
        return "shards"
    if (path / "decoder").is_dir() or (path / "camera_calibration.json").is_file() or \
            any((c / "decoder" / "camera_calibration.json").is_file() or (c / "decoder" / "KRT").is_file()
                for c in children if c.is_dir()):
        return "ava256"
    if (path / "camera_params").is_dir() or any(c.is_dir() and (c.name.isdigit() or c.name in BENCHMARK_TASKS)
                                                for c in children):
        return "nersemble"
    if any(c.is_file() and c.suffix.lower() in VIDEO_SUFFIXES for c in children):
        raise InvalidInput(f"{path} holds videos: convert them to a dataset first",
                           hint="ffavatar data from-video VIDEO... -o DIR (ffavatar.data.video.convert_videos)")
    raise InvalidInput(f"cannot tell what dataset {path} is",
                       hint="name it: folder:PATH, nersemble:PATH, ava256:PATH or shards:PATH (docs/datasets.md)")


def open_source(spec: str | Path, **options: Any) -> Any:
    """The identity source for a spec (FolderDataset, NeRSembleSource, Ava256Source), or a
    :class:`ShardSpec` for tar shards (a stream: see the module docstring). ``options`` are passed
    to the adapter on top of the spec's ``?key=value`` options."""
    scheme, path, raw = parse_spec(spec)
    scheme = scheme or detect_scheme(path)
    kwargs = {**_typed(scheme, raw, str(spec)), **options}
    if scheme == "folder":
        _no_options(scheme, kwargs, spec)
        return FolderDataset(path)
    if scheme == "nersemble":
        return NeRSembleSource(path, **kwargs)
    if scheme == "ava256":
        return Ava256Source(path, **kwargs)
    _no_options(scheme, kwargs, spec)
    shards, info, root = list_shards(path)
    return ShardSpec(shards, info, root)


def _no_options(scheme: str, kwargs: dict[str, Any], spec: str | Path) -> None:
    if kwargs:
        raise InvalidInput(f"dataset spec {spec!r}: {scheme} takes no options (got {sorted(kwargs)})")


__all__ = ["SCHEMES", "detect_scheme", "open_source", "parse_spec"]
