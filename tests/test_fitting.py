"""Landmark-based FLAME fitting: the MediaPipe <-> demo-head correspondence lands on the right
regions, and a fit on a real landmarker run over a clip with known motion recovers it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_data import DRIVER_STATIC, landmarker_or_skip
from ffavatar.errors import InvalidInput
from ffavatar.flame import FlameModel, load_head_model
from ffavatar.fitting.landmarks import (IBUG68_EYE_CORNERS, IBUG68_FROM_MEDIAPIPE, IBUG68_MOUTH_CORNERS,
                                        Correspondence, FitConfig, fit_flame, landmark_error, landmark_model)


@pytest.fixture(scope="module")
def flame():
    return FlameModel(load_head_model())


def test_table_is_a_mirror_symmetric_map_onto_distinct_points():
    assert IBUG68_FROM_MEDIAPIPE.shape == (68,) and len(set(IBUG68_FROM_MEDIAPIPE.tolist())) == 68
    # well-known MediaPipe points: eye corners 33/263, chin 152, nose tip 1, mouth corners 61/306
    assert IBUG68_FROM_MEDIAPIPE[[36, 45, 8, 30, 48, 54]].tolist() == [33, 263, 152, 1, 61, 306]


def test_landmark_model_is_exact(flame):
    sub = landmark_model(flame)
    assert sub.num_vertices < 300 < flame.num_vertices
    g = torch.Generator().manual_seed(0)
    args = dict(shape=torch.randn(2, flame.n_shape, generator=g), expression=torch.randn(2, flame.n_expr, generator=g),
                pose=0.3 * torch.randn(2, 5, 3, generator=g))
    a, b = flame(**args), sub(**args)
    torch.testing.assert_close(b.landmarks, a.landmarks, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.joints, a.joints, atol=1e-6, rtol=0)


def test_correspondence_needs_an_embedding(tiny_flame):
    model = {k: v for k, v in tiny_flame.items() if not k.startswith("lmk_")}
    with pytest.raises(InvalidInput, match="no landmark embedding"):
        Correspondence.for_head(FlameModel(model))
    with pytest.raises(InvalidInput, match="embeds 3 landmarks"):
        Correspondence.for_head(FlameModel(tiny_flame))
    c = Correspondence.for_head(FlameModel(tiny_flame), landmark_indices=np.array([1, 4, 33]))
    assert c.mediapipe.tolist() == [1, 4, 33]
    with pytest.raises(InvalidInput, match="478"):
        Correspondence.for_head(FlameModel(tiny_flame), landmark_indices=np.array([1, 4, 999]))


def test_landmark_error_is_percent_of_face_size():
    target = np.array([[[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]]])
    assert landmark_error(target + [3.0, 4.0], target)[0] == pytest.approx(5.0)  # 5 px on a 100 px face


def _clip_truth(n: int, size: int):
    """The demo driver clip's known FLAME parameters, camera and shape (ffavatar.demo.make_inputs)."""
    from ffavatar.data.synthetic import SyntheticHead, _rng, driver_trajectory
    from ffavatar.demo import DRIVER_IDENTITY
    from ffavatar.render.camera import Camera

    head = SyntheticHead(subdivision=1)
    shape = _rng(0, "clip-identity", DRIVER_IDENTITY).normal(0, 1.0, head.flame.n_shape)
    traj = driver_trajectory(n, head.flame.n_expr, head.flame.expression_names, 0)
    cam = Camera.look_at((0.0, 0.02, 0.65), (0.0, 0.0, 0.0), focal=1.7 * size, width=size, height=size)
    return traj, cam, torch.as_tensor(shape, dtype=torch.float32)


@pytest.fixture(scope="module")
def static_clip(flame):
    finder = landmarker_or_skip()
    from ffavatar.images import read_frames

    frames = list(read_frames(DRIVER_STATIC))
    lm = np.stack([finder.find_one(f, f"frame {i}").points for i, f in enumerate(frames)])
    traj, cam, shape = _clip_truth(len(frames), frames[0].shape[0])
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        truth = cam.project(flame(shape=shape[None].expand(len(frames), -1), expression=t(traj["expression"]),
                                  pose=t(traj["pose"])).landmarks)
    return lm, traj, truth, frames[0].shape[0]


def test_mediapipe_points_land_on_the_right_demo_head_regions(static_clip):
    """MediaPipe on the demo head's renders, mapped through the table, against the head's own
    embedded landmarks projected with the true parameters."""
    lm, _, truth, _ = static_clip
    mapped = lm[:, IBUG68_FROM_MEDIAPIPE, :2]
    err = landmark_error(mapped, truth.numpy())
    assert np.median(err) < 5.0
    size = np.sqrt(np.prod(truth.numpy().max(1) - truth.numpy().min(1), axis=-1))[:, None]
    d = np.linalg.norm(mapped - truth.numpy(), axis=-1) / size * 100
    assert np.median(d[:, list(IBUG68_EYE_CORNERS)]) < 4.0  # eye corners on the eye corners
    assert np.median(d[:, list(IBUG68_MOUTH_CORNERS)]) < 5.0  # mouth corners at the lips' ends
    # and not on a neighbouring region: an eye corner is far from the mouth and the brow
    assert np.all(np.linalg.norm(mapped[:, 36] - truth.numpy()[:, 48], axis=-1) / size[:, 0] > 0.2)


def test_fit_recovers_the_clip(flame, static_clip):
    lm, traj, truth, size = static_clip
    res = fit_flame(lm, flame, size, config=FitConfig(rigid_steps=60, steps=150))
    assert np.median(res.error) < 4.0 and np.median(res.error) < 0.3 * np.median(res.error_before)
    # against the true landmark positions (not just the measured ones)
    assert np.median(landmark_error(res.projected.numpy(), truth.numpy())) < 5.0
    jaw = res.estimates.pose[:, 2, 0].numpy()
    assert np.corrcoef(jaw, traj["pose"][:, 2, 0])[0, 1] > 0.8  # the talking jaw is recovered
    # smooth: frame-to-frame camera motion is small compared with the head turn it follows
    assert float(res.estimates.cam_t.diff(dim=0).norm(dim=-1).max()) < 0.01
