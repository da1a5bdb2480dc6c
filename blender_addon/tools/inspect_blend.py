"""Summarize a .blend as JSON: what a batch or the demo wrote, checkable without opening Blender's UI.

    python inspect_blend.py -- FILE.blend [--json OUT] [--values]
    blender -b -P inspect_blend.py -- FILE.blend

Prints (and with ``--json`` also writes) one JSON object:

* ``blender``, ``file``, ``scene``, ``camera``, ``frame_range`` ``[start, end]``, ``fps``, ``resolution``;
* ``objects``: ``[{name, type, parent}]``;
* ``meshes``: per mesh object with shape keys: ``vertices``, ``shape_keys`` (names, basis first
  excluded), ``animated`` ``{key: {keyframes, min, max}}``;
* ``armatures``: per armature object: ``bones`` (names), ``animated`` ``{bone: {keyframes, channels:
  {property: {min: [...], max: [...]}}, rotation_deg: [min, max]}}`` (the rotation angle of the pose at
  each keyed frame, whatever the rotation mode) and, for a rig the FFAvatar add-on keyed, ``track``
  (the stored FLAME track: frames, frame_start, names);
* ``images``: image datablocks ``{name, source, filepath}``; ``planes``: objects showing an image
  sequence through their material ``{name, image, parent, frame_start, frame_offset, frame_duration}``;
  ``strips``: sequencer image strips.

``--values`` adds per-frame ``frames`` and ``values`` to every animated shape key and bone channel,
and the track's ``expression``/``pose`` arrays. Works with Blender 4.2 (``Action.fcurves``) and 4.4+
(slotted actions). Exit codes: 0 done, 1 the file could not be opened, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from pathlib import Path

log = logging.getLogger("ffavatar.inspect_blend")

EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE = 0, 1, 2
TRACK_PROP = "ffavatar_track"
_KEY_PATH = re.compile(r'^key_blocks\["(.+)"\]\.value$')
_BONE_PATH = re.compile(r'^pose\.bones\["(.+)"\]\.(\w+)$')


def fcurves(id_data) -> list:
    """The F-Curves animating ``id_data`` on any supported Blender (empty when not animated)."""
    import bpy

    ad = getattr(id_data, "animation_data", None)
    if ad is None or ad.action is None:
        return []
    if bpy.app.version < (4, 4, 0):
        return list(ad.action.fcurves)
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    if ad.action_slot is None:
        return []
    bag = action_get_channelbag_for_slot(ad.action, ad.action_slot)
    return [] if bag is None else list(bag.fcurves)


def _keys(fc) -> tuple[list[float], list[float]]:
    n = len(fc.keyframe_points)
    co = [0.0] * (2 * n)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2], co[1::2]


def _unescape(name: str) -> str:
    return name.replace('\\"', '"').replace("\\\\", "\\")


def shape_key_summary(obj, values: bool) -> dict:
    """Shape-key names and the animated keys of a mesh object."""
    key = obj.data.shape_keys
    out = {"vertices": len(obj.data.vertices), "shape_keys": [kb.name for kb in key.key_blocks[1:]], "animated": {}}
    for fc in fcurves(key):
        m = _KEY_PATH.match(fc.data_path)
        if m is None:
            continue
        frames, vals = _keys(fc)
        entry = {"keyframes": len(frames), "min": min(vals, default=0.0), "max": max(vals, default=0.0)}
        if values:
            entry.update(frames=frames, values=vals)
        out["animated"][_unescape(m.group(1))] = entry
    return out


def _rotation_angle(pb, frames: list[float], curves: dict) -> list[float]:
    """The pose bone's rotation angle (degrees) at each frame, from its keyed rotation channels."""
    from mathutils import Euler, Quaternion

    mode = pb.rotation_mode
    prop = {"QUATERNION": "rotation_quaternion", "AXIS_ANGLE": "rotation_axis_angle"}.get(mode, "rotation_euler")
    rest = list(getattr(pb, prop))
    chans = curves.get(prop, {})
    out = []
    for f in frames:
        v = [chans[i].evaluate(f) if i in chans else rest[i] for i in range(len(rest))]
        if prop == "rotation_quaternion":
            q = Quaternion(v)
            q.normalize()
            angle = q.angle
        elif prop == "rotation_axis_angle":
            angle = abs(v[0])
        else:
            angle = Euler(v, mode).to_quaternion().angle
        out.append(math.degrees(min(angle, 2 * math.pi - angle)))
    return out


