"""Ava-256 dome captures (facebookresearch/ava-256) read in place as an *identity source*.

Supported layout (the release's ``decoder`` part; the headset ``encoder`` part is not used)::

    ROOT/<capture>/decoder/camera_calibration.json      {"KRT": [{"cameraId", "K", "T", "distortion", ...}]}
                           (or the older text file ``KRT``: name / 3 rows K / distortion / 3 rows [R|t])
    ROOT/<capture>/decoder/frame_list.csv               header ``seg_id,frame_id``
    ROOT/<capture>/decoder/image/cam<id>.zip            members ``cam<id>/<frame:06d>.avif`` (or .png/.jpg/.webp)
    ROOT/<capture>/decoder/segmentation_parts/cam<id>.zip   members ``cam<id>/<frame:06d>.png`` (optional)
    ROOT/<capture>/decoder/head_pose/head_pose.zip      members ``<frame:06d>.txt`` (3x4; only for head_frame)

An unzipped folder ``image/cam<id>/<frame:06d>.<ext>`` (same for the other zips) works too. ``ROOT`` may
also be one capture folder or its ``decoder`` folder. Identity = capture (id = folder name, e.g.
``20230405--1635--AAN112``); frames = ``frame_list.csv`` rows (every ``every``-th; optionally only
some segments); views = cameras (``view`` = index of the id in the sorted calibration ids).

Cameras: the JSON stores K and the 4x4 ``T`` transposed (as ava-256's ``load_camera_calibration``
reads them): ``K = K_json.T``, ``[R|t] = T_json.T[:3]``, an OpenCV world-to-camera transform, so it is
our ``viewmat``; translations are millimetres and are multiplied by ``units`` (1e-3 → metres). **The
world frame is the dome's as given**, unless ``head_frame=True``: then each frame's cameras are
expressed in that frame's head coordinates (``viewmat @ head_pose``), as ava-256's loader does. K is
calibrated for 2668×4096 (W×H) images and scaled per axis to the images' actual size. Lens distortion
is ignored (pinhole). Masks: foreground = segmentation label not in ``background_labels`` (default
0 = background and 3 = chair; an assumption — the release documents labels 1–10 only).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, features

from ..errors import ImageDecodeError, InvalidInput, LimitExceeded, NotFound
from ..images import MAX_PIXELS, decode_image, to_float
from .folder import CameraRecord, FrameRecord, IdentityRecord, ViewRecord
from .nersemble import resize_mask, safe_relpath, scaled_intrinsics
from .video import sanitize_id

log = logging.getLogger(__name__)

AVA_CALIB_SIZE = (2668, 4096)
"""(width, height) of the full-resolution dome images the calibrated intrinsics refer to."""
IMAGE_EXTS = (".avif", ".png", ".jpg", ".jpeg", ".webp")
MAX_MEMBER_BYTES = 256 << 20


def _parse_calibration_json(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        items = json.loads(path.read_text())["KRT"]
        out = {}
        for item in items:
            K = np.asarray(item["K"], dtype=np.float64).T
            M = np.asarray(item["T"], dtype=np.float64).T
            if K.shape != (3, 3) or M.shape != (4, 4) or not (np.isfinite(K).all() and np.isfinite(M).all()):
                raise ValueError(f"camera {item.get('cameraId')}: K must be 3x3 and T 4x4")
            out[str(item["cameraId"])] = (K, M[:3])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{path}: not an Ava-256 camera_calibration.json ({type(e).__name__}: {e})") from None
    return out


def _parse_krt_text(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The text KRT format: per camera a name line, 3 rows of K, 1 distortion row, 3 rows of [R|t]."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    out, i = {}, 0
    try:
        while i < len(lines):
            if not lines[i]:
                i += 1
                continue
            name = lines[i]
            K = np.array([[float(v) for v in lines[i + 1 + r].split()] for r in range(3)])
            RT = np.array([[float(v) for v in lines[i + 5 + r].split()] for r in range(3)])
            if K.shape != (3, 3) or RT.shape != (3, 4):
                raise ValueError(f"camera {name}: K must be 3x3 and [R|t] 3x4")
            out[name] = (K, RT)
            i += 8
    except (IndexError, ValueError) as e:
        raise InvalidInput(f"{path}: not a KRT file ({e})") from None
    return out


def _viewmat(RT: np.ndarray, units: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = RT[:, :3]
    m[:3, 3] = RT[:, 3] * units
    return m


class _Archive:
    """A zip (or its unzipped folder) of one asset: member names and bytes."""

    def __init__(self, zip_path: Path | None, folder: Path | None):
        self.zip_path, self.folder = zip_path, folder

    def names(self) -> set[str]:
        if self.zip_path is not None:
            with zipfile.ZipFile(self.zip_path) as zf:
                return {n for n in zf.namelist() if not n.endswith("/")}
        assert self.folder is not None  # names relative to the asset folder, like the zip's members
        return {f"{self.folder.name}/{p.name}" for p in self.folder.iterdir() if p.is_file()}


class Ava256Source:
    """Identity source over Ava-256 captures (layout in the module docstring).

    Args:
        root: a folder of captures, one capture folder, or its ``decoder`` folder.
        every: keep every ``every``-th row of frame_list.csv (the captures hold 5–10K frames × 80
            cameras; the default keeps ~10%).
        max_frames: at most this many frames per identity (evenly spaced).
        cameras, segments: keep only these camera ids / frame_list segments (None: all).
        head_frame: cameras in each frame's head coordinates instead of the dome's world frame.
        calib_size: (W, H) the intrinsics refer to.
        masks: read segmentation_parts when present; ``background_labels`` are its non-head labels.
        units: factor from the calibration's translation unit to metres.
    """

    kind = "multiview"

    def __init__(self, root: str | Path, *, every: int = 10, max_frames: int | None = None,
                 cameras: Sequence[str] | None = None, segments: Sequence[str] | None = None,
                 head_frame: bool = False, calib_size: tuple[int, int] = AVA_CALIB_SIZE, masks: bool = True,
                 background_labels: Sequence[int] = (0, 3), units: float = 1e-3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"Ava-256 folder not found: {self.root}")
        if int(every) < 1 or (max_frames is not None and int(max_frames) < 1):
            raise InvalidInput("Ava-256: need every >= 1 and max_frames >= 1 (or None)")
        self.every, self.max_frames = int(every), max_frames
        self.cameras = None if cameras is None else {str(c).removeprefix("cam") for c in cameras}
        self.segments = None if segments is None else set(segments)
        self.head_frame, self.masks, self.units = bool(head_frame), bool(masks), float(units)
        self.calib_size = (int(calib_size[0]), int(calib_size[1]))
        self.background_labels = np.asarray(list(background_labels), dtype=np.int64)
        self._decoders: dict[str, Path] = {}
        for name, dec in self._find_captures():
            ident = sanitize_id(name)
            if ident in self._decoders:
                raise InvalidInput(f"two Ava-256 captures map to the identity id {ident!r}")
            self._decoders[ident] = dec
        if not self._decoders:
            raise NotFound(f"no Ava-256 captures under {self.root}",
                           hint="expected ROOT/<capture>/decoder/camera_calibration.json (see docs/datasets.md)")
        self.identities: list[str] = list(self._decoders)
        self._records: dict[str, IdentityRecord] = {}
        self._zips: OrderedDict[Path, zipfile.ZipFile] = OrderedDict()
        self._pid = os.getpid()

    def _find_captures(self) -> list[tuple[str, Path]]:
        def is_decoder(d: Path) -> bool:
            return (d / "camera_calibration.json").is_file() or (d / "KRT").is_file()

        r = self.root
        if is_decoder(r / "decoder"):
            return [(r.name, r / "decoder")]
        if is_decoder(r):
            return [(r.parent.name if r.name == "decoder" else r.name, r)]
        return [(d.name, d / "decoder") for d in sorted(r.iterdir()) if d.is_dir() and is_decoder(d / "decoder")]

    # ------------------------------------------------------------------ files
    def _zip(self, path: Path) -> zipfile.ZipFile:
        """An open zip from a small per-process LRU (handles are not shared across forked workers)."""
        if self._pid != os.getpid():
            self._zips, self._pid = OrderedDict(), os.getpid()
        zf = self._zips.pop(path, None) or zipfile.ZipFile(path)
        self._zips[path] = zf
        while len(self._zips) > 96:
            self._zips.popitem(last=False)[1].close()
        return zf

    def _read(self, decoder: Path, ref: str) -> bytes:
        """Bytes of ``"<zip rel>!<member>"`` or of a plain relative file, inside the decoder folder."""
        if "!" in ref:
            zrel, member = ref.split("!", 1)
            safe_relpath(member)
            zf = self._zip(decoder / safe_relpath(zrel))
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise NotFound(f"{zrel} has no member {member}") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise LimitExceeded(f"{zrel}!{member} is {info.file_size} bytes; the limit is {MAX_MEMBER_BYTES}")
            return zf.read(info)
        return (decoder / safe_relpath(ref)).read_bytes()

    @staticmethod
    def _archive(decoder: Path, asset: str, cam: str) -> tuple[str, _Archive] | None:
        """(ref prefix, archive) for ``<asset>/cam<id>.zip`` or the folder ``<asset>/cam<id>/``."""
        z, d = decoder / asset / f"cam{cam}.zip", decoder / asset / f"cam{cam}"
        if z.is_file():
            return f"{asset}/cam{cam}.zip!", _Archive(z, None)
        if d.is_dir():
            return f"{asset}/", _Archive(None, d)
        return None

    def _calibration(self, decoder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        path = decoder / "camera_calibration.json"
        return _parse_calibration_json(path) if path.is_file() else _parse_krt_text(decoder / "KRT")

    def _frames(self, decoder: Path) -> list[str]:
        path = decoder / "frame_list.csv"
        if not path.is_file():
            raise NotFound(f"{path} is missing", hint="Ava-256 captures list their frames in decoder/frame_list.csv")
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows and ("frame_id" not in rows[0] or "seg_id" not in rows[0]):
            raise InvalidInput(f"{path}: expected the columns seg_id,frame_id")
        frames = [r["frame_id"] for r in rows if self.segments is None or r["seg_id"] in self.segments]
        bad = [f for f in frames if not f.strip().isdigit()]
        if bad:
            raise InvalidInput(f"{path}: frame ids must be integers, got {bad[:3]}")
        return [f"{int(f):06d}" for f in frames][::self.every]

    def _head_poses(self, decoder: Path, frames: list[str]) -> dict[str, np.ndarray]:
        out = {}
        z, d = decoder / "head_pose" / "head_pose.zip", decoder / "head_pose"
        for f in frames:
            try:
                data = self._read(decoder, f"head_pose/head_pose.zip!{f}.txt") if z.is_file() else \
                    (d / f"{f}.txt").read_bytes()
                m = np.loadtxt(io.BytesIO(data), dtype=np.float64).reshape(3, 4)
            except (OSError, NotFound, ValueError):
                continue
            H = np.eye(4)
            H[:3, :3], H[:3, 3] = m[:, :3], m[:, 3] * self.units
            out[f] = H
        return out

    # ------------------------------------------------------------------ identity source
    def identity(self, identity: str) -> IdentityRecord:
        """Frames × cameras of one capture, cameras as OpenCV K / viewmat (metres)."""
        if identity not in self._decoders:
            raise NotFound(f"no Ava-256 identity {identity!r}")
        if identity in self._records:
            return self._records[identity]
        dec = self._decoders[identity]
        calib = self._calibration(dec)
        serials = sorted(calib)
        order = {s: i for i, s in enumerate(serials)}
        frames = self._frames(dec)
        if self.max_frames is not None and len(frames) > self.max_frames:
            keep = np.unique(np.linspace(0, len(frames) - 1, int(self.max_frames)).round().astype(int))
            frames = [frames[i] for i in keep]
        poses = self._head_poses(dec, frames) if self.head_frame else {}
        per_cam: list[tuple[str, dict[str, str], dict[str, str], CameraRecord]] = []
        for s in serials:
            if self.cameras is not None and s not in self.cameras:
                continue
            img = self._archive(dec, "image", s)
            if img is None:
                continue
            prefix, arch = img
            images = {}
            for n in arch.names():
                stem, ext = os.path.splitext(n.rsplit("/", 1)[-1])
                if ext.lower() in IMAGE_EXTS and n.startswith(f"cam{s}/") and stem.isdigit():
                    images[f"{int(stem):06d}"] = prefix + n
            if not images:
                continue
            masks: dict[str, str] = {}
            seg = self._archive(dec, "segmentation_parts", s) if self.masks else None
            if seg is not None:
                mprefix, march = seg
                for n in march.names():
                    stem, ext = os.path.splitext(n.rsplit("/", 1)[-1])
                    if ext.lower() == ".png" and n.startswith(f"cam{s}/") and stem.isdigit():
                        masks[f"{int(stem):06d}"] = mprefix + n
            first = decode_ava_image(self._read(dec, images[min(images)]), images[min(images)])
            K = scaled_intrinsics(calib[s][0], self.calib_size, (first.shape[1], first.shape[0]),
                                  where=f"Ava-256 {identity} cam{s}")
            cam = CameraRecord(K=K.tolist(), viewmat=_viewmat(calib[s][1], self.units).tolist(),
                               width=first.shape[1], height=first.shape[0])
            per_cam.append((s, images, masks, cam))
        if not per_cam:
            raise InvalidInput(f"Ava-256 capture {identity!r} has no camera images under {dec / 'image'}")
        records: list[FrameRecord] = []
        missing_pose = 0
        for f in frames:
            if self.head_frame and f not in poses:
                missing_pose += 1
                continue
            views = []
            for s, images, masks, cam in per_cam:
                if f not in images:
                    continue  # dropped frame (~0.1% of the release)
                if self.head_frame:
                    vm = (np.asarray(cam.viewmat) @ poses[f]).tolist()
                    cam = CameraRecord(K=cam.K, viewmat=vm, width=cam.width, height=cam.height)
                views.append(ViewRecord(view=order[s], image=images[f], mask=masks.get(f), camera=cam))
            if views:
                records.append(FrameRecord(index=int(f), views=views))
        if missing_pose:
            log.warning("Ava-256 %s: %d frame(s) without a head pose skipped", identity, missing_pose)
        if not records:
            raise InvalidInput(f"Ava-256 capture {identity!r}: no frame of frame_list.csv has images")
        record = IdentityRecord(id=identity, frames=records)
        self._records[identity] = record
        return record

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB float32 (H,W,3) in [0,1]; mask float32 (H,W) (1 = head/body, 0 = background/chair) or None."""
        if identity not in self._decoders:
            raise NotFound(f"no Ava-256 identity {identity!r}")
        dec = self._decoders[identity]
        rgb = to_float(decode_ava_image(self._read(dec, view.image), view.image))
        mask = None
        if view.mask:
            labels = _decode_labels(self._read(dec, view.mask), view.mask)
            mask = (~np.isin(labels, self.background_labels)).astype(np.float32)
            mask = resize_mask(mask, rgb.shape[1], rgb.shape[0])
        return rgb, mask


