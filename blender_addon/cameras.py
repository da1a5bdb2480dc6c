"""Camera math shared by the scene and the backend (no bpy).

The backend's driver camera for a frame is ``cam_rot`` (axis-angle R), ``cam_t`` (t) and ``focal``
(a multiple of the image width): world-to-camera ``viewmat = [diag(1,-1,-1) R | t]`` in OpenCV axes,
principal point at the image centre. In Blender (camera looks down -Z, +Y up; world = our world
mapped by (x, y, z) -> (x, -z, y)) that camera's ``matrix_world`` has rotation ``W R^T`` and
location ``-W R^T diag(1,-1,-1) t``; its lens is ``focal * sensor_width`` with a horizontal fit.
"""

from __future__ import annotations

import numpy as np

from .rotations import OURS_TO_BLENDER, axis_angle_to_matrix

CAMERA_KEYS = ("matrix_world", "lens", "sensor_width", "sensor_height", "sensor_fit", "shift_x", "shift_y",
               "resolution_x", "resolution_y", "resolution_percentage")
"""Keys of the Blender camera dict the backend accepts (``BlenderCameraParams``)."""

_FLIP = np.diag([1.0, -1.0, -1.0])


def driver_camera_matrices(cam_rot: np.ndarray, cam_t: np.ndarray) -> np.ndarray:
    """Blender ``matrix_world`` ``(T,4,4)`` of the backend's driver cameras ``cam_rot``/``cam_t`` ``(T,3)``."""
    r = axis_angle_to_matrix(np.asarray(cam_rot, dtype=np.float64).reshape(-1, 3))
    t = np.asarray(cam_t, dtype=np.float64).reshape(-1, 3)
    rt = np.swapaxes(r, -1, -2)
    out = np.zeros((len(r), 4, 4))
    out[:, :3, :3] = OURS_TO_BLENDER @ rt
    out[:, :3, 3] = -np.einsum("ij,tjk,tk->ti", OURS_TO_BLENDER, rt, t @ _FLIP)
    out[:, 3, 3] = 1.0
    return out


def driver_lens(focal: np.ndarray, sensor_width: float = 36.0) -> np.ndarray:
    """Blender lens (mm) ``(T,)`` for the backend's focal (a multiple of the width), horizontal fit."""
    return np.asarray(focal, dtype=np.float64) * float(sensor_width)


def camera_dict(matrix_world, lens: float, resolution_x: int, resolution_y: int, *, sensor_width: float = 36.0,
                sensor_height: float = 24.0, sensor_fit: str = "AUTO", shift_x: float = 0.0, shift_y: float = 0.0,
                resolution_percentage: int = 100) -> dict:
    """The msgpack-friendly camera dict the backend's ``animate`` takes (``cameras``)."""
    m = np.asarray(matrix_world, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"matrix_world must be a finite 4x4 matrix, got shape {m.shape}")
    return {"matrix_world": m.tolist(), "lens": float(lens), "sensor_width": float(sensor_width),
            "sensor_height": float(sensor_height), "sensor_fit": str(sensor_fit), "shift_x": float(shift_x),
            "shift_y": float(shift_y), "resolution_x": int(resolution_x), "resolution_y": int(resolution_y),
            "resolution_percentage": int(resolution_percentage)}


def frame_corners(lens: float, width: int, height: int, distance: float, *, sensor_width: float = 36.0,
                  sensor_height: float = 24.0, sensor_fit: str = "AUTO", shift_x: float = 0.0,
                  shift_y: float = 0.0) -> np.ndarray:
    """Corners ``(4,3)`` (camera local space: looking down -Z, +Y up) of a ``width`` x ``height``
    image seen by a Blender camera, at ``distance``: bottom-left, bottom-right, top-right, top-left."""
    fit = sensor_fit
    if fit == "AUTO":
        fit, sensor = ("HORIZONTAL" if width >= height else "VERTICAL"), sensor_width
    else:
        sensor = sensor_width if fit == "HORIZONTAL" else sensor_height
    size = width if fit == "HORIZONTAL" else height
    unit = distance * sensor / lens / size          # metres per pixel at that distance
    hw, hh = 0.5 * width * unit, 0.5 * height * unit
    cx, cy = shift_x * size * unit, shift_y * size * unit
    return np.array([[cx - hw, cy - hh, -distance], [cx + hw, cy - hh, -distance],
                     [cx + hw, cy + hh, -distance], [cx - hw, cy + hh, -distance]])
