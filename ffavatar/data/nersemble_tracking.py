"""NeRSemble's FLAME tracking (``tracking/flame2023_tracking_v2.npz``) converted exactly to our FLAME pose.

The NeRSemble photorealistic-avatar benchmark (``nersemble-benchmark``, mono FLAME avatar task) ships one
tracking file per sequence, made with FLAME 2023 (300 shape, 100 expression components)::

    shape (1, 300)  expression (T, 100)  jaw (T, 3)  neck (T, 3)  eyes (T, 6)   axis-angle, FLAME joints
    rotation (T, 3)  rotation_matrices (T, 3, 3)  translation (T, 3)  scale (1, 1)  frames (T,)

Its FLAME is evaluated with a zero global (root) rotation, then placed in the world (the cameras'
frame) by a similarity applied after FLAME: ``x_world = scale * R @ x + translation`` with
``R = Rx(a) @ Ry(b) @ Rz(c)`` for ``rotation = (a, b, c)`` (scipy's intrinsic ``"XYZ"`` Euler angles,
as the benchmark's ``Pose.from_euler(..., "XYZ")`` uses).

Our FLAME (:class:`~ffavatar.flame.FlameModel`) rotates the head with the root joint's axis-angle pose
instead, about the root joint ``J0`` (regressed from the shaped and expressed template). Linear blend
skinning gives ``FLAME(root = R) = R @ FLAME(root = 0) + (I - R) @ J0`` for every vertex, so, exactly::

    x_world = scale * (FLAME(shape, expression, pose) + tau),   pose[root] = axis_angle(R),
    tau = translation / scale - (I - R) @ J0

and a camera ``viewmat = [Rv | tv]`` (world to camera) sees the same pixels as the rigid camera
``[Rv | Rv @ tau + tv / scale]`` looking at ``FLAME(shape, expression, pose)`` in FLAME's own frame
(depths are divided by ``scale``; projections do not change).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import FlameFileError, InvalidInput

log = logging.getLogger(__name__)

TRACKING_FILES = ("flame2023_tracking_v2.npz", "flame2023_tracking.npz")
"""Tracking files of a sequence folder's ``tracking/``, preferred first (v2 is the benchmark's current one)."""
EULER_ORDER = "XYZ"
"""scipy Euler convention of ``rotation`` (intrinsic X, then Y, then Z: R = Rx @ Ry @ Rz)."""
_MAX_ROWS = 1_000_000


@dataclass
class FlameTracking:
    """One sequence's FLAME tracking (shapes in the module docstring; ``scale`` a float)."""

    shape: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    scale: float
    jaw: np.ndarray
    neck: np.ndarray
    eyes: np.ndarray
    frames: np.ndarray
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> FlameTracking:
        """Read a tracking ``.npz`` (no pickles) and check its shapes.

        Raises:
            InvalidInput: the file is not a readable npz, lacks a key, or has inconsistent shapes; or
                its ``rotation_matrices`` disagree with ``rotation`` read as XYZ Euler angles.
        """
        p = Path(path)
        from ..flame.io import check_npz_sizes

        try:
            check_npz_sizes(p.read_bytes(), str(p))
            with np.load(p, allow_pickle=False) as z:
                d = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError, EOFError, FlameFileError) as e:
            raise InvalidInput(f"{p}: not a readable FLAME tracking .npz ({e})") from None
        missing = [k for k in ("shape", "expression", "rotation", "translation", "scale", "jaw", "frames")
                   if k not in d]
        if missing:
            raise InvalidInput(f"{p}: FLAME tracking lacks {missing} (it has {sorted(d)})")
        T = len(d["expression"])
        if not 0 < T <= _MAX_ROWS or d["expression"].ndim != 2:
            raise InvalidInput(f"{p}: expression must be (T, E) with T >= 1, got {d['expression'].shape}")

        def rows(key: str, width: int, default: float | None = None) -> np.ndarray:
            if key not in d and default is not None:
                return np.full((T, width), default)
            a = np.asarray(d[key], dtype=np.float64)
            if a.shape != (T, width) or not np.isfinite(a).all():
                raise InvalidInput(f"{p}: FLAME tracking '{key}' must be finite ({T}, {width}), got {a.shape}")
            return a

        shape = np.asarray(d["shape"], dtype=np.float64).reshape(-1)
        scale = np.asarray(d["scale"], dtype=np.float64).reshape(-1)
        frames = np.asarray(d["frames"]).reshape(-1)
        if scale.size != 1 or not np.isfinite(scale[0]) or scale[0] <= 0:
            raise InvalidInput(f"{p}: FLAME tracking 'scale' must be one positive number, got {d['scale']!r}")
        if len(frames) != T or frames.dtype.kind not in "iu" or (T and frames.min() < 0):
            raise InvalidInput(f"{p}: FLAME tracking 'frames' must be {T} non-negative integers")
        if not np.isfinite(shape).all():
            raise InvalidInput(f"{p}: FLAME tracking 'shape' holds NaN or infinite values")
        out = cls(shape=shape, expression=rows("expression", d["expression"].shape[1]),
                  rotation=rows("rotation", 3), translation=rows("translation", 3), scale=float(scale[0]),
                  jaw=rows("jaw", 3), neck=rows("neck", 3, 0.0), eyes=rows("eyes", 6, 0.0),
                  frames=frames.astype(np.int64), path=p)
        if "rotation_matrices" in d:
            given = np.asarray(d["rotation_matrices"], dtype=np.float64)
            if given.shape != (T, 3, 3) or np.abs(given - out.rotation_matrices()).max() > 1e-4:
                raise InvalidInput(f"{p}: 'rotation_matrices' disagree with 'rotation' read as {EULER_ORDER} "
                                   "Euler angles; unknown rotation convention")
        return out

    def __len__(self) -> int:
        return len(self.expression)

    def rotation_matrices(self) -> np.ndarray:
        """(T, 3, 3) head rotations ``Rx(a) @ Ry(b) @ Rz(c)``."""
        return Rotation.from_euler(EULER_ORDER, self.rotation).as_matrix()

    def pose(self) -> np.ndarray:
        """(T, 5, 3) axis-angle in our joint order: root = the head rotation, neck, jaw, eye_L, eye_R
        (``eyes[:, :3]`` and ``eyes[:, 3:]``, FLAME's joint order)."""
        root = Rotation.from_matrix(self.rotation_matrices()).as_rotvec()
        return np.stack([root, self.neck, self.jaw, self.eyes[:, :3], self.eyes[:, 3:]], axis=1)

    def model_to_world(self) -> np.ndarray:
        """(T, 4, 4) similarity that places the root-unrotated FLAME in the world."""
        m = np.tile(np.eye(4), (len(self), 1, 1))
        m[:, :3, :3] = self.scale * self.rotation_matrices()
        m[:, :3, 3] = self.translation
        return m

    def flame_translation(self, root_joints: np.ndarray) -> np.ndarray:
        """(T, 3) ``tau`` with ``x_world = scale * (FLAME(pose()) + tau)``, given the root joint J0 (T, 3)
        of FLAME with this tracking's shape and expression (``FlameModel(...).joints[:, 0]``)."""
        j0 = np.asarray(root_joints, dtype=np.float64).reshape(len(self), 3)
        rot = self.rotation_matrices()
        return self.translation / self.scale - (j0 - np.einsum("tij,tj->ti", rot, j0))

    def camera_in_flame(self, viewmat: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """(T, 4, 4) rigid world-to-camera transforms in FLAME's frame for one camera ``viewmat`` (4, 4)
        of the world: ``[Rv | Rv @ tau + tv / scale]``; same pixels as the original camera."""
        vm = np.asarray(viewmat, dtype=np.float64)
        out = np.tile(np.eye(4), (len(self), 1, 1))
        out[:, :3, :3] = vm[:3, :3]
        out[:, :3, 3] = np.asarray(tau) @ vm[:3, :3].T + vm[:3, 3] / self.scale
        return out

    def rows_for(self, n_video_frames: int) -> dict[int, int]:
        """{video frame index: tracking row}: ``frames`` are video frame indices when they all fit in
        the video; otherwise rows map to video frames in order (then their counts must match).

        Raises:
            InvalidInput: neither reading fits the video.
        """
        f = self.frames
        if len(np.unique(f)) == len(f) and (len(f) == 0 or f.max() < n_video_frames):
            return {int(v): i for i, v in enumerate(f)}
        if len(f) == n_video_frames:
            return {i: i for i in range(len(f))}
        raise InvalidInput(f"{self.path}: {len(f)} tracked frames (ids {int(f.min())}..{int(f.max())}) do not "
                           f"match the {n_video_frames} frames of the video")


def find_tracking(sequence_dir: Path) -> Path | None:
    """The tracking file of a sequence folder (``tracking/flame2023_tracking_v2.npz``, else v1), or None."""
    for name in TRACKING_FILES:
        p = sequence_dir / "tracking" / name
        if p.is_file():
            if name != TRACKING_FILES[0]:
                log.warning("%s: only the v1 FLAME tracking is present; the benchmark's current one is %s", p,
                            TRACKING_FILES[0])
            return p
    return None


__all__ = ["EULER_ORDER", "TRACKING_FILES", "FlameTracking", "find_tracking"]
