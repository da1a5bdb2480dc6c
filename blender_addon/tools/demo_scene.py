"""Build the Blender scene of ``make demo``: a camera and lights framing the FLAME rig the add-on
builds at the origin, and beside it a retarget target that is not the FLAME rig: a procedural
"ARKit-style" character (mesh ``ARKitFace`` with the 52 ARKit shape keys, armature ``ARKitRig``).

    python demo_scene.py -- --out scene.blend [--resolution 640 360] [--frames 48] [--engine cycles]
    blender -b -P demo_scene.py -- --out scene.blend

Run it with Blender or with a bpy venv's Python (Blender as a module). The geometry (vertices,
faces, shape-key offsets, skin weights) is plain numpy (:func:`character`); only :func:`build_scene`
touches ``bpy``.

Coordinates are Blender's (+Z up, the face looks toward -Y, the subject's left is +X), metres. The
add-on places our FLAME world (+Y up, face along +Z) as ``(x, y, z) -> (x, -z, y)``, so the FLAME
head sits at the origin facing -Y; the character stands at ``+offset`` on X, facing the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import bpy

log = logging.getLogger("ffavatar.demo_scene")

ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut")
"""Apple's 52 ARKit blendshape names, in ARKit's order."""

MESH_NAME, RIG_NAME = "ARKitFace", "ARKitRig"
OFFSET_X = 0.35
"""Where the character stands (Blender X, m): beside the FLAME rig at the origin."""

# the head: an ellipsoid (half-width A, depth BF in front / BB behind, half-height C) about HEAD_C
HEAD_C = np.array([0.0, 0.005, 0.005])
A, BF, BB, C = 0.074, 0.09, 0.1, 0.112
MOUTH_Z, MOUTH_W = -0.05, 0.024                 # mouth line height, half-width
EYE_X, EYE_Z, EYE_R = 0.031, 0.02, 0.0125       # eye centres (+-EYE_X), eyeball radius
LID_R, LID_EDGE_R = 1.22 * EYE_R, 1.12 * EYE_R  # eyelid shell radius, rolled edge radius
UPPER_EDGE, LOWER_EDGE = 22.0, -25.0            # lid edges (deg about X, from the front, + up)
JAW_PIVOT = np.array([0.0, 0.035, -0.015])      # hinge on the X axis, near the ears

PARTS = ("head", "eye_L", "eye_R", "lid_up_L", "lid_up_R", "lid_lo_L", "lid_lo_R", "brow_L", "brow_R",
         "tongue", "neck")
MATERIALS = {  # name: (base colour, roughness)
    "Skin": ((0.80, 0.52, 0.40), 0.45), "Lips": ((0.62, 0.25, 0.24), 0.35), "Mouth": ((0.06, 0.01, 0.015), 0.6),
    "Brow": ((0.10, 0.06, 0.04), 0.8), "EyeWhite": ((0.90, 0.90, 0.88), 0.15), "Iris": ((0.10, 0.35, 0.45), 0.15),
    "Pupil": ((0.01, 0.01, 0.01), 0.1), "Tongue": ((0.70, 0.28, 0.30), 0.4),
}
MAT_INDEX = {name: i for i, name in enumerate(MATERIALS)}
BONES = {  # name: (head, tail, parent), armature space
    "neck": ((0.0, 0.02, -0.2), (0.0, 0.02, -0.085), None),
    "head": ((0.0, 0.02, -0.085), (0.0, 0.02, 0.12), "neck"),
    "jaw": (tuple(JAW_PIVOT), (0.0, -0.07, -0.085), "head"),
    "eye.L": ((EYE_X, 0.0, EYE_Z), (EYE_X, -0.03, EYE_Z), "head"),
    "eye.R": ((-EYE_X, 0.0, EYE_Z), (-EYE_X, -0.03, EYE_Z), "head"),
}
"""Bones of ``ARKitRig``; the eye bones' Y is set to the eye centres when the character is built.
The built-in ``arkit52`` map drives ``head`` (FLAME neck, then root); ``jaw`` and the eyes skin
their regions for maps that key them."""


@dataclass
class Character:
    """The ARKit-style character as arrays (armature space, Blender axes)."""

    vertices: np.ndarray                       # (V,3)
    faces: list[tuple[int, ...]]               # quads and triangles, outward winding
    materials: np.ndarray                      # (F,) index into MATERIALS
    part: np.ndarray                           # (V,) index into PARTS
    shape_keys: dict[str, np.ndarray] = field(default_factory=dict)  # ARKit name -> offsets (V,3)
    weights: dict[str, np.ndarray] = field(default_factory=dict)     # bone -> skin weight (V,)
    bones: dict[str, tuple] = field(default_factory=dict)            # name -> (head, tail, parent)


# ---------------------------------------------------------------------------------------------
# small numpy helpers


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 at ``e0``, 1 at ``e1`` (either order), cubic in between."""
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def bump(p: np.ndarray, centre, radii) -> np.ndarray:
    """Compact smooth falloff ``(V,)``: 1 at ``centre``, 0 outside the ellipsoid of ``radii``."""
    d2 = np.sum(((p - np.asarray(centre)) / np.asarray(radii)) ** 2, axis=-1)
    return (1.0 - np.minimum(d2, 1.0)) ** 2


