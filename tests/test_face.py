"""Face finding and cropping on real photos and clips (MediaPipe Face Landmarker, Haar fallback)."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from face_data import DRIVER_GAP, DRIVER_STATIC, kphotoalbum_or_skip, landmarker_or_skip, portrait_or_skip
from ffavatar.errors import CheckpointError, InvalidInput, NoFaceFound
from ffavatar.face.crop import CropBox, FaceCropper, crop_image, crop_portrait, describe_frames, face_box
from ffavatar.face.landmarker import (ARKIT_NAMES, MODEL_BYTES, MODEL_ENV, MODEL_SHA256, FaceFinder,
                                      read_landmarker_model)
from ffavatar.images import load_image, read_frames


# ------------------------------------------------------------------ the model file
def test_arkit_names_are_the_52():
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    assert list(ARKIT_NAMES) == sorted(ARKIT_NAMES)
    assert {"jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "tongueOut", "mouthSmileLeft"} <= set(ARKIT_NAMES)


def test_bad_checksum_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not the model" * 100)
    with pytest.raises(CheckpointError) as e:
        read_landmarker_model(fake)
    msg = str(e.value)
    assert str(fake) in msg and MODEL_SHA256 in msg and hashlib.sha256(fake.read_bytes()).hexdigest() in msg
    monkeypatch.setenv(MODEL_ENV, str(fake))  # the user's override is checked the same way
    with pytest.raises(CheckpointError, match="sha256"):
        FaceFinder("auto")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_landmarker_model(tmp_path / "missing.task")


def test_declared_checksum_admits_own_file(tmp_path, monkeypatch):
    own = tmp_path / "own.task"
    own.write_bytes(b"x" * 10)
    monkeypatch.setenv("FFAVATAR_FACE_LANDMARKER_SHA256", hashlib.sha256(b"x" * 10).hexdigest())
    assert read_landmarker_model(own) == b"x" * 10


def test_installed_model_verifies():
    landmarker_or_skip()
    data = read_landmarker_model()
    assert len(data) == MODEL_BYTES and hashlib.sha256(data).hexdigest() == MODEL_SHA256


def test_unknown_backend_is_refused():
    with pytest.raises(InvalidInput, match="backend"):
        FaceFinder("dlib")


# ------------------------------------------------------------------ cutting crops
def _stripes(h=60, w=80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 3) % 256, (y * 4) % 256, (x + y) % 256], -1).astype(np.uint8)


def test_crop_inside_is_exact():
    img = _stripes()
    out = crop_image(img, CropBox(30.0, 25.0, 20.0), 20)  # box [20,40) x [15,35), same scale
    np.testing.assert_array_equal(out, img[15:35, 20:40])


def test_crop_past_the_edge_is_padded_not_smeared():
    img = _stripes()
    bg = (10, 200, 30)
    out = crop_image(img, CropBox(5.0, 50.0, 40.0), 40, background=bg)  # box [-15,25) x [30,70)
    # columns left of x=0 and rows below y=60 are background, exactly
    np.testing.assert_array_equal(out[:, :14], np.broadcast_to(np.array(bg, np.uint8), (40, 14, 3)))
    np.testing.assert_array_equal(out[31:], np.broadcast_to(np.array(bg, np.uint8), (9, 40, 3)))
    np.testing.assert_array_equal(out[:30, 15:], img[30:60, 0:25])
    # a replicated border would repeat the edge column; the padding does not
    assert not np.array_equal(out[5, 10], img[35, 0])


def test_crop_shrinks_without_aliasing():
    img = np.zeros((400, 400, 3), np.uint8)
    img[:, ::2] = 255  # 1-px stripes: any point sampling aliases to 0 or 255
    out = crop_image(img, CropBox(200.0, 200.0, 400.0), 50)
    assert abs(float(out.mean()) - 127.5) < 3 and float(out.std()) < 10


def test_describe_frames():
    assert describe_frames([9, 3, 4, 5, 12, 13]) == "3-5, 9, 12-13"
    assert describe_frames([4]) == "4"


# ------------------------------------------------------------------ photos
def test_grace_hopper_and_astronaut_landmarks():
    finder = landmarker_or_skip()
    for which in ("grace_hopper", "astronaut"):
        img = load_image(portrait_or_skip(which))
        face = finder.find_one(img, which)
        assert face.source == "landmarker" and face.points.shape == (478, 3) and face.arkit.shape == (52,)
        # anatomy: eyes above the nose tip above the mouth above the chin; subject's right eye on the image left
        p = face.points
        right_eye, left_eye, nose, mouth, chin = p[33], p[263], p[1], p[13], p[152]
        assert right_eye[0] < nose[0] < left_eye[0]
        assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1] < chin[1]
        crop, _ = crop_portrait(img, 128, finder=finder, name=which)
        assert crop.shape == (128, 128, 3)


def test_haar_fallback_finds_a_box():
    img = load_image(portrait_or_skip("grace_hopper"))
    finder = FaceFinder("haar")
    face = finder.find_one(img)
    assert face.points is None and face.source == "haar"
    box = face_box(face)
    h, w = img.shape[:2]
    assert 0.2 * w < box.cx < 0.8 * w and box.side > 0.2 * min(h, w)


def test_no_face_names_the_image():
    finder = landmarker_or_skip()
    with pytest.raises(NoFaceFound, match="blank.png"):
        finder.find_one(np.full((128, 128, 3), 250, np.uint8), "blank.png")


def test_small_face_in_a_large_photo_via_detector_crop():
    """cold_water.jpg: a small face (~45 px) that the short-range landmarker misses on the full photo."""
    demo = kphotoalbum_or_skip()
    finder = landmarker_or_skip()
    faces = finder.find(load_image(demo / "cold_water.jpg"), thorough=True)
    assert faces and faces[0].source == "landmarker@crop" and faces[0].points is not None
    x0, y0, x1, y1 = faces[0].box
    assert 400 < (x0 + x1) / 2 < 520 and 160 < (y0 + y1) / 2 < 260 and 25 < x1 - x0 < 80


# ------------------------------------------------------------------ clips
def test_gap_frame_is_interpolated_and_named(caplog):
    landmarker_or_skip()
    cropper = FaceCropper(name="driver_gap")
    with caplog.at_level(logging.WARNING):
        out = list(cropper.run(read_frames(DRIVER_GAP)))
    assert [o.index for o in out] == list(range(8))
    assert cropper.missing == [4]
    assert any("driver_gap" in r.message and "frame(s) 4 of 8" in r.message for r in caplog.records)
    gap = out[4]
    assert gap.filled and gap.face is None and not out[3].filled
    np.testing.assert_allclose(gap.points, (out[3].points + out[5].points) / 2, atol=1e-3)
    np.testing.assert_allclose(gap.arkit, (out[3].arkit + out[5].arkit) / 2, atol=1e-5)
    lo = np.minimum(out[3].box.as_array(), out[5].box.as_array()) - 1
    hi = np.maximum(out[3].box.as_array(), out[5].box.as_array()) + 1
    assert np.all(gap.box.as_array() >= lo) and np.all(gap.box.as_array() <= hi)
    assert gap.crop(64).shape == (64, 64, 3)


def test_gap_at_the_start_is_held():
    landmarker_or_skip()
    frames = list(read_frames(DRIVER_GAP))
    frames = [frames[4], frames[4]] + frames[:4]  # two blank frames first
    cropper = FaceCropper(name="clip")
    out = list(cropper.run(frames))
    assert cropper.missing == [0, 1]
    np.testing.assert_allclose(out[0].points, out[2].points)


def test_clip_without_any_face():
    landmarker_or_skip()
    blank = np.full((96, 96, 3), 250, np.uint8)
    with pytest.raises(NoFaceFound, match="no face in any of the 3 frame"):
        list(FaceCropper(name="blank.mp4").run([blank] * 3))


def _jitter(out) -> np.ndarray:
    b = np.array([o.box.as_array() for o in out])
    return np.linalg.norm(np.diff(b[:, :2], axis=0), axis=1) / b[1:, 2]


def test_static_camera_crops_are_stable():
    """The demo driver (static camera, moving head): the crop centre moves <= 1% of the crop per frame
    (per-frame Haar boxes jumped 46-80 px here)."""
    landmarker_or_skip()
    out = list(FaceCropper(name="driver_static.mp4").run(read_frames(DRIVER_STATIC)))
    assert len(out) == 48 and not any(o.filled for o in out)
    assert _jitter(out).max() <= 0.0105
    sides = np.array([o.box.side for o in out])
    assert sides.max() / sides.min() < 1.1


def test_every_frame_of_the_webcam_clip_has_a_face_and_a_stable_crop():
    demo = kphotoalbum_or_skip()
    landmarker_or_skip()
    cropper = FaceCropper(name="movie.avi", fps=15)
    out = list(cropper.run(read_frames(demo / "movie.avi")))
    assert len(out) == 68 and cropper.missing == []
    assert all(o.face is not None and o.points.shape == (478, 3) and o.arkit.shape == (52,) for o in out)
    assert _jitter(out).max() <= 0.01
    crops = np.stack([o.crop(64) for o in out])
    assert crops.shape == (68, 64, 64, 3)
