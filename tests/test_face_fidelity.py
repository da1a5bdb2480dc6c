"""Drive-fidelity metrics: blink events, head angles from the landmarker's matrices and from FLAME
tracks (same convention, checked on the demo clip with known motion), NaN frames left out."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from face_data import DRIVER_STATIC, landmarker_or_skip
from ffavatar.face.fidelity import MIN_FRAMES, blink_events, drive_fidelity, head_angles, track_angles
from ffavatar.face.landmarker import ARKIT_NAMES


def _scores(t: int, jaw: np.ndarray, blinks: list[int]) -> np.ndarray:
    a = np.zeros((t, 52), np.float32)
    a[:, ARKIT_NAMES.index("jawOpen")] = jaw
    for b in blinks:
        a[b:b + 3, ARKIT_NAMES.index("eyeBlinkLeft")] = 0.9
        a[b:b + 3, ARKIT_NAMES.index("eyeBlinkRight")] = 0.8
    return a


def _matrices(yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> np.ndarray:
    m = np.tile(np.eye(4), (len(yaw_deg), 1, 1))
    m[:, :3, :3] = Rotation.from_euler("XY", np.stack([pitch_deg, yaw_deg], 1), degrees=True).as_matrix()
    return m


def test_head_angles_read_yaw_and_pitch():
    yaw, pitch = np.array([0.0, 10.0, -20.0]), np.array([0.0, 5.0, -8.0])
    got = head_angles(_matrices(yaw, np.zeros(3)))
    np.testing.assert_allclose(got[:, 0], yaw, atol=1e-6)
    got = head_angles(_matrices(np.zeros(3), pitch))
    np.testing.assert_allclose(got[:, 1], pitch, atol=1e-6)


def test_blinks_and_correlations():
    t = 40
    jaw = 0.5 + 0.4 * np.sin(np.linspace(0, 6, t))
    yaw, pitch = 15 * np.sin(np.linspace(0, 3, t)), 6 * np.cos(np.linspace(0, 4, t))
    d = _scores(t, jaw, [5, 25])
    assert blink_events(d) == [(5, 7), (25, 27)]
    same = drive_fidelity(d, _matrices(yaw, pitch), d, _matrices(yaw, pitch))
    assert same.jaw_open_r == pytest.approx(1.0) and same.yaw_r == pytest.approx(1.0) and same.blinks_ok
    assert all(same.meets_goals().values())
    late = drive_fidelity(d, _matrices(yaw, pitch), _scores(t, jaw[::-1], [12]), _matrices(-yaw, pitch))
    assert late.jaw_open_r < 0.5 and late.yaw_r == pytest.approx(-1.0)
    assert late.blinks_driver == 2 and late.blinks_avatar == 1 and late.blinks_matched == 0 and not late.blinks_ok


def test_frames_without_a_face_are_left_out():
    t = 30
    jaw = np.linspace(0, 1, t)
    d, m = _scores(t, jaw, []), _matrices(np.linspace(-10, 10, t), np.zeros(t))
    a = d.copy()
    a[::2] = np.nan  # the avatar's face was found on every other frame only
    am = m.copy()
    am[::2] = np.nan
    f = drive_fidelity(d, m, a, am)
    assert f.frames_compared == 15 and f.jaw_open_r == pytest.approx(1.0) and f.yaw_r == pytest.approx(1.0)
    assert f.pitch_r is None and "hardly varies" in f.notes["pitch_r"]
    a[: t - MIN_FRAMES + 1] = np.nan
    f = drive_fidelity(d, m, a, am)
    assert f.jaw_open_r is None and "frame(s) have a face in both" in f.notes["jaw_open_r"]


def test_track_angles_match_the_landmarker_on_a_known_clip():
    """The demo driver's true FLAME track read as yaw/pitch agrees with MediaPipe's matrices."""
    finder = landmarker_or_skip()
    from ffavatar.data.synthetic import driver_trajectory
    from ffavatar.flame import FlameModel, load_head_model
    from ffavatar.images import read_frames
    from ffavatar.render.camera import Camera

    flame = FlameModel(load_head_model())
    frames = list(read_frames(DRIVER_STATIC))
    mats = np.stack([finder.find_one(f).matrix for f in frames])
    traj = driver_trajectory(len(frames), flame.n_expr, flame.expression_names, 0)
    cam = Camera.look_at((0.0, 0.02, 0.65), (0.0, 0.0, 0.0), focal=1.7 * 128, width=128, height=128)
    truth = track_angles(cam.viewmat.numpy().repeat(len(frames), 0), traj["pose"])
    seen = head_angles(mats)
    assert np.corrcoef(truth[:, 0], seen[:, 0])[0, 1] > 0.98  # yaw, same sign
    assert np.corrcoef(truth[:, 1], seen[:, 1])[0, 1] > 0.9   # pitch, same sign
    assert np.abs(truth[:, 0] - seen[:, 0]).max() < 6.0      # degrees