def _pillow_open(data: bytes, what: str) -> Image.Image:
    """A lazily opened Pillow image whose size (from its header) is within ``MAX_PIXELS``."""
    try:
        im = Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"could not read {what}: {e}") from None
    if im.width * im.height > MAX_PIXELS:
        raise LimitExceeded(f"{what} is {im.width}x{im.height}; the limit is {MAX_PIXELS} pixels")
    return im


def avif_support() -> bool:
    """Whether Pillow here decodes AVIF (Pillow >= 11.3 wheels do on Linux, macOS and Windows)."""
    return bool(features.check("avif"))


def decode_ava_image(data: bytes, name: str = "image") -> np.ndarray:
    """RGB uint8 (H, W, 3) of an Ava-256 image: AVIF through Pillow (a dependency, >= 11.3, whose wheels
    always carry libavif), other formats through :func:`ffavatar.images.decode_image`."""
    if not (data[4:8] == b"ftyp" and (b"avif" in data[8:64] or b"avis" in data[8:64])):
        return decode_image(data)
    if not avif_support():
        raise ImageDecodeError(f"{name} is AVIF but this Pillow has no AVIF decoder",
                               hint="install Pillow >= 11.3 from its wheels (pip install -U pillow)")
    im = _pillow_open(data, name)
    try:
        return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ImageDecodeError(f"could not decode {name}: {e}") from None


def _decode_labels(data: bytes, name: str = "segmentation PNG") -> np.ndarray:
    """Integer labels (H, W) of a segmentation PNG: palette (``P``) images give their indices, not the
    palette colours; grey (``L``, ``I;16``, ``I``) images give their values. Colour images are refused."""
    im = _pillow_open(data, name)
    if im.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
        raise InvalidInput(f"{name} is a {im.mode} image; segmentation labels must be palette or grey values")
    try:
        return np.asarray(im).astype(np.int64)
    except (OSError, ValueError) as e:
        raise ImageDecodeError(f"could not decode {name}: {e}") from None


__all__ = ["AVA_CALIB_SIZE", "Ava256Source"]
