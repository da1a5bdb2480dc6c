"""Keyframing tracks onto rigs (bpy layer): the FLAME rig, any rig through a retarget map, and the
automatic NNLS fit onto a mesh's shape keys.

Nothing the user made is lost: keys go into each target's own action (a new ``<name>_ffavatar`` one
only where it has none) and replace existing keys only inside the baked frame range (``anim.py``);
the scene's frame range is only ever extended to show the baked frames. The :class:`BakeReport`
says what was written where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import anim, autofit, retarget
from . import scene as scenemod
from .keyframes import bone_rotation_curves, shape_key_curves
from .rig import bone_bases, rig_from_objects
from .track import Track

log = logging.getLogger(__name__)


@dataclass
class BakeReport:
    """What a bake wrote: key counts, where they went (one :class:`anim.Written` per datablock),
    the map entries that found no target and any change to the scene's frame range."""

    shape_keys: int = 0
    bones: int = 0
    keys: int = 0
    skipped: list[str] = field(default_factory=list)
    written: list[anim.Written] = field(default_factory=list)
    frame_end_was: int | None = None      # the scene's end before it was extended to show the keys
    frame_end: int | None = None

    def add(self, written: anim.Written) -> None:
        self.written.append(written)
        self.keys += written.keys

    def summary(self) -> str:
        """Counts, then where the keys went: ``12 keys on ...; 120 keys on 10 channels of ARKitRig,
        frames 1-12, in action 'ARKitRigAction' (3 earlier keys in that range replaced, 4 outside it kept)``."""
        s = f"{self.keys} keys on {self.shape_keys} shape keys and {self.bones} bones"
        if self.skipped:
            s += f"; {len(self.skipped)} map entries skipped"
        return "; ".join([s, *self.details()])

    def details(self) -> list[str]:
        """One line per datablock written (action, frames, keys replaced and kept), and the frame range."""
        lines = [w.summary() for w in self.written if w.keys]
        if self.frame_end is not None:
            lines.append(f"scene end frame extended from {self.frame_end_was} to {self.frame_end}")
        return lines


def split_targets(objects) -> tuple[list[bpy.types.Object], bpy.types.Object | None]:
    """Meshes with shape keys and the armature among ``objects`` (an armature's child meshes count)."""
    meshes, arm = [], None
    for o in objects:
        if o.type == "ARMATURE" and arm is None:
            arm = o
            meshes += [c for c in o.children if c.type == "MESH" and c.data.shape_keys]
        elif o.type == "MESH" and o.data.shape_keys:
            meshes.append(o)
    unique = list(dict.fromkeys(meshes))
    return unique, arm


def frames_for(track: Track, frame_start: int) -> np.ndarray:
    """Scene frames of a track's rows, in the clip's real timing (:func:`scene.track_frames`)."""
    return scenemod.track_frames(bpy.context.scene, track, frame_start)


def bake_mapping(mapping: dict, track: Track, objects, frame_start: int = 1) -> BakeReport:
    """Evaluate ``mapping`` on ``track`` and keyframe the result on the selected ``objects``."""
    meshes, arm = split_targets(objects)
    if not meshes and arm is None:
        raise ValueError("select a target: an armature and/or meshes with shape keys")
    key_names = sorted({kb.name for m in meshes for kb in m.data.shape_keys.key_blocks[1:]})
    bases = bone_bases(arm) if arm is not None else {}
    res = retarget.evaluate(mapping, track.expression, track.pose, track.expression_names, track.joint_names,
                            shape_keys=key_names, bones=bases, arkit=track.arkit_scores())
    frames = frames_for(track, frame_start)
    report = BakeReport(skipped=res.skipped)
    if res.shape_keys:
        names = sorted(res.shape_keys)
        values = np.stack([res.shape_keys[n] for n in names], axis=1)
        for m in meshes:
            key = m.data.shape_keys
            curves = shape_key_curves(values, names, frames, available={kb.name for kb in key.key_blocks})
            report.add(anim.write_curves(key, curves, action_name=f"{m.name}_ffavatar"))
        report.shape_keys = len(names)
    if arm is not None and res.bones:
        curves = []
        for bone, local in res.bones.items():
            curves += bone_rotation_curves(bone, local, arm.pose.bones[bone].rotation_mode, frames)
        report.add(anim.write_curves(arm, curves, action_name=f"{arm.name}_ffavatar"))
        report.bones = len(res.bones)
    _extend_scene(frames, report)
    log.info("baked %s: %s", mapping.get("name", "map"), report.summary())
    return report


