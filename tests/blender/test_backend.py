"""Against a real backend subprocess (model engine, CPU, from the main venv), through the add-on's
own code: reconstruct, animate into the scene (scene camera and driver camera), keys equal to the
received track, cancel, a backend that is absent / dies / returns, and the headless batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pngs
import pytest
from conftest import backend_python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def avatar(backend, ext, tmp_path_factory):
    ctl = ext("controller")
    d = tmp_path_factory.mktemp("portraits")
    paths = []
    for i in range(2):
        p = d / f"portrait{i}.png"
        p.write_bytes(pngs.png_bytes(pngs.face_image(i, 96)))
        paths.append(str(p))
    job = ctl.reconstruct(paths, name="test", crop=False)
    ctl.wait(job, 300)
    assert job.state == "done" and len(job.result["avatar"]) == 16
    return job.result["avatar"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> list[Path]:
    return pngs.write_sequence(tmp_path_factory.mktemp("driver"), 8, size=80)


def _tap(job) -> list[dict]:
    seen: list[dict] = []
    inner = job.on_event
    job.on_event = lambda j, ev: (seen.append(ev), inner(j, ev))
    return seen


def _camera(scene, animated: bool):
    import bpy

    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.rotation_euler = (np.pi / 2, 0, 0)
    cam.location = (0, -0.7, 0.02)
    if animated:
        cam.keyframe_insert("location", frame=scene.frame_start)
        cam.location = (0.1, -0.6, 0.05)
        cam.keyframe_insert("location", frame=scene.frame_start + 7)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
    return cam


def test_animate_from_the_scene_camera(backend, avatar, driver, ext, clean):
    import bpy

    ctl = ext("controller")
    clean.frame_start = 10
    cam = _camera(clean, animated=True)
    cams = ext("scene").camera_params(clean, cam, [10, 13, 17])
    assert len(cams) == 3 and not np.allclose(cams[0]["matrix_world"], cams[2]["matrix_world"])
    clean.frame_set(13)
    assert np.allclose(cams[1]["matrix_world"], np.array(cam.matrix_world), atol=1e-6)
    run = ctl.animate(clean, avatar, str(driver[0]), camera_mode="SCENE", use_vse=True, crop=False, name="Scene Run")
    seen = _tap(run.job)
    ctl.wait(run.job, 300)
    frames = [e for e in seen if e["event"] == "frame"]
    assert run.job.state == "done" and run.job.result["frames"] == 8 and len(frames) == 8
    assert {(e["width"], e["height"]) for e in frames} == {(64, 48)}     # rendered by the scene camera
    # every frame on disk, numbered by scene frame, byte-identical to what came over the wire
    for e in frames:
        path = run.writer.folder / f"scene_run_{10 + e['index']:06d}.png"
        assert path.read_bytes() == e["image"]
    assert sorted(run.writer.written) == list(range(8))
    # the image sequence on the camera plane, aligned to the scene's frames; the VSE strip
    plane = bpy.data.objects["Scene Run Frames"]
    assert plane.parent == cam
    tex = plane.active_material.node_tree.nodes["FFAvatar Frames"]
    assert tex.image.source == "SEQUENCE" and Path(tex.image.filepath) == run.writer.written[0]
    u = tex.image_user
    assert (u.frame_start, u.frame_offset, u.frame_duration) == (10, 9, 8)
    assert ext("scene").strip_elements(clean, "Scene Run") == [f"scene_run_{f:06d}.png" for f in range(10, 18)]
    # the FLAME rig's keys equal the received track
    mesh, arm = ctl.scene_rig(clean)
    anim, rot, kf = ext("anim"), ext("rotations"), ext("keyframes")
    bases = ext("rig").bone_bases(arm)
    expr = np.array([e["params"]["expression"] for e in sorted(frames, key=lambda e: e["index"])])
    pose = np.array([e["params"]["pose"] for e in sorted(frames, key=lambda e: e["index"])])
    names = [kb.name for kb in mesh.data.shape_keys.key_blocks[1:]]
    assert len(names) == expr.shape[1] == backend_info(ctl)["n_expressions"]
    for k in (0, 5, len(names) - 1):
        f, v = anim.read_curve(mesh.data.shape_keys, f'key_blocks["{names[k]}"].value')
        assert np.allclose(f, np.arange(10, 18)) and np.allclose(v, expr[:, k], atol=1e-6)
    for j, bone in enumerate(["root", "neck", "jaw", "eye_L", "eye_R"]):
        q = np.stack([anim.read_curve(arm, f'pose.bones["{bone}"].rotation_quaternion', i)[1] for i in range(4)], 1)
        want = rot.axis_angle_to_quaternion(kf.pose_to_bone_local(pose[:, j], bases[bone]))
        assert np.allclose(np.abs(np.sum(q * want, 1)), 1, atol=1e-5), bone
    track, start = ext("rig").load_track(arm)
    assert start == 10 and np.allclose(track.expression, expr)


def backend_info(ctl) -> dict:
    return ctl.session().link.info


def test_animate_from_the_driver_camera(backend, avatar, driver, ext, clean):
    import bpy

    ctl = ext("controller")
    run = ctl.animate(clean, avatar, str(driver[0]), first=2, count=4, camera_mode="DRIVER", size=48, crop=False,
                      name="Drv", fmt="jpeg")
    seen = _tap(run.job)
    ctl.wait(run.job, 300)
    frames = sorted((e for e in seen if e["event"] == "frame"), key=lambda e: e["index"])
    assert len(frames) == 4 and {(e["width"], e["height"]) for e in frames} == {(48, 48)}
    assert sorted(p.name for p in run.writer.written.values()) == [f"drv_{f:06d}.jpg" for f in range(1, 5)]
    cam = bpy.data.objects["FFAvatar Driver Camera"]
    cams = ext("cameras")
    p = frames[2]["params"]
    clean.frame_set(3)
    want = cams.driver_camera_matrices(np.array([p["cam_rot"]]), np.array([p["cam_t"]]))[0]
    assert np.allclose(np.array(cam.matrix_world), want, atol=1e-5)
    assert cam.data.lens == pytest.approx(p["focal"] * 36.0, rel=1e-5)
    assert bpy.data.objects["Drv Frames"].parent == cam


def test_cancel_stops_a_running_job(backend, avatar, ext, clean, tmp_path):
    ctl = ext("controller")
    seq = pngs.write_sequence(tmp_path / "long", 60, size=64)
    _camera(clean, animated=False)
    run = ctl.animate(clean, avatar, str(seq[0]), crop=False, name="Cancel", key_rig=False)
    s = ctl.session()
    deadline = time.monotonic() + 120
    while run.job.frames < 1 and run.job.active and time.monotonic() < deadline:
        for ev in s.link.wait_events(0.1):
            s.dispatch(ev)
    s.cancel(run.job)
    with pytest.raises(ext("session").JobFailed) as err:
        ctl.wait(run.job, 60)
    assert err.value.code == "cancelled" and run.job.state == "cancelled"
    assert 1 <= run.writer.count < 60
    # the backend is free again: a control op answers at once
    assert "avatars" in s.call("list_avatars", 10)


def test_absent_dying_and_returning_backend(ext, tmp_path):
    link_mod, session_mod = ext("link"), ext("session")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    link = link_mod.Link(address, timeout=1.5, heartbeat=0.3).start()
    s = session_mod.Session(link)
    try:
        assert not link.wait_online(2.5)
        assert link.state == "offline" and address in link.error
        job = s.start("list_avatars")
        with pytest.raises(session_mod.JobFailed, match="not reachable"):
            s.wait(job, 5)
        assert job.error_code == "disconnected"
        proc = ext("process").BackendProcess(
            [backend_python(), "-m", "ffavatar_backend", "serve", "--engine", "synthetic", "--store", str(tmp_path)],
            bind=address, log_path=tmp_path / "backend.log").start()
        try:
            proc.wait_listening(60)
            assert link.wait_online(15), link.error                 # found again without a new Link
            assert s.call("list_avatars", 10)["avatars"] == []
            slow = s.start("reconstruct", images=[pngs.png_bytes(pngs.face_image(1))], personalize_steps=10_000,
                           crop=False)
            proc.stop()                                              # dies under a running job
            with pytest.raises(session_mod.JobFailed) as err:
                s.wait(slow, 30)
            assert err.value.code == "disconnected" and "lost the backend" in slow.error
            assert link.state == "offline"
        finally:
            proc.stop()
    finally:
        link.stop()


def _batch(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    import bpy

    script = Path(bpy.utils.extension_path_user("bl_ext.user_default.ffavatar")).parents[2] / "user_default" / \
        "ffavatar" / "batch.py"
    return subprocess.run([sys.executable, str(script), "--", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_batch_writes_frames_and_a_keyed_blend(backend, avatar, driver, ext, tmp_path):
    import bpy

    # a scene with a target for the retarget step
    scene_file = tmp_path / "shot.blend"
    subprocess.run([sys.executable, "-c", (
        "import bpy\n"
        "me = bpy.data.meshes.new('Face'); me.from_pydata([[0,0,0],[1,0,0],[0,1,0]], [], [[0,1,2]])\n"
        "o = bpy.data.objects.new('Face', me); bpy.context.scene.collection.objects.link(o)\n"
        "o.shape_key_add(name='Basis')\n"
        "for n in ('eyeBlinkLeft', 'mouthSmile_R', 'jawOpen'): o.shape_key_add(name=n)\n"
        f"bpy.ops.wm.save_as_mainfile(filepath={str(scene_file)!r})\n")], check=True, capture_output=True, timeout=120)
    out = tmp_path / "out"
    r = _batch(["--avatar", avatar, "--driver", str(driver[0].parent), "--count", "5", "--out", str(out),
                "--backend", backend, "--scene", str(scene_file), "--no-crop", "--retarget", "arkit52",
                "--target", "Face", "--run-name", "shot"])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["frames"] == 5 and summary["retarget"]["shape_keys"] == 3
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"shot_{f:06d}.png" for f in range(1, 6)]
    with bpy.data.libraries.load(str(out / "shot.blend")) as (src, dst):
        names = list(src.objects)
        dst.actions = list(src.actions)
    assert {"FLAME", "FLAME_rig", "Face", "shot Frames"} <= set(names)
    keyed = {a.name: a for a in dst.actions}
    assert any(n.startswith("Face") for n in keyed) and any(n.startswith("FLAME_rig") for n in keyed)
    for a in dst.actions:
        bpy.data.actions.remove(a)


def test_batch_fails_clearly(ext, tmp_path, driver):
    r = _batch(["--avatar", "0123456789abcdef", "--driver", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)])
    assert r.returncode == 2 and "driver clip" in r.stderr and "does not exist" in r.stderr
    port = _free_port()
    t = time.monotonic()
    r = _batch(["--avatar", "0123456789abcdef", "--driver", str(driver[0]), "--out", str(tmp_path / "o"),
                "--backend", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"])
    assert r.returncode == 1 and "no backend answered" in r.stderr and time.monotonic() - t < 60
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["ok"] is False


def test_personalize_and_a_movie_driver(backend, avatar, ext, clean, tmp_path):
    ctl = ext("controller")
    portrait = tmp_path / "p.png"
    portrait.write_bytes(pngs.png_bytes(pngs.face_image(0, 96)))
    job = ctl.personalize(avatar, [str(portrait)], steps=2)
    ctl.wait(job, 300)
    assert job.result["avatar"] == avatar and {"psnr_before", "psnr_after"} <= set(job.result)
    # a movie is sent whole with first/count: the backend decodes and renders only that range
    movie = tmp_path / "drv.mp4"
    subprocess.run([backend_python(), "-c", (
        "import sys, cv2, numpy as np\n"
        "w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*'mp4v'), 25, (64, 64))\n"
        "for i in range(7):\n"
        "    img = np.full((64, 64, 3), 40 + 25 * i, np.uint8); img[20:44, 16:48] = (140, 160, 200)\n"
        "    w.write(img)\n"
        "w.release()\n"), str(movie)], check=True, timeout=120)
    _camera(clean, animated=False)
    run = ctl.animate(clean, avatar, str(movie), first=2, count=3, crop=False, name="Movie", key_rig=False)
    seen = _tap(run.job)
    ctl.wait(run.job, 300)
    assert run.job.result["frames"] == 3 and len([e for e in seen if e["event"] == "frame"]) == 3
    assert sorted(run.writer.written) == [0, 1, 2]
    # numbered by the scene frame where each lands (a 25 fps movie in the 25 fps scene: 1, 2, 3)
    assert sorted(p.name for p in run.writer.written.values()) == [f"movie_{f:06d}.png" for f in (1, 2, 3)]


def test_curve_keys_from_the_preferences(ext, pkg, tmp_path):
    import bpy

    keys = tmp_path / "keys"
    subprocess.run([backend_python(), "-m", "ffavatar_backend", "keys", str(keys)], check=True, capture_output=True,
                   timeout=120)
    proc = ext("process").BackendProcess(
        [backend_python(), "-m", "ffavatar_backend", "serve", "--engine", "synthetic", "--store", str(tmp_path / "s"),
         "--curve-secret", str(keys / "server.key_secret"), "--curve-clients", str(keys / "clients")],
        bind="tcp://127.0.0.1:*", log_path=tmp_path / "log").start()
    prefs = bpy.context.preferences.addons[pkg].preferences
    link_mod = ext("link")
    try:
        endpoint = proc.wait_listening(60)
        plain = link_mod.Link(endpoint, timeout=1.0, heartbeat=0.3).start()   # no keys: never gets an answer
        assert not plain.wait_online(2.0)
        plain.stop()
        prefs.curve_server_key, prefs.curve_client_secret = str(keys / "server.key"), str(keys / "client.key_secret")
        link = link_mod.Link(endpoint, timeout=5, client_factory=ext("controller").client_factory()).start()
        try:
            assert link.wait_online(15), link.error
            assert link.info["curve"] is True
        finally:
            link.stop()
    finally:
        prefs.curve_server_key = prefs.curve_client_secret = ""
        proc.stop()


def test_start_and_stop_from_the_operators(ext, pkg, tmp_path):
    """The UI path: Start returns at once, the timer body (pump) connects when the server listens."""
    import bpy

    ctl = ext("controller")
    saved = (ctl.runtime.backend, ctl.runtime.session)
    ctl.runtime.backend = ctl.runtime.session = None          # keep the session's backend out of this
    prefs = bpy.context.preferences.addons[pkg].preferences
    old = (prefs.backend_python, prefs.backend_args, prefs.backend_address)
    try:
        prefs.backend_python = backend_python()
        prefs.backend_args = f"-m ffavatar_backend serve --engine synthetic --store {tmp_path / 'store'}"
        prefs.backend_address = f"tcp://127.0.0.1:{_free_port()}"
        assert bpy.ops.ffavatar.start_backend() == {"FINISHED"}
        proc = ctl.runtime.backend
        assert proc.alive and ctl.session() is None            # not blocked waiting for it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ctl.pump()
            if ctl.session() is not None and ctl.session().link.wait_online(0.2):
                break
        assert ctl.session().link.state == "online" and ctl.session().link.address == prefs.backend_address
        assert bpy.ops.ffavatar.stop_backend() == {"FINISHED"}
        assert not proc.alive and ctl.session() is None
        # a command that cannot listen is reported, not hung on
        prefs.backend_args = "-c 'import sys; sys.exit(3)'"
        assert bpy.ops.ffavatar.start_backend() == {"FINISHED"}
        ctl.runtime.backend.proc.wait(30)
        ctl.pump()
        level, text = ctl.runtime.messages[-1]
        assert level == "ERROR" and "exited (code 3)" in text
    finally:
        ctl.disconnect()
        ctl.stop_backend()
        prefs.backend_python, prefs.backend_args, prefs.backend_address = old
        ctl.runtime.backend, ctl.runtime.session = saved


def _movie(path: Path, frames: int, fps: float, size: int = 80) -> Path:
    """An mp4 of ``frames`` test faces written by OpenCV in the backend's venv."""
    arr = path.with_suffix(".npy")
    np.save(arr, np.stack([pngs.face_image(i % 3, size) for i in range(frames)]))
    subprocess.run([backend_python(), "-c", (
        "import sys, cv2, numpy as np\n"
        "a = np.load(sys.argv[1])\n"
        "w = cv2.VideoWriter(sys.argv[2], cv2.VideoWriter_fourcc(*'mp4v'), float(sys.argv[3]), a.shape[2:0:-1])\n"
        "[w.write(np.ascontiguousarray(f[..., ::-1])) for f in a]\n"
        "w.release()\n"), str(arr), str(path), str(fps)], check=True, timeout=120)
    return path


