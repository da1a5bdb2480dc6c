"""Drive fidelity: does the avatar do what the driver did? Both clips go through the face landmarker;
its ARKit scores and facial transformation matrices are compared frame by frame.

* ``jaw_open_r``: Pearson correlation of ``jawOpen`` (goal >= 0.8).
* blinks: events where ``(eyeBlinkLeft + eyeBlinkRight) / 2`` rises above a threshold; a driver
  blink is matched when the avatar blinks within ``tolerance`` frames of it (and vice versa).
* ``yaw_r``, ``pitch_r``: Pearson correlation of the head's yaw and pitch (degrees, from the
  rotation part of the facial transformation matrix; goals >= 0.9).

Frames where either clip has no face (NaN rows) are left out of every metric; a metric with fewer
than :data:`MIN_FRAMES` such frames, or whose driver signal does not vary, is None with the reason,
never a number that means nothing.

:func:`track_angles` reads the same head yaw/pitch from a FLAME track (camera and root/neck pose),
so the track itself (what the Blender rig is keyed with) can be measured against the driver too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InvalidInput
from .landmarker import ARKIT_NAMES

GOALS = {"jaw_open_r": 0.8, "yaw_r": 0.9, "pitch_r": 0.9}
MIN_FRAMES = 10


def head_angles(matrices: np.ndarray) -> np.ndarray:
    """(T, 4, 4) facial transformation matrices -> (T, 2) yaw and pitch in degrees (yaw: turning
    to the image's right is positive; pitch: nodding down is positive)."""
    r = np.asarray(matrices, dtype=np.float64)[:, :3, :3]
    yaw = np.degrees(np.arcsin(np.clip(r[:, 0, 2], -1, 1)))
    pitch = np.degrees(np.arctan2(-r[:, 1, 2], r[:, 2, 2]))
    return np.stack([yaw, pitch], axis=-1)


def track_angles(viewmat: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(T, 2) head yaw and pitch in degrees, as :func:`head_angles` reads them, from a FLAME track:
    ``viewmat`` (T, 4, 4) world-to-camera (OpenCV) and ``pose`` (T, 5, 3) axis-angle (root and neck
    used). FLAME's head frame (x the subject's left, y up, z out of the face) is the MediaPipe
    canonical face's; OpenCV's camera axes are flipped to its y-up, z-toward-viewer camera."""
    from scipy.spatial.transform import Rotation

    p = np.asarray(pose, dtype=np.float64)
    head = Rotation.from_rotvec(p[:, 0]).as_matrix() @ Rotation.from_rotvec(p[:, 1]).as_matrix()
    flip = np.diag([1.0, -1.0, -1.0])
    r = flip @ np.asarray(viewmat, dtype=np.float64)[:, :3, :3] @ head
    m = np.zeros((len(r), 4, 4))
    m[:, :3, :3] = r
    return head_angles(m)


def blink_events(arkit: np.ndarray, threshold: float = 0.4, min_gap: int = 2) -> list[tuple[int, int]]:
    """``[(first, last)]`` frame runs where the mean eye-blink score exceeds ``threshold`` (runs
    closer than ``min_gap`` frames merge)."""
    a = np.asarray(arkit, dtype=np.float64)
    s = 0.5 * (a[:, ARKIT_NAMES.index("eyeBlinkLeft")] + a[:, ARKIT_NAMES.index("eyeBlinkRight")])
    on = np.flatnonzero(s > threshold)
    runs: list[list[int]] = []
    for i in on.tolist():
        if runs and i - runs[-1][1] <= min_gap:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a_, b_) for a_, b_ in runs]


def _match(a: list[tuple[int, int]], b: list[tuple[int, int]], tol: int) -> int:
    """How many events of ``a`` overlap an event of ``b`` within ``tol`` frames."""
    return sum(any(x0 - tol <= y1 and y0 <= x1 + tol for y0, y1 in b) for x0, x1 in a)


def _corr(x: np.ndarray, y: np.ndarray, min_std: float) -> tuple[float | None, str | None]:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < MIN_FRAMES:
        return None, f"only {int(ok.sum())} frame(s) have a face in both clips"
    x, y = x[ok], y[ok]
    if np.std(x) < min_std:
        return None, f"the driver hardly varies (std {np.std(x):.3g})"
    if np.std(y) < 1e-9:
        return 0.0, "the avatar does not move"
    return float(np.corrcoef(x, y)[0, 1]), None


@dataclass
class Fidelity:
    """Drive-fidelity numbers (see the module docstring); ``notes`` say why a metric is None."""

    frames: int
    frames_compared: int
    jaw_open_r: float | None
    yaw_r: float | None
    pitch_r: float | None
    blinks_driver: int
    blinks_avatar: int
    blinks_matched: int
    yaw_range_deg: float
    pitch_range_deg: float
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def blinks_ok(self) -> bool:
        return self.blinks_matched == self.blinks_driver == self.blinks_avatar

    def meets_goals(self) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {k: (None if getattr(self, k) is None else getattr(self, k) >= g)
                                       for k, g in GOALS.items()}
        out["blinks"] = None if "blinks" in self.notes else self.blinks_ok
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "goals": GOALS, "meets": self.meets_goals()}


def drive_fidelity(driver_arkit: np.ndarray, driver_matrix: np.ndarray, avatar_arkit: np.ndarray,
                   avatar_matrix: np.ndarray, *, tolerance: int = 2, blink_threshold: float = 0.4) -> Fidelity:
    """Compare the landmarker's readings of the driver and of the rendered avatar, frame by frame.

    arkit: (T, 52) in :data:`ARKIT_NAMES` order; matrix: (T, 4, 4) facial transformation matrices;
    rows of NaN where the landmarker found no face.
    """
    da, aa = np.asarray(driver_arkit), np.asarray(avatar_arkit)
    if da.shape != aa.shape or da.ndim != 2 or da.shape[1] != len(ARKIT_NAMES):
        raise InvalidInput(f"need two (T, 52) score arrays, got {da.shape} and {aa.shape}")
    notes: dict[str, str] = {}
    j = ARKIT_NAMES.index("jawOpen")
    jaw, why = _corr(da[:, j], aa[:, j], 0.01)
    if why:
        notes["jaw_open_r"] = why
    dh, ah = head_angles(driver_matrix), head_angles(avatar_matrix)
    yaw, why = _corr(dh[:, 0], ah[:, 0], 0.5)
    if why:
        notes["yaw_r"] = why
    pitch, why = _corr(dh[:, 1], ah[:, 1], 0.5)
    if why:
        notes["pitch_r"] = why
    both = np.isfinite(da).all(1) & np.isfinite(aa).all(1)
    bd = blink_events(np.where(both[:, None], da, 0), blink_threshold)
    ba = blink_events(np.where(both[:, None], aa, 0), blink_threshold)
    if both.sum() < MIN_FRAMES:
        notes["blinks"] = f"only {int(both.sum())} frame(s) have a face in both clips"
    return Fidelity(frames=len(da), frames_compared=int(both.sum()), jaw_open_r=jaw, yaw_r=yaw, pitch_r=pitch, blinks_driver=len(bd),
                    blinks_avatar=len(ba), blinks_matched=_match(bd, ba, tolerance),
                    yaw_range_deg=float(np.nanmax(dh[:, 0]) - np.nanmin(dh[:, 0])),
                    pitch_range_deg=float(np.nanmax(dh[:, 1]) - np.nanmin(dh[:, 1])), notes=notes)


def track_fidelity(driver_arkit: np.ndarray, driver_matrix: np.ndarray, jaw_pitch: np.ndarray,
                   track_yaw_pitch: np.ndarray) -> dict:
    """The FLAME track against the driver's landmarker readings: correlation of the jaw's opening
    angle (FLAME jaw pitch, radians) with ``jawOpen``, and of the track's head yaw/pitch
    (:func:`track_angles`) with the driver's."""
    dh = head_angles(driver_matrix)
    out: dict = {"notes": {}}
    for key, a, b, min_std in (("jaw_open_r", np.asarray(driver_arkit)[:, ARKIT_NAMES.index("jawOpen")], jaw_pitch, 0.01),
                               ("yaw_r", dh[:, 0], track_yaw_pitch[:, 0], 0.5),
                               ("pitch_r", dh[:, 1], track_yaw_pitch[:, 1], 0.5)):
        out[key], why = _corr(np.asarray(a, np.float64), np.asarray(b, np.float64), min_std)
        if why:
            out["notes"][key] = why
    out["meets"] = {k: (None if out[k] is None else out[k] >= g) for k, g in GOALS.items()}
    return out
