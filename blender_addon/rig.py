"""The FLAME rig in Blender (bpy layer): a mesh with one shape key per expression direction and an
armature (root, neck, jaw, eye_L, eye_R) that deforms it through LBS vertex groups; and reading it back.
"""

from __future__ import annotations

import logging

import bpy
import numpy as np

from .rigdata import BoneSpec, RigData

log = logging.getLogger(__name__)

RIG_TAG = "ffavatar_rig"
"""Custom property on both objects: the head model id the rig was built from."""
SLIDER_RANGE = 10.0
"""Blender clamps shape-key values to the slider range; FLAME coefficients may exceed +-1."""


def _link(obj: bpy.types.Object, collection: bpy.types.Collection | None) -> None:
    (collection or bpy.context.scene.collection).objects.link(obj)


def _mesh(name: str, vertices: np.ndarray, faces: np.ndarray) -> bpy.types.Mesh:
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(vertices))
    me.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.validate(clean_customdata=False)
    return me


def _add_weights(obj: bpy.types.Object, name: str, weights: np.ndarray) -> None:
    vg = obj.vertex_groups.new(name=name)
    nz = np.flatnonzero(weights > 1e-6)
    values, inverse = np.unique(weights[nz], return_inverse=True)
    for k, w in enumerate(values):  # one call per distinct weight value
        vg.add(nz[inverse == k].tolist(), float(w), "REPLACE")


def _build_armature(name: str, bones: list[BoneSpec], collection) -> bpy.types.Object:
    arm = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, arm)
    _link(obj, collection)
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        made = {}
        for b in bones:
            eb = arm.edit_bones.new(b.name)
            eb.head, eb.tail, eb.roll = b.head.tolist(), b.tail.tolist(), 0.0
            eb.use_deform = True
            if b.parent:
                eb.parent = made[b.parent]
            made[b.name] = eb
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


def build_flame_rig(rig: RigData, name: str = "FLAME",
                    collection: bpy.types.Collection | None = None) -> tuple[bpy.types.Object, bpy.types.Object]:
    """Create ``(mesh object, armature object)``; the mesh is parented to the armature and deformed by
    an Armature modifier; shape keys are named after the expressions."""
    arm_obj = _build_armature(f"{name}_rig", rig.bones, collection)
    me = _mesh(name, rig.vertices, rig.faces)
    obj = bpy.data.objects.new(name, me)
    _link(obj, collection)
    obj.shape_key_add(name="Basis", from_mix=False)
    for e, ename in enumerate(rig.expression_names):
        kb = obj.shape_key_add(name=ename, from_mix=False)
        kb.slider_min, kb.slider_max = -SLIDER_RANGE, SLIDER_RANGE
        kb.value = 0.0  # Blender 5.0 creates keys at 1.0 (4.2 at 0.0): an unkeyed rig must rest neutral
        kb.data.foreach_set("co", (rig.vertices + rig.expression_dirs[e]).astype(np.float32).ravel())
    me.shape_keys.name = f"{name}_keys"
    for j, jname in enumerate(rig.joint_names):
        _add_weights(obj, jname, rig.weights[:, j])
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    obj.parent = arm_obj
    for o in (obj, arm_obj):
        o[RIG_TAG] = rig.head_model_id or "unknown"
    log.info("built FLAME rig %s: %d vertices, %d shape keys, %d bones", name, len(rig.vertices),
             rig.n_expr, len(rig.bones))
    return obj, arm_obj


