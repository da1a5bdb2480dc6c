"""A procedural, license-free head in the FLAME file layout (the demo head).

Real users bring a licensed FLAME file; a fresh machine, CI and the demo use this head instead. It
has FLAME's keys, joints and conventions (meters, +Y up, +Z out of the face, +X to the head's left)
and is built from closed-form geometry, so it is bit-identical on every machine:

* the skin is one closed manifold: a cube-sphere whose directions are concentrated on the face and
  projected from an interior point onto a sculpted implicit head (cranium, face, jaw, neck, nose,
  brows, cheeks, ears, eye sockets, eyelids); lips are shaped in a chart around the mouth;
* the mouth slit is a row of the front grid that is cut open and closed by a pocket (the mouth
  cavity), so the jaw joint opens a real mouth while the surface stays one closed manifold;
* the eyeballs are two separate closed meshes in the sockets; inside the palpebral fissure the skin
  is tucked behind the eyeball, elsewhere the lids rest on it;
* identity/expression blendshapes are smooth localized displacement fields with names,
  ``posedirs`` holds small neck and jaw correctives, and a 68-point iBUG landmark embedding is included.

Vertex part codes (``vertex_part``): 0 skin, 1 eyeball_L, 2 eyeball_R, 3 mouth interior. Code 4
(hair) is not used by the geometry; the appearance decides where hair is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.optimize import nnls

from ..errors import FlameFileError

log = logging.getLogger(__name__)

DEMO_HEAD_VERSION = 1
"""Bump whenever the generated arrays change (it names the cache file)."""

PART_SKIN, PART_EYE_L, PART_EYE_R, PART_MOUTH, PART_HAIR = 0, 1, 2, 3, 4
"""``vertex_part`` codes."""

N_SHAPE, N_EXPR = 100, 50
"""Identity and expression components."""

# Anatomy in meters (rest pose). The eye_L joint is the subject's left eye, at +X.
EYE_RADIUS = 0.0125
EYE_CENTERS = np.array([[0.032, 0.018, 0.071], [-0.032, 0.018, 0.071]])
"""Eyeball centres: row 0 eye_L (+X), row 1 eye_R (-X)."""
MOUTH_CENTER = np.array([0.0, -0.05, 0.095])
"""Approximate centre of the closed lips (the slit)."""
MOUTH_HALF_WIDTH = 0.024
"""Half width of the lip slit in the mouth chart (m); the corners sit there."""
EAR_CENTER = np.array([0.075, 0.002, -0.016])
"""Centre of the left ear (the right one is mirrored)."""
JOINTS = np.array([
    [0.0, -0.13, -0.018],   # root: neck base
    [0.0, -0.045, -0.02],   # neck: top of the neck, the head turns about it
    [0.0, -0.012, 0.002],   # jaw: midpoint of the two hinges in front of the ears
    EYE_CENTERS[0],         # eye_L
    EYE_CENTERS[1],         # eye_R
])
"""Rest joint positions J_regressor lands on (root, neck, jaw, eye_L, eye_R)."""

_CENTER = np.array([0.0, -0.015, -0.01])   # projection centre (inside the head; the skin is star-shaped)
_GRID = 30                                 # cube-sphere cells per face edge (even: the slit is the centre row)
_LIP_COLS = 10                             # slit half-width in grid columns
_SACK_RINGS = 5
_LID = 0.0015                              # eyelid thickness over the eyeball
_FISSURE_HALF_WIDTH = 0.013
_FISSURE_UP, _FISSURE_LOW, _CANTHAL_TILT = 0.45, 0.36, 0.06   # radians about the eye centre


# ---------------------------------------------------------------------------------------------
# small math helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _gauss(p: np.ndarray, c, r) -> np.ndarray:
    """Anisotropic Gaussian bump exp(-|(p-c)/r|^2) at points (N,3)."""
    q = (p - np.asarray(c, float)) / np.asarray(r, float)
    return np.exp(-np.einsum("ij,ij->i", q, q))


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def _ellipsoid(p: np.ndarray, c, r) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the surface)."""
    a = [(p[..., i] - c[i]) / r[i] for i in range(3)]
    k0 = np.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])
    b = [a[i] / r[i] for i in range(3)]
    k1 = np.sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2])
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    """Approximate distance to a capsule whose radius goes linearly from ra at a to rb at b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    h = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + h[..., None] * ab), axis=-1) - (ra + h * (rb - ra))


# ---------------------------------------------------------------------------------------------
# the skin surface


def _head_field(p: np.ndarray, eyes: bool = True) -> np.ndarray:
    """Implicit head+neck (negative inside) at points (..., 3); ``eyes=False`` leaves out the sockets
    and lids (their surroundings are identical)."""
    x = p[..., 0]
    pm = p.copy()
    pm[..., 0] = np.abs(x)  # mirror: bilateral features are written for +X only
    f = _ellipsoid(p, (0, 0.03, -0.02), (0.077, 0.087, 0.1))                            # cranium
    f = _smin(f, _ellipsoid(p, (0, 0.045, -0.03), (0.076, 0.072, 0.09)), 0.015)         # parietal
    f = _smin(f, _ellipsoid(p, (0, -0.006, 0.028), (0.064, 0.068, 0.066)), 0.02)       # mid face
    f = _smin(f, _ellipsoid(p, (0, -0.05, 0.03), (0.05, 0.042, 0.06)), 0.02)           # jaw
    f = _smin(f, _ellipsoid(p, (0, -0.074, 0.072), (0.021, 0.017, 0.018)), 0.012)      # chin
    neck = np.hypot(x / 0.052, (p[..., 2] + 0.012) / 0.05) * 0.05 - 0.05
    neck = _smax(neck, -0.158 - p[..., 1], 0.012)
    neck = _smax(neck, p[..., 1] - 0.04, 0.01)
    f = _smin(f, neck, 0.025)
    f = _smin(f, _ellipsoid(pm, (0.047, -0.002, 0.057), (0.02, 0.013, 0.02)), 0.014)   # cheekbones
    f = _smin(f, _ellipsoid(p, (0, 0.037, 0.066), (0.052, 0.012, 0.024)), 0.012)       # brow ridge
    nose = _ellipsoid(p, (0, -0.012, 0.096), (0.012, 0.02, 0.014))
    nose = _smin(nose, _cone(p, (0, 0.02, 0.089), (0, -0.016, 0.11), 0.005, 0.0082), 0.01)
    nose = _smin(nose, _ellipsoid(pm, (0.0115, -0.022, 0.097), (0.0062, 0.0058, 0.0075)), 0.005)
    f = _smin(f, nose, 0.01)
    pe = _ear_frame(pm)
    ear = _ellipsoid(pe, (0, 0, 0), (0.0055, 0.03, 0.018))
    ear = _smax(ear, -_ellipsoid(pe, (0.0055, -0.004, 0.003), (0.0045, 0.012, 0.009)), 0.003)
    f = _smin(f, ear, 0.008)
    if eyes:
        e = EYE_CENTERS[0]
        f = _smax(f, -_ellipsoid(pm, e + (0.001, 0.004, 0.015), (0.02, 0.015, 0.009)), 0.008)  # socket
        f = _smin(f, np.linalg.norm(pm - e, axis=-1) - (EYE_RADIUS + _LID), 0.012)          # lids
    return f


def _ear_frame(pm: np.ndarray) -> np.ndarray:
    """Coordinates of (mirrored) points in the left ear's frame: origin at the ear, x out of it."""
    q = pm - EAR_CENTER
    a = np.deg2rad(20.0)  # the back of the ear flares out
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * q[..., 0] + s * q[..., 2], q[..., 1], -s * q[..., 0] + c * q[..., 2]], axis=-1)