def rotate(p: np.ndarray, pivot, axis: str, degrees: float) -> np.ndarray:
    """Points ``(V,3)`` rotated about a coordinate axis through ``pivot``."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    q = p - np.asarray(pivot)
    out = q.copy()
    out[:, i] = c * q[:, i] - s * q[:, j]
    out[:, j] = s * q[:, i] + c * q[:, j]
    return out + np.asarray(pivot)


def _grid(rows: int, cols: int, wrap: bool) -> list[tuple[int, ...]]:
    """Quads between consecutive rows of a ``rows x cols`` vertex grid (row-major)."""
    faces = []
    for r in range(rows - 1):
        for c in range(cols if wrap else cols - 1):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            faces.append((a, b, b + cols, a + cols))
    return faces


def _fan(centre: int, ring: list[int]) -> list[tuple[int, ...]]:
    return [(centre, ring[k], ring[(k + 1) % len(ring)]) for k in range(len(ring))]


# ---------------------------------------------------------------------------------------------
# the head surface


def _ellipsoid(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Head surface before features; ``theta`` from the crown, ``phi`` from the front (+X at pi/2),
    with the jaw and the back of the lower head tapered."""
    s, c = np.sin(theta), np.cos(theta)
    b = BF * (1 + np.cos(phi)) / 2 + BB * (1 - np.cos(phi)) / 2
    x, y, z = A * s * np.sin(phi), -b * s * np.cos(phi), C * c
    t = smoothstep(0.0, -0.105, z + HEAD_C[2])
    x = x * (1 - 0.28 * t)
    y = np.where(y > 0, y * (1 - 0.45 * t), y * (1 - 0.08 * t))
    return HEAD_C + np.stack([x, y, z], axis=-1)


def _features(p: np.ndarray) -> np.ndarray:
    """Offsets ``(V,3)`` that turn the ellipsoid into a face: nose, nostrils, eye sockets, brow
    ridge, cheekbones, lips, chin (front of the head only)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = smoothstep(0.0, -0.04, y - HEAD_C[1])
    n = (p - HEAD_C) / np.array([A, BF, C]) ** 2
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    fwd = np.array([0.0, -1.0, 0.0])
    tip = -0.008
    nose_h = np.where(z >= tip, 0.004 + 0.020 * smoothstep(0.04, tip, z), 0.024 * smoothstep(tip - 0.015, tip, z))
    nose_w = 0.006 + 0.008 * smoothstep(0.03, tip, z)
    nose = nose_h * np.exp(-(x / nose_w) ** 2) * smoothstep(0.05, 0.035, z)
    out = (nose * front)[:, None] * fwd
    bumps = [  # (centre x, centre z, radius x, radius z, height along the normal)
        (0.011, -0.017, 0.007, 0.007, 0.006), (-0.011, -0.017, 0.007, 0.007, 0.006),     # nostrils
        (EYE_X, EYE_Z, 0.017, 0.014, -0.005), (-EYE_X, EYE_Z, 0.017, 0.014, -0.005),     # eye sockets
        (0.03, 0.042, 0.03, 0.011, 0.003), (-0.03, 0.042, 0.03, 0.011, 0.003),           # brow ridge
        (0.048, -0.005, 0.02, 0.02, 0.004), (-0.048, -0.005, 0.02, 0.02, 0.004),         # cheekbones
        (0.0, MOUTH_Z + 0.002, 1.15 * MOUTH_W, 0.013, 0.0045),                            # lips
        (0.0, -0.088, 0.022, 0.016, 0.006),                                               # chin
    ]
    for cx, cz, rx, rz, h in bumps:
        w = bump(np.stack([x, z], 1), (cx, cz), (rx, rz)) * front
        out += (h * w)[:, None] * n
    return out


def _theta_of(z: float) -> float:
    return float(np.arccos(np.clip((z - HEAD_C[2]) / C, -1, 1)))


def surface_point(x: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The front head surface (with features) at ``(x, z)`` above the jaw, and its normal."""
    th = _theta_of(z)
    ph = float(np.arcsin(np.clip(x / (A * np.sin(th)), -1, 1)))
    p = _ellipsoid(np.array([th]), np.array([ph]))
    q = p + _features(p)
    n = (q[0] - HEAD_C) / np.array([A, BF, C]) ** 2
    return q[0], n / np.linalg.norm(n)


