"""Held-out evaluation: per identity, K source views of one capture build the avatar (optionally
personalized); every view of the identity's other frames (novel expressions and novel views) is
tracked by the estimator and rendered, and compared with the ground truth.

Settings: the learned prior with K views and S personalization steps, and the no-prior baseline
(Gaussians on the template, optimized from scratch for S steps on the same K views).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import Avatar, Reconstructor
from ..data.folder import FolderDataset
from ..data.synthetic import surface_gaussians
from ..errors import InvalidInput
from ..images import save_image, to_uint8
from .metrics import LPIPS, psnr, ssim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """method "ffavatar" (learned prior) or "optimize" (no prior); K views; S personalization steps."""

    method: str
    views: int
    steps: int

    @property
    def name(self) -> str:
        base = f"{self.views} view{'s' if self.views > 1 else ''}"
        if self.method == "optimize":
            return f"no-prior optimization, {base}, {self.steps} steps"
        return base + (f" + {self.steps}-step personalization" if self.steps else "")


def settings(views: list[int], steps: list[int], baseline: bool) -> list[Setting]:
    out = [Setting("ffavatar", v, s) for v in views for s in steps]
    if baseline:
        out += [Setting("optimize", max(views), s) for s in steps if s > 0]
    return out


def blank_avatar(rec: Reconstructor) -> Avatar:
    """The no-prior starting point: grey discs on the template surface, mean shape."""
    pipe = rec.pipeline
    pts = pipe.animator.anchors().detach().cpu().numpy().astype(np.float64)
    g = surface_gaussians(pts, pipe.faces, np.full((len(pts), 3), 0.5), opacity=0.9)
    sh = torch.zeros(g.sh.shape[0], (pipe.config.gaussian_head.sh_degree + 1) ** 2, 3)
    sh[:, :1] = g.sh
    g = type(g)(means=g.means, quats=g.quats, log_scales=g.log_scales, opacity_logits=g.opacity_logits, sh=sh)
    return Avatar(rec, g.to(rec.device), torch.zeros(pipe.flame.n_shape, device=rec.device), {"method": "optimize"})


def _uint8(img: np.ndarray) -> np.ndarray:
    return to_uint8(img) if img.dtype != np.uint8 else img


def evaluate_identity(rec: Reconstructor, data: FolderDataset, identity: str, setting: Setting,
                      lpips: LPIPS | None, max_targets: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Metrics of one identity under one setting, and (pred, gt) images of the first targets."""
    record = data.identity(identity)
    if len(record.frames) < 2:
        raise InvalidInput(f"identity {identity} needs at least 2 frames (sources + held-out targets)")
    src_views = record.frames[0].views[: setting.views]
    if len(src_views) < setting.views:
        raise InvalidInput(f"identity {identity} has {len(src_views)} views in its first frame, {setting.views} asked")
    sources = [_uint8(data.load_view(identity, v)[0]) for v in src_views]
    targets = [data.load_view(identity, v)[0] for f in record.frames[1:] for v in f.views][:max_targets]
    t0 = time.perf_counter()
    avatar = rec.reconstruct(sources, crop="none") if setting.method == "ffavatar" else blank_avatar(rec)
    personal = None
    if setting.steps:
        personal = avatar.personalize(sources if setting.method == "optimize" else None, steps=setting.steps, crop="none")
    seconds = time.perf_counter() - t0
    size = targets[0].shape[0]
    preds = [f.image for f in avatar.animate([_uint8(t) for t in targets], size=size, crop="none")]
    p = torch.from_numpy(np.stack(preds)).permute(0, 3, 1, 2).float() / 255
    g = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2).float()
    row = {"identity": identity, "setting": setting.name, "targets": len(targets),
           "psnr": float(psnr(p, g).mean()), "ssim": float(ssim(p, g).mean()),
           "lpips": float(lpips(p, g).mean()) if lpips is not None else None, "seconds": round(seconds, 2),
           "input_psnr_after": personal["psnr_after"] if personal else None}
    pairs = [np.concatenate([pr, to_uint8(gt)], axis=1) for pr, gt in zip(preds[:3], targets[:3])]
    return row, [*sources[:1], *pairs]


def run(rec: Reconstructor, data_dir: str | Path, out_dir: str | Path, views: list[int], steps: list[int],
        baseline: bool = True, lpips_weights: str | None = None, identities: int | None = None,
        max_targets: int = 8, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate every setting on the held-out identities; write report.json, report.md, grid.png."""
    data = FolderDataset(data_dir)
    ids = data.identities[:identities] if identities else data.identities
    lpips = LPIPS.from_file(lpips_weights).to(rec.device) if lpips_weights else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, grid_rows = [], []
    for s in settings(views, steps, baseline):
        for ident in ids:
            row, images = evaluate_identity(rec, data, ident, s, lpips, max_targets)
            rows.append(row)
            if ident == ids[0]:
                grid_rows.append(np.concatenate(images, axis=1))
            if progress:
                progress(f"{s.name} / {ident}: PSNR {row['psnr']:.2f}")
    summary = {}
    for s in settings(views, steps, baseline):
        sel = [r for r in rows if r["setting"] == s.name]
        summary[s.name] = {**asdict(s), "psnr": float(np.mean([r["psnr"] for r in sel])),
                           "ssim": float(np.mean([r["ssim"] for r in sel])),
                           "lpips": float(np.mean([r["lpips"] for r in sel])) if lpips else None,
                           "seconds": float(np.mean([r["seconds"] for r in sel])), "identities": len(sel),
                           "input_psnr_after": (float(np.mean([r["input_psnr_after"] for r in sel]))
                                                if s.steps else None)}
    report = {"data": str(data_dir), "identities": ids, "head_model_id": rec.head_model_id,
              "checkpoint": rec.meta.get("train", {}), "lpips": "computed" if lpips else
              "skipped (no --lpips weights file given)",
              "identity_similarity": "skipped (no face-embedding model given)", "summary": summary, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    width = max(r.shape[1] for r in grid_rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in grid_rows])
    save_image(out / "grid.png", grid)
    (out / "report.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (means over identities) plus per-identity rows."""
    lines = ["# Evaluation report", "", f"Data: `{report['data']}` ({len(report['identities'])} held-out identities); "
             f"head model `{report['head_model_id']}`.", "",
             "Targets: every view of each identity's other frames (novel expressions and novel views), "
             "tracked by the estimator and rendered.", "",
             "| setting | PSNR ↑ | SSIM ↑ | LPIPS ↓ | input-view PSNR after fitting | seconds/avatar |",
             "|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        lp = f"{s['lpips']:.4f}" if s["lpips"] is not None else "–"
        fit = f"{s['input_psnr_after']:.2f}" if s.get("input_psnr_after") is not None else "–"
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {lp} | {fit} | {s['seconds']:.1f} |")
    lines += ["", f"LPIPS: {report['lpips']}. Identity similarity: {report['identity_similarity']}.", "",
              "![grid](grid.png)", "", "Grid rows: one per setting (first identity): first source view, then "
              "(prediction | ground truth) for three targets.", "", "## Per identity", "",
              "| setting | identity | PSNR | SSIM |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['identity']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"
