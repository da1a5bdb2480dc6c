"""Command line of the headless batch (no bpy): parsing and input checks, so bad input fails fast
with a clear message and exit code 2 before Blender does any work."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples (after installing the extension; EXT = its folder, e.g. ~/.config/blender/4.2/extensions/user_default/ffavatar):
  blender -b shot.blend -P EXT/batch.py -- --portraits a.jpg b.jpg --driver clip.mp4 --out out/shot1 \\
      --start-backend "/opt/ffavatar/.venv/bin/python -m ffavatar_backend serve --device cuda"
  blender -b -P EXT/batch.py -- --avatar 0123456789abcdef --driver frames/ --out out/x \\
      --backend tcp://gpu-box:5557 --camera driver --retarget arkit52 --target Face
  python EXT/batch.py -- ...            (the same, with Blender as a Python module: pip install bpy)
"""


class BatchError(ValueError):
    """Bad batch input; the message says what to fix."""


def user_argv(argv: list[str]) -> list[str]:
    """The arguments after ``--`` (Blender passes its own before it)."""
    return argv[argv.index("--") + 1:] if "--" in argv else []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batch.py", description="FFAvatar headless batch: reconstruct an avatar, "
                                "animate it with a driver clip, write the frames and a .blend with the keyed rig.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--portraits", nargs="+", type=Path, help="portrait images of one person")
    src.add_argument("--avatar", help="id of an avatar already in the backend's store")
    p.add_argument("--name", default="", help="name of the new avatar")
    p.add_argument("--personalize-steps", type=int, default=0, help="personalization steps (default 0)")
    p.add_argument("--no-crop", action="store_true", help="portraits/frames are pre-cropped faces")
    p.add_argument("--driver", type=Path, required=True, help="driver clip: a movie, an image folder or a numbered image")
    p.add_argument("--first", type=int, default=0, help="driver frames to skip")
    p.add_argument("--count", type=int, default=0, help="driver frames to use (0: all)")
    p.add_argument("--fps", type=float, default=None, help="driver frame rate (default: from the clip, or 25)")
    p.add_argument("--out", type=Path, required=True, help="output folder (frames/, the .blend, summary.json)")
    p.add_argument("--camera", choices=["scene", "driver"], default="scene",
                   help="render from the scene's active camera or from the driver's estimated camera")
    p.add_argument("--size", type=int, default=512, help="frame size with --camera driver")
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="frame files")
    p.add_argument("--frame-start", type=int, default=None, help="scene frame of driver frame 0 (default: scene start)")
    p.add_argument("--run-name", default="FFAvatar", help="names the frames, plane and strip")
    p.add_argument("--vse", action="store_true", help="also add the frames as a sequencer strip")
    p.add_argument("--no-rig", action="store_true", help="do not build or key the FLAME rig")
    p.add_argument("--retarget", help="map: a built-in name (flame, arkit52, rigify_face) or a JSON file")
    p.add_argument("--target", nargs="+", default=[], help="objects to bake the map onto (armature, meshes)")
    p.add_argument("--scene", type=Path, help="open this .blend first (needed with the bpy module)")
    p.add_argument("--save", type=Path, help="where to save the .blend (default OUT/<run-name>.blend)")
    be = p.add_mutually_exclusive_group()
    be.add_argument("--backend", default=None, help="address of a running backend (default tcp://127.0.0.1:5557)")
    be.add_argument("--start-backend", metavar="CMD", help="start a backend with this command (Python + args) and stop "
                    "it at the end; it binds a free loopback port unless CMD has --bind")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the backend (default 60)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may take overall (default 3600)")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="seconds a job may go without any event from the backend (default 300)")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check; raises :class:`BatchError` (argparse's own errors exit 2 themselves)."""
    args = parser().parse_args(argv)
    problems = []
    for p in args.portraits or []:
        if not p.is_file():
            problems.append(f"portrait {p} does not exist")
    if not args.driver.exists():
        problems.append(f"driver clip {args.driver} does not exist")
    if args.scene is not None and not args.scene.is_file():
        problems.append(f"scene {args.scene} does not exist")
    if args.retarget and not args.target:
        problems.append("--retarget needs --target OBJECT [OBJECT ...]")
    if args.target and not args.retarget:
        problems.append("--target needs --retarget MAP")
    if args.first < 0 or args.count < 0:
        problems.append("--first and --count must be >= 0")
    if not 16 <= args.size <= 4096:
        problems.append("--size must be in 16..4096")
    if args.timeout <= 0 or args.connect_timeout <= 0 or args.idle_timeout <= 0:
        problems.append("timeouts must be positive")
    if problems:
        raise BatchError("; ".join(problems))
    return args


def map_key(value: str) -> str:
    """``--retarget`` value -> a map key the controller resolves (built-in name or file path)."""
    if value.lower().endswith(".json") or "/" in value or "\\" in value:
        return value
    return f"builtin:{value}"
