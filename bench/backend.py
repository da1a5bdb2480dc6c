"""Benchmark the backend transport: frames/s streamed over loopback and ping latency under load.

Starts a real server subprocess. With ``--engine synthetic`` (default) frames come from the
model-free engine (pre-drawn head-like frames), so the numbers measure encoding + ZeroMQ + msgpack +
the client loop, not the model. The driver clip is tiny PNGs, so the client's sending is negligible.
Ping latency is measured from a second client while a third streams frames (and, with
``--model-ping``, while the real model reconstructs on a second server). Results: ``bench/results/backend-<device>.json``.

    .venv/bin/python bench/backend.py                      # synthetic engine, 512², png/jpeg/raw
    .venv/bin/python bench/backend.py --model-ping           # + ping latency while the model works
    .venv/bin/python bench/backend.py --engine model --frames 20 --size 128   # frames from the model
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from ffavatar_backend.client import Client  # noqa: E402
from ffavatar_backend.launcher import ServerProcess  # noqa: E402

log = logging.getLogger("bench.backend")


def start_server(engine: str, store: str, device: str) -> ServerProcess:
    return ServerProcess(["--engine", engine, "--store", store, "--device", device, "--log-level", "WARNING"],
                         timeout=600)


def tiny_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def stream_rate(c: Client, avatar: str, fmt: str, n: int, size: int) -> dict:
    """Frames/s of one animate request with ``n`` frames, measured first frame → result and request → result."""
    frames = [tiny_png(i % 4) for i in range(n)]
    t0 = time.perf_counter()
    t_first = None
    nbytes, count, last_index = 0, 0, -1
    for ev in c.animate(avatar, frames=frames, size=size, format=fmt):
        if ev["event"] == "frame":
            t_first = t_first or time.perf_counter()
            nbytes += len(ev["image"])
            count += 1
            assert ev["index"] == last_index + 1
            last_index = ev["index"]
    t1 = time.perf_counter()
    assert count == n
    return {"format": fmt, "frames": n, "size": size, "fps": round((n - 1) / (t1 - t_first), 1),
            "fps_including_start": round(n / (t1 - t0), 1), "mean_frame_bytes": nbytes // n,
            "mbytes_per_s": round(nbytes / (t1 - t_first) / 1e6, 1)}


def ping_stats(address: str, n: int, stop: threading.Event | None = None) -> dict:
    """Ping latency percentiles (ms) from a separate client."""
    c = Client(address, timeout=10)
    times = []
    try:
        for _ in range(n):
            if stop is not None and stop.is_set() and len(times) >= n // 4:
                break
            times.append(c.ping(timeout=10) * 1e3)
    finally:
        c.close()
    times.sort()
    return {"n": len(times), "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3), "max_ms": round(times[-1], 3)}


def ping_under(address: str, work, n: int) -> dict:
    """Ping stats measured while ``work()`` runs in another thread."""
    stop = threading.Event()
    result: dict = {}

    def run() -> None:
        try:
            result["work"] = work()
        finally:
            stop.set()

    t = threading.Thread(target=run)
    t.start()
    stats = ping_stats(address, n, stop)
    t.join()
    return {**stats, "load": result.get("work")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="synthetic", choices=["synthetic", "model"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=400, help="frames per format")
    ap.add_argument("--pings", type=int, default=1000)
    ap.add_argument("--model-ping", action="store_true",
                    help="also measure ping latency while the real model reconstructs (second server)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)

    with tempfile.TemporaryDirectory(prefix="ffavatar-bench-") as store:
        server = start_server(args.engine, store, args.device)
        address = server.endpoint
        try:
            c = Client(address, timeout=60)
            hello = c.hello()
            c.wait_ready(600)
            portrait = cv2.imencode(".png", np.full((256, 256, 3), 128, np.uint8))[1].tobytes()
            t0 = time.perf_counter()
            avatar = c.reconstruct([portrait], crop=False)["avatar"]
            reconstruct_s = time.perf_counter() - t0
            stream_rate(c, avatar, "jpeg", min(20, args.frames), args.size)  # warm-up (frame cache, encoders)
            rates = [stream_rate(c, avatar, fmt, args.frames, args.size) for fmt in ("png", "jpeg", "raw")]
            for r in rates:
                log.info("%s: %.1f frames/s (%.1f MB/s)", r["format"], r["fps"], r["mbytes_per_s"])
            idle = ping_stats(address, args.pings)
            loaded = ping_under(address, lambda: stream_rate(Client(address, timeout=60), avatar, "jpeg",
                                                             args.frames, args.size), args.pings)
            payload = {"engine": args.engine, "server_device": hello.get("device"), "size": args.size,
                       "stream": rates, "ping_idle": idle, "ping_while_streaming_jpeg": loaded,
                       "reconstruct_s": round(reconstruct_s, 3)}
            c.close()
        finally:
            server.stop()
    if args.model_ping:
        payload["ping_while_model_reconstructs"] = model_ping(args.device, args.pings)
    payload["goal_fps_512_jpeg"] = 200
    if args.no_write:
        print(json.dumps(payload, indent=2))
    else:
        write_result("backend", "cuda" if args.device == "cuda" else "cpu", payload)


def model_ping(device: str, n: int) -> dict:
    """Ping latency from one client while another runs reconstructions on the real model."""
    portraits = [cv2.imencode(".png", np.random.default_rng(i).integers(0, 255, (128, 128, 3), np.uint8))[1].tobytes()
                 for i in range(2)]
    with tempfile.TemporaryDirectory(prefix="ffavatar-bench-") as store:
        server = start_server("model", store, device)
        try:
            with Client(server.endpoint, timeout=60) as c:
                c.wait_ready(600)

            def work() -> dict:
                with Client(server.endpoint, timeout=600) as c:
                    t0 = time.perf_counter()
                    c.reconstruct(portraits, crop="none")
                    return {"reconstruct_s": round(time.perf_counter() - t0, 3)}

            return ping_under(server.endpoint, work, n)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
