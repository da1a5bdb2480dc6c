"""Benchmark the Gaussian rasterizer backends on seeded head-like clouds; writes JSON.

Runs the tiled torch backend (forward and forward+backward), the dense reference at a size it can
handle with the tiled backend at the same config (speed-up ratio), and on CUDA gsplat plus the torch
backend on the GPU. Results go to ``bench/results/render-<device>.json`` (device = cpu or cuda).

    .venv/bin/python bench/render.py            # CPU here; add --device cuda on a GPU machine

On a CPU shared with other busy processes, run with OMP_WAIT_POLICY=PASSIVE: libgomp's default
spin-waiting otherwise stalls every parallel op (measured here: 1.4 s instead of 20 ms per frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ffavatar.render.dense import rasterize_dense
from ffavatar.render.torch_backend import rasterize_torch

log = logging.getLogger("bench.render")


def head_cloud(n: int, size: int, seed: int = 0, device: str = "cpu", dtype=torch.float32,
               distance: float = 0.6, scale_range: tuple[float, float] = (0.002, 0.006)):
    """A head-sized Gaussian cloud and one camera looking at it (gsplat argument order).

    Means on an ellipsoid shell (semi-axes 8 x 11 x 10 cm, 5 mm radial jitter) around the origin,
    log-uniform scales in ``scale_range`` (m), random rotations, opacities in [0.3, 1), random RGB.
    The camera sits ``distance`` m in front (OpenCV, looking along +z), focal 1.2 * size px.
    """
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    axes = torch.tensor([0.08, 0.11, 0.10], dtype=torch.float64)
    jitter = 1.0 + (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 0.05
    means = d * axes * jitter
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opacities = 0.3 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[2, 3] = distance
    f = 1.2 * size
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    out = [means, quats, scales, opacities, colors, viewmat[None], K[None]]
    return [t.to(device=device, dtype=dtype) for t in out]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, repeats: int, warmup: int = 1) -> dict:
    """Median/min wall time (s) of ``fn()`` after ``warmup`` calls, and median process CPU time
    (on a shared machine, CPU time / threads shows what the wall time would be without others)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "cpu_median_s": statistics.median(cpu), "runs": repeats}


def bench_backend(raster, n: int, size: int, device: str, repeats: int, backward: bool,
                  **kwargs) -> dict:
    """Time forward (and forward+backward w.r.t. all Gaussian parameters) of one backend."""
    scene = head_cloud(n, size, device=device)
    params = [t.clone().requires_grad_(backward) for t in scene[:5]]

    def forward():
        with torch.set_grad_enabled(backward):
            return raster(*params, scene[5], scene[6], size, size, **kwargs)

    def fwd_bwd():
        render, alpha, _ = forward()
        (render.sum() + alpha.sum()).backward()

    render, alpha, meta = forward()
    result = {"n_gaussians": n, "size": size, "coverage": float(alpha.detach().mean()), **kwargs}
    if "flatten_ids" in meta:
        result["n_isects"] = int(meta["flatten_ids"].numel())
    result["n_visible"] = int((meta["radii"] > 0).all(-1).sum())
    with torch.no_grad():
        result["forward"] = time_fn(lambda: raster(*scene[:5], scene[5], scene[6], size, size, **kwargs),
                                    device, repeats)
    if backward:
        result["forward_backward"] = time_fn(fwd_bwd, device, repeats)
    return result


