"""How the fixed numbers of the face path were derived (rerun after changing the demo head or its
synthetic renders): the iBUG-68 <-> MediaPipe table of ``fitting.landmarks`` and the landmark crop
framing of ``face.crop``. Both run MediaPipe on synthetic renders whose FLAME parameters and cameras
are known.

    python -m ffavatar.fitting.calibrate        # prints both, ~3 min on 2 CPU cores
"""

from __future__ import annotations

import numpy as np
import torch

IBUG68_MIRROR_PAIRS = ([(i, 16 - i) for i in range(8)] + [(8, 8)] + [(17 + i, 26 - i) for i in range(5)]
                       + [(27, 27), (28, 28), (29, 29), (30, 30), (31, 35), (32, 34), (33, 33)]
                       + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
                       + [(48, 54), (49, 53), (50, 52), (51, 51), (55, 59), (56, 58), (57, 57)]
                       + [(60, 64), (61, 63), (62, 62), (65, 67), (66, 66)])
"""iBUG-68 points and their mirror images (self-paired on the midline)."""


def _renders(identities: int = 6, size: int = 256, yaw: float = 35.0, pitch: float = 12.0):
    """(rgb, flame params, camera, shape) of synthetic views with known parameters."""
    from ..data.synthetic import SynthConfig, SyntheticHead, render_identity

    head = SyntheticHead(subdivision=1)
    for ident in range(identities):
        cfg = SynthConfig(identities=1, frames=3, views=3, size=size, seed=10 + ident, yaw=yaw, pitch=pitch)
        rec, images = render_identity(head, cfg, 0)
        for fi, fr in enumerate(rec.frames):
            for vi, v in enumerate(fr.views):
                yield head, images[fi][vi][0], fr, v.camera.to_camera(), rec.shape


def mediapipe_mirror(finder=None, size: int = 256) -> np.ndarray:
    """(478,) index of each MediaPipe point's mirror image, from frontal renders of the demo head."""
    from ..data.synthetic import SyntheticHead
    from ..face.landmarker import shared_finder
    from ..images import to_uint8
    from ..render import rasterize
    from ..render.camera import Camera

    finder = finder or shared_finder("landmarker")
    head = SyntheticHead(subdivision=1)
    cam = Camera.look_at((0.0, 0.0, 0.6), (0.0, -0.01, 0.0), focal=1.7 * size, width=size, height=size)
    pts = []
    for seed in range(4):
        with torch.no_grad():
            posed = head.animator(head.identity(seed), expression=torch.zeros(1, head.flame.n_expr),
                                  pose=torch.zeros(1, 5, 3))[0]
            img = to_uint8(rasterize(posed, cam, background=torch.ones(3), backend="torch").rgb[0].numpy())
        pts.append(finder.find_one(img).points)
    p = np.mean(pts, 0)
    mid = p[[1, 4, 5, 195, 197, 6, 168, 0, 17, 152, 13, 14], 0].mean()
    q = p.copy()
    q[:, 0] = 2 * mid - q[:, 0]
    return np.linalg.norm(p[:, None, :2] - q[None, :, :2], axis=-1).argmin(1)


def derive_ibug68_table(finder=None) -> tuple[np.ndarray, np.ndarray]:
    """(table (68,), mean residual (68,) in % of the face size): per iBUG point of the demo head,
    the MediaPipe point nearest to it over the renders, chosen in mirror pairs without repeats."""
    from scipy.optimize import linear_sum_assignment

    from ..face.landmarker import shared_finder
    from .landmarks import face_size

    finder = finder or shared_finder("landmarker")
    gt, mp = [], []
    for head, rgb, fr, cam, shape in _renders():
        faces = finder.find(rgb)
        if not faces:
            continue
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
        with torch.no_grad():
            out = head.flame(shape=t(shape)[:, :head.flame.n_shape], expression=t(fr.expression), pose=t(fr.pose))
        gt.append(cam.project(out.landmarks)[0].numpy())
        mp.append(faces[0].points[:, :2])
    gt, mp = np.array(gt), np.array(mp)
    d = (np.linalg.norm(gt[:, :, None] - mp[:, None], axis=-1) / face_size(gt)[:, None, None] * 100).mean(0)
    mirror = mediapipe_mirror(finder)
    involution = mirror[mirror] == np.arange(len(mirror))
    midline = np.flatnonzero(mirror == np.arange(len(mirror)))
    cost = np.full((len(IBUG68_MIRROR_PAIRS), d.shape[1]), 1e6)
    for k, (a, b) in enumerate(IBUG68_MIRROR_PAIRS):
        if a == b:
            cost[k, midline] = d[a, midline]
        else:
            cost[k] = (d[a] + d[b, mirror]) / 2
            cost[k, ~involution] = 1e6
            cost[k, midline] = 1e6
    table = np.zeros(68, np.int64)
    for k, i in zip(*linear_sum_assignment(cost)):
        a, b = IBUG68_MIRROR_PAIRS[k]
        table[a], table[b] = i, mirror[i]
    return table, d[np.arange(68), table]


def derive_crop_framing(finder=None) -> dict[str, float]:
    """Least-squares framing constants of ``face.crop`` (side, head depth, drop in face sizes): the
    training renders' image centre and size predicted from MediaPipe's landmarks."""
    from ..face.crop import face_size as rms_size
    from ..face.landmarker import shared_finder

    finder = finder or shared_finder("landmarker")
    rows, rhs, sides = [], [], []
    for _, rgb, _, _, _ in _renders(identities=3, size=128, yaw=60.0, pitch=15.0):
        faces = finder.find(rgb)
        if not faces:
            continue
        p = faces[0].points.astype(np.float64)
        s, c = rms_size(p), p.mean(0)
        n = np.linalg.svd(p - c, full_matrices=False)[2][2]
        n = -n if n[2] > 0 else n
        h, w = rgb.shape[:2]
        sides.append(w / s)
        rows += [[-n[0], 0.0], [-n[1], 1.0]]
        rhs += [(w / 2 - c[0]) / s, (h / 2 - c[1]) / s]
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return {"LANDMARK_SIDE": float(np.mean(sides)), "HEAD_DEPTH": float(sol[0]), "HEAD_DROP": float(sol[1])}


if __name__ == "__main__":
    table, err = derive_ibug68_table()
    print("IBUG68_FROM_MEDIAPIPE =", table.tolist())
    print("residual % face size:", np.round(err, 1).tolist(), "mean", round(float(err.mean()), 2))
    print(derive_crop_framing())
