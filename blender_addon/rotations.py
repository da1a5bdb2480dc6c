"""Rotation conversions in plain numpy (no bpy), vectorized over leading axes.

Conventions: axis-angle vectors ``(..., 3)`` (direction = axis, norm = angle in radians);
quaternions wxyz ``(..., 4)``; rotation matrices ``(..., 3, 3)`` acting on column vectors.
Euler angles follow Blender: order ``"XYZ"`` applies X first, then Y, then Z, i.e.
``R = Rz @ Ry @ Rx``.
"""

from __future__ import annotations

import numpy as np

EULER_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")

OURS_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Our world (+Y up, face along +Z) to Blender's (+Z up, face toward -Y): (x, y, z) -> (x, -z, y)."""


def to_blender(points: np.ndarray) -> np.ndarray:
    """Points or vectors ``(..., 3)`` from our world to Blender's world (a proper rotation, so
    axis-angle vectors map the same way)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: ``(..., 3)`` -> ``(..., 3, 3)``."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1)[..., None, None]
    safe = np.where(angle > 1e-12, angle, 1.0)
    k = aa / safe[..., 0]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    skew = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
                     np.stack([-ky, kx, zero], -1)], -2)
    eye = np.broadcast_to(np.eye(3), skew.shape)
    s, c = np.sin(angle), np.cos(angle)
    return eye + s * skew + (1.0 - c) * (skew @ skew)


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
    """``(..., 3)`` -> wxyz ``(..., 4)`` with w >= 0."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(half)/angle -> 1/2 as angle -> 0
    scale = np.where(angle > 1e-8, np.sin(half) / np.where(angle > 1e-8, angle, 1.0), 0.5 - angle**2 / 48.0)
    return np.concatenate([np.cos(half), aa * scale], axis=-1)


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """wxyz ``(..., 4)`` -> axis-angle ``(..., 3)`` with angle in [0, pi]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    scale = np.where(s > 1e-12, angle / np.where(s > 1e-12, s, 1.0), 2.0)
    return v * scale


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` -> ``(..., 3)`` (through a quaternion, stable near 0 and pi)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(m))


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` -> wxyz ``(..., 4)`` (Shepperd's method, w >= 0)."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = np.stack([
        np.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                  m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                  1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                  1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (..., 4, 4); row i is 4*q*q_i
    diag = np.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def _axis_matrix(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def euler_to_matrix(euler: np.ndarray, order: str = "XYZ") -> np.ndarray:
    """Blender Euler ``(..., 3)`` (angles about X, Y, Z) in ``order`` -> ``(..., 3, 3)``."""
    if order not in EULER_ORDERS:
        raise ValueError(f"unknown Euler order {order!r}; expected one of {EULER_ORDERS}")
    e = np.asarray(euler, dtype=np.float64)
    m = np.broadcast_to(np.eye(3), e.shape[:-1] + (3, 3)).copy()
    for ch in order:  # first axis applied first: left-multiply
        i = "XYZ".index(ch)
        m = _axis_matrix(i, e[..., i]) @ m
    return m


def matrix_to_euler(m: np.ndarray, order: str = "XYZ") -> np.ndarray:
    """``(..., 3, 3)`` -> Blender Euler ``(..., 3)`` (angles about X, Y, Z) in ``order``.

    For ``R = R_k R_j R_i`` (i applied first) the middle angle lies in [-pi/2, pi/2].
    """
    if order not in EULER_ORDERS:
        raise ValueError(f"unknown Euler order {order!r}; expected one of {EULER_ORDERS}")
    m = np.asarray(m, dtype=np.float64)
    i, j, k = ("XYZ".index(c) for c in order)
    # parity: +1 for cyclic orders (XYZ, YZX, ZXY)
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    # R = R_k(c) R_j(b) R_i(a): R[k, i] = -sign*sin(b)
    sb = np.clip(-sign * m[..., k, i], -1.0, 1.0)
    b = np.arcsin(sb)
    cb = np.sqrt(m[..., k, j] ** 2 + m[..., k, k] ** 2)
    regular = cb > 1e-9
    a = np.where(regular, np.arctan2(sign * m[..., k, j], m[..., k, k]), 0.0)
    c = np.where(regular, np.arctan2(sign * m[..., j, i], m[..., i, i]),
                 np.arctan2(-sign * m[..., i, j], m[..., j, j]))
    out = np.empty(m.shape[:-2] + (3,))
    out[..., i], out[..., j], out[..., k] = a, b, c
    return out


def quaternion_continuity(q: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 (time) so consecutive quaternions ``(T, ..., 4)`` lie in the same
    hemisphere (no spurious 360-degree spins when keys are interpolated)."""
    q = np.array(q, dtype=np.float64, copy=True)
    for t in range(1, q.shape[0]):
        flip = np.sum(q[t] * q[t - 1], axis=-1) < 0
        q[t][flip] *= -1.0
    return q


def euler_continuity(e: np.ndarray) -> np.ndarray:
    """Unwrap Euler angles ``(T, ..., 3)`` along time (removes 2*pi jumps)."""
    return np.unwrap(np.asarray(e, dtype=np.float64), axis=0)


def axis_angle_to_channels(aa: np.ndarray, rotation_mode: str) -> tuple[str, np.ndarray]:
    """Axis-angle ``(T, 3)`` -> ``(data_path_suffix, (T, C))`` for a Blender rotation mode:
    ``"QUATERNION"`` -> ``rotation_quaternion`` (wxyz), ``"AXIS_ANGLE"`` -> ``rotation_axis_angle``
    (angle, x, y, z), Euler orders -> ``rotation_euler`` (x, y, z). Keys are made continuous in time."""
    aa = np.asarray(aa, dtype=np.float64).reshape(-1, 3)
    if rotation_mode == "QUATERNION":
        return "rotation_quaternion", quaternion_continuity(axis_angle_to_quaternion(aa))
    if rotation_mode == "AXIS_ANGLE":
        angle = np.linalg.norm(aa, axis=-1, keepdims=True)
        axis = np.where(angle > 1e-12, aa / np.where(angle > 1e-12, angle, 1.0), [0.0, 1.0, 0.0])
        return "rotation_axis_angle", np.concatenate([angle, axis], axis=-1)
    if rotation_mode in EULER_ORDERS:
        return "rotation_euler", euler_continuity(matrix_to_euler(axis_angle_to_matrix(aa), rotation_mode))
    raise ValueError(f"unknown rotation mode {rotation_mode!r}")