def device_info(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    # libgomp's default spin-wait makes 2 threads stall badly when other processes hold the cores;
    # OMP_WAIT_POLICY=PASSIVE (set before Python starts) avoids it on a shared machine.
    info["env"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        import gsplat
        info["gsplat"] = gsplat.__version__
    except Exception as exc:  # gsplat is optional for the CPU bench
        info["gsplat"] = f"unavailable: {exc}"
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--n", type=int, default=20_000, help="Gaussians for the main torch measurement")
    p.add_argument("--size", type=int, default=256, help="image size for the main torch measurement")
    p.add_argument("--tile-sizes", default="16,8", help="tile sizes for the torch backend (comma list)")
    p.add_argument("--no-single-thread", action="store_true", help="skip the extra 1-thread CPU runs")
    p.add_argument("--dense-n", type=int, default=2_000, help="Gaussians for the dense comparison")
    p.add_argument("--dense-size", type=int, default=64, help="image size for the dense comparison")
    p.add_argument("--gsplat-n", type=int, default=80_000, help="Gaussians for the gsplat run (CUDA)")
    p.add_argument("--gsplat-size", type=int, default=512, help="image size for the gsplat run (CUDA)")
    p.add_argument("--out", type=Path, default=None, help="output JSON (default bench/results/render-<device>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    out = args.out or Path(__file__).parent / "results" / f"render-{kind}.json"

    res: dict = {"info": device_info(dev), "config": vars(args) | {"out": str(out)}, "results": {}}
    r = res["results"]
    for i, ts in enumerate(int(t) for t in args.tile_sizes.split(",")):
        key = "torch" if i == 0 else f"torch_tile{ts}"
        log.info("%s: %d Gaussians at %d^2 on %s, tile %d", key, args.n, args.size, dev, ts)
        r[key] = bench_backend(rasterize_torch, args.n, args.size, dev, args.repeats, True, tile_size=ts)
        log.info("  %s", r[key])

    thread_modes = [("", torch.get_num_threads())]
    if kind == "cpu" and torch.get_num_threads() > 1 and not args.no_single_thread:
        # On a shared machine OpenMP threads stall when another process holds a core; one thread
        # shows the uncontended cost (and is what a busy CPU host should use).
        thread_modes.append(("_1thread", 1))
    default_threads = torch.get_num_threads()
    for suffix, threads in thread_modes:
        torch.set_num_threads(threads)
        if suffix:
            for ts in (int(t) for t in args.tile_sizes.split(",")):
                key = f"torch_tile{ts}{suffix}"
                r[key] = bench_backend(rasterize_torch, args.n, args.size, dev, args.repeats, True, tile_size=ts)
                log.info("%s: %s", key, r[key])
        log.info("dense vs tiled, %d Gaussians at %d^2, %d threads", args.dense_n, args.dense_size, threads)
        dense = bench_backend(rasterize_dense, args.dense_n, args.dense_size, dev, args.repeats, True)
        tiled = bench_backend(rasterize_torch, args.dense_n, args.dense_size, dev, args.repeats, True)
        cmp = {
            "threads": threads, "dense": dense, "tiled": tiled,
            "speedup_forward": dense["forward"]["median_s"] / tiled["forward"]["median_s"],
            "speedup_forward_backward":
                dense["forward_backward"]["median_s"] / tiled["forward_backward"]["median_s"],
        }
        r["dense_vs_tiled" + suffix] = cmp
        log.info("  speed-up forward %.1fx, forward+backward %.1fx", cmp["speedup_forward"],
                 cmp["speedup_forward_backward"])
    torch.set_num_threads(default_threads)

    if kind == "cuda":
        from ffavatar.render.gsplat_backend import rasterize_gsplat

        log.info("gsplat %d Gaussians at %d^2", args.gsplat_n, args.gsplat_size)
        gs = bench_backend(rasterize_gsplat, args.gsplat_n, args.gsplat_size, dev, max(args.repeats, 20), True)
        gs["fps_forward"] = 1.0 / gs["forward"]["median_s"]
        r["gsplat"] = gs
        log.info("  %s", gs)
        r["torch_cuda_large"] = bench_backend(rasterize_torch, args.gsplat_n, args.gsplat_size, dev,
                                              args.repeats, backward=True)
        log.info("  torch on cuda: %s", r["torch_cuda_large"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    log.info("wrote %s", out)
    return res


if __name__ == "__main__":
    main()
