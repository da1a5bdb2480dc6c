"""A model-free engine (``serve --engine synthetic``) for benchmarks and fast client tests.

It speaks the whole protocol with cheap stand-ins: an "avatar" is the mean colour of its portraits,
animating yields pre-drawn head-like frames (so PNG/JPEG encoding costs what it costs on real
renders) with FLAME-shaped params derived from each driver frame, the rig is an icosahedron with
the FLAME joint layout, PLY export writes a valid 3DGS file. It never imports torch, so the server
starts in well under a second. ``bench/backend.py`` uses it to measure transport + encoding alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ffavatar.errors import Cancelled, CheckpointError, HeadModelMismatch, InvalidInput, LimitExceeded

from . import protocol as P

HEAD_MODEL_ID = "synthetic-1"
N_EXPR = 10
JOINTS = ["root", "neck", "jaw", "eye_L", "eye_R"]


@dataclass
class SyntheticAvatar:
    color: list[float]
    metadata: dict = field(default_factory=dict)
    head_model_id: str = HEAD_MODEL_ID


@dataclass
class SyntheticFrame:
    index: int
    image: np.ndarray
    alpha: np.ndarray
    params: dict


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], np.float32)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], np.int32)
    return v / np.linalg.norm(v, axis=1, keepdims=True) * 0.1, f


def _check_camera(cam: dict) -> tuple[int, int]:
    """Light validation of a Blender camera dict (the real engine converts it fully) → (width, height)."""
    m = cam.get("matrix_world")
    if not (isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) and len(r) == 4 for r in m)):
        raise InvalidInput("Blender camera dict needs matrix_world as 4x4 nested lists")
    try:
        w, h = P.camera_size(cam)
        float(cam["lens"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"invalid Blender camera dict: {e}") from None
    except P.WireError as e:
        raise InvalidInput(e.message) from None
    if w > P.MAX_SIZE or h > P.MAX_SIZE:
        raise LimitExceeded(f"camera render size {w}x{h} is over {P.MAX_SIZE}x{P.MAX_SIZE}")
    return w, h


class SyntheticEngine:
    """Engine stand-in: same interface as :class:`~ffavatar_backend.engine.ModelEngine`."""

    head_model_id = HEAD_MODEL_ID
    device = "cpu"
    expression_names = [f"exp_{i:02d}" for i in range(N_EXPR)]

    def __init__(self, n_base_frames: int = 8):
        self.n_base_frames = n_base_frames
        self._base: dict[tuple[int, int, tuple], list[np.ndarray]] = {}

    # ------------------------------------------------------------------------ reconstruct
    def reconstruct(self, images, *, crop, progress, cancel):
        color = np.zeros(3)
        for i, img in enumerate(images):
            if cancel and cancel():
                raise Cancelled("reconstruction cancelled")
            color += img.reshape(-1, 3).mean(0) / 255.0
            if progress:
                progress((i + 1) / len(images), f"encoded view {i + 1}/{len(images)}")
        return SyntheticAvatar(color=(color / len(images)).round(6).tolist(), metadata={"views": len(images)})

    def personalize(self, avatar, images, *, steps, crop, progress, cancel):
        for s in range(steps):
            if cancel and cancel():
                raise Cancelled("personalization cancelled")
            if progress and (s % 10 == 0 or s == steps - 1):
                progress((s + 1) / steps, f"step {s + 1}/{steps}")
        avatar.metadata["personalized_steps"] = avatar.metadata.get("personalized_steps", 0) + steps
        return {"steps": steps, "psnr_before": 20.0, "psnr_after": 20.0 + math.log1p(steps)}

    # ------------------------------------------------------------------------ animate
    def _frames(self, avatar: SyntheticAvatar, w: int, h: int) -> list[np.ndarray]:
        key = (w, h, tuple(avatar.color))
        if key not in self._base:
            rng = np.random.default_rng(0)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 17.0 + yy / 29.0)], -1)
            base = 0.25 + 0.5 * base
            frames = []
            for k in range(self.n_base_frames):
                img = (base * 255).astype(np.uint8)
                cx, cy = w / 2 + 0.05 * w * math.sin(k), h / 2 + 0.03 * h * math.cos(k)
                col = tuple(int(255 * c) for c in avatar.color)
                cv2.ellipse(img, (int(cx), int(cy)), (int(0.28 * w), int(0.38 * h)), 0, 0, 360, col, -1, cv2.LINE_AA)
                for e in (-1, 1):
                    eye = (int(cx + e * 0.1 * w), int(cy - 0.06 * h))
                    cv2.circle(img, eye, max(1, int(0.03 * w)), (30, 30, 30), -1)
                cv2.ellipse(img, (int(cx), int(cy + 0.15 * h)), (int(0.08 * w), max(1, int(0.02 * h * (1 + k % 3)))),
                            0, 0, 360, (120, 40, 40), -1)
                texture = cv2.GaussianBlur(rng.integers(0, 24, size=img.shape, dtype=np.uint8), (0, 0), 2.0)
                frames.append(cv2.add(img, texture))  # skin-like fine texture, smooth as a render
            self._base[key] = frames
            if len(self._base) > 8:
                self._base.pop(next(iter(self._base)))
        return self._base[key]

    def animate(self, avatar, frames, *, size, cameras, crop, cancel):
        sizes: list[tuple[int, int]] | None = None
        if isinstance(cameras, dict):
            sizes = [_check_camera(cameras)]
        elif isinstance(cameras, list):
            sizes = [_check_camera(c) for c in cameras]
        for i, frame in enumerate(frames):
            if cancel and cancel():
                raise Cancelled("animation cancelled")
            w, h = sizes[min(i, len(sizes) - 1)] if sizes else (size, size)
            base = self._frames(avatar, w, h)
            image = base[i % len(base)]
            mean = frame.reshape(-1, 3).mean(0) / 255.0
            expr = [float(np.sin(i * 0.3 + k) * mean[k % 3]) for k in range(N_EXPR)]
            pose = [[0.0, 0.05 * math.sin(i * 0.1), 0.0], [0.0, 0.0, 0.0], [0.1 * abs(math.sin(i * 0.2)), 0.0, 0.0],
                    [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
            params = {"expression": expr, "pose": pose, "cam_rot": [0.0, 0.0, 0.0], "cam_t": [0.0, 0.0, 0.6],
                      "focal": float(1.2 * w)}
            yield SyntheticFrame(i, image, np.full((h, w), 255, np.uint8), params)

    # ------------------------------------------------------------------------ rig, files
    def rig(self, n_expr):
        v, f = _icosahedron()
        e = N_EXPR if n_expr is None else min(int(n_expr), N_EXPR)
        rng = np.random.default_rng(1)
        joints = np.array([[0, -0.05, 0], [0, -0.02, 0], [0, -0.03, 0.05], [0.03, 0.03, 0.08], [-0.03, 0.03, 0.08]],
                          np.float32)
        w = np.exp(-np.linalg.norm(v[:, None] - joints[None], axis=-1) ** 2 / 0.002).astype(np.float32)
        dirs = (0.003 * rng.standard_normal((e, len(v), 3))).astype(np.float32)
        return {"vertices": v, "faces": f, "expression_dirs": dirs,
                "expression_names": self.expression_names[:e], "joints": joints, "joint_names": list(JOINTS),
                "parents": np.array([-1, 0, 1, 1, 1], np.int32), "weights": w / w.sum(1, keepdims=True),
                "head_model_id": HEAD_MODEL_ID}

    def save(self, avatar, path):
        doc = {"format": "ffavatar-synthetic", "head_model_id": avatar.head_model_id, "color": avatar.color,
               "metadata": avatar.metadata}
        Path(path).write_text(json.dumps(doc))

    def load(self, path):
        try:
            doc = json.loads(Path(path).read_text())
            if doc.get("format") != "ffavatar-synthetic":
                raise ValueError("not a synthetic avatar")
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"cannot read avatar file {Path(path).name}: {e}") from None
        if doc["head_model_id"] != HEAD_MODEL_ID:
            raise HeadModelMismatch(f"avatar was built on head model {doc['head_model_id']}, not {HEAD_MODEL_ID}")
        return SyntheticAvatar(color=list(doc["color"]), metadata=dict(doc.get("metadata", {})))

    def export_ply(self, avatar, path):
        v, _ = _icosahedron()
        n = len(v)
        cols = {"x": v[:, 0], "y": v[:, 1], "z": v[:, 2]}
        for k in ("nx", "ny", "nz"):
            cols[k] = np.zeros(n, np.float32)
        for k, c in enumerate(avatar.color):
            cols[f"f_dc_{k}"] = np.full(n, (c - 0.5) / 0.28209479177387814, np.float32)
        cols["opacity"] = np.full(n, 2.0, np.float32)
        for k in range(3):
            cols[f"scale_{k}"] = np.full(n, math.log(0.01), np.float32)
        for k in range(4):
            cols[f"rot_{k}"] = np.full(n, 1.0 if k == 0 else 0.0, np.float32)
        header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
        header += "".join(f"property float {k}\n" for k in cols) + "end_header\n"
        body = np.stack([cols[k] for k in cols], 1).astype("<f4").tobytes()
        Path(path).write_bytes(header.encode("ascii") + body)
