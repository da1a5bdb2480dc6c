"""Retargeting in Blender: a map baked onto a rig with ARKit-style keys and a rolled head bone, and
the automatic NNLS fit recovering known shape-key weights on a synthetic target."""

from __future__ import annotations

import numpy as np
import pytest
import rigs

ARKIT_KEYS = ["eyeBlink_L", "EyeBlinkRight", "mouthSmile_L", "MouthSmileRight", "jawOpen", "mouthPucker",
              "cheekPuff", "browOuterUp_L", "eyeLookDownLeft", "eyeLookInLeft", "unrelated"]


def _track(ext, frames=20, seed=2):
    expr, pose = rigs.track_arrays(frames, len(rigs.EXPRESSION_NAMES), seed)
    return ext("track").Track(expression=expr, pose=pose, cam_rot=np.zeros((frames, 3)), cam_t=np.zeros((frames, 3)),
                              focal=np.ones(frames), indices=np.arange(frames),
                              expression_names=list(rigs.EXPRESSION_NAMES))


def _mesh_with_keys(scene, name, verts, faces, keys: dict[str, np.ndarray]):
    import bpy

    me = bpy.data.meshes.new(name)
    me.from_pydata(verts.tolist(), [], faces.tolist())
    obj = bpy.data.objects.new(name, me)
    scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    for k, delta in keys.items():
        kb = obj.shape_key_add(name=k, from_mix=False)
        kb.data.foreach_set("co", (verts + delta).astype(np.float32).ravel())
    return obj


def _armature(scene, name, bones: dict[str, tuple]):
    import bpy

    arm = bpy.data.objects.new(name, bpy.data.armatures.new(name))
    scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    for b, (head, tail, roll) in bones.items():
        eb = arm.data.edit_bones.new(b)
        eb.head, eb.tail, eb.roll = head, tail, roll
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def _values(ext, obj, key):
    return ext("anim").read_curve(obj.data.shape_keys, f'key_blocks["{key}"].value')


def test_arkit_map_bakes_what_the_map_says(ext, clean):
    import bpy

    v, f = rigs.uv_sphere()
    face = _mesh_with_keys(clean, "Face", v, f, {k: np.full_like(v, 0.01) for k in ARKIT_KEYS})
    arm = _armature(clean, "Target", {"head": ((0, 0, 0.1), (0, 0, 0.3), 0.7), "spine": ((0, 0, 0), (0, 0, 0.1), 0)})
    arm.rotation_euler = (0, 0, 0.4)          # a rotated armature object: world-space mapping must hold
    bpy.context.view_layer.update()
    ctl = ext("controller")
    track = _track(ext)
    rep = ext("bake").bake_mapping(ctl.resolve_map("builtin:arkit52"), track, [arm, face], frame_start=1)
    e = dict(zip(rigs.EXPRESSION_NAMES, track.expression.T))
    p = track.pose
    want = {"eyeBlink_L": e["blink_L"], "EyeBlinkRight": e["blink_R"], "mouthSmile_L": e["smile_L"],
            "MouthSmileRight": e["smile_R"], "jawOpen": 2.5 * p[:, 2, 0], "mouthPucker": e["pucker"],
            "cheekPuff": 0.5 * e["cheek_puff_L"] + 0.5 * e["cheek_puff_R"], "browOuterUp_L": e["brow_raise_L"],
            "eyeLookDownLeft": 2.0 * p[:, 3, 0], "eyeLookInLeft": -2.0 * p[:, 3, 1]}
    for key, w in want.items():
        frames, got = _values(ext, face, key)
        assert np.allclose(got, np.clip(w, 0, 1), atol=1e-6), key
        assert np.allclose(frames, np.arange(1, 21))
    assert _values(ext, face, "unrelated") is None
    assert rep.shape_keys == len(want) and any("jawForward" in s for s in rep.skipped)
    # head <- neck then root, in world space, whatever the bone's roll and the armature's rotation
    rot = ext("rotations")
    m = rot.OURS_TO_BLENDER
    for fr in (3, 11):
        clean.frame_set(fr)
        t = fr - 1
        pb = arm.pose.bones["head"]
        world = np.array(arm.matrix_world.to_3x3())
        delta = world @ np.array(pb.matrix.to_3x3()) @ np.array(pb.bone.matrix_local.to_3x3()).T @ world.T
        r_root = m @ rot.axis_angle_to_matrix(p[t, 0]) @ m.T
        r_neck = m @ rot.axis_angle_to_matrix(p[t, 1]) @ m.T
        assert np.allclose(delta, r_root @ r_neck, atol=1e-5)
    assert ext("anim").read_curve(arm, 'pose.bones["spine"].rotation_quaternion') is None


