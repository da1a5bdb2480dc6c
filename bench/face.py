"""Face landmarker speed: milliseconds per frame at 640 px (goal <= 20 ms on this CPU).

Clip frames (kphotoalbum's movie.avi, upscaled to 640x480) in the landmarker's video mode (it
tracks between frames) and single photos (grace_hopper.jpg scaled to 640 px on the long side) in
image mode; also the clip cropper end to end (detection + smoothing + 128 px crop).

    python bench/face.py          # -> bench/results/face-cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def _per_frame(fn, frames, repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        for f in frames:
            t0 = time.perf_counter()
            fn(f)
            times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
            "frames": len(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from ffavatar.face.crop import FaceCropper
    from ffavatar.face.landmarker import FaceFinder
    from ffavatar.face.samples import SampleUnavailable, grace_hopper, kphotoalbum_demo
    from ffavatar.images import load_image, read_frames

    finder = FaceFinder("landmarker")
    out: dict = {"goal_ms": 20.0, "size": 640, "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        clip = [cv2.resize(f, (640, 480), interpolation=cv2.INTER_LINEAR)
                for f in read_frames(kphotoalbum_demo() / "movie.avi")]
    except SampleUnavailable as e:
        clip, out["clip_unavailable"] = [], str(e)
    if clip:
        finder.find(clip[0], timestamp_ms=0)  # warm-up (graph creation)
        ts = iter(range(40, 10**9, 40))
        out["video_mode_640x480"] = _per_frame(lambda f: finder.find(f, timestamp_ms=next(ts)), clip, args.repeat)

        def crop_clip(_):
            for cf in FaceCropper(finder).run(clip):
                cf.crop(128)
        t0 = time.perf_counter()
        crop_clip(None)
        out["cropper_clip_ms_per_frame"] = round(1000 * (time.perf_counter() - t0) / len(clip), 2)
    photo = load_image(grace_hopper())
    s = 640 / max(photo.shape[:2])
    photo = cv2.resize(photo, (round(photo.shape[1] * s), round(photo.shape[0] * s)), interpolation=cv2.INTER_LINEAR)
    finder.find(photo)
    out["image_mode_640"] = _per_frame(lambda f: finder.find(f), [photo] * 10, args.repeat)
    out["meets_goal"] = all(v["median_ms"] <= out["goal_ms"] for k, v in out.items()
                            if isinstance(v, dict) and "median_ms" in v)
    import mediapipe
    out["mediapipe"] = mediapipe.__version__
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]  # other jobs on the 2 cores slow it
    write_result("face", "cpu", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
