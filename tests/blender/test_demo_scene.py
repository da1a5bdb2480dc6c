"""The demo scene (``blender_addon/tools/demo_scene.py``) and the .blend inspector (``inspect_blend.py``):
the ARKit-style character's shape keys, bones and framing, and the real batch baking a received track
onto it through the built-in ``arkit52`` map, checked value by value against the map's formula."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pngs
import pytest
from conftest import ROOT

TOOLS = ROOT / "blender_addon" / "tools"
ARKIT_MAP = json.loads((ROOT / "blender_addon" / "maps" / "arkit52.json").read_text())
FLAME_BONES = {"root", "neck", "jaw", "eye_L", "eye_R"}
ARKIT_MAP_TARGETS = [e["target"] for e in ARKIT_MAP["shape_keys"]]


def _run(script: Path, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """A Blender-side script in a fresh process of this bpy venv (same temporary HOME as the session)."""
    return subprocess.run([sys.executable, str(script), "--", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def _inspect(path: Path, *extra: str) -> dict:
    r = _run(TOOLS / "inspect_blend.py", [path, *extra], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "scene.blend"
    r = _run(TOOLS / "demo_scene.py", ["--out", path, "--resolution", 64, 36, "--frames", 6], timeout=120)
    assert r.returncode == 0 and path.is_file(), r.stderr[-2000:]
    return path


def test_scene_holds_camera_lights_and_the_arkit_character(scene_file):
    s = _inspect(scene_file)
    types = {o["name"]: o["type"] for o in s["objects"]}
    parents = {o["name"]: o["parent"] for o in s["objects"]}
    assert types["ARKitFace"] == "MESH" and types["ARKitRig"] == "ARMATURE" and parents["ARKitFace"] == "ARKitRig"
    assert s["camera"] == "Camera" and types["Camera"] == "CAMERA" and "LIGHT" in types.values()
    assert s["frame_range"] == [1, 6] and s["resolution"] == [64, 36, 100]
    face = s["meshes"]["ARKitFace"]
    # every shape-key target of the built-in map exists under its exact ARKit name
    assert sorted(face["shape_keys"]) == sorted(ARKIT_MAP_TARGETS)
    bones = set(s["armatures"]["ARKitRig"]["bones"])
    assert {b["target"] for b in ARKIT_MAP["bones"]} <= bones and {"jaw", "eye.L", "eye.R"} <= bones
    assert face["animated"] == {} and s["armatures"]["ARKitRig"]["animated"] == {}


def _mean_moved(d: np.ndarray, co: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    moved = np.linalg.norm(d, axis=1) > 1e-4
    return d[moved].mean(0), co[moved].mean(0)


def test_shape_keys_bones_and_framing(scene_file, clean):
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    with bpy.data.libraries.load(str(scene_file)) as (src, dst):
        dst.objects = ["ARKitFace", "ARKitRig", "Camera"]
    face, rig, cam = dst.objects
    keys = face.data.shape_keys.key_blocks
    n = len(face.data.vertices)

    def co(kb) -> np.ndarray:
        a = np.empty(3 * n, dtype=np.float32)
        kb.data.foreach_get("co", a)
        return a.reshape(n, 3).astype(np.float64)

    basis = co(keys[0])
    d = {kb.name: co(kb) - basis for kb in keys[1:]}
    assert all(kb.value == 0.0 for kb in keys[1:])            # the character starts at rest
    for name, delta in d.items():
        assert np.linalg.norm(delta, axis=1).max() > 0.0025, f"{name} barely moves the mesh"
        mean_d, moved_at = _mean_moved(delta, basis)
        side = 1 if name.endswith("Left") else -1 if name.endswith("Right") else 0
        if name in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):    # moves toward that side
            assert side * mean_d[0] > 0.003, name
        elif side:                                   # acts on that side: the subject's left is +X
            assert side * moved_at[0] > 0.005, name
    dz = lambda name: _mean_moved(d[name], basis)[0][2]  # noqa: E731
    for up in ("mouthSmileLeft", "browInnerUp", "browOuterUpRight", "cheekSquintLeft", "noseSneerRight"):
        assert dz(up) > 0.0005, up
    for down in ("eyeBlinkLeft", "eyeBlinkRight", "mouthFrownLeft", "browDownRight", "mouthLowerDownLeft"):
        assert dz(down) < -0.0005, down
    assert d["jawOpen"][:, 2].min() < -0.02                     # the chin drops by centimetres
    assert _mean_moved(d["mouthPucker"], basis)[0][1] < -0.002 and _mean_moved(d["tongueOut"], basis)[0][1] < -0.02
    puff = d["cheekPuff"]
    assert np.sum(puff[:, 0] * np.sign(basis[:, 0])) > 0       # the cheeks go outward
    eye = np.linalg.norm(d["eyeLookOutLeft"], axis=1) > 1e-4  # the left eyeball (the lids stay)
    front = np.flatnonzero(eye)[np.argmin(basis[eye, 1])]      # its pupil's centre moves up, down, out
    assert d["eyeLookOutLeft"][front, 0] > 0.003 and d["eyeLookInLeft"][front, 0] < -0.003
    assert d["eyeLookUpLeft"][front, 2] > 0.003 and d["eyeLookDownLeft"][front, 2] < -0.003
    # skinned to the rig: weights of bones only, summing to 1 per vertex
    assert face.modifiers["Armature"].object == rig
    names = {g.index: g.name for g in face.vertex_groups}
    assert set(names.values()) <= {b.name for b in rig.data.bones}
    sums = np.zeros(n)
    for v in face.data.vertices:
        for g in v.groups:
            sums[v.index] += g.weight
    assert np.allclose(sums, 1.0, atol=2e-3)
    # both heads (the FLAME rig at the origin, the character beside it) are in the camera's view
    for o in (face, rig, cam):
        clean.collection.objects.link(o)
    clean.render.resolution_x, clean.render.resolution_y = 64, 36
    bpy.context.view_layer.update()
    char = np.array(rig.matrix_world.translation)
    assert char[0] > 0.25
    for centre in (np.zeros(3), char):
        for dx in (-0.08, 0.08):
            for z in (-0.12, 0.12):
                p = world_to_camera_view(clean, cam, Vector(centre + (dx, -0.09, z)))
                assert 0.02 < p.x < 0.98 and 0.02 < p.y < 0.98 and p.z > 0.5, (centre, dx, z, tuple(p))


def test_inspect_fails_on_a_file_it_cannot_open(tmp_path):
    bad = tmp_path / "bad.blend"
    bad.write_bytes(b"not a blend file")
    r = _run(TOOLS / "inspect_blend.py", [bad], timeout=120)
    assert r.returncode == 1 and "cannot open" in r.stderr and r.stdout.strip() == ""
    r = _run(TOOLS / "inspect_blend.py", [tmp_path / "missing.blend"], timeout=120)
    assert r.returncode == 1 and "does not exist" in r.stderr


def _expected(entry: dict, track: dict) -> np.ndarray | None:
    """A map entry's value per frame from the stored track: ``clamp(offset + sum(w * source))``;
    None where a source is missing (the bake skips those)."""
    expr, pose = np.array(track["expression"]), np.array(track["pose"])
    value = np.full(len(expr), float(entry.get("offset", 0.0)))
    for s in entry["sources"]:
        if "pose" in s:
            if s["pose"] not in track["joint_names"]:
                return None
            v = pose[:, track["joint_names"].index(s["pose"]), "xyz".index(s["axis"])]
        else:
            if s["expr"] not in track["expression_names"]:
                return None
            v = expr[:, track["expression_names"].index(s["expr"])]
        value += float(s.get("weight", 1.0)) * v
    return np.clip(value, entry.get("min", -np.inf), entry.get("max", np.inf))


def _check_retarget(s: dict, rot, frames_expected: int) -> dict[str, np.ndarray]:
    """Check an inspected .blend holding a keyed FLAME rig and the character baked through
    ``arkit52``: the FLAME keys equal the stored track, the character's keys follow the map's
    formula frame by frame, its head bone turns by R(root) @ R(neck). Returns the ARKit values."""
    track = s["armatures"]["FLAME_rig"]["track"]
    assert track["frames"] == frames_expected and track["joint_names"] == ["root", "neck", "jaw", "eye_L", "eye_R"]
    frames = [float(track["frame_start"] + i) for i in track["indices"]]
    flame = s["meshes"]["FLAME"]["animated"]
    assert set(flame) == set(track["expression_names"]) == set(s["meshes"]["FLAME"]["shape_keys"])
    expr = np.array(track["expression"])
    for k, name in enumerate(track["expression_names"]):
        assert flame[name]["frames"] == frames and np.allclose(flame[name]["values"], expr[:, k], atol=1e-5)
    rig = s["armatures"]["FLAME_rig"]["animated"]
    assert set(rig) == FLAME_BONES and {b["keyframes"] for b in rig.values()} == {frames_expected}
    # the character: exactly the map entries whose sources the track has, each following the formula
    arkit = s["meshes"]["ARKitFace"]["animated"]
    expected = {e["target"]: _expected(e, track) for e in ARKIT_MAP["shape_keys"]}
    assert set(arkit) == {name for name, v in expected.items() if v is not None}
    for name, curve in arkit.items():
        assert curve["frames"] == frames, name
        assert np.allclose(curve["values"], expected[name], atol=1e-5), (name, curve["values"], expected[name])
    # the head bone (the map's only bone): FLAME's neck, then root, so its angle is that of R(root) @ R(neck)
    head = s["armatures"]["ARKitRig"]["animated"]
    assert set(head) == {"head"} and head["head"]["keyframes"] == frames_expected
    pose = np.array(track["pose"])
    r = rot.axis_angle_to_matrix(pose[:, 0]) @ rot.axis_angle_to_matrix(pose[:, 1])
    want = np.degrees(np.linalg.norm(rot.matrix_to_axis_angle(r), axis=-1))
    assert np.allclose(head["head"]["angles_deg"], want, atol=0.02)
    return {name: np.array(curve["values"]) for name, curve in arkit.items()}


def _keyed_flame_rig(ext, scene, frames: int, start: int):
    """A FLAME rig keyed with a known, lively track of ``frames`` frames from scene frame ``start``."""
    import rigs

    mesh, arm = ext("rig").build_flame_rig(ext("rigdata").rig_from_dict(rigs.rig_dict()), collection=scene.collection)
    expr, pose = rigs.track_arrays(frames, len(rigs.EXPRESSION_NAMES), seed=3)
    track = ext("track").Track(expression=expr, pose=pose, cam_rot=np.zeros((frames, 3)),
                               cam_t=np.zeros((frames, 3)), focal=np.ones(frames), indices=np.arange(frames),
                               expression_names=list(rigs.EXPRESSION_NAMES))
    ext("bake").key_flame_rig(mesh, arm, track, frame_start=start)
    ext("rig").store_track(arm, track, start)
    return mesh, arm, track


def test_arkit_map_on_the_character_follows_the_formula(scene_file, ext, clean, tmp_path):
    """A known, lively track (values beyond the clamps, joints up to ~0.4 rad) keyed on a FLAME rig,
    baked onto the character by the add-on, saved, and read back by the inspector."""
    import bpy

    with bpy.data.libraries.load(str(scene_file)) as (src, dst):
        dst.objects = ["ARKitFace", "ARKitRig"]
    for o in dst.objects:
        clean.collection.objects.link(o)
    t = 12
    _keyed_flame_rig(ext, clean, t, 3)
    rep = ext("controller").bake_retarget(clean, "builtin:arkit52", dst.objects)
    assert rep.bones == 1 and rep.shape_keys > 10
    path = tmp_path / "baked.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
    values = _check_retarget(_inspect(path, "--values"), ext("rotations"), t)
    # the track is lively enough for the formula check to mean something
    assert np.ptp(values["eyeBlinkLeft"]) > 0.2 and np.ptp(values["jawOpen"]) > 0.2
    assert values["mouthSmileRight"].max() == pytest.approx(1.0) and values["cheekPuff"].min() == 0.0
    assert np.ptp(np.array(_inspect(path)["armatures"]["ARKitRig"]["animated"]["head"]["rotation_deg"])) > 5


def test_batch_retargets_the_received_track_onto_the_character(backend, pkg, scene_file, ext, tmp_path):
    """The real headless batch against the real backend: reconstruct, animate, key the FLAME rig, bake
    ``arkit52`` onto ARKitFace + ARKitRig, save; the saved file checked with the inspector."""
    portraits = []
    for i in range(2):
        p = tmp_path / f"portrait{i}.png"
        p.write_bytes(pngs.png_bytes(pngs.face_image(i, 96)))
        portraits.append(p)
    driver = pngs.write_sequence(tmp_path / "driver", 5, size=80)
    out = tmp_path / "out"
    batch = Path(importlib.import_module(pkg).__file__).parent / "batch.py"
    r = _run(batch, ["--portraits", *portraits, "--driver", driver[0].parent, "--out", out, "--backend", backend,
                     "--scene", scene_file, "--no-crop", "--retarget", "arkit52", "--target", "ARKitFace", "ARKitRig",
                     "--run-name", "demo"])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["frames"] == 5 and summary["retarget"]["bones"] == 1
    s = _inspect(out / "demo.blend", "--values")
    types = {o["name"]: o["type"] for o in s["objects"]}
    assert {"FLAME", "FLAME_rig", "ARKitFace", "ARKitRig", "Camera"} <= set(types)
    assert [(p["name"], p["parent"], p["frame_duration"]) for p in s["planes"]] == [("demo Frames", "Camera", 5)]
    values = _check_retarget(s, ext("rotations"), 5)
    skipped = set(ARKIT_MAP_TARGETS) - set(values)
    assert all(any(f"'{name}'" in line for line in summary["retarget"]["skipped"]) for name in skipped)


def test_bake_keeps_the_artists_animation_outside_the_baked_range(scene_file, ext, clean, tmp_path):
    """The user's case (data/user_keyed_scene.py): the character already has a 150-frame head nod, two
    blinks, a tongueOut key and a neck key. Baking ``arkit52`` over frames 1-12 replaces keys only in
    1-12, in the artist's own actions; everything else survives, and the report says where it wrote."""
    import bpy

    keyed = tmp_path / "keyed.blend"
    r = _run(Path(__file__).parent / "data" / "user_keyed_scene.py", [scene_file, keyed], timeout=120)
    assert r.returncode == 0 and keyed.is_file(), r.stderr[-2000:]
    with bpy.data.libraries.load(str(keyed)) as (src, dst):
        dst.objects = ["ARKitFace", "ARKitRig"]
    for o in dst.objects:
        clean.collection.objects.link(o)
    clean.frame_start, clean.frame_end = 1, 150
    face, rig = dst.objects
    anim = ext("anim")
    head_path = next(fc.data_path for fc in anim.find_fcurves(rig) if fc.data_path.startswith('pose.bones["head"]'))
    before = {(fc.data_path, fc.array_index): anim.read_curve(rig, fc.data_path, fc.array_index)
              for fc in anim.find_fcurves(rig)}
    before.update({(fc.data_path, fc.array_index): anim.read_curve(face.data.shape_keys, fc.data_path)
                   for fc in anim.find_fcurves(face.data.shape_keys)})
    actions = (rig.animation_data.action.name, face.data.shape_keys.animation_data.action.name)
    assert before[(head_path, 0)][0].tolist() == [1, 50, 100, 150]

    _keyed_flame_rig(ext, clean, 12, 1)
    rep = ext("controller").bake_retarget(clean, "builtin:arkit52", [face, rig])

    # the artist's actions are still the ones assigned, and they hold the baked keys
    assert (rig.animation_data.action.name, face.data.shape_keys.animation_data.action.name) == actions
    for key, (frames, values) in before.items():
        data = rig if key[0].startswith("pose.") else face.data.shape_keys
        now_f, now_v = anim.read_curve(data, *key)
        outside = frames > 12
        # every key outside 1..12 is there with its value
        for f, v in zip(frames[outside], values[outside]):
            hit = np.flatnonzero(np.isclose(now_f, f))
            assert len(hit) == 1 and now_v[hit[0]] == pytest.approx(v), (key, f)
        if key[0].startswith('pose.bones["head"]') or key[0] == 'key_blocks["eyeBlinkLeft"].value':
            # baked channels: frames 1..12 hold the track, then the artist's keys
            assert now_f.tolist() == list(range(1, 13)) + frames[outside].tolist(), key
        else:   # channels the map does not touch are unchanged
            assert now_f.tolist() == frames.tolist() and np.allclose(now_v, values), key
    assert anim.read_curve(face.data.shape_keys, 'key_blocks["tongueOut"].value')[0].tolist() == [140]
    assert (clean.frame_start, clean.frame_end) == (1, 150)
    # the report says what was written where, and what was kept
    text = rep.summary()
    assert f"action '{actions[0]}'" in text and f"action '{actions[1]}'" in text and "frames 1-12" in text
    rig_written = next(w for w in rep.written if w.target == "ARKitRig")
    assert rig_written.kept >= 3 and rig_written.replaced >= 1 and not rig_written.created
