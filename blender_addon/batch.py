"""Headless FFAvatar batch: ``blender -b [scene.blend] -P <extension>/batch.py -- ARGS`` or, with
Blender as a Python module, ``python <extension>/batch.py -- ARGS`` (``-- --help`` lists them).

Runs synchronously (timers never fire in background mode): connects to (or starts) a backend,
reconstructs an avatar, animates it with the driver clip, writes the frames to OUT/frames, keys the
FLAME rig (and a retarget target), saves OUT/<run>.blend and OUT/summary.json, and exits 0. Any
failure prints one clear line to stderr and exits non-zero (2: bad input, 1: the work failed).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("ffavatar.batch")


def _package() -> str:
    """This script's extension package (``bl_ext.<repo>.<id>``), enabled and imported."""
    import addon_utils
    import bpy  # noqa: F401 - initializes Blender (and the bl_ext namespace) in module mode

    here = Path(__file__).resolve().parent
    name = f"bl_ext.{here.parent.name}.{here.name}"
    if name not in bpy.context.preferences.addons:
        addon_utils.enable(name, default_set=True)
    if name not in bpy.context.preferences.addons:
        raise RuntimeError(f"could not enable the extension {name}; install it with Blender first "
                           "(Preferences > Get Extensions > Install from Disk)")
    return name


def _load(pkg: str, module: str):
    return importlib.import_module(f"{pkg}.{module}")


def run(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    started = time.monotonic()
    # batchargs is bpy-free: parse before touching Blender so bad input fails fast
    spec = importlib.util.spec_from_file_location("ffavatar_batchargs", here / "batchargs.py")
    ba = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ba)
    try:
        args = ba.parse(ba.user_argv(argv))
    except ba.BatchError as e:
        print(f"ffavatar batch: {e}", file=sys.stderr)
        return ba.EXIT_USAGE
    import bpy

    if args.scene is not None:
        bpy.ops.wm.open_mainfile(filepath=str(args.scene.resolve()))
    pkg = _package()
    ctl = _load(pkg, "controller")
    session_mod = _load(pkg, "session")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scene = bpy.context.scene
    summary: dict = {"ok": False, "blender": bpy.app.version_string}
    try:
        if args.start_backend:
            ctl.start_backend(args.start_backend, bind="tcp://127.0.0.1:*", wait=args.connect_timeout)
        else:
            ctl.connect(args.backend or ctl.pref("backend_address", ctl.DEFAULT_ADDRESS))
        s = ctl.session()
        if not s.link.wait_online(args.connect_timeout):
            raise RuntimeError(f"no backend answered at {s.link.address} within {args.connect_timeout:.0f} s "
                               f"({s.link.error or 'not reachable'}); start one or pass --start-backend")
        summary["backend"] = dict(s.link.info)
        avatar = args.avatar
        if args.portraits:
            job = ctl.reconstruct([str(p.resolve()) for p in args.portraits], name=args.name,
                                  steps=args.personalize_steps, crop=not args.no_crop)
            ctl.wait(job, args.timeout, idle_timeout=args.idle_timeout)
            avatar = job.result["avatar"]
            summary["reconstruct_s"] = round(job.elapsed, 3)
        summary["avatar"] = avatar
        if not args.no_rig and ctl.scene_rig(scene)[1] is None:
            ctl.wait(ctl.fetch_rig(scene_name=scene.name), args.timeout, idle_timeout=args.idle_timeout)
        run_ = ctl.animate(scene, avatar, args.driver.resolve(), first=args.first, count=args.count, fps=args.fps,
                           camera_mode=args.camera.upper(), size=args.size, fmt=args.format, key_rig=not args.no_rig,
                           use_vse=args.vse, name=args.run_name, frame_start=args.frame_start, crop=not args.no_crop,
                           folder=out / "frames")
        ctl.wait(run_.job, args.timeout, idle_timeout=args.idle_timeout)
        summary.update(frames=run_.writer.count, frames_dir=str(run_.writer.folder), fps=run_.fps,
                       animate_s=round(run_.job.elapsed, 3), first_frame_s=run_.first_frame_s)
        if args.retarget:
            missing = [n for n in args.target if n not in bpy.data.objects]
            if missing:
                raise RuntimeError(f"--target objects not in the scene: {missing}")
            rep = ctl.bake_retarget(scene, ba.map_key(args.retarget), [bpy.data.objects[n] for n in args.target])
            summary["retarget"] = {"keys": rep.keys, "shape_keys": rep.shape_keys, "bones": rep.bones,
                                   "skipped": rep.skipped, "written": rep.details()}
        blend = (args.save or out / f"{args.run_name}.blend").resolve()
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        summary.update(ok=True, blend=str(blend), elapsed_s=round(time.monotonic() - started, 3))
        return ba.EXIT_OK
    except (session_mod.JobFailed, TimeoutError, RuntimeError, ValueError, OSError) as e:
        summary["error"] = str(e)
        print(f"ffavatar batch: {e}", file=sys.stderr)
        return ba.EXIT_FAILED
    finally:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        ctl.disconnect()
        ctl.stop_backend()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv))