def rig_from_objects(mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object) -> RigData:
    """Read a FLAME rig built by :func:`build_flame_rig` back into a :class:`RigData` (Blender world
    at the objects' rest; used by the automatic fit, so a saved .blend needs no backend)."""
    me = mesh_obj.data
    n = len(me.vertices)
    keys = me.shape_keys.key_blocks if me.shape_keys else []
    if len(keys) < 2:
        raise ValueError(f"{mesh_obj.name} has no expression shape keys; is it a FLAME rig mesh?")

    def coords(kb) -> np.ndarray:
        co = np.empty(3 * n, dtype=np.float32)
        kb.data.foreach_get("co", co)
        return co.reshape(n, 3).astype(np.float64)

    basis = coords(keys[0])
    dirs = np.stack([coords(kb) - basis for kb in keys[1:]])
    names = [kb.name for kb in keys[1:]]
    bones = [BoneSpec(b.name, np.array(b.head_local, dtype=np.float64), np.array(b.tail_local, dtype=np.float64),
                      b.parent.name if b.parent else None) for b in arm_obj.data.bones]
    joint_names = [b.name for b in bones]
    weights = np.zeros((n, len(bones)))
    index = {vg.index: joint_names.index(vg.name) for vg in mesh_obj.vertex_groups if vg.name in joint_names}
    for v in me.vertices:
        for g in v.groups:
            if g.group in index:
                weights[v.index, index[g.group]] = g.weight
    faces = np.array([tuple(p.vertices) for p in me.polygons if len(p.vertices) == 3], dtype=np.int32)
    return RigData(vertices=basis, faces=faces.reshape(-1, 3), expression_dirs=dirs, expression_names=names,
                   bones=bones, weights=weights, joint_names=joint_names,
                   head_model_id=str(mesh_obj.get(RIG_TAG, "")))


def bone_bases(arm_obj: bpy.types.Object) -> dict[str, np.ndarray]:
    """``{bone: rest basis (3,3)}`` in world: armature rotation @ bone.matrix_local rotation."""
    world = np.array(arm_obj.matrix_world.to_3x3(), dtype=np.float64)
    out = {}
    for b in arm_obj.data.bones:
        m = world @ np.array(b.matrix_local.to_3x3(), dtype=np.float64)
        out[b.name] = m / np.linalg.norm(m, axis=0, keepdims=True)
    return out


def find_flame_rig(objects) -> tuple[bpy.types.Object | None, bpy.types.Object | None]:
    """The (mesh, armature) of a FLAME rig among ``objects`` (either one may be given)."""
    for o in objects:
        if RIG_TAG not in o:
            continue
        if o.type == "MESH" and o.parent is not None and o.parent.type == "ARMATURE":
            return o, o.parent
        if o.type == "ARMATURE":
            meshes = [c for c in o.children if c.type == "MESH" and RIG_TAG in c]
            return (meshes[0] if meshes else None), o
    return None, None


TRACK_PROP = "ffavatar_track"
"""Custom property on the rig's armature holding the last keyed track (saved with the .blend)."""


def store_track(arm_obj: bpy.types.Object, track, frame_start: int) -> None:
    """Keep ``track`` (a :class:`~.track.Track`) on the armature, so retargeting and the automatic fit
    work later, from a saved file, with no backend."""
    arm_obj[TRACK_PROP] = {
        "fps": float(track.fps), "frame_start": int(frame_start), "shape": list(track.expression.shape),
        "indices": track.indices.astype(np.int64).tolist(), "expression": track.expression.ravel().tolist(),
        "pose": track.pose.ravel().tolist(), "cam_rot": track.cam_rot.ravel().tolist(),
        "cam_t": track.cam_t.ravel().tolist(), "focal": track.focal.ravel().tolist(),
        "expression_names": list(track.expression_names), "joint_names": list(track.joint_names),
    }
    if track.arkit is not None:
        arm_obj[TRACK_PROP]["arkit"] = track.arkit.ravel().tolist()
        arm_obj[TRACK_PROP]["arkit_names"] = list(track.arkit_names)


def load_track(arm_obj: bpy.types.Object):
    """``(Track, frame_start)`` stored by :func:`store_track`, or None."""
    from .track import Track

    d = arm_obj.get(TRACK_PROP) if arm_obj is not None else None
    if d is None:
        return None
    t, e = (int(v) for v in d["shape"])
    arr = lambda k: np.array(d[k], dtype=np.float64)  # noqa: E731
    track = Track(expression=arr("expression").reshape(t, e), pose=arr("pose").reshape(t, -1, 3),
                  cam_rot=arr("cam_rot").reshape(t, 3), cam_t=arr("cam_t").reshape(t, 3), focal=arr("focal").reshape(t),
                  indices=np.array(d["indices"], dtype=np.int64), fps=float(d["fps"]),
                  expression_names=[str(s) for s in d["expression_names"]],
                  joint_names=[str(s) for s in d["joint_names"]])
    if "arkit" in d and "arkit_names" in d:
        track.arkit_names = [str(s) for s in d["arkit_names"]]
        track.arkit = arr("arkit").reshape(t, len(track.arkit_names))
    return track, int(d["frame_start"])
