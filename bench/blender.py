"""Blender-side benchmark (run with a bpy venv): keyframe throughput and end-to-end frames/s.

    .venv-blender-5.2/bin/python bench/blender.py --dist dist --out bench/results/blender-cpu.json

1. keyframes: a FLAME rig with 50 shape keys + 5 bones keyed from a T-frame track through the add-on
   (retarget map evaluation + the ``keyframe_points.add`` / ``foreach_set`` fast path) -> keys/s and
   frames x channels per second.
2. end to end: a real backend subprocess (main venv, CPU) animates a driver image sequence into
   the scene through the add-on's own code (stream out, frames to disk + image sequence, keys on the
   rig) -> frames/s and first-frame latency; the same with the backend's synthetic engine to show
   what the transport and the Blender side alone cost.
The extension is installed from the built zip into a temporary Blender user folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="ffavatar-bench-home-"))
    for key, sub in (("HOME", ""), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_DATA_HOME", "data"), ("BLENDER_USER_RESOURCES", "blender")):
        os.environ[key] = str(home / sub)
    return home


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench_keyframes(ext, frames: int, repeat: int) -> dict:
    import bpy
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests" / "blender"))
    import rigs

    names = [f"e{i:02d}" for i in range(50)]
    rd = ext("rigdata").rig_from_dict(rigs.rig_dict(names=names))
    mesh, arm = ext("rig").build_flame_rig(rd)
    expr, pose = rigs.track_arrays(frames, len(names))
    track = ext("track").Track(expression=expr, pose=pose, cam_rot=np.zeros((frames, 3)), cam_t=np.zeros((frames, 3)),
                               focal=np.ones(frames), indices=np.arange(frames), expression_names=names)
    bake = ext("bake")
    times, keys = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        keys = bake.key_flame_rig(mesh, arm, track).keys
        times.append(time.perf_counter() - t0)
    channels = len(names) + 5 * 4
    med = statistics.median(times)
    bpy.data.objects.remove(mesh)
    bpy.data.objects.remove(arm)
    return {"frames": frames, "channels": channels, "keys": keys, "median_s": round(med, 5), "min_s": round(min(times), 5),
            "keys_per_s": round(keys / med), "frame_channels_per_s": round(frames * channels / med)}


def bench_animate(ext, engine: str, frames: int, size: int, backend_python: str) -> dict:
    import bpy
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests" / "blender"))
    import pngs

    ctl = ext("controller")
    tmp = Path(tempfile.mkdtemp(prefix="ffavatar-bench-"))
    t0 = time.perf_counter()
    ctl.start_backend([backend_python, "-m", "ffavatar_backend", "serve", "--device", "cpu", "--engine", engine,
                       "--store", str(tmp / "store")], bind="tcp://127.0.0.1:*", wait=180)
    assert ctl.session().link.wait_online(60)
    start_s = time.perf_counter() - t0
    try:
        portrait = tmp / "p.png"
        portrait.write_bytes(pngs.png_bytes(pngs.face_image(0, 128)))
        t0 = time.perf_counter()
        job = ctl.reconstruct([str(portrait)], crop=False)
        ctl.wait(job, 600)
        reconstruct_s = time.perf_counter() - t0
        ctl.wait(ctl.fetch_rig(), 120)
        seq = pngs.write_sequence(tmp / "drv", frames, size=128)
        scene = bpy.context.scene
        scene.render.resolution_x = scene.render.resolution_y = size
        scene.render.resolution_percentage = 100
        if scene.camera is None:
            cam = bpy.data.objects.new("BenchCam", bpy.data.cameras.new("BenchCam"))
            scene.collection.objects.link(cam)
            scene.camera = cam
        scene.camera.location, scene.camera.rotation_euler = (0, -0.7, 0.02), (np.pi / 2, 0, 0)
        warm = ctl.animate(scene, job.result["avatar"], str(seq[0]), count=2, crop=False, name="warm")
        ctl.wait(warm.job, 600)
        t0 = time.perf_counter()
        run = ctl.animate(scene, job.result["avatar"], str(seq[0]), crop=False, name=f"bench_{engine}")
        ctl.wait(run.job, 1200)
        total = time.perf_counter() - t0
        return {"engine": engine, "frames": run.writer.count, "size": [size, size], "format": run.fmt,
                "backend_start_s": round(start_s, 3), "reconstruct_s": round(reconstruct_s, 3),
                "total_s": round(total, 3), "first_frame_s": round(run.first_frame_s or 0.0, 3),
                "frames_per_s": round(run.writer.count / total, 3)}
    finally:
        ctl.disconnect()
        ctl.stop_backend()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "blender-cpu.json")
    p.add_argument("--backend-python", default=os.environ.get("FFAVATAR_BACKEND_PYTHON", str(ROOT / ".venv/bin/python")))
    p.add_argument("--key-frames", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--frames", type=int, default=24, help="driver frames for the end-to-end run")
    p.add_argument("--size", type=int, default=128, help="render size (scene camera resolution)")
    p.add_argument("--skip-model", action="store_true", help="end-to-end with the synthetic engine only")
    args = p.parse_args()
    home = _setup_home()
    import bpy
    import numpy as np

    arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x64"
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}[sys.platform]
    zips = sorted(args.dist.glob(f"ffavatar-*-{system}_{arch}.zip"))
    if not zips:
        print(f"no extension zip in {args.dist}; run `make extension`", file=sys.stderr)
        return 2
    bpy.ops.extensions.package_install_files(filepath=str(zips[-1]), repo="user_default", enable_on_install=True)
    ext = lambda m: importlib.import_module(f"bl_ext.user_default.ffavatar.{m}")  # noqa: E731
    result = {"benchmark": "blender", "environment": {
        "device": "cpu", "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
        "blender": bpy.app.version_string, "numpy": np.__version__, "machine": platform.machine()}}
    result["keyframes"] = [bench_keyframes(ext, n, 5) for n in args.key_frames]
    result["animate"] = [bench_animate(ext, "synthetic", args.frames, args.size, args.backend_python)]
    if not args.skip_model:
        result["animate"].append(bench_animate(ext, "model", args.frames, args.size, args.backend_python))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
