"""Synthetic multi-view data from the head model: random identities, expressions, poses and cameras.

Each identity is the head model with random shape coefficients and a seeded appearance (skin, hair,
brows, lips, eyes), turned into dense surface Gaussians (flat discs on the subdivided surface). Each
frame draws an expression, jaw/eye/neck/head pose and optional lighting; each view a camera around
the head. Frames are rendered with the project's rasterizer and written in the generic dataset
folder format (``docs/datasets.md``) with masks, cameras and ground-truth FLAME parameters.
Everything is deterministic by seed (same seed → same bytes).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..animate import Animator
from ..flame import FlameModel, load_head_model
from ..flame.appearance import Appearance
from ..flame.subdivide import subdivide_cached
from ..gaussians import Gaussians
from ..images import to_uint8
from ..render import rasterize
from ..render.camera import Camera
from ..rotations import quat_to_matrix
from .folder import CameraRecord, FrameRecord, IdentityRecord, ViewRecord, write_dataset_index, write_identity

log = logging.getLogger(__name__)


@dataclass
class SynthConfig:
    """What to generate. Angles in degrees, distances in metres, focal as a multiple of the image size."""

    identities: int = 4
    frames: int = 4
    views: int = 4
    size: int = 128
    seed: int = 0
    subdivision: int = 1
    yaw: float = 90.0
    pitch: float = 30.0
    distance: tuple[float, float] = (0.55, 0.75)
    focal: tuple[float, float] = (1.5, 1.9)
    shape_sigma: float = 1.0
    expression_sigma: float = 0.8
    jaw_max: float = 0.35
    head_yaw: float = 25.0
    head_pitch: float = 15.0
    lighting: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _rng(seed: int, *keys: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _spacing(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Mean length of the edges at each vertex (V,)."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    total, count = np.zeros(len(v)), np.zeros(len(v))
    np.add.at(total, e.ravel(), np.repeat(length, 2))
    np.add.at(count, e.ravel(), 1)
    return total / np.maximum(count, 1)


def _z_to(normals: np.ndarray) -> np.ndarray:
    """wxyz quaternions (N,4) rotating +Z onto each unit normal."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, normals)
    w = 1.0 + normals @ z
    q = np.concatenate([w[:, None], axis], axis=1)
    flip = w < 1e-6  # normal ≈ -Z: rotate by pi about X
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def surface_gaussians(points: np.ndarray, faces: np.ndarray, rgb: np.ndarray, opacity: float = 0.97) -> Gaussians:
    """Flat discs (N,) on a mesh's vertices: tangent size ~ local edge length, thin along the normal."""
    s = _spacing(points, faces)
    scales = np.stack([0.75 * s, 0.75 * s, 0.12 * s], axis=1)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Gaussians.from_rgb(means=t(points), rgb=t(rgb), scales=t(scales),
                              opacities=torch.full((len(points),), opacity), quats=t(_z_to(_vertex_normals(points, faces))))


class SyntheticHead:
    """The head model prepared once for rendering many identities (dense anchors + animator)."""

    def __init__(self, model: dict[str, np.ndarray] | None = None, subdivision: int = 1):
        self.model = model if model is not None else load_head_model()
        self.flame = FlameModel(self.model)
        self.dense = subdivide_cached(self.model, subdivision, self.flame.model_id)
        self.animator = Animator(self.flame, self.dense["upsample"])
        self.parts = self.dense.get("vertex_part", np.zeros(len(self.dense["v_template"]), np.int8))

    def identity(self, seed: int) -> Gaussians:
        """Canonical Gaussians (N,) of an identity: its shaped surface in the template's frame."""
        pts = self.dense["v_template"].astype(np.float64)
        rgb = Appearance.from_seed(seed).colors(pts, self.parts)
        return surface_gaussians(pts, self.dense["f"], rgb)