def _alpha_centroid_x(path: Path) -> float:
    import bpy

    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    a = px.reshape(h, w, 4)[..., 3]
    return float((a.sum(0) * np.arange(w)).sum() / a.sum())


def test_animated_camera_offset_movie_and_timing(backend, avatar, ext, clean, tmp_path):
    """The user's case: a movie driver with a first-frame offset under an animated scene camera. Each
    frame is rendered from the camera at its own scene frame (the avatar follows the rig's projection
    as the camera pans), only the asked range is decoded, and a 12 fps clip in a 24 fps scene keeps
    its timing: driver frame i at scene frame 10 + 2 i, held over the frame between."""
    import bpy
    from bpy_extras.object_utils import world_to_camera_view

    ctl, scn = ext("controller"), ext("scene")
    clean.frame_start, clean.frame_end = 10, 12
    clean.render.fps, clean.render.fps_base = 24, 1.0
    cam = _camera(clean, animated=False)
    cam.location = (-0.12, -0.7, 0.02)
    cam.keyframe_insert("location", frame=10)
    cam.location = (0.12, -0.7, 0.02)
    cam.keyframe_insert("location", frame=16)
    for fc in ext("anim").find_fcurves(cam):
        for k in fc.keyframe_points:
            k.interpolation = "LINEAR"
    movie = _movie(tmp_path / "clip.mp4", 8, 12.0)
    assert scn.movie_info(movie) == (12.0, 8) and not bpy.data.movieclips
    run = ctl.animate(clean, avatar, str(movie), first=2, count=4, camera_mode="SCENE", alpha=True, fmt="png",
                      crop=False, name="Pan")
    seen = _tap(run.job)
    ctl.wait(run.job, 300)
    frames = sorted((e for e in seen if e["event"] == "frame"), key=lambda e: e["index"])
    # only frames 2..5 of the movie were decoded and rendered
    assert run.job.state == "done" and run.job.result["frames"] == 4 and [e["index"] for e in frames] == [0, 1, 2, 3]
    # timing: driver frame i starts at scene frame 10 + 2 i and is held over the next scene frame
    assert sorted(run.writer.files) == list(range(10, 18))
    for i in range(4):
        assert run.writer.files[10 + 2 * i].read_bytes() == run.writer.files[11 + 2 * i].read_bytes() == frames[i]["image"]
    mesh, arm = ctl.scene_rig(clean)
    f, _ = ext("anim").read_curve(mesh.data.shape_keys, f'key_blocks["{mesh.data.shape_keys.key_blocks[1].name}"].value')
    assert f.tolist() == [10, 12, 14, 16]
    assert any(t.startswith("FLAME rig: ") and "frames 10-16, in" in t for _, t in ctl.runtime.messages)
    assert clean.frame_end == 17 and any("scene end frame extended from 12 to 17" in t for _, t in ctl.runtime.messages)
    # the camera at each of those frames: the avatar moves with the rig's projection
    n = len(mesh.data.vertices)
    co = np.empty(3 * n, dtype=np.float32)
    mesh.data.vertices.foreach_get("co", co)
    m = np.array(mesh.matrix_world)
    centre = co.reshape(n, 3).mean(0) @ m[:3, :3].T + m[:3, 3]
    from mathutils import Vector

    rig_x, avatar_x = [], []
    for i, e in enumerate(frames):
        clean.frame_set(10 + 2 * i)
        rig_x.append(world_to_camera_view(clean, cam, Vector(centre)).x * e["width"])
        avatar_x.append(_alpha_centroid_x(run.writer.written[i]))
    rig_x, avatar_x = np.array(rig_x), np.array(avatar_x)
    assert np.ptp(rig_x) > 15, rig_x                     # the pan moves the head across the frame
    assert np.ptp(avatar_x - rig_x) < 4.0, (avatar_x, rig_x)   # vs the 33 px the rig moves
    assert np.abs(avatar_x - rig_x).max() < 6.0, (avatar_x, rig_x)


