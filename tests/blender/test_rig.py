"""The FLAME rig in Blender: built from a rig dict, keyed from a track (4.2 legacy actions and 4.4+
slotted actions), checked against the track and against FLAME's own skinning."""

from __future__ import annotations

import numpy as np
import pytest
import rigs


def _track(ext, frames=30, seed=1):
    tr = ext("track")
    expr, pose = rigs.track_arrays(frames, len(rigs.EXPRESSION_NAMES), seed)
    return tr.Track(expression=expr, pose=pose, cam_rot=np.zeros((frames, 3)), cam_t=np.zeros((frames, 3)),
                    focal=np.ones(frames), indices=np.arange(frames), expression_names=list(rigs.EXPRESSION_NAMES))


@pytest.fixture
def flame(ext, clean):
    rd = ext("rigdata").rig_from_dict(rigs.rig_dict())
    mesh, arm = ext("rig").build_flame_rig(rd, name="FLAME", collection=clean.collection)
    return rd, mesh, arm


def test_rig_objects(flame, ext):
    import bpy

    rd, mesh, arm = flame
    keys = mesh.data.shape_keys.key_blocks
    assert [k.name for k in keys] == ["Basis", *rigs.EXPRESSION_NAMES]
    assert [b.name for b in arm.data.bones] == ["root", "neck", "jaw", "eye_L", "eye_R"]
    assert arm.data.bones["jaw"].parent.name == "neck" and arm.data.bones["neck"].parent.name == "root"
    # world mapping: our (x, y, z) -> Blender (x, -z, y); the eye_L joint (0.032, 0.018, 0.069)
    assert np.allclose(arm.data.bones["eye_L"].head_local, [0.032, -0.069, 0.018], atol=1e-6)
    n = len(mesh.data.vertices)
    co = np.empty(3 * n, np.float32)
    keys["pucker"].data.foreach_get("co", co)
    src = rigs.rig_dict()
    want = (src["vertices"] + src["expression_dirs"][6]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    assert np.allclose(co.reshape(n, 3), want, atol=1e-6)
    assert mesh.modifiers["Armature"].object == arm and mesh.parent == arm
    w = np.array([mesh.vertex_groups["jaw"].weight(i) if any(g.group == mesh.vertex_groups["jaw"].index
                  for g in mesh.data.vertices[i].groups) else 0.0 for i in range(n)])
    assert np.allclose(w, rd.weights[:, 2], atol=1e-6)
    assert bpy.app.version >= (4, 2, 0)


def test_keys_equal_track_and_pose_matches_flame(flame, ext, clean):
    rd, mesh, arm = flame
    track = _track(ext)
    rep = ext("bake").key_flame_rig(mesh, arm, track, frame_start=5)
    anim = ext("anim")
    assert rep.keys == 30 * (len(rigs.EXPRESSION_NAMES) + 5 * 4) and not rep.skipped
    for k, name in enumerate(rigs.EXPRESSION_NAMES):
        frames, values = anim.read_curve(mesh.data.shape_keys, f'key_blocks["{name}"].value')
        assert np.allclose(frames, np.arange(5, 35)) and np.allclose(values, track.expression[:, k], atol=1e-6)
    rot = ext("rotations")
    kf = ext("keyframes")
    bases = ext("rig").bone_bases(arm)
    for j, name in enumerate(rd.joint_names):
        q = np.stack([anim.read_curve(arm, f'pose.bones["{name}"].rotation_quaternion', i)[1] for i in range(4)], 1)
        want = rot.axis_angle_to_quaternion(kf.pose_to_bone_local(track.pose[:, j], bases[name]))
        assert np.allclose(np.abs(np.sum(q * want, 1)), 1.0, atol=1e-6), name
    # evaluated: each bone's world rotation delta is FLAME's chained joint rotation (in Blender's world)
    m = rot.OURS_TO_BLENDER
    for f in (5, 17, 34):
        clean.frame_set(f)
        t = f - 5
        chain = {}
        for j, name in enumerate(rd.joint_names):
            r = m @ rot.axis_angle_to_matrix(track.pose[t, j]) @ m.T
            parent = arm.data.bones[name].parent
            chain[name] = chain[parent.name] @ r if parent else r
            pb = arm.pose.bones[name]
            delta = np.array(pb.matrix.to_3x3()) @ np.array(pb.bone.matrix_local.to_3x3()).T
            assert np.allclose(delta, chain[name], atol=1e-5), (f, name)
    # the deformed mesh equals FLAME's blendshapes + LBS (the model the automatic fit uses)
    import bpy

    clean.frame_set(17)
    dg = bpy.context.evaluated_depsgraph_get()
    ev = mesh.evaluated_get(dg).to_mesh()
    n = len(ev.vertices)
    co = np.empty(3 * n, np.float32)
    ev.vertices.foreach_get("co", co)
    mesh.evaluated_get(dg).to_mesh_clear()
    disp = ext("autofit").flame_displacements(rd, track.expression[12:13], track.pose[12:13], np.arange(n),
                                              joints=tuple(rd.joint_names))
    assert np.allclose(co.reshape(n, 3), rd.vertices + disp[0], atol=1e-5)


def test_track_is_stored_on_the_rig(flame, ext):
    rd, mesh, arm = flame
    track = _track(ext, frames=12)
    rig = ext("rig")
    rig.store_track(arm, track, 3)
    back, start = rig.load_track(arm)
    assert start == 3 and np.allclose(back.expression, track.expression) and np.allclose(back.pose, track.pose)
    assert back.expression_names == track.expression_names and back.indices.tolist() == list(range(12))
    mesh2, arm2 = rig.find_flame_rig([mesh])
    assert (mesh2, arm2) == (mesh, arm)
    back_rd = rig.rig_from_objects(mesh, arm)
    assert np.allclose(back_rd.expression_dirs, rd.expression_dirs, atol=1e-6)
    assert np.allclose(back_rd.weights, rd.weights, atol=1e-6)


@pytest.mark.parametrize("mode", ["XYZ", "ZXY", "AXIS_ANGLE"])
def test_other_rotation_modes(flame, ext, clean, mode):
    rd, mesh, arm = flame
    for pb in arm.pose.bones:
        pb.rotation_mode = mode
    track = _track(ext, frames=10, seed=4)
    ext("bake").key_flame_rig(mesh, arm, track)
    rot = ext("rotations")
    m = rot.OURS_TO_BLENDER
    clean.frame_set(7)
    pb = arm.pose.bones["neck"]
    parent = arm.pose.bones["root"]
    got = np.array(pb.matrix.to_3x3()) @ np.array(pb.bone.matrix_local.to_3x3()).T
    want = (m @ rot.axis_angle_to_matrix(track.pose[6, 0]) @ m.T) @ (m @ rot.axis_angle_to_matrix(track.pose[6, 1]) @ m.T)
    assert parent.rotation_mode == mode and np.allclose(got, want, atol=1e-5)


def test_action_api_matches_version(flame, ext):
    import bpy

    rd, mesh, arm = flame
    ext("bake").key_flame_rig(mesh, arm, _track(ext, frames=3))
    action = arm.animation_data.action
    if bpy.app.version >= (4, 4, 0):
        assert arm.animation_data.action_slot is not None and len(action.slots) == 1
        assert not hasattr(action, "fcurves") or bpy.app.version < (5, 0, 0)
    else:
        assert len(action.fcurves) == 20
    assert len(ext("anim").find_fcurves(arm)) == 20


def test_import_track_file(flame, ext, clean, tmp_path):
    import json

    rd, mesh, arm = flame
    expr, pose = rigs.track_arrays(6, len(rigs.EXPRESSION_NAMES), seed=8)
    path = tmp_path / "t.npz"
    meta = {"format": "ffavatar-track", "version": 1, "fps": 30.0, "joints": rd.joint_names,
            "expression_names": rigs.EXPRESSION_NAMES}
    np.savez(path, expression=expr, pose=pose, cam_rot=np.zeros((6, 3)), cam_t=np.zeros((6, 3)), focal=np.ones(6),
             meta=np.array(json.dumps(meta)))
    clean.frame_start = 20
    rep = ext("controller").import_track(clean, str(path))
    assert rep.keys == 6 * (len(rigs.EXPRESSION_NAMES) + 20)
    frames, values = ext("anim").read_curve(mesh.data.shape_keys, 'key_blocks["blink_R"].value')
    # the 30 fps track keeps its timing in the 25 fps scene: frame i at 20 + i * 25 / 30
    assert np.allclose(frames, 20 + np.arange(6) * 25 / 30, atol=1e-4) and np.allclose(values, expr[:, 3], atol=1e-6)
    track, start = ext("rig").load_track(arm)
    assert start == 20 and track.fps == 30.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.array(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="not an FFAvatar track"):
        ext("controller").import_track(clean, str(bad))