def test_user_map_through_the_operator(ext, clean, tmp_path):
    import bpy

    rd = ext("rigdata").rig_from_dict(rigs.rig_dict())
    mesh, flame_arm = ext("rig").build_flame_rig(rd, collection=clean.collection)
    track = _track(ext, frames=8)
    ext("bake").key_flame_rig(mesh, flame_arm, track)
    ext("rig").store_track(flame_arm, track, 1)
    v, f = rigs.uv_sphere()
    target = _mesh_with_keys(clean, "Char", v, f, {"Happy.L": v * 0.1, "Happy.R": v * 0.1})
    path = tmp_path / "mine.json"
    ext("retarget").save({"format": "ffavatar-retarget", "version": 1, "shape_keys": [
        {"target": "happy_L", "sources": [{"expr": "smile_L", "weight": 0.5}, {"expr": "cheek_puff_L", "weight": 0.25}],
         "min": -0.2, "max": 0.6}]}, path)
    for o in bpy.context.view_layer.objects:
        o.select_set(o == target)
    clean.ffavatar.retarget_map = "builtin:flame"     # the enum lists the built-in maps
    ctl = ext("controller")
    rep = ctl.bake_retarget(clean, str(path), [target])
    got = _values(ext, target, "Happy.L")[1]
    want = np.clip(0.5 * track.expression[:, 0] + 0.25 * track.expression[:, 7], -0.2, 0.6)
    assert rep.keys == 8 and np.allclose(got, want, atol=1e-6)
    assert _values(ext, target, "Happy.R") is None
    # the operator path (selection from the context) bakes the built-in FLAME map onto a second FLAME rig
    mesh2, arm2 = ext("rig").build_flame_rig(rd, name="Copy", collection=clean.collection)
    for o in bpy.context.view_layer.objects:
        o.select_set(o in (mesh2, arm2))
    clean.ffavatar.source_rig = flame_arm
    assert bpy.ops.ffavatar.bake_retarget() == {"FINISHED"}
    assert np.allclose(_values(ext, mesh2, "pucker")[1], track.expression[:, 6], atol=1e-6)


def test_autofit_recovers_known_weights(ext, clean):
    import bpy

    rd = ext("rigdata").rig_from_dict(rigs.rig_dict(seed=5))
    mesh, arm = ext("rig").build_flame_rig(rd, collection=clean.collection)
    # target: the FLAME mesh twice as big, moved, with 4 keys = scaled FLAME expression fields
    used = [0, 2, 6, 8]
    scale = 2.0
    src = rigs.rig_dict(seed=5)
    swap = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])   # our world -> Blender, row-vector form
    verts = (src["vertices"] @ swap) * scale
    keys = {f"k{i}": scale * (src["expression_dirs"][e] @ swap) for i, e in enumerate(used)}
    target = _mesh_with_keys(clean, "Target", verts, src["faces"], keys)
    target.location = (0.5, 0.2, 0.0)
    bpy.context.view_layer.update()
    frames = 15
    rng = np.random.default_rng(9)
    expr = np.zeros((frames, len(rigs.EXPRESSION_NAMES)))
    known = np.abs(rng.normal(size=(frames, len(used)))) * (rng.random((frames, len(used))) > 0.3)
    expr[:, used] = known
    track = ext("track").Track(expression=expr, pose=np.zeros((frames, 5, 3)), cam_rot=np.zeros((frames, 3)),
                               cam_t=np.zeros((frames, 3)), focal=np.ones(frames), indices=np.arange(frames),
                               expression_names=list(rigs.EXPRESSION_NAMES))
    ext("rig").store_track(arm, track, 1)
    ids = np.linspace(0, len(verts) - 1, 40).astype(int)
    rep = ext("controller").autofit(clean, target, [(int(i), int(i)) for i in ids], ridge=0.0)
    assert rep.keys == frames * len(used)
    for i in range(len(used)):
        assert np.allclose(_values(ext, target, f"k{i}")[1], known[:, i], atol=1e-5), i
    # with few pairs and a little regularization the fit is still close
    rep = ext("controller").autofit(clean, target, [(int(i), int(i)) for i in ids[::5]], ridge=1e-9)
    got = np.stack([_values(ext, target, f"k{i}")[1] for i in range(len(used))], 1)
    assert np.abs(got - known).max() < 1e-3


def test_autofit_needs_pairs_and_keys(ext, clean):
    rd = ext("rigdata").rig_from_dict(rigs.rig_dict())
    mesh, arm = ext("rig").build_flame_rig(rd, collection=clean.collection)
    v, f = rigs.uv_sphere()
    target = _mesh_with_keys(clean, "T", v, f, {"a": v * 0.1})
    ctl = ext("controller")
    with pytest.raises(ValueError, match="no FLAME rig with a track"):
        ctl.autofit(clean, target, [(0, 0)])
    tr = _track(ext, frames=3)
    ext("rig").store_track(arm, tr, 1)
    with pytest.raises(ValueError, match="at least one correspondence"):
        ctl.autofit(clean, target, [])
    with pytest.raises(ValueError, match="does not exist"):
        ctl.autofit(clean, target, [(0, 10**6)])