def random_frame(rng: np.random.Generator, flame: FlameModel, cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Random FLAME expression (E,), pose (5,3) and a light direction for one frame."""
    expr = rng.normal(0, cfg.expression_sigma, flame.n_expr) * (rng.random(flame.n_expr) < 0.35)
    pose = np.zeros((5, 3))
    pose[0] = np.radians([rng.uniform(-cfg.head_pitch, cfg.head_pitch), rng.uniform(-cfg.head_yaw, cfg.head_yaw),
                          rng.uniform(-8, 8)])
    pose[1] = np.radians(rng.uniform(-8, 8, 3))
    pose[2, 0] = rng.uniform(0, cfg.jaw_max) * (rng.random() < 0.7)
    eye = np.radians([rng.uniform(-15, 15), rng.uniform(-20, 20), 0])
    pose[3] = pose[4] = eye
    light = rng.normal(size=3) + np.array([0.0, 0.6, 1.5])
    return {"expression": expr, "pose": pose, "light": light / np.linalg.norm(light),
            "ambient": np.array(rng.uniform(0.45, 0.7))}


def shade(g: Gaussians, base_rgb: torch.Tensor, light: np.ndarray, ambient: float) -> Gaussians:
    """Lambertian shading of posed surface discs (their local +Z is the normal)."""
    normals = quat_to_matrix(g.quats)[..., :, 2]
    ndl = (normals @ torch.as_tensor(light, dtype=normals.dtype)).clamp_min(0)
    rgb = base_rgb * (ambient + (1 - ambient) * 1.25 * ndl)[..., None]
    return Gaussians.from_rgb(g.means, rgb.clamp(0, 1), g.scales, g.opacities, quats=g.quats)


def render_identity(head: SyntheticHead, cfg: SynthConfig, index: int,
                    progress: Callable[[], None] | None = None) -> tuple[IdentityRecord, list[list[tuple[np.ndarray, np.ndarray]]]]:
    """Render one identity: its record and per frame, per view (RGB uint8 (S,S,3), mask uint8 (S,S))."""
    rng = _rng(cfg.seed, "identity", index)
    shape = rng.normal(0, cfg.shape_sigma, head.flame.n_shape)
    app_seed = int(rng.integers(0, 2**31 - 1))
    canonical = head.identity(app_seed)
    base_rgb = canonical.rgb
    record = IdentityRecord(id=f"id{index:05d}", shape=shape.tolist(), appearance_seed=app_seed, frames=[])
    images: list[list[tuple[np.ndarray, np.ndarray]]] = []
    bg = torch.tensor(cfg.background)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    for fi in range(cfg.frames):
        frng = _rng(cfg.seed, "frame", index, fi)
        p = random_frame(frng, head.flame, cfg)
        with torch.no_grad():
            posed = head.animator(canonical, expression=t(p["expression"]), pose=t(p["pose"]), shape=t(shape))[0]
            if cfg.lighting:
                posed = shade(posed, base_rgb, p["light"], float(p["ambient"]))
            center = head.flame(shape=t(shape), expression=t(p["expression"]), pose=t(p["pose"])).vertices[0].mean(0)
        n = cfg.views
        yaw = frng.uniform(-cfg.yaw, cfg.yaw, n)
        yaw[0] = frng.uniform(-15, 15)  # the first view of every frame is near-frontal
        pitch = frng.uniform(-cfg.pitch, cfg.pitch, n)
        dist = frng.uniform(*cfg.distance, n)
        focal = frng.uniform(*cfg.focal, n) * cfg.size
        cams = Camera.from_spherical(yaw, pitch, dist, center.numpy() + frng.normal(0, 0.01, 3),
                                     focal=focal, width=cfg.size, height=cfg.size)
        with torch.no_grad():
            out = rasterize(posed, cams, background=bg, backend="torch")
        frame_images, views = [], []
        for vi in range(n):
            frame_images.append((to_uint8(out.rgb[vi].numpy()), to_uint8(out.alpha[vi, ..., 0].numpy())))
            views.append(ViewRecord(view=vi, image=f"images/{fi:06d}_{vi:02d}.png", mask=f"masks/{fi:06d}_{vi:02d}.png",
                                    camera=CameraRecord.from_camera(cams[vi])))
            if progress:
                progress()
        images.append(frame_images)
        record.frames.append(FrameRecord(index=fi, expression=p["expression"].tolist(), pose=p["pose"].tolist(),
                                         views=views))
    return record, images


def generate(cfg: SynthConfig, out: str | Path, progress: Callable[[], None] | None = None,
             head: SyntheticHead | None = None) -> Path:
    """Write a synthetic multi-view dataset to ``out`` (see docs/datasets.md); returns the folder."""
    out = Path(out)
    head = head or SyntheticHead(subdivision=cfg.subdivision)
    ids = []
    for i in range(cfg.identities):
        record, images = render_identity(head, cfg, i, progress)
        write_identity(out, record, images)
        ids.append(record.id)
    write_dataset_index(out, kind="multiview", identities=ids, head_model_id=head.flame.model_id,
                        n_shape=head.flame.n_shape, n_expr=head.flame.n_expr,
                        extra={"generator": "ffavatar.synthetic", "config": asdict(cfg)})
    return out


def driver_trajectory(n: int, n_expr: int, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """A smooth, readable performance for driver clips: the jaw talks, the head turns and nods,
    the eyes look around, and named expressions (smile, blink, brow raise) come and go.

    Returns expression (n, E) and pose (n, 5, 3)."""
    rng = _rng(seed, "driver")
    t = np.linspace(0, 1, n)
    expr = np.zeros((n, n_expr))
    bump = lambda c, w: np.exp(-0.5 * ((t - c) / w) ** 2)  # noqa: E731
    schedule = [("smile_L", 0.3, 0.08, 2.0), ("smile_R", 0.3, 0.08, 2.0), ("blink_L", 0.55, 0.02, 2.0),
                ("blink_R", 0.55, 0.02, 2.0), ("brow_raise_L", 0.75, 0.06, 2.0), ("brow_raise_R", 0.75, 0.06, 2.0),
                ("pucker", 0.9, 0.05, 2.0)]
    for name, c, w, amp in schedule:
        if name in names:
            expr[:, names.index(name)] = amp * bump(c, w)
    expr += 0.15 * np.sin(2 * np.pi * (t[:, None] * rng.uniform(0.5, 2, n_expr) + rng.uniform(0, 1, n_expr)))
    pose = np.zeros((n, 5, 3))
    pose[:, 0, 1] = np.radians(18) * np.sin(2 * np.pi * t)          # head turns left-right
    pose[:, 0, 0] = np.radians(8) * np.sin(4 * np.pi * t + 0.5)     # and nods
    pose[:, 2, 0] = np.clip(0.28 * np.sin(6 * np.pi * t) ** 2 * (t < 0.5), 0, None)  # talking jaw
    pose[:, 3, 1] = pose[:, 4, 1] = np.radians(12) * np.sin(2 * np.pi * t + 1.0)     # eyes look around
    return {"expression": expr, "pose": pose}


def render_clip(head: SyntheticHead, identity_seed: int, n: int, size: int = 128, seed: int = 0,
                distance: float = 0.65, focal: float = 1.7) -> list[np.ndarray]:
    """RGB uint8 frames of one synthetic identity performing :func:`driver_trajectory` to a fixed
    frontal camera (a driver clip with known motion)."""
    rng = _rng(seed, "clip-identity", identity_seed)
    shape = rng.normal(0, 1.0, head.flame.n_shape)
    canonical = head.identity(identity_seed)
    traj = driver_trajectory(n, head.flame.n_expr, head.flame.expression_names, seed)
    cam = Camera.look_at((0.0, 0.02, distance), (0.0, 0.0, 0.0), focal=focal * size, width=size, height=size)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    frames = []
    for i in range(n):
        with torch.no_grad():
            posed = head.animator(canonical, expression=t(traj["expression"][i]), pose=t(traj["pose"][i]),
                                  shape=t(shape))[0]
            posed = shade(posed, canonical.rgb, np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0]), 0.6)
            out = rasterize(posed, cam, background=torch.ones(3), backend="torch")
        frames.append(to_uint8(out.rgb[0].numpy()))
    return frames
