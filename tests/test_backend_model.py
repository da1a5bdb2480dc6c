"""The backend end to end with the real model (untrained tiny model on the demo head, CPU):
reconstruct, animate from a frames list and from video bytes, tracks, Blender cameras, cancel, rig,
ping latency while the model works, and a kill -9 in the middle of a reconstruction."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from ffavatar_backend.client import BackendError, Client, as_numpy
from ffavatar_backend.launcher import ServerProcess

ARGS = ["--engine", "model", "--device", "cpu", "--log-level", "WARNING"]


def portrait(seed: int, size: int = 160) -> bytes:
    """A drawn face (skin ellipse, hair, eyes, mouth) on a plain background, PNG-encoded."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(180, 240, 3), np.uint8)
    c = (size // 2 + int(rng.integers(-6, 7)), size // 2 + int(rng.integers(-6, 7)))
    skin = tuple(int(v) for v in rng.integers(90, 220, 3))
    cv2.ellipse(img, (c[0], c[1] - size // 8), (size // 3, size // 4), 0, 180, 360, (40, 30, 20), -1)
    cv2.ellipse(img, c, (size // 4, size // 3), 0, 0, 360, skin, -1, cv2.LINE_AA)
    for e in (-1, 1):
        cv2.circle(img, (c[0] + e * size // 10, c[1] - size // 14), size // 30, (30, 30, 30), -1)
    cv2.ellipse(img, (c[0], c[1] + size // 7), (size // 12, size // 40 + int(rng.integers(1, 5))), 0, 0, 360,
                (60, 40, 150), -1)
    return cv2.imencode(".png", img[..., ::-1])[1].tobytes()


def start(store) -> tuple[ServerProcess, Client]:
    srv = ServerProcess([*ARGS, "--store", str(store)], timeout=120)
    c = Client(srv.endpoint, timeout=60)
    c.wait_ready(300)
    return srv, c


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    srv, c = start(tmp_path_factory.mktemp("store"))
    aid = c.reconstruct([portrait(0), portrait(1)], name="drawn", crop="center")["avatar"]
    yield srv, c, aid
    c.close()
    srv.stop()


def test_hello_and_rig_describe_the_model(model):
    _, c, _ = model
    h = c.hello()
    assert h["engine"] == "ready" and h["device"] == "cpu" and len(h["head_model_id"]) >= 8
    rig = c.get_rig()
    v = as_numpy(rig["vertices"])
    e = as_numpy(rig["expression_dirs"])
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3 and len(v) > 100
    assert e.shape == (h["n_expressions"], len(v), 3) and len(rig["expression_names"]) == h["n_expressions"]
    assert as_numpy(rig["faces"]).max() == len(v) - 1 and rig["head_model_id"] == h["head_model_id"]
    np.testing.assert_allclose(as_numpy(rig["weights"]).sum(1), 1.0, atol=1e-4)
    assert list(as_numpy(rig["parents"])) == [-1, 0, 1, 1, 1]


def test_animate_frames_in_order_with_tracks_while_pings_stay_fast(model):
    srv, c, aid = model
    n = 4
    pings: list[float] = []
    done = threading.Event()

    def pinger():
        with Client(srv.endpoint, timeout=10) as p:
            while not done.is_set():
                pings.append(p.ping(timeout=10))

    t = threading.Thread(target=pinger)
    t.start()
    try:
        evs = list(c.animate(aid, frames=[portrait(10 + i) for i in range(n)], size=32, format="jpeg",
                             crop="center", track_batch=3))
    finally:
        done.set()
        t.join(30)
    frames = [e for e in evs if e["event"] == "frame"]
    assert [f["index"] for f in frames] == list(range(n))
    img = cv2.imdecode(np.frombuffer(frames[0]["image"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (32, 32, 3) and img.std() > 0  # something was rendered, not a blank frame
    n_expr = c.hello()["n_expressions"]
    p = frames[0]["params"]
    assert len(p["expression"]) == n_expr and np.asarray(p["pose"]).shape == (5, 3) and p["focal"] > 0
    tracks = [e for e in evs if e["event"] == "track"]
    assert [(t["start"], t["count"]) for t in tracks] == [(0, 3), (3, 1)]
    assert np.allclose(np.concatenate([t["params"]["expression"] for t in tracks]),
                       [f["params"]["expression"] for f in frames])
    assert evs[-1]["event"] == "result" and evs[-1]["frames"] == n
    assert len(pings) >= 5 and max(pings) < 1.0, f"ping latency while animating: max {max(pings):.3f} s"


def test_video_driver_and_blender_camera(model, tmp_path):
    from ffavatar.images import decode_image, write_video

    _, c, aid = model
    clip = [decode_image(portrait(20 + i)) for i in range(2)]
    video = write_video(tmp_path / "d.mp4", clip, fps=30.0).read_bytes()
    cam = {"matrix_world": [[1, 0, 0, 0], [0, 0, -1, -0.6], [0, 1, 0, 0], [0, 0, 0, 1]], "lens": 85.0,
           "resolution_x": 24, "resolution_y": 16}
    evs = list(c.animate(aid, video=video, cameras=cam, format="raw", crop="center"))
    frames = [e for e in evs if e["event"] == "frame"]
    assert [f["index"] for f in frames] == [0, 1]
    assert {(f["width"], f["height"], len(f["image"])) for f in frames} == {(24, 16, 24 * 16 * 3)}
    assert evs[-1]["fps"] == pytest.approx(30.0)
    with pytest.raises(BackendError) as e:
        list(c.animate(aid, frames=[portrait(1)], cameras={"lens": 50}))
    assert e.value.code == "invalid_input"


def test_cancel_mid_animate_stops_promptly(model):
    _, c, aid = model
    n = 40
    frames_seen, t_cancel, ended = 0, None, None
    t0 = time.perf_counter()
    rid = c.submit("animate", avatar=aid, frames=[portrait(i) for i in range(n)], size=16, crop="center")
    try:
        for ev in c.events(rid):
            if ev["event"] == "frame":
                frames_seen += 1
                t_cancel = time.perf_counter()
                first_frame_s = t_cancel - t0
                assert c.cancel(rid) is True
    except BackendError as e:
        ended = e
    assert ended is not None and ended.code == "cancelled"
    # the frame being rendered when the cancel came is the last work done (not emitted)
    assert frames_seen == 1, f"{frames_seen} frames arrived after the cancel"
    assert time.perf_counter() - t_cancel < 2 * first_frame_s + 1.0
    assert c.ping() < 1.0


def test_kill_9_during_reconstruct_leaves_store_intact(tmp_path):
    store = tmp_path / "store"
    srv, c = start(store)
    try:
        first = c.reconstruct([portrait(3)], name="kept", crop="center")["avatar"]
        rid = c.submit("reconstruct", images=[portrait(4), portrait(5)], name="doomed", crop="center",
                       personalize_steps=50)
        progress = []
        deadline = time.monotonic() + 60
        while not any(e["event"] == "progress" and "queued" not in e["message"] for e in progress):
            assert time.monotonic() < deadline, "the reconstruction never started"
            progress += [e for e in c.poll(0.5) if e["id"] == rid]
        srv.kill()  # SIGKILL in the middle of the job
    finally:
        c.close()
        srv.kill()
    srv, c = start(store)
    try:
        avatars = c.list_avatars()
        assert [(a["id"], a["name"]) for a in avatars] == [(first, "kept")]
        assert not [p.name for p in store.iterdir() if p.name.startswith(".")]
        from ffavatar.ply import read_ply

        (tmp_path / "kept.ply").write_bytes(c.export_ply(first))  # the kept avatar loads from its file
        assert read_ply(tmp_path / "kept.ply").num_points > 1000
        again = c.reconstruct([portrait(4)], name="after", crop="center")["avatar"]
        assert {a["id"] for a in c.list_avatars()} == {first, again}
    finally:
        c.close()
        srv.stop()
