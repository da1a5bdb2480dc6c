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
                 repo: Path, device: str, *, sources: list[str] | None = None, run_name: str = "demo") -> dict:
    """Install the extension privately, build the scene, run the headless batch through the backend.
    ``sources``: the batch's avatar/driver arguments (default: the portraits, pre-cropped, and the
    driver); the scene is saved as ``blender/<run_name>.blend``."""
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
    if sources is None:
        sources = ["--portraits", *map(str, portraits), "--no-crop", "--driver", str(driver)]
    blend = out / "blender" / f"{run_name}.blend"
    cmd = [str(blender_python), str(ext / "batch.py"), "--", *sources, "--out", str(out / "blender"), "--scene", str(scene),
           "--camera", "driver", "--size", "256", "--run-name", run_name, "--save", str(blend),
           "--retarget", "arkit52", "--target", "ARKitFace", "ARKitRig", "--start-backend", backend]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    (out / "blender" / "batch.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise InvalidInput(f"the Blender batch failed (exit {r.returncode}); see {out / 'blender' / 'batch.log'}:\n"
                           f"{r.stderr[-1500:]}")
    inspect = subprocess.run([str(blender_python), str(repo / "blender_addon" / "tools" / "inspect_blend.py"), "--",
                              str(blend), "--json", str(out / "blender" / f"{run_name}_blend.json")],
                             env=env, capture_output=True, text=True, timeout=600)
    if inspect.returncode != 0:
        raise InvalidInput(f"the saved .blend does not open: {inspect.stderr[-1500:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "blend": str(blend)}


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


# ---------------------------------------------------------------------------------------- real
REAL_SOURCES = ("jesper.jpg", "jesper_2.jpg", "bar55_2.jpg", "bar55.jpg")


def real_inputs(out: Path, size: int, background=None) -> tuple[list[Path], Path, dict]:
    """kphotoalbum's demo (fetched and cached): head crops of its one man from four photos (chosen
    by identity where dlib's descriptor is installed) and the webcam clip ``movie.avi``."""
    from .face.crop import person_crops
    from .face.identity import FaceIdentity, identity_unavailable
    from .face.samples import kphotoalbum_demo
    from .images import BACKGROUND, load_image, save_image

    demo = kphotoalbum_demo()
    why = identity_unavailable()
    if why:
        log.warning("identity similarity unavailable (%s): the largest face of each photo is used", why)
    crops = person_crops([load_image(demo / n) for n in REAL_SOURCES], size, identity=None if why else FaceIdentity(),
                         background=BACKGROUND if background is None else background, names=list(REAL_SOURCES))
    paths = [save_image(out / f"portrait_{i}.png", c.image) for i, c in enumerate(crops)]
    info = {"photos": list(REAL_SOURCES), "identity": why or "dlib ResNet descriptor",
            "identity_distance": [None if c.distance is None else round(c.distance, 3) for c in crops],
            "face_sources": [c.face.source for c in crops]}
    return paths, demo / "movie.avi", info


def python_side_real(out: Path, portraits: list[Path], driver: Path, size: int, steps: int, device: str) -> dict:
    """Reconstruct + personalize on the real portraits, drive with the real clip, and the pictures."""
    import cv2

    from .api import FlameTrack, Reconstructor
    from .images import load_image, read_frames, save_image, video_fps, write_video

    t0 = time.perf_counter()
    rec = Reconstructor.from_checkpoint(None, device=device)
    images = [load_image(p) for p in portraits]
    avatar = rec.reconstruct(images, crop="none")
    before = avatar.render(avatar.track(images, crop="none"), size=rec.image_size)
    pers = avatar.personalize(steps=steps) if steps else {"steps": 0}
    after = avatar.render(avatar.track(images, crop="none"), size=rec.image_size)
    avatar.save(out / "avatar.ffa")
    avatar.to_ply(out / "avatar.ply")
    grid = np.concatenate([np.concatenate(images, 1), np.concatenate(list(before), 1), np.concatenate(list(after), 1)], 0)
    save_image(out / "portraits_avatar.png", cv2.resize(grid, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    frames = list(read_frames(driver))
    fps = video_fps(driver)
    anim = list(avatar.animate(frames, size=size))
    for a in anim:
        save_image(out / "frames" / f"{a.index:04d}.png", a.image)
    track = FlameTrack.from_params([a.params for a in anim], fps, rec.expression_names, [a.face for a in anim])
    track.save(out / "track.npz")
    write_video(out / "animation.mp4", [a.image for a in anim], fps=fps)
    side = [np.concatenate([cv2.resize(f, (size * f.shape[1] // f.shape[0], size)), a.image], axis=1)
            for f, a in zip(frames, anim)]
    write_video(out / "comparison.mp4", side, fps=fps)
    picks = np.linspace(0, len(side) - 1, 4).astype(int)
    save_image(out / "comparison.png", np.concatenate([side[i] for i in picks], axis=0))
    return {"seconds": round(time.perf_counter() - t0, 1), "frames": len(anim), "personalization": pers,
            "frames_without_face": [int(i) for i in np.flatnonzero(track.filled)] if track.filled is not None else None,
            "arkit": track.arkit is not None, "untrained_model": bool(rec.meta.get("untrained")),
            "head_model_id": rec.head_model_id}


def run_real(out: Path, blender_python: Path | None = None, extension_zip: Path | None = None, size: int = 256,
             steps: int = 150, device: str = "cpu") -> dict:
    """``make demo-real``: the real job on kphotoalbum's identity and clip, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    from .api import Reconstructor

    rec = Reconstructor.from_checkpoint(None, device=device)
    portraits, driver, info = real_inputs(out / "inputs", rec.image_size, rec.background_uint8)
    summary: dict = {"inputs": {**info, "portraits": [str(p) for p in portraits], "driver": str(driver)}}
    summary["python"] = python_side_real(out, portraits, driver, size, steps, device)
    try:
        if blender_python is not None:
            import shutil

            from ffavatar_backend.store import AvatarStore

            # the personalized avatar goes into the backend's store: the batch animates it by id
            entry = AvatarStore(out / "store").create(lambda p: shutil.copyfile(out / "avatar.ffa", p),
                                                      name="kphotoalbum demo (personalized)")
            sources = ["--avatar", entry["id"], "--driver", str(driver)]
            summary["blender"] = blender_side(out, portraits, driver, Path(blender_python), Path(extension_zip or ""),
                                              repo, device, sources=sources, run_name="real")
    finally:
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