def test_camera_settings_that_cannot_be_reproduced(ext, clean):
    scn = ext("scene")
    cam = _camera(clean, animated=False)
    clean.render.pixel_aspect_x = 2.0
    with pytest.raises(scn.SceneError, match="pixel aspect"):
        scn.camera_params(clean, cam, [1, 2])
    clean.render.pixel_aspect_x = 1.0
    cam.data.dof.use_dof = True
    cam.data.clip_start = 2.0
    warnings = scn.camera_warnings(clean, cam)
    assert any("depth of field" in w for w in warnings) and any("clip range" in w for w in warnings)
    cam.data.type = "ORTHO"
    with pytest.raises(scn.SceneError, match="perspective"):
        scn.camera_params(clean, cam, [1])


def test_cameras_bound_to_markers_switch_per_frame(ext, clean):
    import bpy

    scn = ext("scene")
    a = _camera(clean, animated=False)
    b = bpy.data.objects.new("CamB", bpy.data.cameras.new("CamB"))
    clean.collection.objects.link(b)
    b.location, b.rotation_euler = (0.3, -0.7, 0.0), (np.pi / 2, 0, 0)
    b.data.lens = 85.0
    clean.timeline_markers.new("A", frame=1).camera = a
    clean.timeline_markers.new("B", frame=3).camera = b
    cams = scn.camera_params(clean, a, [1, 2, 3, 4])
    assert [c["lens"] for c in cams] == [50.0, 50.0, 85.0, 85.0]
    assert np.allclose(np.array(cams[3]["matrix_world"])[:3, 3], (0.3, -0.7, 0.0), atol=1e-6)


def test_a_bad_frame_is_named_by_its_file(backend, avatar, ext, clean, tmp_path):
    ctl = ext("controller")
    _camera(clean, animated=False)
    folder = tmp_path / "take"
    folder.mkdir()
    for i in (1, 3, 10):
        (folder / f"frame_{i}.png").write_bytes(pngs.png_bytes(pngs.face_image(i, 48)))
    (folder / "frame_2.png").write_bytes(b"not a png")        # the 2nd frame in natural order
    run = ctl.animate(clean, avatar, str(folder), crop=False, name="Bad", key_rig=False)
    with pytest.raises(ext("session").JobFailed) as e:
        ctl.wait(run.job, 300)
    assert "driver frame 1 (frame_2.png)" in str(e.value) and e.value.code == "image_decode"
