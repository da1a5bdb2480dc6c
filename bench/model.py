"""Benchmark the method: reconstruction (1 and 4 views), personalization, reenactment FPS
(estimator + animate + render per driver frame) and render-only FPS. Writes
bench/results/model-<device>.json.

    .venv/bin/python bench/model.py [--device cpu|cuda] [--checkpoint C | --preset base]
        [--size 512] [--personalize-steps 500] [--frames 20]

On CPU, personalization is timed over --personalize-steps steps (default 20 there) and the 500-step
figure is projected from the per-step time (marked "projected").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timeit, write_result  # noqa: E402

from ffavatar.api import Reconstructor  # noqa: E402
from ffavatar.data.synthetic import SynthConfig, SyntheticHead, render_clip, render_identity  # noqa: E402
from ffavatar.flame import load_head_model  # noqa: E402
from ffavatar.model.config import ModelConfig  # noqa: E402
from ffavatar.model.flame_estimator import EstimatedFlame  # noqa: E402
from ffavatar.pipeline import AvatarPipeline  # noqa: E402
from ffavatar.render import rasterize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--checkpoint", default=None, help="default: the bundled demo checkpoint")
    ap.add_argument("--preset", default=None, help="benchmark an untrained preset (tiny/small/base/large) instead")
    ap.add_argument("--subdivision", type=int, default=1, help="with --preset: anchor subdivision level")
    ap.add_argument("--size", type=int, default=512, help="render size for reenactment/render-only")
    ap.add_argument("--personalize-steps", type=int, default=None)
    ap.add_argument("--frames", type=int, default=20, help="driver frames for reenactment")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    if args.preset:
        pipe = AvatarPipeline(ModelConfig.preset(args.preset), load_head_model(), subdivision=args.subdivision)
        rec = Reconstructor(pipe.to(dev), {"image_size": pipe.config.encoder.image_size})
    else:
        rec = Reconstructor.from_checkpoint(args.checkpoint, device=dev)
    steps = args.personalize_steps or (500 if sync else 20)
    head = SyntheticHead(subdivision=1)
    _, imgs = render_identity(head, SynthConfig(identities=1, frames=1, views=4, size=rec.image_size, seed=7), 0)
    portraits = [rgb for rgb, _ in imgs[0]]
    driver = render_clip(head, 1234, args.frames, size=rec.image_size)
    res: dict = {"config": {"checkpoint": args.checkpoint or ("preset:" + args.preset if args.preset else "bundled"),
                            "size": args.size, "gaussians": rec.pipeline.animator.num_points,
                            "image_size": rec.image_size, "model": rec.pipeline.config.to_dict()}}
    with torch.no_grad():
        for v in (1, 4):
            res[f"reconstruct_{v}view_s"] = timeit(lambda: rec.reconstruct(portraits[:v], crop="none"), repeat=5, sync=sync)
    avatar = rec.reconstruct(portraits, crop="none")
    t0 = time.perf_counter()
    r = avatar.personalize(steps=steps)
    if sync:
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / max(steps, 1)
    res["personalize"] = {"steps_timed": steps, "seconds_per_step": per_step, "seconds_500_steps": per_step * 500,
                          "projected": steps != 500, "psnr_before": r["psnr_before"], "psnr_after": r["psnr_after"]}
    # reenactment: estimator + animate + render per driver frame
    list(avatar.animate(driver[:2], size=args.size, crop="none"))  # warm-up
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = sum(1 for _ in avatar.animate(driver, size=args.size, crop="none"))
    if sync:
        torch.cuda.synchronize()
    res["reenactment_fps"] = n / (time.perf_counter() - t0)
    # render only: a posed avatar into one camera at size²
    pipe = avatar.pipeline
    with torch.no_grad():
        est = pipe.net.estimate(rec.prepare([driver[0]], "none"))
        posed = pipe.pose(avatar.canonical, est, avatar.shape[None])[0]
        cam = pipe.cameras(est, args.size, args.size)
        t = timeit(lambda: rasterize(posed, cam, rec.background), repeat=10, sync=sync)
    res["render_only_fps"] = 1.0 / t["median_s"]
    res["render_only"] = t
    write_result("model", dev, res)


if __name__ == "__main__":
    main()
