"""Shared helpers for the benchmarks: environment description, timing, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device: torch.device | str = "cpu") -> dict:
    """Device name, versions and thread count, recorded with every result."""
    device = torch.device(device)
    info = {"device": device.type, "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        import gsplat
        info["gsplat"] = gsplat.__version__
    except ImportError:
        info["gsplat"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
        except OSError:
            info["cpu"] = platform.processor()
    return info


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, sync: bool = False) -> dict:
    """Median/min seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def write_result(name: str, device: torch.device | str, payload: dict) -> Path:
    """Write ``bench/results/<name>-<device>.json`` with the environment and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    path = RESULTS / f"{name}-{env['device']}.json"
    doc = {"benchmark": name, "environment": env, **payload}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return path
