"""Seeded per-identity appearance of the demo head, for synthetic training data.

``Appearance.from_seed(seed)`` draws an identity's colours: skin tone (across light to very dark
skin), hair colour, a hair cap with a hairline and length, eyebrows, lips, iris, sclera, pupil, a
dark mouth interior with teeth, and subtle skin variation (cheek and nose redness, stubble, smooth
blotches). ``colors(points, parts)`` evaluates them at canonical points on or near the demo head's
rest surface. Every feature is a function of position (and the ``vertex_part`` code), never of a
vertex index, so the same appearance colours the template and any subdivision of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput
from .demo_head import (EAR_CENTER, EYE_CENTERS, MOUTH_CENTER, MOUTH_HALF_WIDTH, PART_EYE_L, PART_EYE_R, PART_HAIR,
                        PART_MOUTH, fissure_distance, lip_coordinates)

_SKIN_TONES = np.array([  # sRGB, light to very dark
    [0.97, 0.86, 0.78], [0.93, 0.77, 0.66], [0.86, 0.67, 0.54], [0.76, 0.57, 0.42],
    [0.62, 0.44, 0.31], [0.47, 0.32, 0.22], [0.33, 0.22, 0.15], [0.23, 0.15, 0.11],
])
_HAIR = {  # name: (sRGB, weight for light skin, weight for dark skin)
    "black": ([0.04, 0.035, 0.03], 0.15, 0.7),
    "dark_brown": ([0.13, 0.085, 0.055], 0.3, 0.25),
    "brown": ([0.28, 0.18, 0.1], 0.2, 0.04),
    "light_brown": ([0.45, 0.32, 0.19], 0.1, 0.0),
    "blonde": ([0.78, 0.64, 0.4], 0.1, 0.0),
    "red": ([0.55, 0.23, 0.1], 0.05, 0.0),
    "grey": ([0.55, 0.54, 0.52], 0.06, 0.01),
    "white": ([0.86, 0.85, 0.82], 0.04, 0.0),
}
_IRIS = np.array([[0.3, 0.17, 0.08], [0.16, 0.09, 0.04], [0.42, 0.32, 0.14], [0.28, 0.42, 0.22],
                  [0.28, 0.45, 0.66], [0.47, 0.53, 0.58]])
_IRIS_W_LIGHT = np.array([0.25, 0.15, 0.15, 0.12, 0.23, 0.1])
_IRIS_W_DARK = np.array([0.35, 0.6, 0.05, 0.0, 0.0, 0.0])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _mix(a: np.ndarray, b, w: np.ndarray) -> np.ndarray:
    """Per-point blend of colours a (N,3) towards b ((3,) or (N,3)) by weights w (N,)."""
    return a + (np.asarray(b, dtype=np.float64) - a) * w[:, None]


@dataclass(frozen=True)
class Appearance:
    """Colours of one synthetic identity (all sRGB in [0,1]); build with :meth:`from_seed`."""

    seed: int
    skin: np.ndarray
    redness: float          # cheeks / nose / lids tint strength
    blotch: np.ndarray      # (4,4) smooth skin-variation waves: 3 wave vectors + phases per row
    hair: np.ndarray
    bald: bool
    hairline: float         # front hairline height (m)
    hair_length: float      # 0 short .. 1 to the neck base at the back
    brow: np.ndarray
    brow_thickness: float   # m
    lip: np.ndarray
    iris: np.ndarray
    sclera: np.ndarray
    stubble: float          # 0 none .. 1 dark stubble on chin, jaw and upper lip

    @classmethod
    def from_seed(cls, seed: int) -> Appearance:
        """A deterministic random identity for ``seed`` (any int; distinct seeds look distinct)."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise InvalidInput(f"appearance seed must be an int, got {type(seed).__name__}")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
        tone = rng.uniform(0, len(_SKIN_TONES) - 1)
        i = min(int(tone), len(_SKIN_TONES) - 2)
        skin = _SKIN_TONES[i] + (_SKIN_TONES[i + 1] - _SKIN_TONES[i]) * (tone - i)
        skin = np.clip(skin * rng.uniform(0.95, 1.05) + rng.normal(0, 0.015, 3), 0.05, 1.0)
        dark = tone / (len(_SKIN_TONES) - 1)  # 0 light .. 1 dark
        names = list(_HAIR)
        w = np.array([_HAIR[n][1] * (1 - dark) + _HAIR[n][2] * dark for n in names])
        hair_name = names[rng.choice(len(names), p=w / w.sum())]
        hair = np.clip(np.array(_HAIR[hair_name][0]) * rng.uniform(0.85, 1.15) + rng.normal(0, 0.01, 3), 0.01, 1)
        # keep hair distinguishable from skin: push it away in brightness when they are close
        if np.linalg.norm(hair - skin) < 0.25:
            hair = np.clip(hair * (0.45 if hair.mean() < 0.6 or skin.mean() > 0.5 else 1.6), 0.01, 1)
        brow = np.clip(hair * rng.uniform(0.55, 0.9) if hair_name not in ("blonde", "white", "grey")
                       else hair * 0.6 + skin * 0.1, 0.01, 1)
        lip_base = np.array([0.72, 0.36, 0.36]) * (1 - 0.6 * dark) + np.array([0.3, 0.15, 0.14]) * 0.6 * dark
        lip = np.clip(lip_base * rng.uniform(0.85, 1.1) + rng.normal(0, 0.02, 3), 0.02, 1)
        wi = _IRIS_W_LIGHT * (1 - dark) + _IRIS_W_DARK * dark
        iris = np.clip(_IRIS[rng.choice(len(_IRIS), p=wi / wi.sum())] * rng.uniform(0.8, 1.15), 0.01, 1)
        sclera = np.clip(np.array([0.93, 0.91, 0.88]) + rng.normal(0, 0.015, 3), 0, 1)
        blotch = np.concatenate([rng.normal(0, 60, (4, 3)), rng.uniform(0, 2 * np.pi, (4, 1))], axis=1)
        return cls(
            seed=int(seed), skin=skin, redness=float(rng.uniform(0.0, 1.0) * (1 - 0.7 * dark)), blotch=blotch,
            hair=hair, bald=bool(rng.uniform() < 0.08), hairline=float(rng.uniform(0.062, 0.085)),
            hair_length=float(rng.uniform() ** 1.5), brow=brow, brow_thickness=float(rng.uniform(0.0035, 0.007)),
            lip=lip, iris=iris, sclera=sclera, stubble=float(rng.uniform(0.3, 1.0) if rng.uniform() < 0.25 else 0.0),
        )

    # -----------------------------------------------------------------------------------------

    def hair_weight(self, points: np.ndarray) -> np.ndarray:
        """How much each point (N,3) is covered by the hair cap, in [0,1]."""
        if self.bald:
            return np.zeros(len(points))
        x, y, z = np.asarray(points, dtype=np.float64).T
        phi = np.abs(np.arctan2(x, z))  # 0 at the face, pi at the back
        back = -0.045 - 0.1 * self.hair_length
        # hairline height around the head: forehead, temples, sideburns (in front of the ears),
        # above the ears, nape
        knots_phi = np.array([0.0, 0.45, 0.75, 1.05, 1.35, 1.75, 2.2, np.pi])
        knots_y = np.array([self.hairline, self.hairline - 0.004, self.hairline - 0.012, 0.035, 0.0,
                            0.035, back + 0.02, back])
        line = np.interp(phi, knots_phi, knots_y)
        line += 0.002 * np.sin(phi * 9 + self.seed % 7)  # irregular hairline
        w = _smoothstep((y - line) / 0.006 + 0.5)
        ear = np.linalg.norm((np.stack([np.abs(x), y, z], 1) - EAR_CENTER) / np.array([0.02, 0.036, 0.026]), axis=1)
        w *= _smoothstep((ear - 1.0) / 0.3)
        return w

    def colors(self, points: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """sRGB colours (N,3) float32 in [0,1] of canonical points (N,3) with part codes (N,) int8."""
        p = np.asarray(points, dtype=np.float64)
        parts = np.asarray(parts)
        if p.ndim != 2 or p.shape[1] != 3 or parts.shape != (len(p),):
            raise InvalidInput(f"colors() needs points (N,3) and parts (N,), got {p.shape} and {parts.shape}")
        out = self._skin(p)
        hw = self.hair_weight(p) * (parts != PART_MOUTH)
        hw = np.maximum(hw, (parts == PART_HAIR).astype(float))
        out = _mix(out, self._hair_color(p), hw)
        for code, k in ((PART_EYE_L, 0), (PART_EYE_R, 1)):
            m = parts == code
            if m.any():
                out[m] = self._eye(p[m], k)
        m = parts == PART_MOUTH
        if m.any():
            out[m] = self._mouth(p[m])
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    # -----------------------------------------------------------------------------------------

    def _skin(self, p: np.ndarray) -> np.ndarray:
        x, y, z = p.T
        n = len(p)
        col = np.tile(self.skin, (n, 1))
        # smooth blotches: +-4% brightness
        b = sum(np.sin(p @ w[:3] + w[3]) for w in self.blotch) / 4
        col *= (1 + 0.04 * b)[:, None]
        red = np.array([0.8, 0.3, 0.3])
        g = lambda c, r: np.exp(-np.sum(((np.stack([np.abs(x), y, z], 1) - c) / r) ** 2, axis=1))  # noqa: E731
        flush = g((0.042, -0.02, 0.07), (0.018, 0.016, 0.03)) + 0.8 * g((0.0, -0.018, 0.11), (0.008, 0.01, 0.02))
        col = _mix(col, col * red / red.mean(), 0.18 * self.redness * np.clip(flush, 0, 1))
        # lids: slightly darker; lash line: dark; the tucked skin in the fissure: dark red
        sd = fissure_distance(p)
        col *= (1 - 0.12 * _smoothstep((sd + 0.006) / 0.005) * (sd < 0))[:, None]
        lash = np.exp(-((sd + 0.0006) / 0.0009) ** 2) * (y > EYE_CENTERS[0, 1] - 0.004)
        lash = np.maximum(lash, 0.6 * np.exp(-((sd + 0.0006) / 0.0008) ** 2))
        col = _mix(col, self.brow * 0.35, np.clip(lash, 0, 1) * 0.85)
        col = _mix(col, [0.35, 0.12, 0.1], _smoothstep(sd / 0.0015))
        # eyebrows: an arch above each eye
        ax = np.abs(x)
        arch = 0.04 + 0.007 * (1 - ((ax - 0.034) / 0.024) ** 2)
        along = _smoothstep((ax - 0.011) / 0.006) * (1 - _smoothstep((ax - 0.05) / 0.008))
        thick = self.brow_thickness * (1.2 - 0.5 * np.clip((ax - 0.014) / 0.04, 0, 1))
        brow = np.exp(-((y - arch) / thick) ** 4) * along * (z > 0.04)
        col = _mix(col, self.brow, 0.85 * brow)
        # stubble: chin, jaw and cheeks below the mouth, and a moustache band above the upper lip
        lc = lip_coordinates(p)
        on_face = (np.abs(lc[:, 0]) < 0.06) & (np.abs(lc[:, 1]) < 0.06)
        if self.stubble > 0:
            beard = (_smoothstep((-0.05 - y) / 0.02) * _smoothstep((y + 0.118) / 0.015)
                     * _smoothstep((z + 0.01) / 0.025) * (1 - _smoothstep((ax - 0.055) / 0.02) * (z < 0.02)))
            moustache = (_smoothstep((lc[:, 1] - 0.009) / 0.004) * (1 - _smoothstep((lc[:, 1] - 0.016) / 0.005))
                         * (1 - _smoothstep((np.abs(lc[:, 0]) - 0.018) / 0.012)) * on_face)
            col = _mix(col, self.hair * 0.6 + col * 0.4, 0.4 * self.stubble * np.clip(beard + moustache, 0, 1))
        # lips: vermilion up to a cupid's-bow border above the slit and a rounder one below
        s_, t_ = lc[:, 0], lc[:, 1]
        u = np.clip(np.abs(s_) / (MOUTH_HALF_WIDTH + 0.001), 0, 1)
        top = 0.0085 * (1 - u ** 2) ** 0.6 + 0.0012 * np.exp(-((np.abs(s_) - 0.006) / 0.003) ** 2) \
            - 0.0012 * np.exp(-(s_ / 0.0025) ** 2)
        bottom = 0.0105 * (1 - u ** 2) ** 0.7
        inside = np.where(t_ >= 0, top - t_, bottom + t_)
        lipw = _smoothstep(inside / 0.0012 + 0.5) * (u < 1) * on_face * (z > MOUTH_CENTER[2] - 0.03)
        col = _mix(col, self.lip * (1 + 0.1 * (t_ < 0))[:, None] * np.ones((1, 3)), lipw)
        return col

    def _hair_color(self, p: np.ndarray) -> np.ndarray:
        streak = np.sin(p[:, 0] * 400 + np.sin(p[:, 2] * 90) * 3 + self.seed) * 0.5 + 0.5
        return self.hair[None] * (0.85 + 0.3 * streak)[:, None]

    def _eye(self, p: np.ndarray, eye: int) -> np.ndarray:
        d = p - EYE_CENTERS[eye]
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        ang = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))  # from the gaze direction (+Z)
        col = np.tile(self.sclera, (len(p), 1))
        col = _mix(col, [0.85, 0.6, 0.58], 0.35 * _smoothstep((ang - 45) / 50))
        ring = 0.75 + 0.25 * np.sin(np.arctan2(d[:, 1], d[:, 0]) * 11 + self.seed) * (ang < 28)
        iris = self.iris[None] * (ring * (0.75 + 0.35 * _smoothstep((ang - 9) / 12)))[:, None]
        col = _mix(col, iris, _smoothstep((29.5 - ang) / 2.0))
        col = _mix(col, self.iris * 0.35, np.exp(-((ang - 28.5) / 1.6) ** 2) * 0.7)  # limbal ring
        col = _mix(col, [0.02, 0.02, 0.025], _smoothstep((9.5 - ang) / 1.5))       # pupil
        return col

    def _mouth(self, p: np.ndarray) -> np.ndarray:
        x, z = p[:, 0], p[:, 2]
        depth = MOUTH_CENTER[2] + 0.0016 - 17.0 * x * x - z  # behind the slit (m), tuned to the demo head
        col = _mix(np.tile([0.42, 0.12, 0.12], (len(p), 1)), [0.1, 0.02, 0.03], _smoothstep((depth - 0.004) / 0.02))
        teeth = _smoothstep((depth - 0.0018) / 0.0012) * (1 - _smoothstep((depth - 0.0058) / 0.0015))
        teeth *= 1 - _smoothstep((np.abs(x) - 0.017) / 0.003)
        return _mix(col, [0.9, 0.87, 0.78], teeth)
