"""``ffavatar demo``: the whole mission on the embedded defaults, on any machine.

1. Inputs: four portraits of a held-out synthetic identity (never seen in training) and a driver clip
   of another identity performing a known motion (talking jaw, head turns, smile, blink, brows).
2. The avatar through the Python API with the bundled checkpoint: ``avatar.ffa``, ``avatar.ply``,
   ``turntable.mp4``, reenacted ``frames/``, ``animation.mp4``, ``comparison.mp4`` (driver | avatar)
   and the FLAME ``track.npz``.
3. Blender (when a bpy Python is given): install the extension zip into a private Blender user folder,
   build a scene with a retarget target, and run the extension's headless ``batch.py``, which starts
   the backend on CPU, reconstructs and animates through it and saves ``blender/demo.blend`` with the
   keyframed FLAME rig and the retargeted ARKit-style rig.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import FFAvatarError, InvalidInput

log = logging.getLogger(__name__)

PORTRAIT_SEED = 7
DRIVER_IDENTITY = 1234


def make_inputs(out: Path, size: int = 128, frames: int = 48) -> tuple[list[Path], Path]:
    """Portraits (4 views of one held-out identity) and a driver clip; deterministic."""
    from .data.synthetic import SynthConfig, SyntheticHead, render_clip, render_identity
    from .images import save_image, write_video

    head = SyntheticHead(subdivision=1)
    cfg = SynthConfig(identities=1, frames=1, views=4, size=size, seed=PORTRAIT_SEED, yaw=60.0, pitch=15.0)
    _, images = render_identity(head, cfg, 0)
    portraits = [save_image(out / f"portrait_{i}.png", rgb) for i, (rgb, _) in enumerate(images[0])]
    clip = render_clip(head, DRIVER_IDENTITY, frames, size=size)
    for i, f in enumerate(clip):
        save_image(out / "driver" / f"{i:04d}.png", f)
    driver = write_video(out / "driver.mp4", clip, fps=25)
    return portraits, driver


def python_side(out: Path, portraits: list[Path], driver: Path, size: int, device: str) -> dict:
    """Reconstruct, export, turntable and reenact through the API."""
    from .api import FlameTrack, Reconstructor
    from .images import load_image, read_frames, save_image, write_video

    t0 = time.perf_counter()
    rec = Reconstructor.from_checkpoint(None, device=device)
    avatar = rec.reconstruct([load_image(p) for p in portraits], crop="none")
    avatar.save(out / "avatar.ffa")
    avatar.to_ply(out / "avatar.ply")
    write_video(out / "turntable.mp4", list(avatar.turntable(n=48, size=size)), fps=24)
    driver_frames = list(read_frames(out / "inputs" / "driver"))
    frames, params = [], []
    for f in avatar.animate(driver_frames, size=size, crop="none"):
        save_image(out / "frames" / f"{f.index:04d}.png", f.image)
        frames.append(f.image)
        params.append(f.params)
    arr = lambda k: np.array([p[k] for p in params], np.float32)  # noqa: E731
    FlameTrack(arr("expression"), arr("pose"), arr("cam_rot"), arr("cam_t"), arr("focal"), 25.0,
               rec.expression_names).save(out / "track.npz")
    write_video(out / "animation.mp4", frames, fps=25)
    import cv2
    side = [np.concatenate([cv2.resize(d, (size, size)), f], axis=1) for d, f in zip(driver_frames, frames)]
    write_video(out / "comparison.mp4", side, fps=25)
    picks = np.linspace(0, len(side) - 1, min(4, len(side))).astype(int)
    save_image(out / "comparison.png", np.concatenate([side[i] for i in picks], axis=0))
    return {"seconds": round(time.perf_counter() - t0, 1), "frames": len(frames),
            "untrained_model": bool(rec.meta.get("untrained")), "head_model_id": rec.head_model_id}


def _blender_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, sub in (("HOME", ""), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_DATA_HOME", "data"), ("BLENDER_USER_RESOURCES", "blender")):
        env[key] = str(home / sub)
    return env


def blender_side(out: Path, portraits: list[Path], driver: Path, blender_python: Path, extension_zip: Path,
                 repo: Path, device: str) -> dict:
    """Install the extension privately, build the scene, run the headless batch through the backend."""
    if not extension_zip.is_file():
        raise InvalidInput(f"extension zip not found: {extension_zip}", hint="run 'make extension'")
    home = out / ".blender-home"
    env = _blender_env(home)
    install = ("import bpy, sys\n"
               f"r = bpy.ops.extensions.package_install_files(filepath={str(extension_zip)!r}, repo='user_default', "
               "enable_on_install=True)\n"
               "print(bpy.utils.user_resource('EXTENSIONS', path='user_default'))\n")
    r = subprocess.run([str(blender_python), "-c", install], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise InvalidInput(f"installing the extension failed: {r.stderr[-2000:]}")
    ext = Path(r.stdout.strip().splitlines()[-1]) / "ffavatar"
    scene = out / "blender" / "scene.blend"
    r = subprocess.run([str(blender_python), str(repo / "blender_addon" / "tools" / "demo_scene.py"), "--",
                        "--out", str(scene)], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise InvalidInput(f"building the demo scene failed: {r.stderr[-2000:]}")
    backend = f"{sys.executable} -m ffavatar_backend serve --device {device} --store {out / 'store'}"
    cmd = [str(blender_python), str(ext / "batch.py"), "--", "--portraits", *map(str, portraits), "--no-crop",
           "--driver", str(driver), "--out", str(out / "blender"), "--scene", str(scene), "--camera", "driver",
           "--size", "256", "--run-name", "demo", "--save", str(out / "blender" / "demo.blend"),
           "--retarget", "arkit52", "--target", "ARKitFace", "ARKitRig", "--start-backend", backend]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    (out / "blender" / "batch.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise InvalidInput(f"the Blender batch failed (exit {r.returncode}); see {out / 'blender' / 'batch.log'}:\n"
                           f"{r.stderr[-1500:]}")
    inspect = subprocess.run([str(blender_python), str(repo / "blender_addon" / "tools" / "inspect_blend.py"), "--",
                              str(out / "blender" / "demo.blend"), "--json", str(out / "blender" / "demo_blend.json")],
                             env=env, capture_output=True, text=True, timeout=600)
    if inspect.returncode != 0:
        raise InvalidInput(f"the saved .blend does not open: {inspect.stderr[-1500:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "blend": str(out / "blender" / "demo.blend")}


def run(out: Path, blender_python: Path | None = None, extension_zip: Path | None = None, size: int = 256,
        device: str = "cpu") -> dict:
    """Run the demo into ``out``; returns a summary (also written to summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    portraits, driver = make_inputs(out / "inputs")
    summary: dict = {"inputs": {"portraits": [str(p) for p in portraits], "driver": str(driver)}}
    summary["python"] = python_side(out, portraits, driver, size, device)
    if blender_python is not None:
        try:
            summary["blender"] = blender_side(out, portraits, driver, Path(blender_python),
                                              Path(extension_zip or ""), repo, device)
        except FFAvatarError as e:
            summary["blender"] = {"error": str(e)}
            raise
        finally:
            summary["seconds"] = round(time.perf_counter() - t0, 1)
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