def _head(rings: int = 56, segments: int = 80) -> tuple[np.ndarray, list, np.ndarray, int]:
    """Head vertices, faces, ring index per vertex and the ring just above the mouth line."""
    thetas = list(np.linspace(0, np.pi, rings + 1)[1:-1])
    thetas = [t for t in thetas if abs(HEAD_C[2] + C * np.cos(t) - MOUTH_Z) > 0.016]
    mouth_rows = [0.012, 0.0075, 0.004, 0.0008, -0.0008, -0.0045, -0.0085, -0.013]
    thetas = sorted(thetas + [_theta_of(MOUTH_Z + dz) for dz in mouth_rows])
    upper = thetas.index(_theta_of(MOUTH_Z + 0.0008))
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    th, ph = np.meshgrid(np.array(thetas), phi, indexing="ij")
    p = _ellipsoid(th.ravel(), ph.ravel())
    # pinch the rows around the mouth line toward it at the corners: lens-shaped lips
    ax, dz = np.abs(p[:, 0]), p[:, 2] - MOUTH_Z
    pinch = 0.85 * smoothstep(0.4 * MOUTH_W, MOUTH_W, ax) * smoothstep(1.6 * MOUTH_W, 1.05 * MOUTH_W, ax)
    p[:, 2] = MOUTH_Z + dz * (1 - pinch * smoothstep(0.02, 0.012, np.abs(dz)) * (p[:, 1] < 0))
    poles = _ellipsoid(np.array([0.0, np.pi]), np.zeros(2))
    verts = np.concatenate([p, poles])
    faces = _grid(len(thetas), segments, wrap=True)
    top, bottom = len(p), len(p) + 1
    faces += _fan(top, list(range(segments))[::-1])
    faces += _fan(bottom, list(range(len(p) - segments, len(p))))
    ring = np.concatenate([np.repeat(np.arange(len(thetas)), segments), [-1, len(thetas)]])
    verts = verts + _features(verts)
    return verts, faces, ring, upper


def _sphere(centre, radii, polar_deg: list[float], segments: int, axis: str = "y") -> tuple[np.ndarray, list]:
    """A sphere with its poles on -``axis``/+``axis`` and rings at ``polar_deg`` (from the - pole)."""
    a = np.radians(np.asarray(polar_deg, dtype=np.float64))
    b = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    u, v, w = np.sin(aa) * np.cos(bb), -np.cos(aa), np.sin(aa) * np.sin(bb)   # w.r.t. (x, axis, z)
    local = {"y": np.stack([u, v, w], -1), "x": np.stack([v, u, w], -1)}[axis].reshape(-1, 3)
    ends = {"y": np.array([[0, -1.0, 0], [0, 1.0, 0]]), "x": np.array([[-1.0, 0, 0], [1.0, 0, 0]])}[axis]
    verts = np.concatenate([local, ends]) * np.asarray(radii) + np.asarray(centre)
    n = len(local)
    faces = _grid(len(a), segments, wrap=True) + _fan(n, list(range(segments))[::-1])
    faces += _fan(n + 1, list(range(n - segments, n)))
    return verts, faces


def _lid(centre, upper: bool) -> np.ndarray:
    """An eyelid shell ``(rows*cols,3)``: a band of a sphere about the eye, hinged on X; its first
    row is a rolled edge (smaller radius) at the lid's opening."""
    edge = UPPER_EDGE if upper else LOWER_EDGE
    sign = 1.0 if upper else -1.0
    alphas = np.radians(np.concatenate([[edge], edge + sign * np.array([3.0, 15, 35, 60, 90, 120])]))
    radii = np.array([LID_EDGE_R] + [LID_R] * 6)
    betas = np.radians(np.linspace(-86, 86, 19))
    al, be = np.meshgrid(alphas, betas, indexing="ij")
    d = np.stack([np.sin(be), -np.cos(be) * np.cos(al), np.cos(be) * np.sin(al)], -1)
    return (d * radii[:, None, None]).reshape(-1, 3) + np.asarray(centre)


