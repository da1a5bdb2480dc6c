"""Training curve picture from a run's metrics.jsonl (OpenCV only: no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..images import save_image

COLORS = {"total": (40, 40, 40), "l1": (31, 119, 180), "ssim": (255, 127, 14), "alpha": (44, 160, 44),
          "flame_supervision": (214, 39, 40)}


def _smooth(v: np.ndarray, n: int = 5) -> np.ndarray:
    """Running mean over ``n`` logged points (the logged values are single steps)."""
    c = np.cumsum(np.insert(v, 0, 0.0))
    k = np.minimum(np.arange(1, len(v) + 1), n)
    return (c[1:] - c[np.arange(len(v)) + 1 - k]) / k


def plot_curve(metrics: str | Path, out: str | Path, keys: tuple[str, ...] = tuple(COLORS), size=(900, 420)) -> Path:
    """Loss terms against step (log-scale y, running mean of 5 logged points), one line per key."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    w, h = size
    left, right, top, bottom = 70, 170, 30, 50
    img = np.full((h, w, 3), 255, np.uint8)
    steps = np.array([r["step"] for r in rows], float)
    series = {k: _smooth(np.array([r[k] for r in rows], float)) for k in keys if rows and k in rows[0]}
    vals = np.concatenate([v[v > 0] for v in series.values()]) if series else np.array([1.0])
    lo, hi = np.log10(vals.min()), np.log10(vals.max())
    hi = hi if hi > lo else lo + 1
    sx = lambda s: left + (s - steps.min()) / max(steps.max() - steps.min(), 1) * (w - left - right)  # noqa: E731
    sy = lambda v: top + (hi - np.log10(np.maximum(v, 10 ** lo))) / (hi - lo) * (h - top - bottom)  # noqa: E731
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (180, 180, 180), 1)
    for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        y = int(sy(10.0 ** e))
        if top <= y <= h - bottom:
            cv2.putText(img, f"1e{e}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    for i, (k, v) in enumerate(series.items()):
        pts = np.stack([sx(steps), sy(v)], 1).astype(np.int32)
        color = COLORS.get(k, (100, 100, 100))
        cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
        cv2.putText(img, k, (w - right + 10, top + 20 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    cv2.putText(img, f"step {int(steps.min())}..{int(steps.max())}", (left, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (60, 60, 60), 1, cv2.LINE_AA)
    return save_image(out, img)