def key_flame_rig(mesh_obj, arm_obj, track: Track, frame_start: int = 1) -> BakeReport:
    """Keyframe the add-on's FLAME rig with a track (the built-in identity map)."""
    mapping = retarget.load(retarget.builtin_maps()["flame"])
    return bake_mapping(mapping, track, [o for o in (arm_obj, mesh_obj) if o is not None], frame_start)


def mesh_points(obj: bpy.types.Object, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World positions ``(P,3)`` of vertices at rest (basis) and the shape-key deltas ``(K,P,3)``
    of their keys (world-space directions), with the key names."""
    me = obj.data
    n = len(me.vertices)
    keys = me.shape_keys.key_blocks
    world = np.array(obj.matrix_world, dtype=np.float64)

    def coords(kb) -> np.ndarray:
        co = np.empty(3 * n, dtype=np.float32)
        kb.data.foreach_get("co", co)
        return co.reshape(n, 3)[ids].astype(np.float64)

    basis = coords(keys[0])
    deltas = np.stack([coords(kb) - basis for kb in keys[1:]]) @ world[:3, :3].T
    return basis @ world[:3, :3].T + world[:3, 3], deltas


def bake_autofit(flame_mesh, flame_arm, target, pairs: list[tuple[int, int]], track: Track,
                 frame_start: int = 1, *, scale: float | None = None, ridge: float = 1e-6) -> BakeReport:
    """Fit the target mesh's shape-key weights per frame to the FLAME rig's facial motion at the
    picked vertex ``pairs`` ``[(flame vertex, target vertex), ...]`` (NNLS) and keyframe them."""
    if target.type != "MESH" or not target.data.shape_keys or len(target.data.shape_keys.key_blocks) < 2:
        raise ValueError(f"{target.name} has no shape keys to fit")
    if len(pairs) < 1:
        raise ValueError("pick at least one correspondence (a FLAME vertex and a target vertex)")
    rig = rig_from_objects(flame_mesh, flame_arm)
    src_ids = np.array([p[0] for p in pairs], dtype=np.int64)
    dst_ids = np.array([p[1] for p in pairs], dtype=np.int64)
    if src_ids.max() >= len(rig.vertices) or dst_ids.max() >= len(target.data.vertices):
        raise ValueError("a correspondence names a vertex that does not exist; pick the pairs again")
    disp = autofit.flame_displacements(rig, track.expression, track.pose, src_ids)
    flame_world = np.array(flame_mesh.matrix_world, dtype=np.float64)
    disp = disp @ flame_world[:3, :3].T
    src_pts = rig.vertices[src_ids] @ flame_world[:3, :3].T
    dst_pts, deltas = mesh_points(target, dst_ids)
    s = autofit.correspondence_scale(src_pts, dst_pts) if scale is None else float(scale)
    weights = autofit.fit_weights(deltas, disp, scale=s, ridge=ridge)
    names = [kb.name for kb in target.data.shape_keys.key_blocks[1:]]
    frames = frames_for(track, frame_start)
    report = BakeReport(shape_keys=len(names))
    report.add(anim.write_curves(target.data.shape_keys, shape_key_curves(weights, names, frames),
                                 action_name=f"{target.name}_ffavatar_fit"))
    _extend_scene(frames, report)
    return report


def _extend_scene(frames: np.ndarray, report: BakeReport) -> None:
    """Extend (never shrink) the scene's end frame to the last keyed frame."""
    scene = bpy.context.scene
    if len(frames) and scene.frame_end < int(np.ceil(frames.max())):
        report.frame_end_was = scene.frame_end
        scene.frame_end = report.frame_end = int(np.ceil(frames.max()))
