"""The add-on's bpy-free logic (rotations, names, maps, NNLS, keyframe arrays, tracks, clips, frames,
batch arguments), imported from the installed extension; rotations are checked against mathutils."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_rotations_match_mathutils(ext):
    import mathutils

    rot = ext("rotations")
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(20, 3))
    m = rot.axis_angle_to_matrix(aa)
    for i in range(len(aa)):
        angle = float(np.linalg.norm(aa[i]))
        ref = np.array(mathutils.Matrix.Rotation(angle, 3, mathutils.Vector(aa[i] / angle)))
        assert np.allclose(m[i], ref, atol=1e-6)
        q = rot.axis_angle_to_quaternion(aa[i])
        qref = np.array(mathutils.Matrix(m[i].tolist()).to_quaternion())
        assert np.allclose(q, qref * np.sign(qref[0]), atol=1e-6)
        for order in rot.EULER_ORDERS:
            e = rot.matrix_to_euler(m[i], order)
            back = np.array(mathutils.Euler(e.tolist(), order).to_matrix())
            assert np.allclose(back, m[i], atol=1e-6), order
    # round trip for angles in [0, pi)
    small = aa / np.linalg.norm(aa, axis=1, keepdims=True) * rng.uniform(0, 3.0, (20, 1))
    assert np.allclose(rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(small)), small, atol=1e-9)
    # our world -> Blender: +Y up becomes +Z, the face direction +Z becomes -Y
    assert np.allclose(rot.to_blender([[0, 1, 0], [0, 0, 1]]), [[0, 0, 1], [0, -1, 0]])


def test_quaternion_channels_are_continuous(ext):
    rot = ext("rotations")
    angles = np.linspace(0, 2 * np.pi * 0.99, 50)   # passes through pi: the sign of w would flip
    aa = np.stack([angles, np.zeros(50), np.zeros(50)], 1)
    prop, q = rot.axis_angle_to_channels(aa, "QUATERNION")
    assert prop == "rotation_quaternion"
    assert (np.sum(q[1:] * q[:-1], axis=1) > 0).all()
    prop, e = rot.axis_angle_to_channels(aa, "XYZ")
    assert prop == "rotation_euler" and np.abs(np.diff(e[:, 0])).max() < 0.2


def test_names_match_fuzzily(ext):
    names = ext("names")
    keys = ["MouthSmileLeft", "MouthSmileRight", "eyeBlink_L", "jawOpen", "CC_Base:bs_Brow_Raise_Left"]
    assert names.match("mouthSmile_L", keys) == "MouthSmileLeft"
    assert names.match("mouthSmileRight", keys) == "MouthSmileRight"
    assert names.match("eyeBlinkLeft", keys) == "eyeBlink_L"
    assert names.match("JawOpen", keys) == "jawOpen"
    assert names.match("brow_raise_L", keys) == "CC_Base:bs_Brow_Raise_Left"
    assert names.match("eyeBlinkRight", keys) is None
    assert names.match("smile_L", ["smile_L", "Smile.L"]) == "smile_L"     # exact wins
    assert names.match("mouthSmile", ["mouthSmile_L", "mouthSmile_R"]) is None


def test_retarget_evaluate_follows_the_map(ext):
    rt = ext("retarget")
    mapping = rt.validate({"format": "ffavatar-retarget", "version": 1, "shape_keys": [
        {"target": "mouthSmileLeft", "sources": [{"expr": "smile_L", "weight": 2.0}], "min": 0.0, "max": 1.0},
        {"target": "jawOpen", "sources": [{"pose": "jaw", "axis": "x", "weight": 2.5}], "min": 0.0, "max": 1.0},
        {"target": "mixed", "sources": [{"expr_index": 1, "weight": 0.5}, {"expr": "blink_L", "weight": -1.0}],
         "offset": 0.1},
        {"target": "absent", "sources": [{"expr": "smile_L"}]},
    ], "bones": [{"target": "head", "source": "neck", "space": "local", "axes": ["-x", "z", "y"], "scale": 2.0}]})
    rng = np.random.default_rng(0)
    expr, pose = rng.normal(size=(7, 3)), rng.normal(size=(7, 5, 3)) * 0.3
    res = rt.evaluate(mapping, expr, pose, ["smile_L", "smile_R", "blink_L"],
                      ["root", "neck", "jaw", "eye_L", "eye_R"], shape_keys=["MouthSmile_L", "jawOpen", "mixed"],
                      bones={"Head": np.eye(3)})
    assert np.allclose(res.shape_keys["MouthSmile_L"], np.clip(2 * expr[:, 0], 0, 1))
    assert np.allclose(res.shape_keys["jawOpen"], np.clip(2.5 * pose[:, 2, 0], 0, 1))
    assert np.allclose(res.shape_keys["mixed"], 0.1 + 0.5 * expr[:, 1] - expr[:, 2])
    want = 2 * np.stack([-pose[:, 1, 0], pose[:, 1, 2], pose[:, 1, 1]], 1)
    assert np.allclose(res.bones["Head"], want, atol=1e-9)
    assert any("absent" in s for s in res.skipped)


@pytest.mark.parametrize("bad, words", [
    ({"format": "other"}, "not a retarget map"),
    ({"format": "ffavatar-retarget", "shape_keys": [{"target": "a", "sources": []}]}, "non-empty"),
    ({"format": "ffavatar-retarget", "shape_keys": [{"target": "a", "sources": [{"pose": "jaw"}]}]}, "axis"),
    ({"format": "ffavatar-retarget", "shape_keys": [{"target": "a", "sources": [{"expr": "x"}], "min": 1, "max": 0}]},
     "min"),
    ({"format": "ffavatar-retarget", "bones": [{"target": "a", "source": "jaw", "axes": ["x", "q", "z"]}]}, "axis"),
    ({"format": "ffavatar-retarget", "shape_keys": [{"target": "a", "sources": [{"expr": "x"}]},
                                                    {"target": "a", "sources": [{"expr": "y"}]}]}, "twice"),
])
def test_bad_maps_are_refused_with_a_reason(ext, bad, words, tmp_path):
    rt = ext("retarget")
    with pytest.raises(rt.MappingError, match=words):
        rt.validate(bad)
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(rt.MappingError, match="not valid JSON"):
        rt.load(p)


def test_builtin_maps_load(ext):
    rt = ext("retarget")
    maps = rt.builtin_maps()
    assert set(maps) >= {"flame", "arkit52", "rigify_face"}
    arkit = rt.load(maps["arkit52"])
    assert len(arkit["shape_keys"]) == 52 and len({e["target"] for e in arkit["shape_keys"]}) == 52
    for m in maps.values():
        rt.validate(json.loads(m.read_text()))


def test_nnls_matches_brute_force(ext):
    nn = ext("nnls")
    rng = np.random.default_rng(3)
    import itertools

    for _ in range(30):
        m, k = rng.integers(4, 12), rng.integers(1, 6)
        a, b = rng.normal(size=(m, k)), rng.normal(size=m)
        best = np.inf
        for mask in itertools.product([0, 1], repeat=k):   # exhaustive: LS on every support, keep feasible
            idx = np.flatnonzero(mask)
            x = np.zeros(k)
            if len(idx):
                x[idx] = np.linalg.lstsq(a[:, idx], b, rcond=None)[0]
            if (x >= -1e-12).all():
                best = min(best, np.linalg.norm(a @ np.clip(x, 0, None) - b))
        x = nn.nnls(a, b)
        assert (x >= 0).all()
        assert np.linalg.norm(a @ x - b) <= best + 1e-9
    a = rng.normal(size=(40, 8))
    x_true = np.abs(rng.normal(size=(8, 25))) * (rng.random((8, 25)) > 0.4)
    assert np.allclose(nn.nnls_batch(a, a @ x_true), x_true.T, atol=1e-9)


def test_keyframe_arrays(ext):
    kf = ext("keyframes")
    frames = kf.frame_numbers(4, start=10)
    curves = kf.shape_key_curves(np.arange(8.0).reshape(4, 2), ["a", 'q"x'], frames, available={"a", 'q"x'})
    assert curves[0].data_path == 'key_blocks["a"].value'
    assert curves[1].data_path == 'key_blocks["q\\"x"].value'
    assert np.allclose(curves[1].co(), [10, 1, 11, 3, 12, 5, 13, 7])
    bones = kf.bone_rotation_curves("jaw", np.zeros((4, 3)), "QUATERNION", frames)
    assert [c.index for c in bones] == [0, 1, 2, 3] and np.allclose(bones[0].values, 1.0)
    # a rotation about world X seen by a bone whose rest maps local Y to world X
    basis = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])   # columns: the bone's axes in world
    local = kf.pose_to_bone_local(np.array([[0.3, 0, 0]]), basis)
    assert np.allclose(local, [[0, 0.3, 0]])


def test_track_buffer_and_runs(ext):
    tr = ext("track")
    buf = tr.TrackBuffer()
    for i in (2, 0, 1, 5):
        buf.add(i, {"expression": [i, -i], "pose": [[i, 0, 0]] * 5, "cam_rot": [0, 0, i], "cam_t": [0, 0, 1],
                    "focal": 1.5})
    t = buf.to_track(expression_names=["a"])
    assert t.indices.tolist() == [0, 1, 2, 5] and t.expression[:, 0].tolist() == [0, 1, 2, 5]
    assert t.expression_names == ["a", "expr_001"] and t.pose.shape == (4, 5, 3) and np.allclose(t.focal, 1.5)
    assert tr.contiguous_runs(t.indices) == [(0, 2), (5, 5)]
    with pytest.raises(ValueError, match="expression"):
        buf.add(9, {"pose": []})


def test_driver_clips_and_frame_files(ext, tmp_path):
    import pngs

    drv = ext("driver")
    files = pngs.write_sequence(tmp_path / "seq", 12)
    (tmp_path / "seq" / "notes.txt").write_text("x")
    clip = drv.resolve(files[3])
    assert clip.kind == "images" and clip.frame_count == 12 and clip.paths[0] == files[0]
    assert drv.resolve(tmp_path / "seq").paths == files
    sub = clip.select(2, 5)
    assert sub.paths == files[2:7]
    assert [len(c) for c in sub.chunks(2)] == [2, 2, 1]
    assert next(sub.chunks(1))[0] == files[2].read_bytes()
    movie = tmp_path / "clip.mp4"
    movie.write_bytes(b"\0")
    assert drv.resolve(movie).kind == "video" and drv.resolve(movie).frame_count is None
    with pytest.raises(drv.DriverError, match="does not exist"):
        drv.resolve(tmp_path / "missing.mp4")
    with pytest.raises(drv.DriverError, match="outside"):
        clip.select(40)

    fr = ext("frames")
    w = fr.FrameWriter(tmp_path / "out", prefix="run", frame_start=101)
    p = w.write({"index": 3, "format": "png", "image": b"abc", "width": 8, "height": 6})
    assert p.name == "run_000104.png" and p.read_bytes() == b"abc" and w.size == (8, 6)
    assert w.missing(5) == [0, 1, 2, 4]


def test_batch_arguments(ext, tmp_path):
    ba = ext("batchargs")
    drv = tmp_path / "d.mp4"
    drv.write_bytes(b"x")
    args = ba.parse(["--avatar", "0123456789abcdef", "--driver", str(drv), "--out", str(tmp_path / "o"),
                     "--camera", "driver", "--retarget", "arkit52", "--target", "Face", "Body"])
    assert args.camera == "driver" and args.target == ["Face", "Body"] and ba.map_key(args.retarget) == "builtin:arkit52"
    assert ba.map_key("maps/mine.json") == "maps/mine.json"
    assert ba.user_argv(["blender", "-b", "-P", "x.py", "--", "--out", "o"]) == ["--out", "o"]
    with pytest.raises(ba.BatchError, match="driver clip .* does not exist"):
        ba.parse(["--avatar", "a", "--driver", str(tmp_path / "nope.mp4"), "--out", "o"])
    with pytest.raises(ba.BatchError, match="--retarget needs --target"):
        ba.parse(["--avatar", "a", "--driver", str(drv), "--out", "o", "--retarget", "arkit52"])
    with pytest.raises(SystemExit):
        ba.parse(["--driver", str(drv), "--out", "o"])   # neither --portraits nor --avatar


def test_driver_camera_math(ext):
    cams = ext("cameras")
    rot = ext("rotations")
    # identity rotation, camera 0.5 m in front of the face: viewmat = [diag(1,-1,-1) | (0,0,0.5)]
    m = cams.driver_camera_matrices(np.zeros((1, 3)), np.array([[0, 0, 0.5]]))[0]
    # camera centre in our world is +0.5 z (in front of the face) -> Blender (0, -0.5, 0)
    assert np.allclose(m[:3, 3], [0, -0.5, 0])
    # it looks at the face: its -Z axis points toward the origin (+Y in Blender)
    assert np.allclose(m[:3, :3] @ [0, 0, -1], [0, 1, 0])
    assert np.allclose(m[:3, :3] @ [0, 1, 0], [0, 0, 1])        # and its up is Blender's up
    assert np.allclose(cams.driver_lens([1.5]), [54.0])
    c = cams.frame_corners(50.0, 200, 100, 2.0)
    assert np.allclose(c[2] - c[0], [2 * 36 / 50, 36 / 50, 0])   # horizontal fit: width = d * sensor / lens
    assert rot.OURS_TO_BLENDER.shape == (3, 3)