def _brow(side: float, sections: int = 12) -> np.ndarray:
    """An eyebrow: a flat tube of ``sections x 4`` vertices lying on the forehead."""
    out = []
    for t in np.linspace(0, 1, sections):
        x, z = side * (0.012 + 0.04 * t), 0.041 + 0.007 * np.sin(np.pi * 0.9 * t) - 0.004 * t
        p, n = surface_point(x, z)
        up = np.array([0.0, 0.0, 1.0]) - n * n[2]
        up /= np.linalg.norm(up)
        h, th = 0.0055 * (1 - 0.45 * t) / 2, 0.001
        c = p + n * (th + 0.0005)
        out += [c - up * h - n * th, c - up * h + n * th, c + up * h + n * th, c + up * h - n * th]
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# the character


def character() -> Character:
    """Geometry, materials, parts, skin weights and the 52 shape keys of the character."""
    verts, faces, mats, parts = [], [], [], []

    def add(v: np.ndarray, f: list, part: str, mat, inside) -> None:
        """Append a part; each face is wound to face away from its ``inside`` point ``(F,3)``."""
        base = sum(len(x) for x in verts)
        v = np.asarray(v, dtype=np.float64)
        inside = np.broadcast_to(np.asarray(inside, dtype=np.float64), (len(f), 3))
        for face, ref in zip(f, inside):
            p = v[list(face)]
            n = np.cross(p[1] - p[0], p[2] - p[0])
            face = face if np.dot(n, p.mean(0) - ref) >= 0 else face[::-1]
            faces.append(tuple(i + base for i in face))
        verts.append(v)
        mats.extend([MAT_INDEX[m] for m in mat] if isinstance(mat, list) else [MAT_INDEX[mat]] * len(f))
        parts.append(np.full(len(v), PARTS.index(part)))

    head_v, head_f, ring, upper = _head()
    cx = np.array([head_v[list(f), 0].mean() for f in head_f])
    row = np.array([ring[f[0]] for f in head_f])   # a face lies between rings row and row + 1
    front = np.array([head_v[list(f), 1].mean() < -0.04 for f in head_f])
    lips = front & (np.abs(cx) < 1.05 * MOUTH_W) & (row >= upper - 2) & (row <= upper + 2)
    seam = front & (np.abs(cx) < 0.95 * MOUTH_W) & (row == upper)
    head_m = np.where(seam, "Mouth", np.where(lips, "Lips", "Skin"))
    add(head_v, head_f, "head", head_m.tolist(), HEAD_C)

    eye_c = {}
    polar = [6, 10, 14, 21, 28, 40, 60, 85, 110, 135, 160]     # eyeball rings, degrees from the front
    eye_m = [("Pupil" if a <= 14 else "Iris" if a <= 28 else "EyeWhite") for a in polar[1:] for _ in range(20)]
    eye_m += ["Pupil"] * 20 + ["EyeWhite"] * 20                 # grid rows, then the front and back fans
    for side, s in (("L", 1.0), ("R", -1.0)):
        th = _theta_of(EYE_Z)
        base_y = _ellipsoid(np.array([th]), np.array([np.arcsin(EYE_X / (A * np.sin(th)))]))[0, 1]
        c = np.array([s * EYE_X, base_y + 0.7 * EYE_R, EYE_Z])
        eye_c[side] = c
        v, f = _sphere(c, EYE_R, polar, 20)
        add(v, f, f"eye_{side}", eye_m, c)
        for lid in ("up", "lo"):
            add(_lid(c, lid == "up"), _grid(7, 19, wrap=False), f"lid_{lid}_{side}", "Skin", c)
        bv = _brow(s)
        n_sec = len(bv) // 4
        centres = bv.reshape(n_sec, 4, 3).mean(1)
        bf = _grid(n_sec, 4, wrap=True)
        inside = [centres[min(f[0] // 4, f[2] // 4)] * 0.5 + centres[max(f[0] // 4, f[2] // 4)] * 0.5 for f in bf]
        bf += [(0, 1, 2, 3), tuple(range(len(bv) - 4, len(bv)))]
        inside += [centres[1], centres[-2]]
        add(bv, bf, f"brow_{side}", "Brow", np.array(inside))

    mouth_y = surface_point(0.0, MOUTH_Z + 0.01)[0][1]
    tc = np.array([0.0, mouth_y + 0.03, MOUTH_Z - 0.007])
    tv, tf = _sphere(tc, (0.016, 0.026, 0.0055), list(np.linspace(15, 165, 9)), 16)
    add(tv, tf, "tongue", "Tongue", tc)
    zs, ang = np.linspace(-0.24, -0.06, 8), np.linspace(0, 2 * np.pi, 24, endpoint=False)
    zz, aa = np.meshgrid(zs, ang, indexing="ij")
    nv = np.stack([0.043 * np.sin(aa), 0.02 - 0.045 * np.cos(aa), zz], -1).reshape(-1, 3)
    nf = _grid(8, 24, wrap=True)
    add(nv, nf, "neck", "Skin", np.array([[0.0, 0.02, nv[list(f), 2].mean()] for f in nf]))

    v = np.concatenate(verts)
    part = np.concatenate(parts)
    ring_all = np.full(len(v), -10)
    ring_all[: len(ring)] = ring
    bones = {n: (np.array(h, float), np.array(t, float), par) for n, (h, t, par) in BONES.items()}
    for side in ("L", "R"):
        bones[f"eye.{side}"] = (eye_c[side], eye_c[side] + np.array([0.0, -0.03, 0.0]), "head")
    return Character(vertices=v, faces=faces, materials=np.asarray(mats, dtype=np.int32), part=part,
                     shape_keys=_shape_keys(v, part, ring_all, upper, eye_c),
                     weights=_weights(v, part, ring_all, upper), bones=bones)


def _weights(v: np.ndarray, part: np.ndarray, ring: np.ndarray, upper: int) -> dict[str, np.ndarray]:
    """Skin weights per bone (rows sum to 1): the jaw region to ``jaw``, eyeballs to the eye bones,
    the neck blending into ``head`` at its top, everything else to ``head``."""
    name = np.array(PARTS)[part]
    jaw = _jaw_weight(v, name == "head", ring, upper)
    jaw[name == "tongue"] = 1.0
    neck_head = np.where(name == "neck", smoothstep(-0.13, -0.07, v[:, 2]), 0.0)
    eye_l, eye_r = (name == "eye_L").astype(float), (name == "eye_R").astype(float)
    neck = (name == "neck") * (1 - neck_head)
    head = 1.0 - jaw - eye_l - eye_r - neck
    return {"head": head, "neck": neck, "jaw": jaw, "eye.L": eye_l, "eye.R": eye_r}


def _jaw_weight(v: np.ndarray, head: np.ndarray, ring: np.ndarray, upper: int) -> np.ndarray:
    """How much each head vertex follows the jaw: all of the lower lip within the mouth (a hard
    split at the mouth line), fading over the lower cheeks, none behind the hinge."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    lat = smoothstep(1.15 * MOUTH_W, 0.55 * MOUTH_W, np.abs(x))
    hard = (ring > upper).astype(float)
    soft = smoothstep(MOUTH_Z, MOUTH_Z - 0.035, z)
    w = lat * hard + (1 - lat) * soft
    w *= smoothstep(JAW_PIVOT[1] + 0.01, JAW_PIVOT[1] - 0.03, y)
    return w * head


def _shape_keys(v: np.ndarray, part: np.ndarray, ring: np.ndarray, upper: int, eye_c: dict) -> dict[str, np.ndarray]:
    """Offsets ``(V,3)`` of the 52 ARKit shape keys: rotations of eyes and lids, a hinged jaw,
    lips and corners, brows, cheeks, nose and tongue moved by smooth compact falloffs."""
    name = np.array(PARTS)[part]
    head = (name == "head").astype(float)
    skin = head + np.char.startswith(name, "brow")
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    front = smoothstep(-0.02, -0.05, y)
    above, below = (ring <= upper) & (ring >= 0), ring > upper
    lat = smoothstep(1.05 * MOUTH_W, 0.6 * MOUTH_W, np.abs(x))
    up_lip = head * above * lat * front * smoothstep(MOUTH_Z + 0.014, MOUTH_Z + 0.004, z)
    lo_lip = head * below * lat * front * smoothstep(MOUTH_Z - 0.016, MOUTH_Z - 0.005, z)
    mouth_y = surface_point(0.0, MOUTH_Z + 0.01)[0][1]
    mouth = head * front * bump(v, (0, mouth_y, MOUTH_Z), (1.6 * MOUTH_W, 0.05, 0.022))
    jaw_w = _jaw_weight(v, head > 0, ring, upper)
    jaw_open = jaw_w[:, None] * (rotate(v, JAW_PIVOT, "x", 18.0) - v)
    jaw_open[name == "tongue"] = (rotate(v, JAW_PIVOT, "x", 15.0) - v)[name == "tongue"]
    k: dict[str, np.ndarray] = {}

    def field(w: np.ndarray, d) -> np.ndarray:
        return w[:, None] * np.asarray(d, dtype=np.float64)

    def spin(mask: np.ndarray, pivot, axis: str, deg: float) -> np.ndarray:
        out = np.zeros_like(v)
        out[mask] = rotate(v[mask], pivot, axis, deg) - v[mask]
        return out

    for side, s in (("Left", 1.0), ("Right", -1.0)):
        sd = side[0]
        c = eye_c[sd]
        eye, lid_up, lid_lo = name == f"eye_{sd}", name == f"lid_up_{sd}", name == f"lid_lo_{sd}"
        k[f"eyeBlink{side}"] = spin(lid_up, c, "x", UPPER_EDGE - LOWER_EDGE + 2) + spin(lid_lo, c, "x", -3)
        k[f"eyeLookDown{side}"] = spin(eye, c, "x", 25) + spin(lid_up, c, "x", 10)
        k[f"eyeLookUp{side}"] = spin(eye, c, "x", -25) + spin(lid_up, c, "x", -8)
        k[f"eyeLookOut{side}"] = spin(eye, c, "z", s * 28)
        k[f"eyeLookIn{side}"] = spin(eye, c, "z", -s * 28)
        under_eye = skin * bump(v, (s * EYE_X, c[1], EYE_Z - 0.02), (0.022, 0.04, 0.014))
        k[f"eyeSquint{side}"] = spin(lid_lo, c, "x", -18) + spin(lid_up, c, "x", 12) + field(under_eye, (0, 0, 0.003))
        k[f"eyeWide{side}"] = spin(lid_up, c, "x", -22) + spin(lid_lo, c, "x", 8)
        corner = skin * front * bump(v, (s * MOUTH_W, mouth_y + 0.01, MOUTH_Z), (0.024, 0.05, 0.022))
        k[f"mouthSmile{side}"] = field(corner, (s * 0.006, 0.004, 0.009))
        k[f"mouthFrown{side}"] = field(corner, (s * 0.002, 0.0, -0.008))
        k[f"mouthDimple{side}"] = field(corner, (s * 0.004, 0.006, 0.0))
        k[f"mouthStretch{side}"] = field(corner, (s * 0.009, 0.002, -0.003))
        half = smoothstep(-0.3 * MOUTH_W, 0.7 * MOUTH_W, s * x)
        k[f"mouthPress{side}"] = field(up_lip * half, (0, 0.002, -0.0015)) + field(lo_lip * half, (0, 0.002, 0.0025))
        k[f"mouthLowerDown{side}"] = field(lo_lip * half, (0, 0.0, -0.007))
        k[f"mouthUpperUp{side}"] = field(up_lip * half, (0, 0.0, 0.006))
        brow_mid = skin * bump(v, (s * 0.032, c[1], 0.043), (0.03, 0.06, 0.02))
        k[f"browDown{side}"] = field(brow_mid, (-s * 0.003, 0.0, -0.006))
        k[f"browOuterUp{side}"] = field(skin * bump(v, (s * 0.05, c[1], 0.043), (0.022, 0.06, 0.02)), (0, 0, 0.008))
        cheek = skin * bump(v, (s * 0.042, c[1], -0.005), (0.022, 0.06, 0.02))
        k[f"cheekSquint{side}"] = field(cheek, (0, 0, 0.005)) + spin(lid_lo, c, "x", -8)
        nostril = skin * front * bump(v, (s * 0.012, mouth_y, -0.015), (0.016, 0.06, 0.02))
        k[f"noseSneer{side}"] = field(nostril, (s * 0.0015, 0.0, 0.005))
    k["jawOpen"] = jaw_open
    k["jawForward"] = field(jaw_w, (0, -0.008, 0))
    k["jawLeft"] = field(jaw_w, (0.01, 0, 0))
    k["jawRight"] = field(jaw_w, (-0.01, 0, 0))
    k["mouthClose"] = -jaw_open * lo_lip[:, None]
    k["mouthFunnel"] = (field(mouth, (0, -0.007, 0)) + (mouth * -0.3 * x)[:, None] * np.array([1.0, 0, 0])
                        + field(up_lip, (0, 0, 0.002)) + field(lo_lip, (0, 0, -0.004)))
    k["mouthPucker"] = field(mouth, (0, -0.009, 0)) + (mouth * -0.4 * x)[:, None] * np.array([1.0, 0, 0])
    k["mouthLeft"] = field(mouth, (0.01, 0, 0))
    k["mouthRight"] = field(mouth, (-0.01, 0, 0))
    k["mouthRollLower"] = field(lo_lip, (0, 0.003, 0.002))
    k["mouthRollUpper"] = field(up_lip, (0, 0.003, -0.002))
    chin = head * front * bump(v, (0, mouth_y, MOUTH_Z - 0.022), (0.03, 0.06, 0.028)) * (z < MOUTH_Z)
    k["mouthShrugLower"] = field(chin, (0, -0.002, 0.004))
    k["mouthShrugUpper"] = field(up_lip, (0, -0.002, 0.003))
    inner = sum(skin * bump(v, (s * 0.016, eye_c["L"][1], 0.043), (0.018, 0.06, 0.02)) for s in (1.0, -1.0))
    k["browInnerUp"] = field(inner, (0, 0, 0.008))
    n = (v - HEAD_C) / np.array([A, BF, C]) ** 2
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    puff = sum(head * bump(v, (s * 0.045, mouth_y + 0.03, -0.035), (0.03, 0.05, 0.03)) for s in (1.0, -1.0))
    k["cheekPuff"] = 0.012 * puff[:, None] * n
    k["tongueOut"] = field((name == "tongue").astype(float), (0, -0.03, -0.004))
    return {key: k[key] for key in ARKIT_NAMES}


# ---------------------------------------------------------------------------------------------
# the scene (bpy)


def _material(name: str, color, roughness: float):
    import bpy

    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):   # 5.0 always uses nodes (and deprecates the flag)
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    mat.diffuse_color = (*color, 1.0)
    return mat


def _link(obj) -> None:
    import bpy

    bpy.context.scene.collection.objects.link(obj)


def _aim(obj, target) -> None:
    from mathutils import Vector

    d = Vector(target) - obj.location
    obj.rotation_euler = d.to_track_quat("-Z", "Y").to_euler()


def _build_armature(bones: dict) -> bpy.types.Object:
    import bpy

    arm = bpy.data.objects.new(RIG_NAME, bpy.data.armatures.new(RIG_NAME))
    arm.location = (OFFSET_X, 0.0, 0.0)
    _link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    made = {}
    for bname, (h, t, parent) in bones.items():
        eb = arm.data.edit_bones.new(bname)
        eb.head, eb.tail, eb.roll = tuple(h), tuple(t), 0.0
        if parent:
            eb.parent = made[parent]
        made[bname] = eb
    bpy.ops.object.mode_set(mode="OBJECT")
    for pb in arm.pose.bones:
        pb.rotation_mode = "QUATERNION"
    arm.show_in_front = True
    return arm


def _build_face(ch: Character, arm) -> bpy.types.Object:
    import bpy

    me = bpy.data.meshes.new(MESH_NAME)
    me.from_pydata(ch.vertices.tolist(), [], [list(f) for f in ch.faces])
    me.polygons.foreach_set("material_index", ch.materials)
    for mname, (color, rough) in MATERIALS.items():
        me.materials.append(_material(f"ARKit {mname}", color, rough))
    if hasattr(me, "shade_smooth"):
        me.shade_smooth()
    else:
        me.polygons.foreach_set("use_smooth", np.ones(len(me.polygons), dtype=bool))
    me.update()
    obj = bpy.data.objects.new(MESH_NAME, me)
    _link(obj)
    obj.parent = arm
    basis = ch.vertices.astype(np.float32)
    obj.shape_key_add(name="Basis", from_mix=False)
    for kname, delta in ch.shape_keys.items():
        kb = obj.shape_key_add(name=kname, from_mix=False)
        kb.value = 0.0   # bpy 5.0 creates keys at 1.0
        kb.data.foreach_set("co", (basis + delta.astype(np.float32)).ravel())
    me.shape_keys.name = f"{MESH_NAME}_keys"
    for bone, w in ch.weights.items():
        vg = obj.vertex_groups.new(name=bone)
        q = np.round(np.clip(w, 0, 1) * 1000) / 1000
        nz = np.flatnonzero(q > 0)
        values, inverse = np.unique(q[nz], return_inverse=True)
        for i, value in enumerate(values):
            vg.add(nz[inverse == i].tolist(), float(value), "REPLACE")
    obj.modifiers.new("Armature", "ARMATURE").object = arm
    sub = obj.modifiers.new("Subdivision", "SUBSURF")
    sub.levels, sub.render_levels = 1, 2
    return obj


def _set_engine(scene, name: str) -> None:
    """Set the render engine by our short name (EEVEE is BLENDER_EEVEE_NEXT in 4.2, BLENDER_EEVEE after)."""
    want = {"cycles": ["CYCLES"], "eevee": ["BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"],
            "workbench": ["BLENDER_WORKBENCH"]}[name]
    for engine in want:
        try:
            scene.render.engine = engine
            return
        except TypeError:
            continue
    raise ValueError(f"this Blender has no {name} render engine")


def build_scene(resolution: tuple[int, int] = (640, 360), frames: int = 48, fps: int = 25,
                engine: str = "cycles", samples: int = 32) -> dict:
    """Empty the current file and build the demo scene in it. Returns ``{role: object}``."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.name = "FFAvatar Demo"
    scene.frame_start, scene.frame_end, scene.frame_current = 1, max(1, frames), 1
    scene.render.fps = fps
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    _set_engine(scene, engine)
    if scene.render.engine == "CYCLES":
        scene.cycles.samples = samples
        scene.cycles.device = "CPU"

    world = bpy.data.worlds.new("Studio")
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (0.045, 0.05, 0.065, 1.0)
    world.color = (0.045, 0.05, 0.065)
    scene.world = world

    ch = character()
    arm = _build_armature(ch.bones)
    face = _build_face(ch, arm)
    centre = (OFFSET_X / 2, 0.0, -0.01)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location = (centre[0], -1.15, 0.02)
    _link(cam)
    _aim(cam, centre)
    cam.data.lens, cam.data.sensor_width, cam.data.clip_start = 50.0, 36.0, 0.05
    scene.camera = cam
    lights = {}
    for lname, loc, power, size, color in (("Key Light", (-0.45, -0.9, 0.55), 30.0, 0.5, (1.0, 0.95, 0.88)),
                                           ("Fill Light", (0.85, -0.8, 0.05), 10.0, 0.8, (0.85, 0.9, 1.0)),
                                           ("Rim Light", (0.5, 0.75, 0.6), 35.0, 0.3, (0.9, 0.95, 1.0))):
        data = bpy.data.lights.new(lname, "AREA")
        data.energy, data.size, data.color = power, size, color
        light = bpy.data.objects.new(lname, data)
        light.location = loc
        _link(light)
        _aim(light, centre)
        lights[lname] = light
    floor = bpy.data.meshes.new("Backdrop")
    floor.from_pydata([(-1.5, 0.6, -1.0), (1.9, 0.6, -1.0), (1.9, 0.6, 1.2), (-1.5, 0.6, 1.2)], [], [(0, 1, 2, 3)])
    floor.materials.append(_material("Backdrop", (0.16, 0.17, 0.2), 0.9))
    backdrop = bpy.data.objects.new("Backdrop", floor)
    _link(backdrop)
    log.info("demo scene: %s (%d vertices, %d shape keys, %d bones) at x=%.2f, FLAME rig at the origin",
             MESH_NAME, len(ch.vertices), len(ch.shape_keys), len(ch.bones), OFFSET_X)
    return {"face": face, "rig": arm, "camera": cam, "backdrop": backdrop, **lights}


def main(argv: list[str]) -> int:
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="demo_scene.py", description="Build the FFAvatar demo scene (.blend): camera, "
                                "lights and an ARKit-style retarget target beside the FLAME rig's place.")
    p.add_argument("--out", type=Path, required=True, help="the .blend to write")
    p.add_argument("--resolution", type=int, nargs=2, default=(640, 360), metavar=("W", "H"),
                   help="render size; the avatar frames are rendered at it (default 640 360)")
    p.add_argument("--frames", type=int, default=48, help="scene frames 1..N (the batch extends it; default 48)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--engine", choices=["cycles", "eevee", "workbench"], default="cycles")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples (default 32)")
    args = p.parse_args(argv)
    if min(args.resolution) < 16 or args.frames < 1 or args.fps < 1:
        p.error("--resolution must be >= 16 pixels, --frames and --fps >= 1")
    import bpy

    build_scene(tuple(args.resolution), args.frames, args.fps, args.engine, args.samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv))
