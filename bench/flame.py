"""Benchmark the FLAME layer: FlameModel forward (batch 64) on the original and subdivided head,
and subdivision time per level. Writes bench/results/flame-<device>.json.

    .venv/bin/python bench/flame.py [--device cpu|cuda] [--batch 64] [--flame PATH]
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

from ffavatar.flame import FlameModel, load_head_model  # noqa: E402
from ffavatar.flame.subdivide import subdivide  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--flame", default=None, help="FLAME file (default: $FFAVATAR_FLAME or the demo head)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    model = load_head_model(args.flame)
    results = {"config": {"batch": args.batch, "vertices": int(len(model["v_template"]))}, "subdivide_s": {},
               "forward": {}}
    for level in (0, 1, 2):
        t0 = time.perf_counter()
        dense = subdivide(model, level, dtype=np.float32)
        results["subdivide_s"][level] = round(time.perf_counter() - t0, 4)
        if level == 2:
            break
        flame = FlameModel(dense).to(dev)
        g = torch.Generator().manual_seed(0)
        b = args.batch
        kw = dict(shape=torch.randn(b, flame.n_shape, generator=g).to(dev),
                  expression=torch.randn(b, flame.n_expr, generator=g).to(dev),
                  pose=(0.2 * torch.randn(b, 5, 3, generator=g)).to(dev))
        with torch.no_grad():
            t = timeit(lambda: flame(**kw), repeat=5, sync=dev.type == "cuda")
        results["forward"][f"level{level}"] = {"points": flame.num_vertices, **t,
                                               "samples_per_s": round(b / t["median_s"], 1)}
    write_result("flame", dev, results)


if __name__ == "__main__":
    main()
