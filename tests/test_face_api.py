"""The face landmarker inside the API and CLI: a clip with a faceless frame animates to the end,
the gap's parameters are interpolated, and the track carries ARKit scores and landmarks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from face_data import DRIVER_GAP, landmarker_or_skip
from ffavatar.api import FlameTrack, Reconstructor
from ffavatar.images import read_frames


@pytest.fixture(scope="module")
def avatar():
    landmarker_or_skip()
    rec = Reconstructor.from_checkpoint(None, device="cpu")
    frames = list(read_frames(DRIVER_GAP))
    return rec.reconstruct([frames[0], frames[6]], crop="detect")


def test_animate_through_a_faceless_frame(avatar, caplog):
    frames = list(read_frames(DRIVER_GAP))
    with caplog.at_level(logging.WARNING):
        out = list(avatar.animate(frames, size=48))
    assert [f.index for f in out] == list(range(8))
    assert any("frame(s) 4 of 8" in r.message for r in caplog.records)
    assert [f.params["face"] for f in out].count("interpolated") == 1 and out[4].params["face"] == "interpolated"
    for key in ("expression", "pose", "cam_t", "focal"):  # frame 4's parameters: midway between 3 and 5
        np.testing.assert_allclose(np.asarray(out[4].params[key]),
                                   (np.asarray(out[3].params[key]) + np.asarray(out[5].params[key])) / 2, atol=1e-5)
    arkit = out[0].params["arkit"]
    assert "jawOpen" in arkit and "tongueOut" not in arkit and len(arkit) == 51
    assert all(0.0 <= v <= 1.0 for v in arkit.values())
    assert out[4].image.shape == (48, 48, 3) and out[4].face is not None and out[4].face.frame is None

    track = FlameTrack.from_params([f.params for f in out], 25.0, avatar.reconstructor.expression_names,
                                   [f.face for f in out])
    assert track.arkit.shape == (8, 52) and track.landmarks.shape == (8, 478, 2)
    assert track.filled.tolist() == [False] * 4 + [True] + [False] * 3
    assert track.arkit_unmeasured == ["tongueOut"] and float(track.arkit[:, track.arkit_names.index("tongueOut")].max()) == 0
    # landmarks are in the estimator's crop, normalised: the face sits well inside it
    lo, hi = track.landmarks[0].min(0), track.landmarks[0].max(0)
    assert np.all(lo > 0.1) and np.all(hi < 0.9)


def test_track_file_round_trip(avatar, tmp_path):
    track = avatar.track(list(read_frames(DRIVER_GAP)), fps=15)
    path = track.save(tmp_path / "track.npz")
    back = FlameTrack.load(path)
    np.testing.assert_array_equal(back.arkit, track.arkit)
    np.testing.assert_array_equal(back.landmarks, track.landmarks)
    assert back.arkit_names == track.arkit_names and back.filled.tolist() == track.filled.tolist()
    assert back.frame(2)["arkit"] == track.frame(2)["arkit"]
    plain = FlameTrack(track.expression, track.pose, track.cam_rot, track.cam_t, track.focal, 15.0)
    back = FlameTrack.load(plain.save(tmp_path / "plain.npz"))
    assert back.arkit is None and "arkit" not in back.frame(0)


def test_cli_animate_writes_track_and_video(avatar, tmp_path):
    from ffavatar.cli import main

    ffa = avatar.save(tmp_path / "a.ffa")
    assert main(["animate", str(ffa), "--driver", str(DRIVER_GAP), "-o", str(tmp_path / "out"), "--size", "32", "--device", "cpu"]) == 0
    track = FlameTrack.load(tmp_path / "out" / "track.npz")
    assert len(track) == 8 and track.arkit.shape == (8, 52) and bool(track.filled[4])
    assert (tmp_path / "out" / "animation.mp4").stat().st_size > 0
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 8


def test_from_video_stores_landmarks(tmp_path):
    landmarker_or_skip()
    from ffavatar.data.folder import FolderDataset
    from ffavatar.data.video import convert_videos, read_landmarks

    rep = convert_videos([DRIVER_GAP], tmp_path / "ds", size=64, crop="detect")
    assert rep.frames == {"driver_gap": 7} and rep.skipped_no_face == {"driver_gap": 1}
    lm = read_landmarks(tmp_path / "ds" / "driver_gap")
    ds = FolderDataset(tmp_path / "ds")
    assert lm["frames"].tolist() == [f.index for f in ds.identity("driver_gap").frames] == [0, 1, 2, 3, 5, 6, 7]
    assert lm["landmarks"].shape == (7, 478, 2) and lm["has"].all() and lm["arkit"].shape == (7, 52)
    # the stored landmarks sit on the written crop: the nose tip (1) is near its centre, the chin (152) below it
    rgb, _ = ds.load_view("driver_gap", ds.identity("driver_gap").frames[0].views[0])
    nose, chin = lm["landmarks"][0, 1], lm["landmarks"][0, 152]
    assert 0.35 < nose[0] < 0.65 and 0.35 < nose[1] < 0.7 and chin[1] > nose[1]
    x, y = (nose * 64).astype(int)
    assert rgb[y, x].mean() < 0.97  # on the face, not the white background


def test_every_webcam_frame_gets_a_face_a_crop_and_a_track(avatar):
    from face_data import kphotoalbum_or_skip

    frames = list(read_frames(kphotoalbum_or_skip() / "movie.avi"))
    track = avatar.track(frames, fps=15)
    assert len(track) == len(frames) == 68
    assert track.arkit.shape == (68, 52) and not track.filled.any()
    assert np.isfinite(track.expression).all() and np.isfinite(track.cam_t).all()
    inside = (track.landmarks > 0) & (track.landmarks < 1)
    assert inside.all()  # every frame's face sits inside its crop


def test_person_crops_choose_the_same_man(tmp_path):
    """bar55.jpg shows a woman (the landmarker's largest face) and the man of the other photos."""
    from face_data import kphotoalbum_or_skip
    from ffavatar.face.crop import person_crops
    from ffavatar.face.identity import SAME_PERSON, FaceIdentity, identity_unavailable
    from ffavatar.images import load_image

    demo = kphotoalbum_or_skip()
    landmarker_or_skip()
    if identity_unavailable():
        pytest.skip(f"identity similarity unavailable: {identity_unavailable()}")
    crops = person_crops([load_image(demo / n) for n in ("jesper_2.jpg", "bar55.jpg", "bar55_2.jpg")], 96,
                         identity=FaceIdentity())
    assert crops[0].distance is None and all(c.distance < SAME_PERSON for c in crops[1:])
    x0, _, x1, _ = crops[1].face.box
    assert (x0 + x1) / 2 > 380  # the man stands right of the woman in bar55.jpg
    for c in crops:  # composited over white outside the head matte: the corners are background
        assert c.image.shape == (96, 96, 3) and (c.image[:4, :4] == 255).all()