def _crossing(origin: np.ndarray, dirs: np.ndarray, t_start: np.ndarray, t_end: np.ndarray,
              eyes: bool, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """First surface crossing of the head field on rays origin + t*dir, marching from t_start to t_end.

    origin (N,3) or (3,), dirs (N,3), t_start/t_end (N,). Returns t (N,) and whether one was found.
    """
    frac = np.linspace(0.0, 1.0, steps)
    t = t_start[:, None] + (t_end - t_start)[:, None] * frac[None]
    origin = np.broadcast_to(origin, dirs.shape)
    inside = _head_field(origin[:, None] + dirs[:, None] * t[..., None], eyes) < 0
    flip = inside != inside[:, :1]
    hit = flip.any(1)
    first = np.argmax(flip, axis=1)
    rows = np.arange(len(dirs))
    a, b = t[rows, np.maximum(first - 1, 0)], t[rows, first]  # a on the start side, b across
    start_in = inside[:, 0]
    for _ in range(22):
        mid = 0.5 * (a + b)
        same = (_head_field(origin + dirs * mid[:, None], eyes) < 0) == start_in
        a, b = np.where(same, mid, a), np.where(same, b, mid)
    return 0.5 * (a + b), hit


def _project(dirs: np.ndarray) -> np.ndarray:
    """Skin points for unit directions from the centre: the head without eyes, then the eye regions
    moved along rays from behind each eyeball (sockets are not star-shaped from the centre)."""
    n = len(dirs)
    t, _ = _crossing(_CENTER, dirs, np.full(n, 0.19), np.full(n, 0.04), False, 76)
    p = _CENTER + dirs * t[:, None]
    val = _head_field(p, True)
    for e in EYE_CENTERS:
        sel = (np.abs(val) > 1e-7) & (np.linalg.norm(p - e, axis=1) < 0.045) & (p[:, 2] > e[2] - 0.02)
        o = e + np.array([-0.008 * np.sign(e[0]), 0.0, -0.03])
        d = _unit(p[sel] - o)
        t0 = np.linalg.norm(p[sel] - o, axis=1)
        t1 = np.where(val[sel] > 0, t0 - 0.025, t0 + 0.012)  # carved: go in; bulged by the lids: go out
        t2, hit = _crossing(o, d, t0, t1, True, 60)
        p[np.flatnonzero(sel)[hit]] = (o + d * t2[:, None])[hit]
    return p


def _cube_sphere(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit directions (V,3), outward triangles (F,3) and the front face's vertex index grid [row j, col i]."""
    a = np.tan(np.linspace(-1.0, 1.0, n + 1) * np.pi / 4)
    bb, aa = np.meshgrid(a, a, indexing="ij")  # [j, i]
    X, Y, Z = np.eye(3)
    frames = [(Z, X, Y), (-Z, -X, Y), (X, -Z, Y), (-X, Z, Y), (Y, X, -Z), (-Y, X, Z)]  # (normal, u, v)
    pts = [nrm + aa[..., None] * u + bb[..., None] * v for nrm, u, v in frames]
    pts = _unit(np.concatenate([q.reshape(-1, 3) for q in pts]))
    dirs, inv = np.unique(np.round(pts, 9), axis=0, return_inverse=True)
    inv = inv.reshape(6, n + 1, n + 1)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="xy")
    tris = []
    for k in range(6):
        g = inv[k]
        v00, v10, v11, v01 = g[j, i], g[j, i + 1], g[j + 1, i + 1], g[j + 1, i]
        left = (i < n // 2)  # mirror-symmetric diagonals
        t1 = np.where(left[..., None], np.stack([v00, v10, v11], -1), np.stack([v00, v10, v01], -1))
        t2 = np.where(left[..., None], np.stack([v00, v11, v01], -1), np.stack([v10, v11, v01], -1))
        tris += [t1.reshape(-1, 3), t2.reshape(-1, 3)]
    return _unit(dirs), np.concatenate(tris), inv[0]


def _zoom(d: np.ndarray, axis: np.ndarray, gamma0: float, k: float) -> np.ndarray:
    """Pull directions within angle gamma0 of axis towards it (factor k at the axis), a smooth bijection."""
    cos = np.clip(d @ axis, -1.0, 1.0)
    g = np.arccos(cos)
    tang = d - cos[:, None] * axis
    nt = np.linalg.norm(tang, axis=1)
    s = g / gamma0
    g2 = np.where(s < 1, g * (k + (1 - k) * _smoothstep(s)), g)
    ok = nt > 1e-12
    tang = np.where(ok[:, None], tang / np.where(ok, nt, 1.0)[:, None], 0.0)
    return _unit(np.cos(g2)[:, None] * axis + np.sin(g2)[:, None] * tang)


def _mobius(d: np.ndarray, axis: np.ndarray, lam: float) -> np.ndarray:
    """Conformal concentration of directions towards axis (scale lam in stereographic coordinates)."""
    cos = np.clip(d @ axis, -1.0, 1.0)
    g = np.arccos(cos)
    tang = d - cos[:, None] * axis
    nt = np.linalg.norm(tang, axis=1)
    g2 = 2 * np.arctan(lam * np.tan(np.minimum(g, np.pi - 1e-9) / 2))
    g2 = np.where(g > np.pi - 1e-9, g, g2)
    ok = nt > 1e-12
    tang = np.where(ok[:, None], tang / np.where(ok, nt, 1.0)[:, None], 0.0)
    return _unit(np.cos(g2)[:, None] * axis + np.sin(g2)[:, None] * tang)


def _mouth_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(m, ex, ey, tilt): the mouth direction from the centre, chart axes, and the grid's tilt about X."""
    m = _unit(MOUTH_CENTER - _CENTER)
    tilt = float(np.arcsin(-m[1]))
    return m, np.array([1.0, 0.0, 0.0]), _rot_x(tilt) @ np.array([0.0, 1.0, 0.0]), tilt


def _chart(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic mouth-chart coordinates (s across, t up) of unit directions; large off the face."""
    m, ex, ey, _ = _mouth_frame()
    dm = d @ m
    ok = dm > 0.2
    s = np.where(ok, (d @ ex) / np.where(ok, dm, 1.0), 9.0 * np.sign(d @ ex + 1e-12))
    t = np.where(ok, (d @ ey) / np.where(ok, dm, 1.0), 9.0)
    return s, t


def _lip_offset(sp: np.ndarray, tp: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Outward offset (m) of the lips and their surroundings at physical chart coordinates (sp, tp).

    ``side`` is +1 / -1 on the two copies of the slit row (upper / lower lip), 0 elsewhere.
    """
    up = np.where(side != 0, side > 0, tp >= 0)
    a = np.abs(tp)
    w = MOUTH_HALF_WIDTH
    across = np.clip(1 - (sp / (w + 0.002)) ** 2, 0, 1) ** 0.9
    bow = 0.0012 * np.exp(-((np.abs(sp) - 0.006) / 0.004) ** 2)  # cupid's bow peaks
    upper = 0.0056 * np.exp(-((a - 0.0032) / (0.0036 + bow)) ** 2)
    lower = 0.006 * np.exp(-((a - 0.0038) / 0.0044) ** 2)
    lips = np.where(up, upper, lower) * across
    wide = np.clip(1 - (sp / 0.034) ** 2, 0, 1)
    sulcus = -0.0022 * np.exp(-((tp + 0.0155) / 0.005) ** 2) * wide
    philtrum = -0.0007 * np.exp(-(sp / 0.0035) ** 2) * np.exp(-((tp - 0.011) / 0.004) ** 2)
    muzzle = 0.0025 * np.exp(-(sp / 0.03) ** 2 - (tp / 0.02) ** 2)
    return lips + sulcus + philtrum + muzzle


def _fissure_curves(xl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fissure mid line, upper and lower lid margins as angles about the eye's x axis (radians) at
    lateral offsets xl (m, +lateral) in the eye's mirrored frame."""
    w = _FISSURE_HALF_WIDTH
    xs = np.clip(xl, -w, w)
    shape = np.clip(1 - (xs / w) ** 2, 0, 1) ** 0.5
    mid = _CANTHAL_TILT * xs / w
    return mid, mid + _FISSURE_UP * shape * (1 - 0.12 * xs / w), mid - _FISSURE_LOW * shape * (1 + 0.1 * xs / w)


def _fissure(q: np.ndarray) -> np.ndarray:
    """Signed distance (m, >0 inside) to the palpebral fissure for points (N,3) in an eye's mirrored
    frame (see :func:`_eye_local`); -1 behind the eye centre."""
    th = np.arctan2(q[:, 1], q[:, 2])
    _, up, low = _fissure_curves(q[:, 0])
    sd = np.minimum(up - th, th - low) * (EYE_RADIUS + _LID) - np.maximum(np.abs(q[:, 0]) - _FISSURE_HALF_WIDTH, 0)
    return np.where(q[:, 2] > 0, sd, -1.0)


def _eye_local(p: np.ndarray, eye: int) -> np.ndarray:
    """Points relative to an eye centre with x mirrored so +x is lateral for both eyes."""
    q = p - EYE_CENTERS[eye]
    if eye == 1:
        q = q * np.array([-1.0, 1.0, 1.0])
    return q


def _eyeball() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit eyeball: a UV sphere around +Z with rings concentrated on the iris.

    Returns vertices (K,3), faces (F,3) and the indices of the equator ring.
    """
    polar = np.deg2rad([5, 9.5, 14, 19, 24.5, 28.5, 32, 40, 50, 62, 76, 90, 110, 135, 160])
    seg = 20
    az = np.arange(seg) * 2 * np.pi / seg
    rings = np.stack([np.sin(polar)[:, None] * np.cos(az), np.sin(polar)[:, None] * np.sin(az),
                      np.repeat(np.cos(polar)[:, None], seg, 1)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 0, 1.0]], rings, [[0, 0, -1.0]]])
    nr = len(polar)
    idx = 1 + np.arange(nr * seg).reshape(nr, seg)
    nxt = np.roll(idx, -1, axis=1)
    f = [np.stack([np.zeros(seg, int), idx[0], nxt[0]], 1)]
    for r in range(nr - 1):
        f += [np.stack([idx[r], idx[r + 1], nxt[r + 1]], 1), np.stack([idx[r], nxt[r + 1], nxt[r]], 1)]
    f.append(np.stack([np.full(seg, len(v) - 1), nxt[-1], idx[-1]], 1))
    return v, np.concatenate(f), idx[int(np.argmin(np.abs(polar - np.pi / 2)))]


def _skin_directions() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cube-sphere directions from the projection centre, concentrated on the face and the eyes.

    Returns directions (N,3), faces (F,3), the front face's index grid, and the mouth chart (s, t)
    of each direction before the corner-lowering warp (the slit is the row t = 0).
    """
    dirs, faces, front = _cube_sphere(_GRID)
    m, ex, ey, tilt = _mouth_frame()
    dirs = _mobius(dirs @ _rot_x(tilt).T, m, 0.4)  # the front face's centre row becomes the slit
    for e in EYE_CENTERS:
        dirs = _zoom(dirs, _unit(e - _CENTER), 0.3, 0.55)
    s, t = _chart(dirs)
    # the slit row is a great circle through the centre, which smiles: lower the mouth corners
    on = (np.abs(s) < 5) & (np.abs(t) < 5)
    t2 = t - s * s * np.exp(-(s / 0.3) ** 4 - (t / 0.25) ** 2)
    dirs = np.where(on[:, None], _unit(m + s[:, None] * ex + t2[:, None] * ey), dirs)
    return dirs, faces, front, s, t


def _cut_slit(faces: np.ndarray, front: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open the lips: the slit row's interior vertices get copies (indices from n_vertices on) that
    the faces below the row use. Returns the new faces, the slit row (corners included) and the copies."""
    n, k = _GRID, _LIP_COLS
    row = front[n // 2, n // 2 - k: n // 2 + k + 1]
    upper = row[1:-1]
    lower = n_vertices + np.arange(len(upper))
    lookup = np.arange(n_vertices)
    lookup[upper] = lower
    below = np.isin(faces, upper).any(1) & np.isin(faces, front[n // 2 - 1]).any(1)
    faces = faces.copy()
    faces[below] = lookup[faces[below]]
    return faces, row, lower


def _tuck_fissures(skin: np.ndarray, dirs: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Radii along the rays from the centre with the skin inside each eye opening pulled just behind
    the eyeball's front surface (the lid margin is where the skin crosses the eyeball)."""
    r = r.copy()
    for eye in range(2):
        q = _eye_local(skin, eye)
        sd = _fissure(q)
        near = (sd > -0.005) & (np.linalg.norm(q, axis=1) < 0.03)
        oc = EYE_CENTERS[eye] - _CENTER
        b = dirs[near] @ oc
        disc = b * b - (oc @ oc - EYE_RADIUS ** 2)
        t_exit = b + np.sqrt(np.maximum(disc, 0)) - 0.002
        blend = _smoothstep(sd[near] / 0.004 + 0.5) * (disc > 0)
        r[near] += (np.minimum(t_exit, r[near]) - r[near]) * blend
    return r


def _mouth_pocket(skin: np.ndarray, loop: np.ndarray, loop_side: np.ndarray, first: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mouth cavity: rings hanging from the slit loop, going back and opening up, closed by a
    strip at the back. ``loop`` runs corner, upper copies, corner, lower copies (reversed);
    ``first`` is the index of the first new vertex.

    Returns vertices (R*L,3), faces (oriented like the slit's loop), the loop position of each new
    vertex and its depth in (0,1].
    """
    k = _LIP_COLS
    col = np.concatenate([np.arange(-k, k + 1), np.arange(k - 1, -k, -1)]) / k
    prof = np.sqrt(np.clip(1 - col ** 2, 0, 1))
    lp = skin[loop]
    centre = lp[np.argmin(np.abs(col) + (loop_side < 0))]
    n = len(loop)
    verts, faces, taus = [], [], []
    prev = loop
    for ring in range(1, _SACK_RINGS + 1):
        tau = (ring / _SACK_RINGS) ** 1.3
        h = 0.0065 * np.sin(0.5 * np.pi * min(1.0, tau / 0.55)) ** 0.7
        pr = np.empty_like(lp)
        pr[:, 0] = lp[:, 0] * (1 - 0.3 * tau)
        pr[:, 1] = lp[:, 1] * (1 - tau) + centre[1] * tau + loop_side * h * prof
        pr[:, 2] = lp[:, 2] * (1 - tau) + (centre[2] - 0.03) * tau
        cur = first + (ring - 1) * n + np.arange(n)
        faces += [np.stack([prev, cur, np.roll(cur, -1)], 1), np.stack([prev, np.roll(cur, -1), np.roll(prev, -1)], 1)]
        verts.append(pr)
        taus.append(np.full(n, tau))
        prev = cur
    m = (n - 2) // 2
    top = prev[: m + 2]                                                  # corner, upper chain, corner
    bot = np.concatenate([[prev[0]], prev[m + 2:][::-1], [prev[m + 1]]])  # corner, lower chain, corner
    wall = [[bot[1], top[1], top[0]]]
    for i in range(1, m):
        wall += [[bot[i + 1], top[i + 1], top[i]], [bot[i], bot[i + 1], top[i]]]
    wall.append([bot[m], top[m + 1], top[m]])
    faces.append(np.array(wall))
    return np.concatenate(verts), np.concatenate(faces), np.tile(np.arange(n), _SACK_RINGS), np.concatenate(taus)


def _build_surface() -> dict[str, np.ndarray]:
    """Skin, mouth pocket and eyeballs. Returns vertices, faces, parts and per-vertex chart data."""
    dirs, faces, front, s, t = _skin_directions()
    skin = _project(dirs)
    nv = len(skin)
    faces, row, lower = _cut_slit(faces, front, nv)
    upper = row[1:-1]
    pick = np.concatenate([np.arange(nv), upper])
    skin, s, t = skin[pick], s[pick], t[pick]
    side = np.zeros(len(skin))
    side[upper], side[lower] = 1.0, -1.0
    t[upper] = t[lower] = 0.0
    dirs = _unit(skin - _CENTER)
    dist = np.linalg.norm(MOUTH_CENTER - _CENTER)
    r = np.linalg.norm(skin - _CENTER, axis=1) + _lip_offset(s * dist, t * dist, side)
    r = _tuck_fissures(_CENTER + dirs * r[:, None], dirs, r)
    skin = _CENTER + dirs * r[:, None]

    loop = np.concatenate([[row[0]], upper, [row[-1]], lower[::-1]])
    pv, pf, pos, tau = _mouth_pocket(skin, loop, side[loop], len(skin))
    # orient the pocket like the skin: the slit edge (loop[0], loop[1]) must run opposite ways
    def has_edge(f, a, b):
        return bool(np.any((f == a) & (np.roll(f, -1, axis=1) == b)))
    if has_edge(faces, loop[0], loop[1]) == has_edge(pf, loop[0], loop[1]):
        pf = pf[:, ::-1]
    v = np.concatenate([skin, pv])
    faces = np.concatenate([faces, pf])
    n_skin = len(skin)
    parts = np.concatenate([np.zeros(n_skin, np.int8), np.full(len(pv), PART_MOUTH, np.int8)])

    ball, ball_f, equator = _eyeball()
    eq = []
    for eye in range(2):
        off = len(v)
        v = np.concatenate([v, EYE_CENTERS[eye] + EYE_RADIUS * ball])
        faces = np.concatenate([faces, ball_f + off])
        parts = np.concatenate([parts, np.full(len(ball), PART_EYE_L + eye, np.int8)])
        eq.append(equator + off)
    pad = len(v) - n_skin
    return {
        "v": v, "f": faces.astype(np.int64), "parts": parts,
        "s": np.concatenate([s, np.full(pad, 9.0)]), "t": np.concatenate([t, np.full(pad, 9.0)]),
        "side": np.concatenate([side, np.zeros(pad)]), "n_skin": np.array(n_skin),
        "sack_src": loop[pos], "sack_depth": tau, "sack_side": side[loop][pos],
        "slit_upper": upper, "slit_lower": lower, "slit_corners": row[[0, -1]], "eye_equator": np.stack(eq),
    }


# ---------------------------------------------------------------------------------------------
# per-vertex context shared by the blendshapes, weights and landmarks


class _Ctx:
    """The surface plus the per-vertex quantities the fields are written in."""

    def __init__(self, g: dict[str, np.ndarray]):
        self.g = g
        self.v = g["v"]
        self.f = g["f"]
        self.parts = g["parts"]
        self.n = len(self.v)
        self.skin = self.parts == PART_SKIN
        self.sack = self.parts == PART_MOUTH
        self.sack_idx = np.flatnonzero(self.sack)
        self.eye_idx = [np.flatnonzero(self.parts == PART_EYE_L), np.flatnonzero(self.parts == PART_EYE_R)]
        dist = np.linalg.norm(MOUTH_CENTER - _CENTER)
        src = np.arange(self.n)
        src[self.sack_idx] = g["sack_src"]
        self.src = src                               # pocket vertices borrow chart data from the slit
        self.sp = g["s"][src] * dist                 # physical mouth chart coordinates (m)
        self.tp = g["t"][src] * dist
        self.side = g["side"][src]
        self.tau = np.zeros(self.n)
        self.tau[self.sack_idx] = g["sack_depth"]
        self.upper = np.where(self.side != 0, self.side > 0, self.tp >= 0)
        self.normals = self._smooth_normals(4)
        self.normals_low = self._smooth_normals(60)  # thin parts (nose, lips) move as a whole
        self.eye_q = [_eye_local(self.v, k) for k in range(2)]
        self.eye_sd = [np.where(self.skin, _fissure(q), -1.0) for q in self.eye_q]
        far = np.minimum(-self.eye_sd[0], -self.eye_sd[1])
        near_eye = np.minimum(*[np.linalg.norm(q, axis=1) for q in self.eye_q])
        # 1 away from the lids, 0 on the lid margins and in the fissure: generic fields fade there
        self.lid_guard = np.maximum(_smoothstep(far / 0.008), _smoothstep((near_eye - 0.02) / 0.008))
        self.lid_guard[self.sack] = 1.0
        self.lid_guard[(self.parts == PART_EYE_L) | (self.parts == PART_EYE_R)] = 0.0

    def _smooth_normals(self, iterations: int) -> np.ndarray:
        v, f = self.v, self.f
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        vn = np.zeros_like(v)
        for k in range(3):
            np.add.at(vn, f[:, k], fn)
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        adj = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(self.n, self.n)).tocsr()
        adj = adj + adj.T + scipy.sparse.identity(self.n)
        for _ in range(iterations):
            vn = adj @ _unit(vn + 1e-30)
        vn = _unit(vn + 1e-30)
        vn[self.sack_idx] = vn[self.g["sack_src"]]
        return vn

    def eye_rigid(self, d: np.ndarray) -> np.ndarray:
        """Make a field rigid around each eye: eyeballs translate by the field's mean near the eye
        and the surrounding lids blend to that same translation (no lid passes through an eyeball)."""
        d = d.copy()
        for k in range(2):
            r = np.linalg.norm(self.eye_q[k], axis=1)
            w = np.exp(-(r / 0.016) ** 2) * self.skin
            rigid = (w[:, None] * d).sum(0) / w.sum()
            m = _smoothstep((0.027 - r) / 0.01)[:, None] * self.skin[:, None]
            d = d * (1 - m) + rigid * m
            d[self.eye_idx[k]] = rigid
        return d

    def follow_slit(self, d: np.ndarray) -> np.ndarray:
        """Pocket vertices take their slit vertex's displacement, fading with depth."""
        d = d.copy()
        d[self.sack_idx] = d[self.g["sack_src"]] * ((1 - self.tau[self.sack_idx]) ** 1.5)[:, None]
        return d

    def lid_rotation(self, eye: int, angle: np.ndarray) -> np.ndarray:
        """Displacement rotating skin vertices about the eye's x axis by per-vertex angles (+ = down)."""
        q = self.eye_q[eye]
        th = np.arctan2(q[:, 1], q[:, 2])
        r = np.hypot(q[:, 1], q[:, 2])
        d = np.zeros((self.n, 3))
        d[:, 1] = r * np.sin(th - angle) - q[:, 1]
        d[:, 2] = r * np.cos(th - angle) - q[:, 2]
        d[~self.skin] = 0.0
        return d

    def lid_profile(self, eye: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per skin vertex: angle th about the eye's x axis, the margins (up, low) and a mask that is 1
        on the lids and fades with distance from the eye centre."""
        q = self.eye_q[eye]
        th = np.arctan2(q[:, 1], q[:, 2])
        _, up, low = _fissure_curves(q[:, 0])
        r = np.linalg.norm(q, axis=1)
        mask = (1 - _smoothstep((r - 0.017) / 0.007)) * (q[:, 2] > -0.004) * self.skin
        mask = mask * (np.abs(q[:, 0]) < _FISSURE_HALF_WIDTH)
        return th, up, low, mask


def _gauss_at(ctx: _Ctx, c, r, sgn: float = 1.0) -> np.ndarray:
    """Gaussian bump (V,) at centre c (x mirrored by sgn) with radii r."""
    c = np.asarray(c, float) * np.array([sgn, 1.0, 1.0])
    return _gauss(ctx.v, c, r)


def _vec(ctx: _Ctx, w: np.ndarray, direction, sgn: float = 1.0) -> np.ndarray:
    """Scalar weights (V,) times a direction (x mirrored by sgn)."""
    return w[:, None] * (np.asarray(direction, float) * np.array([sgn, 1.0, 1.0]))[None]


def _pair(ctx: _Ctx, c, r, direction) -> np.ndarray:
    """Mirror-symmetric pair of Gaussian bumps at c and its mirror, moving along direction (mirrored)."""
    return sum(_vec(ctx, _gauss_at(ctx, c, r, sg), direction, sg) for sg in (1.0, -1.0))


def _along_normal(ctx: _Ctx, w: np.ndarray) -> np.ndarray:
    return w[:, None] * ctx.normals


def _mouth_window(ctx: _Ctx) -> np.ndarray:
    """1 across the lips, 0 at and beyond the mouth corners."""
    return np.clip(1 - (ctx.sp / MOUTH_HALF_WIDTH) ** 2, 0, 1) * (ctx.parts != PART_EYE_L) * (ctx.parts != PART_EYE_R)


def _lip_band(ctx: _Ctx, upper: bool, reach: float) -> np.ndarray:
    """1 on one lip next to the slit, fading to 0 at ``reach`` metres away from it."""
    on = ctx.upper if upper else ~ctx.upper
    a = np.abs(ctx.tp)
    return on * (1 - _smoothstep((a - 0.3 * reach) / (0.7 * reach))) * _mouth_window(ctx)


def _lips(ctx: _Ctx) -> np.ndarray:
    """Lip volume profile (V,): the lip part of the rest-shape offset."""
    a = np.abs(ctx.tp)
    prof = np.where(ctx.upper, np.exp(-((a - 0.0032) / 0.0036) ** 2), np.exp(-((a - 0.0038) / 0.0044) ** 2))
    return prof * np.clip(1 - (ctx.sp / (MOUTH_HALF_WIDTH + 0.002)) ** 2, 0, 1) ** 0.9 * (ctx.parts == 0)


def _corner(ctx: _Ctx, sgn: float) -> np.ndarray:
    """Rest position of the mouth corner on the side sgn (+1 left, -1 right)."""
    c = ctx.v[ctx.g["slit_corners"]]
    return c[np.argmax(c[:, 0] * sgn)]


def _identity_fields(ctx: _Ctx) -> list[tuple[str, np.ndarray, float, bool]]:
    """Named identity fields: (name, displacement (V,3), 1-sigma size in m, chart-based)."""
    v = ctx.v
    x, y, z = v.T
    sx = np.sign(x)
    head = _smoothstep((y + 0.1) / 0.05)
    front = _smoothstep((z + 0.01) / 0.04)
    out: list[tuple[str, np.ndarray, float, bool]] = []

    def add(name, d, amp=0.003, chart=False):
        out.append((name, d, amp, chart))

    add("head_width", _vec(ctx, x * head, (1, 0, 0)), 0.0035)
    add("head_length", _vec(ctx, _smoothstep(-z / 0.1) * head, (0, 0, -1)), 0.004)
    add("head_height", _vec(ctx, _smoothstep(y / 0.11), (0, 1, 0)), 0.004)
    add("face_length", _vec(ctx, _smoothstep((-0.02 - y) / 0.06) * front * _smoothstep((y + 0.16) / 0.05),
                            (0, -1, 0)), 0.004)
    add("face_width", _pair(ctx, (0.055, -0.02, 0.04), (0.03, 0.035, 0.04), (1, 0, 0)))
    tip = (0, -0.018, 0.118)
    add("nose_length", _vec(ctx, _gauss(v, tip, (0.012, 0.016, 0.022)), (0, -0.3, 1)), 0.0035)
    add("nose_width", _pair(ctx, (0.012, -0.022, 0.098), (0.011, 0.011, 0.014), (1, 0, 0)), 0.0025)
    add("nose_bridge", _vec(ctx, _gauss(v, (0, 0.004, 0.1), (0.009, 0.02, 0.02)), (0, 0, 1)), 0.0025)
    add("nose_tip_up", _vec(ctx, _gauss(v, tip, (0.011, 0.012, 0.02)), (0, 1, -0.2)), 0.0025)
    add("nose_hump", _vec(ctx, _gauss(v, (0, 0.0, 0.105), (0.007, 0.008, 0.015)), (0, 0, 1)), 0.002)
    add("chin_forward", _vec(ctx, _gauss(v, (0, -0.08, 0.075), (0.025, 0.02, 0.035)), (0, 0, 1)), 0.004)
    add("chin_height", _vec(ctx, _gauss(v, (0, -0.085, 0.07), (0.025, 0.02, 0.035)), (0, -1, 0)), 0.0035)
    add("chin_width", _pair(ctx, (0.015, -0.08, 0.07), (0.015, 0.02, 0.03), (1, 0, 0)), 0.0025)
    add("jaw_width", _pair(ctx, (0.05, -0.07, 0.0), (0.03, 0.03, 0.04), (1, 0, 0)), 0.004)
    add("cheekbones", _pair(ctx, (0.047, -0.002, 0.06), (0.02, 0.018, 0.025), (0.6, 0, 0.8)))
    add("cheek_fullness", _along_normal(ctx, sum(_gauss_at(ctx, (0.04, -0.035, 0.06), (0.022, 0.022, 0.03), sg)
                                                 for sg in (1, -1))))
    add("brow_ridge", _vec(ctx, _gauss(v, (0, 0.036, 0.085), (0.05, 0.01, 0.02)), (0, 0, 1)), 0.003)
    for name, direc, amp in (("eye_spacing", (1, 0, 0), 0.0025), ("eye_height", (0, 1, 0), 0.002),
                             ("eye_depth", (0, 0, -1), 0.002)):
        add(name, _pair(ctx, EYE_CENTERS[0] + (0, 0, 0.01), (0.03, 0.025, 0.03), direc), amp)
    add("lip_thickness", _along_normal(ctx, _lips(ctx)), 0.0025, True)
    add("upper_lip_thickness", _along_normal(ctx, _lips(ctx) * ctx.upper), 0.002, True)
    add("mouth_width", _vec(ctx, x * _gauss(v, (0, -0.05, 0.09), (0.035, 0.018, 0.04)), (1, 0, 0)), 0.003)
    add("philtrum_length", _vec(ctx, _smoothstep((-0.02 - y) / 0.03) * _gauss(v, (0, -0.06, 0.08), (0.05, 0.05, 0.05))
                                * front, (0, -1, 0)), 0.0025)
    ear = EAR_CENTER
    ear_mask = sum(_gauss_at(ctx, ear, (0.02, 0.035, 0.03), sg) * _smoothstep((np.abs(x) - 0.062) / 0.008)
                   for sg in (1, -1))
    add("ear_size", (v - np.array(ear) * np.stack([sx, np.ones_like(x), np.ones_like(x)], 1)) * ear_mask[:, None], 0.003)
    add("ear_protrusion", _vec(ctx, sx * ear_mask * _smoothstep((-z - 0.005) / 0.02), (1, 0, 0)), 0.004)
    add("forehead_slope", _vec(ctx, _smoothstep((y - 0.035) / 0.06) * _smoothstep(z / 0.05), (0, 0, 1)), 0.004)
    add("occiput", _vec(ctx, _gauss(v, (0, 0.01, -0.11), (0.06, 0.05, 0.04)), (0, 0, -1)), 0.004)
    add("crown", _vec(ctx, _gauss(v, (0, 0.11, -0.02), (0.06, 0.03, 0.07)), (0, 1, 0)), 0.003)
    add("temple_width", _pair(ctx, (0.07, 0.04, 0.02), (0.03, 0.03, 0.04), (1, 0, 0)), 0.003)
    neck = _smoothstep((-0.06 - y) / 0.03)
    add("neck_thickness", np.stack([x, np.zeros_like(x), z + 0.012], 1) * neck[:, None], 0.004)
    add("nasolabial_depth", _along_normal(ctx, -sum(_gauss_at(ctx, (0.028, -0.035, 0.085), (0.006, 0.014, 0.02), sg)
                                                    for sg in (1, -1))), 0.0015)
    return out


def _expression_fields(ctx: _Ctx) -> list[tuple[str, np.ndarray, float, bool]]:
    """Named expression fields: (name, displacement (V,3), 1-sigma size in m, chart-based)."""
    v = ctx.v
    x = v[:, 0]
    out: list[tuple[str, np.ndarray, float, bool]] = []

    def add(name, d, amp, chart=False):
        out.append((name, d, amp, chart))

    sides = (("L", 1.0), ("R", -1.0))
    for s, sg in sides:  # jaw-independent smile: corners up, out and back; cheeks rise
        c = _corner(ctx, sg)
        d = _vec(ctx, _gauss(v, c, (0.016, 0.016, 0.025)), (0.45, 0.8, -0.35), sg)
        d += _vec(ctx, 0.45 * _gauss_at(ctx, (0.035, -0.02, 0.07), (0.018, 0.016, 0.025), sg), (0.1, 0.7, 0.5), sg)
        add(f"smile_{s}", d, 0.0045)
    for eye, (s, sg) in enumerate(sides):  # upper lid down: 1 = half closed, 2 = closed
        th, up, low, mask = ctx.lid_profile(eye)
        inside = (th > low) & (th < up)
        g = np.where(th >= up, np.exp(-((th - up) / 0.5) ** 2), np.where(inside, (th - low) / np.maximum(up - low, 1e-9), 0))
        add(f"blink_{s}", ctx.lid_rotation(eye, 0.5 * (up - low) * g * mask), 0.0, False)
    for eye, (s, sg) in enumerate(sides):
        th, up, low, mask = ctx.lid_profile(eye)
        inside = (th > low) & (th < up)
        g = np.where(th >= up, np.exp(-((th - up) / 0.5) ** 2), np.where(inside, (th - low) / np.maximum(up - low, 1e-9), 0))
        d = ctx.lid_rotation(eye, -0.22 * (up - low) * g * mask)
        d += _vec(ctx, _gauss_at(ctx, (0.033, 0.045, 0.08), (0.025, 0.015, 0.04), sg) * ctx.lid_guard, (0, 1, 0)) * 0.0015
        add(f"eye_wide_{s}", d, 0.0)
    for eye, (s, sg) in enumerate(sides):
        th, up, low, mask = ctx.lid_profile(eye)
        inside = (th > low) & (th < up)
        g = np.where(th <= low, np.exp(-((low - th) / 0.4) ** 2), np.where(inside, (up - th) / np.maximum(up - low, 1e-9), 0))
        d = ctx.lid_rotation(eye, -0.3 * (up - low) * g * mask)
        d += 0.0015 * _vec(ctx, _gauss_at(ctx, (0.035, -0.008, 0.07), (0.02, 0.012, 0.03), sg) * ctx.lid_guard, (0, 1, 0.3))
        add(f"squint_{s}", d, 0.0)
    for s, sg in sides:
        w = _gauss_at(ctx, (0.034, 0.05, 0.08), (0.028, 0.025, 0.05), sg) * ctx.lid_guard
        add(f"brow_raise_{s}", _vec(ctx, w, (0, 1, 0.15)), 0.004)
    w = sum(_gauss_at(ctx, (0.016, 0.045, 0.085), (0.014, 0.022, 0.04), sg) for sg in (1, -1)) * ctx.lid_guard
    add("brow_inner_up", _vec(ctx, w, (0, 1, 0.1)), 0.0035)
    d = sum(_vec(ctx, _gauss_at(ctx, (0.018, 0.038, 0.088), (0.014, 0.014, 0.03), sg), (-0.6, -0.6, 0.25), sg)
            for sg in (1, -1)) * ctx.lid_guard[:, None]
    add("brow_furrow", d, 0.003)
    for s, sg in sides:
        add(f"cheek_raise_{s}", _vec(ctx, _gauss_at(ctx, (0.036, -0.012, 0.07), (0.02, 0.018, 0.03), sg) * ctx.lid_guard,
                                     (0, 1, 0.4)), 0.003)
    for s, sg in sides:
        add(f"cheek_puff_{s}", _along_normal(ctx, _gauss_at(ctx, (0.042, -0.042, 0.055), (0.022, 0.022, 0.03), sg)), 0.005)
    d = sum(_vec(ctx, _gauss_at(ctx, (0.012, -0.012, 0.098), (0.01, 0.014, 0.02), sg), (0, 1, 0.2)) for sg in (1, -1))
    d += _vec(ctx, _gauss(v, (0, 0.012, 0.1), (0.012, 0.008, 0.02)), (0, -0.3, -0.3))
    add("nose_wrinkle", d, 0.003)
    add("nostril_flare", _pair(ctx, (0.013, -0.023, 0.098), (0.007, 0.008, 0.012), (1, 0, 0)), 0.002)
    add("upper_lip_raise", _vec(ctx, _lip_band(ctx, True, 0.018), (0, 1, 0.2)), 0.003, True)
    add("lower_lip_down", _vec(ctx, _lip_band(ctx, False, 0.02), (0, -1, 0.15)), 0.0035, True)
    for s, sg in sides:
        add(f"lip_corner_down_{s}", _vec(ctx, _gauss(v, _corner(ctx, sg), (0.014, 0.014, 0.025)), (0.1, -1, -0.1), sg),
            0.0035)
    for s, sg in sides:
        add(f"lip_stretch_{s}", _vec(ctx, _gauss(v, _corner(ctx, sg), (0.016, 0.014, 0.025)), (1, -0.15, -0.45), sg),
            0.004)
    for s, sg in sides:
        add(f"dimple_{s}", _vec(ctx, _gauss(v, _corner(ctx, sg), (0.01, 0.012, 0.02)), (0.2, 0, -1), sg), 0.003)
    lipsw = _gauss(v, MOUTH_CENTER, (0.03, 0.016, 0.04))
    add("pucker", np.stack([-x * 25, np.zeros_like(x), np.full_like(x, 0.6)], 1) * lipsw[:, None], 0.0045)
    d = _vec(ctx, _lip_band(ctx, True, 0.012), (0, 0.6, 0.8)) + _vec(ctx, _lip_band(ctx, False, 0.012), (0, -0.6, 0.8))
    add("lip_funnel", d, 0.0035, True)
    add("lip_press", _along_normal(ctx, -_lips(ctx)), 0.002, True)
    d = _vec(ctx, _lip_band(ctx, True, 0.01), (0, 1, 0)) + _vec(ctx, _lip_band(ctx, False, 0.01), (0, -1, 0))
    add("lips_part", d, 0.002, True)
    add("lower_lip_out", _along_normal(ctx, _lips(ctx) * ~ctx.upper), 0.003, True)
    add("upper_lip_out", _along_normal(ctx, _lips(ctx) * ctx.upper), 0.0025, True)
    for s, sg in (("left", 1.0), ("right", -1.0)):
        add(f"mouth_{s}", _vec(ctx, _gauss(v, MOUTH_CENTER, (0.028, 0.02, 0.04)), (1, 0, -0.1), sg), 0.004)
    d = _vec(ctx, _gauss(v, (0, -0.072, 0.08), (0.022, 0.018, 0.03)), (0, 0.8, 0.4))
    d += _vec(ctx, 0.6 * _gauss(v, MOUTH_CENTER, (0.025, 0.012, 0.03)), (0, 0.6, 0.6))
    add("chin_raise", d, 0.003)
    add("jaw_clench", _along_normal(ctx, sum(_gauss_at(ctx, (0.058, -0.045, 0.0), (0.012, 0.022, 0.025), sg)
                                             for sg in (1, -1))), 0.002)
    return out


def _normalize(d: np.ndarray, amp: float) -> np.ndarray:
    m = np.linalg.norm(d, axis=1).max()
    return d if amp <= 0 or m == 0 else d * (amp / m)


def _random_shape_fields(ctx: _Ctx, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Smooth low-frequency identity fields: a few plane waves along the smoothed normals, with sizes
    decaying like a PCA spectrum (1.6 mm for the first, so all of them together stay plausible)."""
    out = []
    for i in range(count):
        k = rng.normal(size=(3, 3)) * rng.uniform(12, 40)
        ph = rng.uniform(0, 2 * np.pi, 3)
        amp = rng.normal(size=3)
        q = ctx.v.copy()
        if i % 2 == 0:  # every other field is left/right symmetric
            q[:, 0] = np.abs(q[:, 0])
            k[:, 0] = 0.0
        w = sum(a * np.cos(q @ kk + p) for a, kk, p in zip(amp, k, ph))
        tang = rng.normal(size=3) * 0.25
        out.append(_normalize(w[:, None] * (ctx.normals_low + tang), 0.0016 * 0.97 ** i))
    return out


def _random_expression_fields(ctx: _Ctx, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Smooth localized bumps on the face (lids excluded)."""
    front = np.flatnonzero(ctx.skin & (ctx.v[:, 2] > 0.055) & (ctx.v[:, 1] > -0.1) & (ctx.v[:, 1] < 0.07))
    out = []
    for _ in range(count):
        c = ctx.v[front[rng.integers(len(front))]]
        r = rng.uniform(0.012, 0.025, 3)
        w = _gauss(ctx.v, c, r) * ctx.lid_guard
        direc = rng.normal(size=3) * 0.5
        d = _along_normal(ctx, w * rng.choice([-1.0, 1.0])) + w[:, None] * direc
        out.append(_normalize(d, 0.003))
    return out


# ---------------------------------------------------------------------------------------------
# skinning, joints, correctives, landmarks


def _weights(ctx: _Ctx) -> np.ndarray:
    """LBS weights (V,5): eyeballs rigid to their eye; chin, lower lip and mouth floor to the jaw with
    a smooth falloff up the cheeks and down the neck; the neck base to the root; the rest to the neck."""
    v = ctx.v
    y, z = v[:, 1], v[:, 2]
    w = MOUTH_HALF_WIDTH
    asp = np.abs(ctx.sp)
    spread = 0.0008 + 0.014 * _smoothstep((asp - 0.6 * w) / (1.4 * w))
    val = -ctx.tp / spread
    on_slit = ctx.side != 0
    val = np.where(on_slit, -ctx.side * 1.5 * (1 - _smoothstep((asp - 0.55 * w) / (0.45 * w))), val)
    jaw = _smoothstep(0.5 + 0.5 * val)
    ramus = _smoothstep((z + 0.03) / 0.025)
    jawline = -0.1 + 0.018 * np.clip((0.07 - z) / 0.075, 0, 1)
    below = 1 - _smoothstep((jawline - y) / 0.03)
    jaw = jaw * ramus * below
    sack = ctx.sack_idx
    jaw[sack] = np.where(ctx.g["sack_side"] > 0, 0.0, jaw[ctx.g["sack_src"]])
    root = _smoothstep((-0.08 - 0.03 * _smoothstep(z / 0.06) - y) / 0.05)  # lower under the chin
    jaw = jaw * (1 - root)
    wts = np.zeros((ctx.n, 5))
    wts[:, 0], wts[:, 2] = root, jaw
    wts[:, 1] = 1 - root - jaw
    for k in range(2):
        wts[ctx.eye_idx[k]] = np.eye(5)[3 + k]
    return wts


def _regress_to(v: np.ndarray, cand: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray:
    """Non-negative weights over candidate vertices, summing to 1, whose combination is target.

    Solves a small NNLS that hits target (and the sum) closely while staying near smooth Gaussian
    weights, so the joint follows the surrounding surface under shape changes.
    """
    p = v[cand]
    w0 = np.exp(-(np.linalg.norm(p - target, axis=1) / sigma) ** 2)
    w0 /= w0.sum()
    lam = 200.0
    a = np.concatenate([lam * np.vstack([p.T, np.ones(len(cand))]), 0.05 * np.eye(len(cand))])
    b = np.concatenate([lam * np.append(target, 1.0), 0.05 * w0])
    sol, _ = nnls(a, b, maxiter=5000)
    return sol / sol.sum()


def _j_regressor(ctx: _Ctx) -> np.ndarray:
    v = ctx.v
    skin = np.flatnonzero(ctx.skin)
    jr = np.zeros((5, ctx.n))
    ring = skin[np.abs(v[skin, 1] - JOINTS[0, 1]) < 0.012]
    jr[0, ring] = _regress_to(v, ring, JOINTS[0], 0.08)
    neck = skin[(np.abs(v[skin, 1] - JOINTS[1, 1]) < 0.012) & (v[skin, 2] < 0.0)]
    jr[1, neck] = _regress_to(v, neck, JOINTS[1], 0.08)
    hinge = JOINTS[2] + np.array([0.068, 0.0, 0.01])
    near = lambda c: np.linalg.norm(v[skin] - c, axis=1) < 0.018  # noqa: E731
    jaw = skin[near(hinge) | near(hinge * np.array([-1.0, 1.0, 1.0]))]
    jr[2, jaw] = _regress_to(v, jaw, JOINTS[2], 0.08)
    for k in range(2):
        eq = ctx.g["eye_equator"][k]
        jr[3 + k, eq] = 1.0 / len(eq)
    return jr


def _posedirs(ctx: _Ctx) -> np.ndarray:
    """Pose correctives (V,3,36): a neck-front bulge when the head nods down, hollowing cheeks when
    the jaw opens. Feature 9*(j-1)+3*r+c is (R_j - I)[r, c] for joints j = 1..4."""
    pd = np.zeros((ctx.n, 3, 36))
    v = ctx.v
    bulge = _gauss(v, (0, -0.1, 0.03), (0.035, 0.025, 0.03)) * ctx.skin
    d = bulge[:, None] * np.array([0.0, 0.0, 0.012])  # metres per radian of nod (about +X)
    pd[:, :, 7] += 0.5 * d   # R[2,1] = sin a
    pd[:, :, 5] -= 0.5 * d   # R[1,2] = -sin a
    cheeks = sum(_gauss_at(ctx, (0.04, -0.045, 0.065), (0.014, 0.015, 0.025), sg) for sg in (1, -1)) * ctx.skin
    d = cheeks[:, None] * np.stack([-np.sign(v[:, 0]), np.zeros(ctx.n), np.zeros(ctx.n)], 1) * 0.008
    pd[:, :, 9 + 7] += 0.5 * d
    pd[:, :, 9 + 5] -= 0.5 * d
    return pd


def _ray_hits(v: np.ndarray, f: np.ndarray, origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """First triangle hit by each ray (Moller-Trumbore). Returns face index (L,) (-1: none) and
    barycentric coordinates (L,3)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = b - a, c - a
    idx = np.full(len(origins), -1)
    bary = np.zeros((len(origins), 3))
    for i, (o, d) in enumerate(zip(origins, dirs)):
        p = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, p)
        ok = np.abs(det) > 1e-18
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = o - a
        u = np.einsum("ij,ij->i", s, p) * inv
        q = np.cross(s, e1)
        w = (q @ d) * inv
        t = np.einsum("ij,ij->i", e2, q) * inv
        hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
        if hit.any():
            j = np.flatnonzero(hit)[np.argmin(t[hit])]
            idx[i] = j
            bary[i] = (1 - u[j] - w[j], u[j], w[j])
    return idx, bary


def _landmarks(ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    """68 iBUG landmarks (0-16 jaw from the subject's right, 17-26 brows, 27-35 nose, 36-47 eyes,
    48-67 mouth) embedded as (face index, barycentric) on the skin."""
    v, f = ctx.v, ctx.f
    skin_faces = np.flatnonzero(np.all(ctx.parts[f] == PART_SKIN, axis=1))
    fs = f[skin_faces]
    origins, dirs = [], []

    def ray(o, d):
        origins.append(np.asarray(o, float))
        dirs.append(_unit(np.asarray(d, float)))

    def frontal(x, y):
        ray((x, y, 0.3), (0, 0, -1))

    for i in range(17):  # jaw contour, subject's right (-x) to left
        a = (i - 8) / 8 * 0.5 * np.pi * 0.92
        tgt = np.array([0.068 * np.sin(a), -0.092 + 0.083 * (1 - np.cos(a)), 0.075 * np.cos(a) + 0.008])
        d = _unit(tgt - _CENTER)
        ray(_CENTER + 0.3 * d, -d)
    brow_x = np.array([0.054, 0.045, 0.035, 0.025, 0.015])
    brow_y = np.array([0.033, 0.04, 0.043, 0.042, 0.038])
    for x, y in zip(-brow_x, brow_y):
        frontal(x, y)
    for x, y in zip(brow_x[::-1], brow_y[::-1]):
        frontal(x, y)
    for y in (0.02, 0.007, -0.006, -0.018):
        frontal(0.0, y)
    for x in (-0.01, -0.005, 0.0, 0.005, 0.01):
        d = _unit(np.array([0.0, 0.35, -1.0]))
        ray(np.array([x, -0.027, 0.1]) - 0.3 * d, d)
    w = _FISSURE_HALF_WIDTH
    # (lateral offset, which margin) in iBUG order for the right eye then the left eye
    right = [(0.9 * w, "mid"), (0.35 * w, "up"), (-0.35 * w, "up"), (-0.9 * w, "mid"), (-0.35 * w, "low"), (0.35 * w, "low")]
    left = [(-0.9 * w, "mid"), (-0.35 * w, "up"), (0.35 * w, "up"), (0.9 * w, "mid"), (0.35 * w, "low"), (-0.35 * w, "low")]
    for eye, pts in ((1, right), (0, left)):
        sg = 1.0 if eye == 0 else -1.0
        for xl, which in pts:
            mid, up, low = (c.item() for c in _fissure_curves(np.array([xl])))
            th = {"mid": mid, "up": up + 0.03, "low": low - 0.03}[which]
            r = EYE_RADIUS + _LID
            ryz = np.sqrt(r * r - xl * xl)
            q = np.array([sg * xl, ryz * np.sin(th), ryz * np.cos(th)])
            ray(EYE_CENTERS[eye] + 2.5 * q, -q)
    # outer lips: corners just outside the slit ends, upper then lower vermilion borders
    up_v = ctx.g["slit_upper"]
    sx, sy = v[up_v, 0], v[up_v, 1]
    order = np.argsort(sx)
    slit_y = lambda x: np.interp(x, sx[order], sy[order])  # noqa: E731
    cr, cl = _corner(ctx, -1.0), _corner(ctx, 1.0)
    mw = MOUTH_HALF_WIDTH
    outer = [(cr[0] - 0.0015, cr[1])]
    outer += [(x, slit_y(x) + h) for x, h in ((-0.6 * mw, 0.0055), (-0.26 * mw, 0.0085), (0.0, 0.0075),
                                              (0.26 * mw, 0.0085), (0.6 * mw, 0.0055))]
    outer += [(cl[0] + 0.0015, cl[1])]
    outer += [(x, slit_y(x) - h) for x, h in ((0.6 * mw, 0.0065), (0.3 * mw, 0.0088), (0.0, 0.0095),
                                              (-0.3 * mw, 0.0088), (-0.6 * mw, 0.0065))]
    for x, y in outer:
        frontal(x, y)
    idx, bary = _ray_hits(v, fs, np.array(origins), np.array(dirs))
    if (idx < 0).any():
        raise FlameFileError(f"demo head: landmarks {np.flatnonzero(idx < 0).tolist()} missed the surface",
                             hint="this is a bug in the demo head generator")
    faces = skin_faces[idx]
    # inner lips on the slit itself: upper landmarks on the upper lip's copy, lower on the lower's
    inner_f, inner_b = [], []

    def on_slit(x, row):
        xs = v[row, 0]
        o = np.argsort(xs)
        row, xs = row[o], xs[o]
        i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
        lam = float(np.clip((x - xs[i]) / (xs[i + 1] - xs[i]), 0, 1))
        a, b = row[i], row[i + 1]
        cand = np.flatnonzero(np.isin(f, [a, b]).sum(1) == 2)
        cand = [c for c in cand if np.all(ctx.parts[f[c]] == PART_SKIN)]
        face = cand[0]
        bc = np.zeros(3)
        bc[list(f[face]).index(a)] = 1 - lam
        bc[list(f[face]).index(b)] = lam
        inner_f.append(face)
        inner_b.append(bc)

    lo_v = ctx.g["slit_lower"]
    corners = ctx.g["slit_corners"]
    c_r, c_l = (corners[0], corners[1]) if v[corners[0], 0] < 0 else (corners[1], corners[0])
    for corner_v, xs_ in ((c_r, (-0.4 * mw, 0.0, 0.4 * mw)), (c_l, (0.4 * mw, 0.0, -0.4 * mw))):
        face = next(c for c in np.flatnonzero((f == corner_v).any(1)) if np.all(ctx.parts[f[c]] == PART_SKIN))
        bc = (f[face] == corner_v).astype(float)
        inner_f.append(face)
        inner_b.append(bc)
        row = np.concatenate([[c_r], up_v, [c_l]]) if corner_v == c_r else np.concatenate([[c_r], lo_v, [c_l]])
        for x in xs_:
            on_slit(x, row)
    return np.concatenate([faces, inner_f]).astype(np.int64), np.concatenate([bary, inner_b])


# ---------------------------------------------------------------------------------------------
# the public entry points


def build_demo_head() -> dict[str, np.ndarray]:
    """Generate the demo head: a dict with FLAME's keys (see the module docstring) plus
    ``n_shape``, ``shape_names``, ``expression_names`` and ``vertex_part``. Deterministic."""
    ctx = _Ctx(_build_surface())
    rng = np.random.default_rng(20240607)

    shape_named = _identity_fields(ctx)
    shapes, shape_names = [], []
    for name, d, amp, chart in shape_named:
        d = ctx.follow_slit(d) if chart else d
        shapes.append(_normalize(ctx.eye_rigid(d), amp))
        shape_names.append(name)
    for i, d in enumerate(_random_shape_fields(ctx, N_SHAPE - len(shapes), rng)):
        shapes.append(_normalize(ctx.eye_rigid(d), np.linalg.norm(d, axis=1).max()))
        shape_names.append(f"shape_random_{i:02d}")

    expr_named = _expression_fields(ctx)
    exprs, expr_names = [], []
    for name, d, amp, chart in expr_named:
        d = d.copy()
        d = ctx.follow_slit(d) if chart else d
        for k in range(2):
            d[ctx.eye_idx[k]] = 0.0
        exprs.append(_normalize(d, amp))
        expr_names.append(name)
    for i, d in enumerate(_random_expression_fields(ctx, N_EXPR - len(exprs), rng)):
        d = ctx.follow_slit(d)
        for k in range(2):
            d[ctx.eye_idx[k]] = 0.0
        exprs.append(d)
        expr_names.append(f"expr_random_{i:02d}")

    shapedirs = np.stack(shapes + exprs, axis=2)
    lmk_face_idx, lmk_b_coords = _landmarks(ctx)
    return {
        "v_template": ctx.v.astype(np.float64),
        "f": ctx.f.astype(np.int64),
        "shapedirs": shapedirs.astype(np.float64),
        "posedirs": _posedirs(ctx),
        "J_regressor": _j_regressor(ctx),
        "weights": _weights(ctx),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "lmk_face_idx": lmk_face_idx,
        "lmk_b_coords": lmk_b_coords.astype(np.float64),
        "n_shape": np.array(N_SHAPE, dtype=np.int64),
        "shape_names": np.array(shape_names),
        "expression_names": np.array(expr_names),
        "vertex_part": ctx.parts.astype(np.int8),
    }


def demo_head_path(cache_dir: Path | None = None) -> Path:
    """Path of the cached demo head ``.npz``, generated (atomically) on first use.

    The cache directory is ``cache_dir``, else ``$FFAVATAR_CACHE``, else ``~/.cache/ffavatar``. The
    file name carries a hash of this module's source, so a cache written by other code is never used
    (a checkpoint is tied to the head's content through its head-model id).
    """
    root = Path(cache_dir or os.environ.get("FFAVATAR_CACHE") or Path.home() / ".cache" / "ffavatar").expanduser()
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = root / f"demo_head_v{DEMO_HEAD_VERSION}_{code}.npz"
    if path.is_file():
        return path
    try:
        root.mkdir(parents=True, exist_ok=True)
        log.info("generating the demo head into %s", path)
        fd, tmp = tempfile.mkstemp(prefix=".demo_head_", suffix=".npz", dir=root)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **build_demo_head())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise FlameFileError(f"cannot write the demo head to {path}: {e}",
                             hint="set FFAVATAR_CACHE to a writable directory") from e
    return path


def fissure_distance(points: np.ndarray) -> np.ndarray:
    """Signed distance (m) of points (N,3) on the rest skin to the nearer palpebral fissure:
    > 0 inside an eye opening, < 0 outside (-1 far behind the eyes). For texturing lid margins."""
    p = np.asarray(points, dtype=np.float64)
    return np.maximum(_fissure(_eye_local(p, 0)), _fissure(_eye_local(p, 1)))


def lip_coordinates(points: np.ndarray) -> np.ndarray:
    """Mouth chart coordinates (N,2) in metres of rest points (N,3): across (+X) and up from the
    lip slit (0 on the slit). Meaningful on the front of the face; for texturing the lips."""
    p = np.asarray(points, dtype=np.float64)
    s, t2 = _chart(_unit(p - _CENTER))
    t = t2.copy()
    for _ in range(4):  # undo the corner-lowering warp of the chart (a contraction near the mouth)
        t = np.where(np.abs(s) < 5, t2 + s * s * np.exp(-(s / 0.3) ** 4 - (t / 0.25) ** 2), t2)
    dist = np.linalg.norm(MOUTH_CENTER - _CENTER)
    return np.stack([s * dist, t * dist], axis=1)
