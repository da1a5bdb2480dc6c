"""Write docs/performance.md from the benchmark JSON files in bench/results/ (run the benchmarks first:
``make bench`` and ``make bench-blender``).

    .venv/bin/python bench/report.py [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PEERS = """| system | hardware | reconstruction | + personalization | reenactment (estimator + animate + render) | render only |
|---|---|---|---|---|---|
| FFAvatar (paper) | A100 | 2 s | 10 s (< 7 s for 500 steps) | 49 FPS | – |
| LAM | A100 | 1.4 s (1 view) | – | needs offline FLAME tracking | 562.9 FPS (animate + render) |
| Avat3r | – | 4 views + DUSt3R + Sapiens | – | 8 FPS | – |
| our GPU goals (H100, base, 4 views, 512²) | H100 | ≤ 0.5 s | 500 steps ≤ 5 s | ≥ 150 FPS | ≥ 1,000 FPS |"""


def load(name: str) -> dict | None:
    files = sorted(ROOT.glob(f"results/{name}-*.json"))
    return {f.stem.split("-", 1)[1]: json.loads(f.read_text()) for f in files} or None


def env_line(d: dict) -> str:
    e = d.get("environment") or d.get("info") or {}
    what = e.get("gpu") or e.get("cpu") or "?"
    return f"{e.get('device', '?')} ({what}), torch {e.get('torch', '?')}, {e.get('threads', e.get('cores', '?'))} threads"


def model_section(runs: dict) -> list[str]:
    out = ["## The method (`bench/model.py`)", ""]
    for dev, d in runs.items():
        c = d["config"]
        p = d["personalize"]
        out += [f"Device: {env_line(d)}; checkpoint {c['checkpoint']}; {c['gaussians']} Gaussians; encoder input "
                f"{c['image_size']} px; render {c['size']}².", "",
                "| measure | value |", "|---|---|",
                f"| reconstruct, 1 view | {d['reconstruct_1view_s']['median_s'] * 1000:.0f} ms |",
                f"| reconstruct, 4 views | {d['reconstruct_4view_s']['median_s'] * 1000:.0f} ms |",
                f"| personalization, per step (4 views) | {p['seconds_per_step'] * 1000:.0f} ms |",
                f"| personalization, 500 steps | {p['seconds_500_steps']:.0f} s{' (projected from ' + str(p['steps_timed']) + ' steps)' if p['projected'] else ''} |",
                f"| reenactment (estimator + animate + render {c['size']}²) | {d['reenactment_fps']:.1f} FPS |",
                f"| render only {c['size']}² | {d['render_only_fps']:.1f} FPS |", ""]
    return out


def render_section(runs: dict) -> list[str]:
    out = ["## Rendering (`bench/render.py`)", ""]
    for dev, d in runs.items():
        r = d["results"]
        out += [f"Device: {env_line(d)}.", "", "| case | forward | forward + backward |", "|---|---|---|"]
        for key, label in (("torch", "torch, 20k Gaussians, 256², 16-px tiles"), ("torch_tile8", "torch, 20k, 256², 8-px tiles (default on CPU)")):
            if key in r:
                out.append(f"| {label} | {r[key]['forward']['median_s'] * 1000:.0f} ms | {r[key]['forward_backward']['median_s'] * 1000:.0f} ms |")
        dv = r.get("dense_vs_tiled")
        if dv:
            out.append(f"| speed-up of tiles over a dense composite (2k Gaussians, 64²) | {dv['speedup_forward']:.1f}× | {dv['speedup_forward_backward']:.1f}× |")
        g = r.get("gsplat")
        if g:
            out.append(f"| gsplat, {g.get('n_gaussians')} Gaussians, {g.get('size')}² | {g.get('fps', 0):.0f} FPS | |")
        out.append("")
    return out


def flame_section(runs: dict) -> list[str]:
    out = ["## FLAME layer (`bench/flame.py`)", ""]
    for dev, d in runs.items():
        f = d["forward"]
        out += [f"Device: {env_line(d)}; batch {d['config']['batch']}.", "", "| measure | value |", "|---|---|"]
        for lvl, v in f.items():
            out.append(f"| FlameModel forward, {lvl} ({v['points']} points), batch {d['config']['batch']} | "
                       f"{v['median_s'] * 1000:.0f} ms ({v['samples_per_s']:.0f} samples/s) |")
        for lvl, s in d["subdivide_s"].items():
            out.append(f"| subdivision level {lvl} (all attributes) | {s:.2f} s |")
        out.append("")
    return out


def backend_section(runs: dict) -> list[str]:
    out = ["## Backend streaming (`bench/backend.py`)", ""]
    for dev, d in runs.items():
        out += [f"Device: {env_line(d)}; engine {d['engine']} (transport + encoding, the model excluded).", "",
                "| measure | value |", "|---|---|"]
        for s in d["stream"]:
            out.append(f"| frames streamed over loopback, {s['size']}² {s['format']} | {s['fps']:.0f} frames/s |")
        for k in ("ping_idle", "ping_while_streaming_jpeg", "ping_while_model_reconstructs"):
            if k in d:
                out.append(f"| ping {k[5:].replace('_', ' ')} p50 / p99 | {d[k]['p50_ms']:.2f} / {d[k]['p99_ms']:.2f} ms |")
        out.append("")
    return out


def blender_section(runs: dict) -> list[str]:
    out = ["## Blender side (`bench/blender.py`, `make bench-blender`)", ""]
    for dev, d in runs.items():
        out += [f"Device: {env_line(d)}, Blender {d['environment'].get('blender')}.", "", "| measure | value |", "|---|---|"]
        for k in d["keyframes"]:
            out.append(f"| keyframes, {k['frames']} frames × {k['channels']} channels | "
                       f"{k['frame_channels_per_s'] / 1e6:.2f} M frame·channels/s |")
        for a in d["animate"]:
            out.append(f"| end-to-end into Blender, engine {a['engine']}, {a['size'][0]}² | {a['frames_per_s']:.1f} frames/s |")
        out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT.parent / "docs" / "performance.md"))
    args = ap.parse_args()
    lines = ["# Performance", "", "Measured numbers from `bench/` (JSON with device and versions in `bench/results/`).",
             "Reproduce: `make bench` and `make bench-blender`, then `.venv/bin/python bench/report.py`.", "",
             "No GPU was lent while these were taken, so every figure below is from the 2-core CPU machine the "
             "project is built on (noisy, shared); the GPU paths (gsplat, bf16, NCCL) have benchmarks and "
             "tests that run where CUDA is present.", "", "## Beside the published numbers", "", PEERS, "",
             "The peers' numbers are GPU numbers; ours below are CPU numbers, so compare shapes, not values: "
             "the same pipeline runs end to end on a laptop-class CPU with no CUDA extension to build.", ""]
    for name, fn in (("model", model_section), ("render", render_section), ("flame", flame_section),
                     ("backend", backend_section), ("blender", blender_section)):
        runs = load(name)
        if runs:
            lines += fn(runs)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