def armature_summary(obj, values: bool) -> dict:
    """Bones, animated bones (keyframes, channel ranges, rotation angle range) and a stored track."""
    out = {"bones": [b.name for b in obj.data.bones], "animated": {}}
    per_bone: dict[str, dict[str, dict[int, object]]] = {}
    for fc in fcurves(obj):
        m = _BONE_PATH.match(fc.data_path)
        if m is not None:
            per_bone.setdefault(_unescape(m.group(1)), {}).setdefault(m.group(2), {})[fc.array_index] = fc
    for bone, props in per_bone.items():
        entry: dict = {"channels": {}}
        frames: set[float] = set()
        for prop, chans in props.items():
            ch: dict = {"min": [], "max": []}
            for i in sorted(chans):
                f, v = _keys(chans[i])
                frames.update(f)
                ch["min"].append(min(v, default=0.0))
                ch["max"].append(max(v, default=0.0))
                if values:
                    ch.setdefault("values", {})[i] = v
            entry["channels"][prop] = ch
        frames_sorted = sorted(frames)
        entry["keyframes"] = len(frames_sorted)
        pb = obj.pose.bones.get(bone)
        if pb is not None and frames_sorted:
            angles = _rotation_angle(pb, frames_sorted, props)
            entry["rotation_deg"] = [min(angles), max(angles)]
            if values:
                entry["angles_deg"] = angles
        if values:
            entry["frames"] = frames_sorted
        out["animated"][bone] = entry
    track = obj.get(TRACK_PROP)
    if track is not None:
        t, e = (int(x) for x in track["shape"])
        info = {"frames": t, "frame_start": int(track["frame_start"]), "fps": float(track["fps"]),
                "expression_names": [str(s) for s in track["expression_names"]],
                "joint_names": [str(s) for s in track["joint_names"]]}
        if values:
            expr, pose = list(track["expression"]), list(track["pose"])
            j = len(pose) // max(t * 3, 1)
            info["indices"] = [int(i) for i in track["indices"]]
            info["expression"] = [expr[r * e:(r + 1) * e] for r in range(t)]
            info["pose"] = [[pose[(r * j + k) * 3:(r * j + k + 1) * 3] for k in range(j)] for r in range(t)]
        out["track"] = info
    return out


def _planes(objects) -> list[dict]:
    out = []
    for obj in objects:
        for slot in getattr(obj, "material_slots", []):
            mat = slot.material
            if mat is None or mat.node_tree is None:
                continue
            for node in mat.node_tree.nodes:
                if node.type == "TEX_IMAGE" and node.image is not None and node.image.source == "SEQUENCE":
                    u = node.image_user
                    out.append({"name": obj.name, "image": node.image.name,
                                "parent": obj.parent.name if obj.parent else None, "frame_start": u.frame_start,
                                "frame_offset": u.frame_offset, "frame_duration": u.frame_duration})
    return out


def _strips(scene) -> list[dict]:
    ed = scene.sequence_editor
    if ed is None:
        return []
    strips = ed.strips if hasattr(ed, "strips") else ed.sequences
    return [{"name": s.name, "type": s.type, "frame_start": s.frame_final_start, "frame_end": s.frame_final_end,
             "elements": len(s.elements) if s.type == "IMAGE" else None} for s in strips]


def summarize(values: bool = False) -> dict:
    """The JSON summary of the file open in this Blender."""
    import bpy

    scene = bpy.context.scene
    r = scene.render
    out = {
        "blender": bpy.app.version_string, "file": bpy.data.filepath, "scene": scene.name,
        "camera": scene.camera.name if scene.camera else None,
        "frame_range": [scene.frame_start, scene.frame_end], "fps": r.fps / r.fps_base,
        "resolution": [r.resolution_x, r.resolution_y, r.resolution_percentage],
        "objects": [{"name": o.name, "type": o.type, "parent": o.parent.name if o.parent else None}
                    for o in bpy.data.objects],
        "meshes": {}, "armatures": {},
        "images": [{"name": i.name, "source": i.source, "filepath": i.filepath} for i in bpy.data.images],
        "planes": _planes(bpy.data.objects), "strips": _strips(scene),
    }
    for o in bpy.data.objects:
        if o.type == "MESH" and o.data.shape_keys is not None:
            out["meshes"][o.name] = shape_key_summary(o, values)
        elif o.type == "ARMATURE":
            out["armatures"][o.name] = armature_summary(o, values)
    return out


def _open(path: Path) -> None:
    """Open ``path`` in this Blender with Blender's own log lines sent to stderr, so stdout holds
    only the JSON."""
    import bpy

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path.resolve()), load_ui=False)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str]) -> int:
    argv = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    p = argparse.ArgumentParser(prog="inspect_blend.py", description="Print a JSON summary of a .blend file.")
    p.add_argument("file", type=Path, help="the .blend to inspect")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--values", action="store_true", help="include per-frame keyframe values and the stored track")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    if not args.file.is_file():
        print(f"inspect_blend: {args.file} does not exist", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        _open(args.file)
    except RuntimeError as e:
        print(f"inspect_blend: cannot open {args.file}: {str(e).strip()}", file=sys.stderr)
        return EXIT_UNREADABLE
    text = json.dumps(summarize(args.values), indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return EXIT_OK


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv))
