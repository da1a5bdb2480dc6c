"""What users bring (issue 13), on the inputs in tests/data (copied from the user reports' cases):
RGBA portraits, unpadded frame numbers, rotated phone clips, damaged or minimal movies, the user's
clip named in errors (also through the backend), huge photos, .ffa modes and CLI error lines."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from ffavatar.errors import ImageDecodeError
from ffavatar.images import BACKGROUND, FIT_PIXELS, FaceDetector, decode_image, list_images, load_image, read_frames
from ffavatar.sequence import natural_key, natural_sorted

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------ RGBA
def test_rgba_portrait_is_composited_over_the_model_background():
    from ffavatar.api import Reconstructor

    data = (DATA / "rgba_cutout.png").read_bytes()
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4 and (raw[..., 3] == 0).mean() > 0.5 and (raw[raw[..., 3] == 0][:, :3] == 0).all()
    img = decode_image(data)
    a = raw[..., 3:4].astype(np.float32) / 255
    want = np.clip(raw[..., 2::-1] * a + np.array(BACKGROUND) * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1
    assert (img[raw[..., 3] == 0] == BACKGROUND).all()                  # transparency is the background
    # the model's background is that colour (what it renders behind the head)
    rec = Reconstructor.from_checkpoint(device="cpu")
    assert tuple(np.round(rec.background.cpu().numpy() * 255).astype(int)) == BACKGROUND
    # the detector now sees the face as it sees it on the composited picture, not on black
    box = FaceDetector().detect(img)
    ref = FaceDetector().detect(want)
    black = FaceDetector().detect(np.ascontiguousarray(raw[..., 2::-1]))
    assert box == ref and (box.x, box.y, box.w) != (black.x, black.y, black.w)


def test_rgba_16_bit_and_grey_alpha_pngs_composite_too(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint16)
    rgba[..., :3] = 20000
    rgba[:, :5, 3] = 65535                          # left half opaque grey, right half transparent black
    ok, buf = cv2.imencode(".png", rgba)
    img = decode_image(buf.tobytes())
    assert (img[:, 5:] == 255).all() and np.abs(img[:, :5].astype(int) - 20000 * 255 // 65535).max() <= 1
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0], la[:3, :, 1] = 90, 255
    ok, buf = cv2.imencode(".png", cv2.cvtColor(la[..., 0], cv2.COLOR_GRAY2BGRA))
    bgra = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    bgra[..., 3] = la[..., 1]
    img = decode_image(cv2.imencode(".png", bgra)[1].tobytes())
    assert (img[:3] == 90).all() and (img[3:] == 255).all()


# ------------------------------------------------------------------------------------ natural order
def test_unpadded_frame_numbers_play_in_number_order(tmp_path):
    for i in range(1, 13):                           # the user's driver_unpadded/ folder, regenerated
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), np.full((4, 4, 3), 10 * i, np.uint8))
    names = [p.name for p in list_images(tmp_path)]
    assert names == [f"frame_{i}.png" for i in range(1, 13)]
    assert [int(f[0, 0, 0]) for f in read_frames(tmp_path)] == [10 * i for i in range(1, 13)]
    assert natural_sorted(["b10", "B9", "a", "A2", "a10", "a01"]) == ["a", "a01", "A2", "a10", "B9", "b10"]
    assert natural_key("x1") != natural_key("X1")   # a total order: case only breaks ties


# ------------------------------------------------------------------------------------ rotated clips
def test_rotated_phone_clip_decodes_upright():
    frames = list(read_frames(DATA / "phone_rot90.mp4"))
    assert len(frames) == 8 and frames[0].shape == (192, 128, 3)      # portrait, as filmed
    assert FaceDetector().detect(frames[0]) is not None
    cap = cv2.VideoCapture(str(DATA / "phone_rot90.mp4"))
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    ok, sideways = cap.read()
    cap.release()
    assert ok and sideways.shape == (128, 192, 3) and FaceDetector().detect(sideways[..., ::-1].copy()) is None


# ------------------------------------------------------------------------------------ damaged movies
def test_damaged_and_minimal_movies(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"truncated\.mp4 looks incomplete"):
        list(read_frames(DATA / "truncated.mp4"))
    with pytest.raises(ImageDecodeError, match=r"empty\.mp4 is empty"):
        list(read_frames(DATA / "empty.mp4"))
    assert [f.shape for f in read_frames(DATA / "one_frame.mp4")] == [(128, 128, 3)]
    # bytes under a temporary name: the message names the clip the caller gives
    with pytest.raises(ImageDecodeError) as e:
        list(read_frames((DATA / "truncated.mp4").read_bytes(), name="'my take 3.mp4'"))
    assert "'my take 3.mp4' looks incomplete" in str(e.value) and "ffavatar-clip" not in str(e.value)
    # first/count: a range of a movie, counted from its first frame
    frames = list(read_frames(DATA / "phone_rot90.mp4"))
    part = list(read_frames(DATA / "phone_rot90.mp4", 3, first=4))
    assert len(part) == 3 and all(np.array_equal(a, b) for a, b in zip(part, frames[4:7]))


def test_backend_names_the_users_clip(tmp_path):
    from ffavatar_backend.client import BackendError, Client
    from ffavatar_backend.launcher import ServerProcess

    srv = ServerProcess(["--engine", "synthetic", "--log-level", "WARNING", "--store", str(tmp_path / "store")])
    try:
        with Client(srv.endpoint, timeout=20) as c:
            c.hello()
            portrait = cv2.imencode(".png", np.full((24, 24, 3), 120, np.uint8))[1].tobytes()
            avatar = c.reconstruct([portrait], name="t", crop="none")["avatar"]
            with pytest.raises(BackendError) as e:
                list(c.animate(avatar, video=DATA / "truncated.mp4", size=32))
            msg = e.value.message
            assert e.value.code == "image_decode" and "'truncated.mp4' looks incomplete" in msg
            assert "ffavatar-driver" not in msg and "ffavatar-clip" not in msg
            with pytest.raises(BackendError, match="'empty.mp4' is empty"):
                list(c.animate(avatar, video=DATA / "empty.mp4", size=32))
            evs = list(c.animate(avatar, video=DATA / "one_frame.mp4", size=32))
            assert evs[-1]["frames"] == 1
            evs = list(c.animate(avatar, video=DATA / "phone_rot90.mp4", size=32, first=2, count=3))
            assert [e["index"] for e in evs if e["event"] == "frame"] == [0, 1, 2] and evs[-1]["frames"] == 3
            assert evs[-1]["fps"] == pytest.approx(30.0)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------ big photos
def test_48_megapixel_photo_is_downscaled_while_loading(tmp_path):
    img = np.full((6000, 8000, 3), 180, np.uint8)
    img[2000:4000, 3000:5000] = (60, 90, 140)
    path = tmp_path / "phone.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    out = load_image(path)
    h, w = out.shape[:2]
    assert h * w <= FIT_PIXELS and abs(w / h - 4 / 3) < 0.01 and w >= 4000
    assert np.abs(out[h // 2, w // 2].astype(int) - (140, 90, 60)).max() <= 6     # RGB, the centre patch
    assert load_image(path, fit_pixels=None).shape == (6000, 8000, 3)
    small = load_image(path, fit_pixels=300_000)
    assert small.shape[0] * small.shape[1] <= 300_000 and abs(small.shape[1] / small.shape[0] - 4 / 3) < 0.01


# ------------------------------------------------------------------------------------ files and the CLI
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_ffa_files_follow_the_umask(tmp_path, umask):
    import torch

    from ffavatar.checkpoint import save_tensors

    old = os.umask(umask)
    try:
        path = save_tensors(tmp_path / "avatar.ffa", {"x": torch.zeros(3)}, {"kind": "avatar"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_cli_error_starts_on_its_own_line(tmp_path, capsys):
    from ffavatar.cli import main

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((64, 64, 3), 200, np.uint8))
    assert main(["reconstruct", str(blank), "-o", str(tmp_path / "a.ffa"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error [no_face]" in err
    line = err[err.index("error [no_face]") - 1]
    assert line == "\n", repr(err[-300:])


def test_cli_animate_keeps_the_clips_timing(tmp_path, capsys):
    """The MP4 and the track the CLI writes run at the driver clip's rate (a 12 fps phone clip stays
    12 fps; an image folder takes --fps), frames numbered in the clip's natural order."""
    from ffavatar.api import FlameTrack
    from ffavatar.cli import main
    from ffavatar.images import video_fps, write_video

    face = next(iter(read_frames(DATA / "phone_rot90.mp4")))
    portrait = tmp_path / "me.png"
    cv2.imwrite(str(portrait), face[..., ::-1])
    avatar = tmp_path / "me.ffa"
    assert main(["reconstruct", str(portrait), "-o", str(avatar), "--device", "cpu", "--crop", "none"]) == 0
    clip = write_video(tmp_path / "take.mp4", [face] * 3, fps=12.0)
    out = tmp_path / "out"
    assert main(["animate", str(avatar), "--driver", str(clip), "-o", str(out), "--size", "32", "--device", "cpu",
                 "--crop", "none"]) == 0
    assert video_fps(out / "animation.mp4") == pytest.approx(12.0) and FlameTrack.load(out / "track.npz").fps == 12.0
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(folder / f"f_{i}.png"), face[..., ::-1])
    assert main(["animate", str(avatar), "--driver", str(folder), "-o", str(tmp_path / "o2"), "--size", "32",
                 "--device", "cpu", "--crop", "none", "--fps", "10"]) == 0
    assert video_fps(tmp_path / "o2" / "animation.mp4") == pytest.approx(10.0)
    assert sorted(p.name for p in (tmp_path / "o2" / "frames").iterdir()) == ["000000.png", "000001.png", "000002.png"]
