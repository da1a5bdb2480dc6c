"""Dataset adapters on tiny fabricated trees: videos → folder format, NeRSemble and Ava-256 read in
place (images, masks, cameras, counts), and dataset specs → sources."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ffavatar.data.ava256 import Ava256Source
from ffavatar.data.folder import (FolderDataset, FrameRecord, IdentityRecord, ViewRecord, write_dataset_index,
                                  write_identity)
from ffavatar.data.nersemble import NeRSembleSource, scaled_intrinsics
from ffavatar.data.shards import ShardSpec, pack
from ffavatar.data.sources import open_source, parse_spec
from ffavatar.data.video import convert_videos, crop_box, sanitize_id, smooth_boxes
from ffavatar.errors import InvalidInput, NotFound
from ffavatar.images import encode_image, save_image, write_video
from ffavatar.render.camera import Camera


def _rot(axis, angle):
    """Rotation matrix (3,3) about a unit axis."""
    r, _ = cv2.Rodrigues(np.asarray(axis, float) / np.linalg.norm(axis) * angle)
    return r


def _project(K, viewmat, p):
    cam = Camera(torch.tensor(K, dtype=torch.float64), torch.tensor(viewmat, dtype=torch.float64), 10, 10)
    return cam.project(torch.tensor(np.asarray(p)[None], dtype=torch.float64))[0, 0].numpy()


# ---------------------------------------------------------------------------------------- video
def _clip_frames(n=8, h=48, w=80):
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, :24] = (200, 40, 40)
        f[:, 24:56] = (20 * i + 30, 200 - 20 * i, 90)
        f[:, 56:] = (40, 40, 200)
        frames.append(f)
    return frames


def test_video_center_crop_writes_every_nth_frame_with_the_centre_square(tmp_path):
    frames = _clip_frames()
    video = write_video(tmp_path / "my clip(1).mp4", frames, fps=10)
    calls = []
    rep = convert_videos([video], tmp_path / "out", size=32, every=2, crop="center", progress=calls.append)
    ident = "my_clip_1_"
    assert rep.identities == [ident] and rep.frames == {ident: 4} and calls == [1]
    ds = FolderDataset(tmp_path / "out")
    assert ds.kind == "monocular" and ds.identities == [ident]
    rec = ds.identity(ident)
    assert [f.index for f in rec.frames] == [0, 2, 4, 6]
    for f in rec.frames:
        (view,) = f.views
        assert view.mask is None and view.camera is None
        rgb, mask = ds.load_view(ident, view)
        assert rgb.shape == (32, 32, 3) and mask is None
        # centre square = source columns 16..64 → the middle band lands on output columns ~5.3..26.7
        mid = rgb[4:28, 8:24].reshape(-1, 3).mean(0) * 255
        np.testing.assert_allclose(mid, [20 * f.index + 30, 200 - 20 * f.index, 90], atol=12)
        np.testing.assert_allclose(rgb[4:28, 0:3].reshape(-1, 3).mean(0) * 255, [200, 40, 40], atol=20)
        np.testing.assert_allclose(rgb[4:28, 29:].reshape(-1, 3).mean(0) * 255, [40, 40, 200], atol=20)


def test_video_limits_folders_unique_ids_and_resume(tmp_path):
    frames = _clip_frames(6)
    a = write_video(tmp_path / "a" / "clip.mp4", frames)
    b = write_video(tmp_path / "b" / "clip.mp4", frames)
    folder = tmp_path / "person.A"
    for i in range(3):
        save_image(folder / f"{i:03d}.png", frames[i][:, 16:64])
    out = tmp_path / "out"
    rep = convert_videos([a, b, folder], out, size=16, max_frames=3, crop="center", fmt="jpg")
    assert rep.identities == ["clip", "clip-2", "person.A"]
    assert rep.frames == {"clip": 3, "clip-2": 3, "person.A": 3}
    ds = FolderDataset(out)
    assert ds.identity("person.A").frames[2].views[0].image == "images/000002_00.jpg"
    rgb, _ = ds.load_view("person.A", ds.identity("person.A").frames[1].views[0])
    np.testing.assert_allclose(rgb[4:12, 4:12].reshape(-1, 3).mean(0) * 255, [50, 180, 90], atol=6)
    again = convert_videos([a, b, folder], out, size=16, crop="center")
    assert again.existing == ["clip", "clip-2", "person.A"] and again.identities == []
    assert FolderDataset(out).identities == ["clip", "clip-2", "person.A"]
    assert sanitize_id("..weird name!") == "weird_name_"


def test_video_detect_skips_and_counts_frames_without_a_face(tmp_path):
    y, x = np.mgrid[0:48, 0:64]
    frames = [np.stack([(x * 4 + i * 9) % 256, y * 5, np.full_like(x, 80)], -1).astype(np.uint8) for i in range(6)]
    video = write_video(tmp_path / "noface.mp4", frames)
    rep = convert_videos([video], tmp_path / "out", size=32, crop="detect")
    assert rep.skipped_no_face == {"noface": 6} and rep.total_skipped == 6
    assert rep.identities == [] and rep.dropped == ["noface"]
    assert not (tmp_path / "out" / "noface").exists()
    assert FolderDataset(tmp_path / "out").identities == []


def _drawn_face(cx: int, cy: int = 120, h: int = 240, w: int = 320) -> np.ndarray:
    """A cartoon face OpenCV's frontal Haar cascade detects (skin ellipse, eyes, brows, nose, mouth, hair)."""
    img = np.full((h, w, 3), 90, np.uint8)
    cv2.ellipse(img, (cx, cy), (55, 72), 0, 0, 360, (200, 170, 150), -1)
    for dx in (-22, 22):
        cv2.ellipse(img, (cx + dx, cy - 15), (11, 6), 0, 0, 360, (40, 30, 30), -1)
        cv2.line(img, (cx + dx - 14, cy - 30), (cx + dx + 12, cy - 32), (60, 40, 30), 4)
    cv2.line(img, (cx, cy - 8), (cx - 6, cy + 18), (150, 110, 100), 3)
    cv2.ellipse(img, (cx, cy + 35), (20, 7), 0, 0, 360, (130, 60, 60), -1)
    cv2.ellipse(img, (cx, cy - 70), (60, 25), 0, 180, 360, (40, 30, 20), -1)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


@pytest.mark.parametrize("detect_every", [1, 3])
def test_video_detect_follows_a_moving_face_and_skips_faceless_frames(tmp_path, detect_every):
    frames = [_drawn_face(130 + 6 * i) for i in range(9)]
    gap = list(frames)
    gap[3] = np.full_like(frames[0], 90)  # the face leaves for one frame
    videos = [write_video(tmp_path / "face.mp4", frames), write_video(tmp_path / "gap.mp4", gap)]
    rep = convert_videos(videos, tmp_path / "out", size=64, crop="detect", detect_every=detect_every)
    ds = FolderDataset(tmp_path / "out")
    assert [f.index for f in ds.identity("face").frames] == list(range(9))
    assert rep.skipped_no_face["face"] == 0
    if detect_every == 1:
        assert [f.index for f in ds.identity("gap").frames] == [0, 1, 2, 4, 5, 6, 7, 8]
        assert rep.skipped_no_face["gap"] == 1
    else:  # detections on 0, 3 (no face), 6: frames 1-5 lack a face on one side; 7, 8 hold frame 6's box
        assert [f.index for f in ds.identity("gap").frames] == [0, 6, 7, 8]
        assert rep.skipped_no_face["gap"] == 5
    for ident in ("face", "gap"):
        centre_x = []
        for f in ds.identity(ident).frames:  # interpolated frames too: the crop stays on the moving face
            rgb, _ = ds.load_view(ident, f.views[0])
            skin = np.abs(rgb * 255 - np.array([200, 170, 150])).max(-1) < 25
            ys, xs = np.nonzero(skin)
            assert skin.sum() > 300
            assert abs(xs.mean() - 32) < 3 and abs(ys.mean() - 32) < 8
            centre_x.append(xs.mean())
        assert np.ptp(centre_x) < 1.0  # no lag at the ends, no jitter (the face moves 48 px in the source)


def test_smoothing_removes_jitter_and_outliers_but_not_across_gaps():
    t = np.concatenate([np.arange(20), 200 + np.arange(20)]).astype(float)
    truth = np.where(t[:, None] < 100, [[100.0, 80.0, 60.0]], [[300.0, 90.0, 70.0]])
    jitter = np.where(np.arange(40) % 2 == 0, 3.0, -3.0)[:, None] * np.array([[1.0, 1.0, 0.5]])
    boxes = truth + jitter
    boxes[7] += [50.0, -40.0, 30.0]  # one bad detection
    out = smooth_boxes(t, boxes, sigma=2.0)
    assert np.abs(out - truth)[3:17].max() < 1.2  # interior of segment 1 (edges see one-sided jitter)
    assert np.abs(out - truth)[23:37].max() < 1.2
    assert np.abs(out[7] - truth[7]).max() < 2.0  # outlier gone
    assert np.abs(out[19, 0] - 100.0) < 4 and np.abs(out[20, 0] - 300.0) < 4  # segments not mixed


def test_crop_box_pads_outside_the_image_never_smears():
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = np.arange(10)[None, :] * 20 + 10
    out = crop_box(img, 0.0, 5.0, 10.0, 10)  # left half outside the image
    assert (out[:, :5] == 255).all()  # white padding (the models' background), not the edge column
    np.testing.assert_array_equal(out[:, 5:, 0], img[:, :5, 0])


# ---------------------------------------------------------------------------------------- NeRSemble
# Trees are built from the published layouts: v1 (nersemble repository: multi_view_data.py),
# v2 (nersemble-data: constants.ASSETS) and the benchmark (nersemble-benchmark: constants.ASSETS).
SERIALS = ["222200037", "222200038"]
K_V2 = np.array([[8185.07715, 0.0, 1099.70068], [0.0, 8185.32178, 1603.50024], [0.0, 0.0, 1.0]])
"""A real NeRSemble v2 intrinsic matrix (shared by the 16 cameras, for 2200x3208 images)."""


def _w2c(seed):
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = _rot(rng.normal(size=3), rng.uniform(0.2, 1.0))
    m[:3, 3] = rng.normal(size=3) * 0.3 + [0, 0, 1.0]
    return m


def _colour(t, cam):
    return (40 + 30 * t, 60 + 50 * cam, 120)


def _ours(K, scale):
    """K in OpenCV pixel convention at full resolution → ours (centres at +0.5) at 1/scale."""
    out = np.array(K, float)
    out[:2, 2] += 0.5
    out[:2] /= scale
    return out


def _nersemble_tree(root: Path, size=(1100, 1604), K=K_V2) -> None:
    """NeRSemble v1: ROOT/<p>/sequences/<S>/frame_<t>/images-2x-73fps/cam_<serial>.png, alpha_map-73fps,
    ROOT/<p>/camera_params.json (one K for 2200x3208 images, no size stated)."""
    w, h = size
    seqs = {"EXP-1-head": [0, 3, 6], "EMO-1-shout+laugh": [0, 3]}
    for seq, steps in seqs.items():
        for t in steps:
            fdir = root / "018" / "sequences" / seq / f"frame_{t:05d}"
            for c, serial in enumerate(SERIALS):
                save_image(fdir / "images-2x-73fps" / f"cam_{serial}.png",
                           np.zeros((h, w, 3), np.uint8) + np.array(_colour(t, c), np.uint8))
                if c == 0:
                    alpha = np.zeros((h, w), np.uint8)
                    alpha[:, : w // 2] = 255
                    save_image(fdir / "alpha_map-73fps" / f"cam_{serial}.png", alpha)
    doc = {"intrinsics": np.asarray(K).tolist(), "world_2_cam": {s: _w2c(i).tolist() for i, s in enumerate(SERIALS)}}
    (root / "018" / "camera_params.json").write_text(json.dumps(doc))


def test_resolve_intrinsics_on_the_released_numbers():
    from ffavatar.data.nersemble import resolve_intrinsics

    # v1/v2: one K for 2200x3208; delivered 1100x1604 (v1 images-2x, extracted frames) or full size
    half = resolve_intrinsics(K_V2, (1100, 1604), declared=None)
    np.testing.assert_allclose(half, _ours(K_V2, 2), atol=1e-9)
    assert half[1, 2] == pytest.approx(1604 / 2, abs=1e-3)  # the released cy lands on the image centre
    full = resolve_intrinsics(K_V2, (2200, 3208), declared=None)
    assert full[1, 2] == pytest.approx(3208 / 2, abs=1e-3) and full[0, 0] == K_V2[0, 0]
    # the benchmark: per-camera K already at the delivered 1100x1604 or 512x512 → not scaled again
    k_bench = K_V2.copy()
    k_bench[:2] /= 2
    np.testing.assert_allclose(resolve_intrinsics(k_bench, (1100, 1604), declared=None), _ours(k_bench, 1))
    k_mono = np.array([[2300.0, 0, 255.5], [0, 2300.0, 260.1], [0, 0, 1]])
    np.testing.assert_allclose(resolve_intrinsics(k_mono, (512, 512), declared=None), _ours(k_mono, 1))
    # a stated size wins; a K that fits no reading is an error, not a guess
    np.testing.assert_allclose(resolve_intrinsics(K_V2, (550, 802), declared=(2200, 3208)), _ours(K_V2, 4))
    with pytest.raises(InvalidInput, match="fits neither"):
        resolve_intrinsics(np.array([[900.0, 0, 40], [0, 900, 60], [0, 0, 1]]), (1100, 1604), declared=None)
    np.testing.assert_allclose(resolve_intrinsics(K_V2, (1100, 1604), declared=None, pixel_centers="continuous"),
                               scaled_intrinsics(K_V2, (2200, 3208), (1100, 1604)))


def test_nersemble_v1_layout_images_masks_cameras(tmp_path):
    _nersemble_tree(tmp_path)
    src = NeRSembleSource(tmp_path)
    assert src.kind == "multiview" and src.identities == ["018"]
    rec = src.identity("018")
    assert len(rec.frames) == 5 and all(len(f.views) == 2 for f in rec.frames)  # EMO (2) then EXP (3)
    v0, v1 = rec.frames[2].views
    assert (v0.view, v1.view) == (0, 1)
    assert v0.image == "sequences/EXP-1-head/frame_00000/images-2x-73fps/cam_222200037.png"
    assert v0.mask is not None and v1.mask is None
    np.testing.assert_allclose(v0.camera.K, _ours(K_V2, 2), atol=1e-9)
    np.testing.assert_allclose(v0.camera.viewmat, _w2c(0), atol=1e-12)
    assert (v0.camera.width, v0.camera.height) == (1100, 1604)
    # a world point lands at half its full-resolution pixel (continuous coordinates)
    p = np.linalg.inv(_w2c(0))[:3, :3] @ np.array([0.05, -0.02, 0.9]) + np.linalg.inv(_w2c(0))[:3, 3]
    np.testing.assert_allclose(_project(v0.camera.K, v0.camera.viewmat, p),
                               (_project(K_V2, _w2c(0), p) + 0.5) / 2, atol=1e-9)
    rgb, mask = src.load_view("018", v0)
    assert rgb.shape == (1604, 1100, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[::97, ::89].reshape(-1, 3).mean(0) * 255, _colour(0, 0), atol=1)
    np.testing.assert_allclose(mask[:, :540], 1.0) and np.testing.assert_allclose(mask[:, 560:], 0.0)
    assert src.load_view("018", v1)[1] is None
    per = NeRSembleSource(tmp_path, per_sequence=True, every=2, cameras=["222200038"])
    assert per.identities == ["018_EMO-1-shout_laugh", "018_EXP-1-head"]
    rec = per.identity("018_EXP-1-head")
    assert [len(f.views) for f in rec.frames] == [1, 1] and rec.frames[1].views[0].view == 1
    assert rec.frames[1].views[0].image.endswith("frame_00006/images-2x-73fps/cam_222200038.png")
    assert len(NeRSembleSource(tmp_path, max_frames=2).identity("018").frames) == 2
    with pytest.raises(InvalidInput, match="no images"):
        NeRSembleSource(tmp_path, scale=4).identity("018")


def _frame(t, c, w, h):
    img = np.zeros((h, w, 3), np.uint8) + np.array(_colour(t, c), np.uint8)
    img[: h // 8, : w // 8] = (250, 250, 250)  # a marker in the top-left corner
    return img


def _v2_tree(root: Path, size=(1100, 1604), frames=4) -> Path:
    """NeRSemble v2 as downloaded (nersemble-data): <p>/calibration/camera_params.json (one K for
    2200x3208), <p>/sequences/<S>/images/cam_<serial>.mp4; here also alpha maps as videos."""
    w, h = size
    seq = root / "240" / "sequences" / "EXP-4-lips"
    for c, s in enumerate(SERIALS):
        write_video(seq / "images" / f"cam_{s}.mp4", [_frame(t, c, w, h) for t in range(frames)])
    alpha = np.zeros((h, w, 3), np.uint8)
    alpha[:, w // 2:] = 255
    write_video(seq / "alpha_maps" / f"cam_{SERIALS[1]}.mp4", [alpha] * frames)
    (root / "240" / "sequences" / "BACKGROUND").mkdir(parents=True)
    save_image(root / "240" / "sequences" / "BACKGROUND" / f"image_{SERIALS[0]}.jpg", np.zeros((8, 8, 3), np.uint8))
    (root / "240" / "calibration").mkdir(parents=True)
    doc = {"intrinsics": K_V2.tolist(), "world_2_cam": {s: _w2c(i).tolist() for i, s in enumerate(SERIALS)}}
    (root / "240" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    (root / "240" / "calibration" / "color_calibration.json").write_text(json.dumps({s: np.eye(3).tolist()
                                                                                      for s in SERIALS}))
    return seq


def test_nersemble_v2_videos_decoded_on_the_fly(tmp_path):
    _v2_tree(tmp_path)
    src = open_source(tmp_path)
    assert isinstance(src, NeRSembleSource) and src.identities == ["240"]
    rec = src.identity("240")
    assert len(rec.frames) == 4 and [len(f.views) for f in rec.frames] == [2, 2, 2, 2]
    v = rec.frames[2].views[1]
    assert v.image == "sequences/EXP-4-lips/images/cam_222200038.mp4#2"
    assert v.mask == "sequences/EXP-4-lips/alpha_maps/cam_222200038.mp4#2" and rec.frames[2].views[0].mask is None
    np.testing.assert_allclose(v.camera.K, _ours(K_V2, 2), atol=1e-9)  # the video is 1100x1604
    for f in (3, 0, 2, 1):  # random access
        rgb, mask = src.load_view("240", rec.frames[f].views[1])
        assert rgb.shape == (1604, 1100, 3)
        np.testing.assert_allclose(rgb[900:1500, 300:800].reshape(-1, 3).mean(0) * 255, _colour(f, 1), atol=4)
        assert rgb[20, 20].min() > 0.9  # the marker: not flipped
        assert mask[:, :500].max() < 0.1 and mask[:, 600:].min() > 0.9
    assert NeRSembleSource(tmp_path, every=3).identity("240").frames[1].views[0].image.endswith("#3")


def test_data_extract_then_read_the_frames(tmp_path):
    from ffavatar.data.nersemble import extract_frames

    _v2_tree(tmp_path / "v2", size=(220, 320), frames=3)
    K_small = K_V2 / np.array([[10], [10], [1]])  # for this test's 220x320 "full resolution"
    doc = json.loads((tmp_path / "v2" / "240" / "calibration" / "camera_params.json").read_text())
    doc["intrinsics"] = K_small.tolist()
    (tmp_path / "v2" / "240" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    out = tmp_path / "frames"
    rep = extract_frames(tmp_path / "v2", out, scale=2)
    assert rep.written == {"240/EXP-4-lips": 9} and rep.existing == {"240/EXP-4-lips": 0}  # 2 cameras + 1 alpha video, 3 frames
    seq = out / "240" / "sequences" / "EXP-4-lips"
    assert sorted(p.name for p in (seq / "images_2").iterdir())[:2] == ["cam_222200037_00000.jpg",
                                                                        "cam_222200037_00001.jpg"]
    assert (out / "240" / "calibration" / "camera_params.json").is_file()
    again = extract_frames(tmp_path / "v2", out, scale=2)
    assert again.written == {"240/EXP-4-lips": 0} and again.existing == {"240/EXP-4-lips": 9}
    src = NeRSembleSource(out, calib_size=(220, 320))
    rec = src.identity("240")
    v = rec.frames[1].views[1]
    assert v.image == "sequences/EXP-4-lips/images_2/cam_222200038_00001.jpg"
    assert v.mask == "sequences/EXP-4-lips/alpha_maps/cam_222200038_00001.png"
    np.testing.assert_allclose(v.camera.K, _ours(K_small, 2), atol=1e-9)
    rgb, mask = src.load_view("240", v)
    assert rgb.shape == (160, 110, 3)
    np.testing.assert_allclose(rgb[90:150, 30:80].reshape(-1, 3).mean(0) * 255, _colour(1, 1), atol=4)
    assert mask[:, :50].max() < 0.1 and mask[:, 60:].min() > 0.9


def _benchmark_tree(root: Path, n=5) -> None:
    """nersemble-benchmark: ROOT/nvs/<p>/... at 1100x1604 (here 110x160 with its own K) and
    ROOT/mono_flame_avatar/<p>/... at 512x512, per-camera intrinsics at the delivered size."""
    nvs = root / "nvs" / "388"
    for c, s in enumerate(SERIALS):
        write_video(nvs / "sequences" / "GLASSES" / "images" / f"cam_{s}.mp4", [_frame(t, c, 110, 160) for t in range(3)])
    k_nvs = {s: [[409.0 + c, 0, 54.9], [0, 409.0, 80.2], [0, 0, 1]] for c, s in enumerate(SERIALS)}
    (nvs / "calibration").mkdir(parents=True)
    (nvs / "calibration" / "camera_params.json").write_text(json.dumps(
        {"intrinsics": k_nvs, "world_2_cam": {s: _w2c(i).tolist() for i, s in enumerate(SERIALS + ["222200046"])}
         | {}}))
    doc = json.loads((nvs / "calibration" / "camera_params.json").read_text())
    doc["intrinsics"]["222200046"] = k_nvs[SERIALS[0]]  # a hold-out camera: calibrated, no video
    (nvs / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    mono = root / "mono_flame_avatar" / "461"
    write_video(mono / "sequences" / "EXP-1-head" / "images" / "cam_222200037.mp4",
                [_frame(t, 0, 512, 512) for t in range(n)])
    (mono / "sequences" / "FREE" / "tracking").mkdir(parents=True)  # a test sequence: tracking, no video
    (mono / "calibration").mkdir(parents=True)
    (mono / "calibration" / "camera_params.json").write_text(json.dumps(
        {"intrinsics": {"222200037": [[2300.0, 0, 255.5], [0, 2300.0, 257.0], [0, 0, 1]]},
         "world_2_cam": {"222200037": _w2c(7).tolist()}}))


def test_nersemble_benchmark_layout_keeps_delivered_intrinsics(tmp_path):
    _benchmark_tree(tmp_path)
    src = open_source(tmp_path)  # the benchmark folder itself
    assert src.identities == ["388", "461"]
    rec = src.identity("388")
    assert len(rec.frames) == 3 and [v.view for v in rec.frames[0].views] == [0, 1]  # 222200046: no video
    np.testing.assert_allclose(rec.frames[0].views[1].camera.K, [[410.0, 0, 55.4], [0, 409.0, 80.7], [0, 0, 1]])
    mono = src.identity("461")
    cam = mono.frames[0].views[0].camera
    assert (cam.width, cam.height) == (512, 512)  # the 512x512 track passes (no aspect check against 2200x3208)
    np.testing.assert_allclose(cam.K, [[2300.0, 0, 256.0], [0, 2300.0, 257.5], [0, 0, 1]])
    assert len(mono.frames) == 5 and all(f.expression is None for f in mono.frames)
    only = NeRSembleSource(tmp_path / "mono_flame_avatar")  # one task folder works too
    assert only.identities == ["461"]


# ---------------------------------------------------------------------------------------- Ava-256
AVA_CAMS = ["400001", "400002"]


def _ava_camera(i):
    K = np.array([[9000.0 + 100 * i, 0, 1300.0 + 10 * i], [0, 9010.0, 2000.0 - 5 * i], [0, 0, 1]])
    R = _rot([0.2, 1.0, 0.1 * i], 0.3 + 0.2 * i)
    t_mm = np.array([-50.0 + 20 * i, 30.0, 1100.0])
    return K, R, t_mm


def _avif(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="AVIF", quality=95)
    data = buf.getvalue()
    assert data[4:12] == b"ftypavif"
    return data


def _label_png(labels: np.ndarray, palette: bool) -> bytes:
    """A segmentation PNG: palette mode (indices + a colour table whose entries are NOT the labels), or grey."""
    from PIL import Image

    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putdata(labels.reshape(-1).tolist())
        im.putpalette([v for i in range(256) for v in ((37 * i + 90) % 256, (11 * i) % 256, 200)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _ava_tree(root: Path, krt_text: bool = False) -> Path:
    dec = root / "20230405--1635--AAN112" / "decoder"
    dec.mkdir(parents=True)
    if krt_text:
        lines = []
        for i, c in enumerate(AVA_CAMS):
            K, R, t = _ava_camera(i)
            lines += [c] + [" ".join(f"{v:.17g}" for v in row) for row in K] + ["0.0 0.0 0.0 0.0 0.0"]
            lines += [" ".join(f"{v:.17g}" for v in row) for row in np.hstack([R, t[:, None]])] + [""]
        (dec / "KRT").write_text("\n".join(lines))
    else:
        krt = []
        for i, c in enumerate(AVA_CAMS):
            K, R, t = _ava_camera(i)
            M = np.eye(4)
            M[:3, :3], M[:3, 3] = R, t
            krt.append({"cameraId": c, "K": K.T.tolist(), "T": M.T.tolist(), "distortion": [0.0] * 4,
                        "projectionModel": "Pinhole"})
        (dec / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
    with open(dec / "frame_list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seg_id", "frame_id"])
        for f in range(6):
            w.writerow(["EXP_neutral_peak" if f < 3 else "EXP_free_face", f])
    ext = ".avif"  # as released (Pillow >= 11.3 writes and reads AVIF on every platform)
    (dec / "image").mkdir()
    (dec / "segmentation_parts").mkdir()
    (dec / "head_pose").mkdir()
    labels = np.zeros((40, 26), np.uint8)
    labels[:, 8:18] = 2  # body/face
    labels[30:, 18:] = 3  # chair
    with zipfile.ZipFile(dec / "image" / "cam400001.zip", "w") as zimg, \
            zipfile.ZipFile(dec / "segmentation_parts" / "cam400001.zip", "w") as zseg, \
            zipfile.ZipFile(dec / "head_pose" / "head_pose.zip", "w") as zpose:
        for f in range(6):
            img = np.zeros((40, 26, 3), np.uint8) + np.array([30 + 20 * f, 100, 160], np.uint8)
            zimg.writestr(f"cam400001/{f:06d}{ext}", _avif(img))
            zseg.writestr(f"cam400001/{f:06d}.png", _label_png(labels, palette=f % 2 == 0))
            H = np.hstack([_rot([0, 1, 0], 0.05 * f), [[1.0 * f], [-2.0], [30.0]]])
            zpose.writestr(f"{f:06d}.txt", "\n".join(" ".join(f"{v:.17g}" for v in r) for r in H))
    for f in range(6):
        if f != 4:  # a dropped frame on the unzipped camera
            img = np.zeros((40, 26, 3), np.uint8) + np.array([200, 20 + 30 * f, 60], np.uint8)
            save_image(dec / "image" / "cam400002" / f"{f:06d}.png", img)
    return dec


def _ava_expected(i, size=(26, 40)):
    K, R, t = _ava_camera(i)
    Ks = K.copy()
    Ks[0] *= size[0] / 2668
    Ks[1] *= size[1] / 4096
    vm = np.eye(4)
    vm[:3, :3], vm[:3, 3] = R, t / 1000.0
    return Ks, vm


@pytest.mark.parametrize("krt_text", [False, True])
def test_ava256_cameras_images_masks_and_dropped_frames(tmp_path, krt_text):
    _ava_tree(tmp_path, krt_text)
    src = Ava256Source(tmp_path, every=2)
    assert src.identities == ["20230405--1635--AAN112"] and src.kind == "multiview"
    ident = src.identities[0]
    rec = src.identity(ident)
    assert [f.index for f in rec.frames] == [0, 2, 4]
    assert [len(f.views) for f in rec.frames] == [2, 2, 1]  # cam400002 dropped frame 4
    for i, v in enumerate(rec.frames[0].views):
        assert v.view == i
        K, vm = _ava_expected(i)
        np.testing.assert_allclose(v.camera.K, K, rtol=1e-12)
        np.testing.assert_allclose(v.camera.viewmat, vm, atol=1e-12)
        assert (v.camera.width, v.camera.height) == (26, 40)
    v0, v1 = rec.frames[1].views
    assert v0.image.startswith("image/cam400001.zip!cam400001/000002.") and v1.image == "image/cam400002/000002.png"
    assert v0.mask == "segmentation_parts/cam400001.zip!cam400001/000002.png" and v1.mask is None
    rgb, mask = src.load_view(ident, v0)
    assert rgb.shape == (40, 26, 3)
    np.testing.assert_allclose(rgb[10:30, 5:20].reshape(-1, 3).mean(0) * 255, [70, 100, 160], atol=6)
    assert mask[5, 10] == 1.0 and mask[5, 2] == 0.0 and mask[35, 22] == 0.0 and mask[5, 22] == 0.0
    rgb1, mask1 = src.load_view(ident, v1)
    np.testing.assert_allclose(rgb1[0, 0] * 255, [200, 80, 60], atol=0.51)
    assert mask1 is None


def test_ava256_head_frame_segments_and_max_frames(tmp_path):
    dec = _ava_tree(tmp_path)
    src = Ava256Source(dec, every=1, segments=["EXP_free_face"], head_frame=True, cameras=["cam400001"])
    ident = src.identities[0]
    assert ident == "20230405--1635--AAN112"  # the decoder folder names its capture
    rec = src.identity(ident)
    assert [f.index for f in rec.frames] == [3, 4, 5] and all(len(f.views) == 1 for f in rec.frames)
    f = 5
    H = np.eye(4)
    H[:3, :3], H[:3, 3] = _rot([0, 1, 0], 0.05 * f), [f / 1000.0, -0.002, 0.03]
    _, vm = _ava_expected(0)
    np.testing.assert_allclose(rec.frames[2].views[0].camera.viewmat, vm @ H, atol=1e-12)
    assert len(Ava256Source(tmp_path, every=1, max_frames=4).identity(ident).frames) == 4


# ---------------------------------------------------------------------------------------- specs
def test_open_source_detects_each_kind_and_parses_options(tmp_path):
    _nersemble_tree(tmp_path / "ners", size=(11, 16), K=K_V2 / np.array([[100], [100], [1]]))
    _ava_tree(tmp_path / "ava")
    assert isinstance(open_source(tmp_path / "ners"), NeRSembleSource)
    src = open_source(f"nersemble:{tmp_path / 'ners'}?per_sequence=true&every=2&participants=18&calib_size=22x32")
    assert src.identities == ["018_EMO-1-shout_laugh", "018_EXP-1-head"] and src.every == 2
    ava = open_source(f"ava256:{tmp_path / 'ava'}?every=3&head_frame=false")
    assert isinstance(ava, Ava256Source) and ava.every == 3
    assert isinstance(open_source(tmp_path / "ava"), Ava256Source)

    folder = tmp_path / "folder"
    rec = IdentityRecord(id="p0", frames=[FrameRecord(index=i, views=[ViewRecord(0, f"images/{i:06d}_00.png")])
                                          for i in range(2)])
    write_identity(folder, rec, [[(np.full((4, 4, 3), 9 * i, np.uint8), None)] for i in range(2)])
    write_dataset_index(folder, "monocular", ["p0"])
    assert isinstance(open_source(folder), FolderDataset) and isinstance(open_source(f"folder:{folder}"), FolderDataset)

    pack(FolderDataset(folder), tmp_path / "shards")
    spec = open_source(tmp_path / "shards")
    assert isinstance(spec, ShardSpec) and spec.is_stream and spec.num_identities == 1 and spec.kind == "monocular"
    assert isinstance(open_source(f"shards:{tmp_path / 'shards' / 'shard-000000.tar'}"), ShardSpec)
    with pytest.raises(InvalidInput, match="stream of tar shards"):
        spec.identities
    with pytest.raises(InvalidInput, match="unknown option"):
        open_source(f"nersemble:{tmp_path / 'ners'}?bogus=1")
    with pytest.raises(InvalidInput, match="unknown option"):
        open_source(f"folder:{folder}?every=2")
    with pytest.raises(InvalidInput, match="takes no options"):
        open_source(folder, every=2)
    write_video(tmp_path / "v.mp4", _clip_frames(2))
    with pytest.raises(InvalidInput, match="from-video"):
        open_source(tmp_path / "v.mp4")
    with pytest.raises(NotFound):
        open_source(tmp_path / "missing")
    assert parse_spec("C:/data")[0] is None


# ---------------------------------------------------------------------------------------- sampler
def test_sampler_focal_is_normalized_by_the_padded_square_not_the_width():
    from ffavatar.data.folder import CameraRecord
    from ffavatar.data.sampler import SamplerConfig, normalized_focal, sample_few_to_many

    W, H, fx, S = 6, 10, 18.0, 20
    cam = CameraRecord(K=[[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1]], viewmat=np.eye(4).tolist(), width=W, height=H)
    assert normalized_focal(cam) == pytest.approx(1.8)  # fx / H; fx / W (3.0) would be off by H/W
    # the geometry behind it: a point's pixel after padding W to H and resizing to S equals the
    # projection with focal f*S and a centred principal point
    x, z = 0.1, 1.0
    u = fx * x / z + W / 2
    u_square = (u + (H - W) / 2) * S / H
    assert u_square == pytest.approx(normalized_focal(cam) * S * x / z + S / 2)
    rec = IdentityRecord(id="p", frames=[FrameRecord(index=i, views=[ViewRecord(0, f"images/{i}.png", camera=cam)])
                                         for i in range(3)])
    out = sample_few_to_many(rec, lambda v: (np.zeros((H, W, 3), np.float32), None), np.random.default_rng(0),
                             SamplerConfig(max_sources=1, targets=2, size=S))
    np.testing.assert_allclose(out["target_focal"].numpy(), [1.8, 1.8], rtol=1e-6)


@pytest.mark.parametrize("palette", [True, False])
def test_ava256_segmentation_labels_are_indices_in_palette_and_grey_pngs(tmp_path, palette):
    from PIL import Image

    from ffavatar.data.ava256 import _decode_labels

    labels = np.zeros((40, 26), np.uint8)
    labels[:, 8:18] = 2
    labels[30:, 18:] = 3
    data = _label_png(labels, palette)
    assert Image.open(io.BytesIO(data)).mode == ("P" if palette else "L")
    np.testing.assert_array_equal(_decode_labels(data), labels)
    _ava_tree(tmp_path)
    src = Ava256Source(tmp_path, every=1, cameras=["400001"])
    ident = src.identities[0]
    frame = src.identity(ident).frames[0 if palette else 1]  # even frames hold palette PNGs, odd ones grey
    _, mask = src.load_view(ident, frame.views[0])
    np.testing.assert_array_equal(mask, (labels == 2).astype(np.float32))  # 0 background, 3 chair
    rgb = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    with pytest.raises(InvalidInput, match="RGB image"):
        _decode_labels(buf.getvalue())


def test_ava256_avif_decodes_through_pillow(tmp_path):
    from ffavatar.data.ava256 import avif_support, decode_ava_image

    assert avif_support()  # a dependency: Pillow >= 11.3 (its wheels carry libavif everywhere)
    img = np.zeros((40, 26, 3), np.uint8) + np.array([90, 100, 160], np.uint8)
    img[:, 13:] = (220, 40, 30)
    out = decode_ava_image(_avif(img), "cam400001/000000.avif")
    assert out.shape == (40, 26, 3)
    np.testing.assert_allclose(out[5:35, 2:10].reshape(-1, 3).mean(0), [90, 100, 160], atol=6)
    np.testing.assert_allclose(out[5:35, 17:24].reshape(-1, 3).mean(0), [220, 40, 30], atol=8)


# ---------------------------------------------------------------------------------------- FLAME tracking
def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _tracking_npz(path: Path, T: int, n_shape: int, n_expr: int, seed=0, frames=None) -> dict:
    """A flame2023_tracking_v2.npz of the benchmark's structure (FlameTracking fields)."""
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-0.6, 0.6, (T, 3))
    d = {"shape": rng.normal(size=(1, n_shape)), "expression": rng.normal(size=(T, n_expr)) * 0.5,
         "rotation": rot, "rotation_matrices": np.stack([_rx(a) @ _ry(b) @ _rz(c) for a, b, c in rot]),
         "translation": rng.normal(size=(T, 3)) * 0.05 + [0, 0, 0.1], "jaw": rng.uniform(0, 0.2, (T, 3)),
         "frames": np.arange(T) if frames is None else np.asarray(frames), "scale": np.array([[1.3]]),
         "neck": rng.normal(size=(T, 3)) * 0.05, "eyes": rng.normal(size=(T, 6)) * 0.05}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **d)
    return d


def test_tracking_euler_xyz_and_the_exact_conversion_to_our_root_pose(tmp_path, tiny_flame):
    from scipy.spatial.transform import Rotation

    from ffavatar.data.nersemble_tracking import FlameTracking
    from ffavatar.flame import FlameModel

    d = _tracking_npz(tmp_path / "t.npz", T=4, n_shape=6, n_expr=4)
    tr = FlameTracking.load(tmp_path / "t.npz")
    np.testing.assert_allclose(tr.rotation_matrices(), d["rotation_matrices"], atol=1e-12)  # Rx @ Ry @ Rz
    pose = tr.pose()
    for i in range(4):  # the root axis-angle is that rotation; the other joints as tracked
        np.testing.assert_allclose(Rotation.from_rotvec(pose[i, 0]).as_matrix(), d["rotation_matrices"][i], atol=1e-12)
    np.testing.assert_array_equal(pose[:, 2], d["jaw"])
    np.testing.assert_array_equal(pose[:, 3:].reshape(4, 6), d["eyes"])
    flame = FlameModel(tiny_flame, dtype=torch.float64)
    shape = torch.tensor(np.tile(d["shape"], (4, 1)))
    expr = torch.tensor(d["expression"])
    # the benchmark's FLAME: zero root rotation, then x_world = scale * R @ x + translation
    pose0 = torch.tensor(pose).clone()
    pose0[:, 0] = 0
    ref = flame(shape=shape, expression=expr, pose=pose0).vertices.numpy()
    world = 1.3 * np.einsum("tij,tvj->tvi", d["rotation_matrices"], ref) + d["translation"][:, None]
    # ours: the root joint carries the rotation; tau and the scale place it
    j0 = flame(shape=shape, expression=expr).joints[:, 0].numpy()
    tau = tr.flame_translation(j0)
    ours = flame(shape=shape, expression=expr, pose=torch.tensor(pose), translation=torch.tensor(tau)).vertices.numpy()
    np.testing.assert_allclose(1.3 * ours, world, atol=1e-9)  # smplx rodrigues adds 1e-8 to angles
    # a camera of the world sees FLAME(pose) (no translation) in FLAME's frame through camera_in_flame
    K = np.array([[500.0, 0, 256], [0, 500, 256], [0, 0, 1]])
    vm = _w2c(3)
    vm_f = tr.camera_in_flame(vm, tau)
    posed = ours - tau[:, None]
    for i in range(4):
        np.testing.assert_allclose(_project(K, vm_f[i], posed[i]), _project(K, vm, world[i]), atol=1e-7)
        np.testing.assert_allclose(vm_f[i, :3, :3] @ vm_f[i, :3, :3].T, np.eye(3), atol=1e-12)  # rigid


def test_tracking_refuses_another_rotation_convention(tmp_path):
    from ffavatar.data.nersemble_tracking import FlameTracking

    d = _tracking_npz(tmp_path / "t.npz", T=3, n_shape=6, n_expr=4)
    d["rotation_matrices"] = np.stack([_rz(c) @ _ry(b) @ _rx(a) for a, b, c in d["rotation"]])  # extrinsic xyz
    np.savez(tmp_path / "zyx.npz", **d)
    with pytest.raises(InvalidInput, match="unknown rotation convention"):
        FlameTracking.load(tmp_path / "zyx.npz")


def test_nersemble_mono_benchmark_with_tracking(tmp_path, tiny_flame, monkeypatch):
    _benchmark_tree(tmp_path, n=5)
    seq = tmp_path / "mono_flame_avatar" / "461" / "sequences" / "EXP-1-head"
    d = _tracking_npz(seq / "tracking" / "flame2023_tracking_v2.npz", T=4, n_shape=6, n_expr=4,
                      frames=[0, 1, 2, 4])  # frame 3 untracked
    flame_file = tmp_path / "flame.npz"
    np.savez(flame_file, **tiny_flame)
    monkeypatch.delenv("FFAVATAR_FLAME", raising=False)
    with pytest.raises(InvalidInput, match="needs the FLAME 2023 model"):
        NeRSembleSource(tmp_path / "mono_flame_avatar", tracking=True)
    src = open_source(f"nersemble:{tmp_path / 'mono_flame_avatar'}?tracking=true&flame={flame_file}"
                      "&sequences=EXP-1-head")
    rec = src.identity("461")
    assert len(rec.frames) == 4  # the untracked frame is left out
    np.testing.assert_allclose(rec.shape, d["shape"][0])
    f3 = rec.frames[3]  # video frame 4 = tracking row 3
    assert f3.views[0].image.endswith("cam_222200037.mp4#4")
    np.testing.assert_allclose(f3.expression, d["expression"][3])
    np.testing.assert_allclose(np.asarray(f3.pose)[2], d["jaw"][3])
    # the camera in FLAME's frame projects our posed FLAME where the benchmark's world FLAME projects
    from ffavatar.flame import FlameModel

    flame = FlameModel(tiny_flame, dtype=torch.float64)
    shape, expr = torch.tensor(d["shape"]), torch.tensor(d["expression"][3:4])
    pose0 = torch.tensor(np.asarray(f3.pose))[None].clone()
    pose0[:, 0] = 0
    world = 1.3 * flame(shape=shape, expression=expr, pose=pose0).vertices[0].numpy() @ d["rotation_matrices"][3].T \
        + d["translation"][3]
    j0 = flame(shape=shape, expression=expr).joints[0, 0].numpy()
    tau = d["translation"][3] / 1.3 - (j0 - d["rotation_matrices"][3] @ j0)
    ours = flame(shape=shape, expression=expr, pose=torch.tensor(f3.pose)[None]).vertices[0].numpy()
    np.testing.assert_allclose(1.3 * (ours + tau), world, atol=1e-8)  # 10 nm: rodrigues epsilon
    cam = f3.views[0].camera
    for k in (0, 100, 200):
        np.testing.assert_allclose(_project(cam.K, cam.viewmat, ours[k:k + 1]),
                                   _project(cam.K, _w2c(7), world[k:k + 1]), atol=1e-4)  # pixels
    from ffavatar.data.sampler import SamplerConfig, sample_few_to_many

    out = sample_few_to_many(rec, lambda v: src.load_view("461", v), np.random.default_rng(0),
                             SamplerConfig(max_sources=1, targets=2, size=32))
    assert out["target_pose"].shape == (2, 5, 3) and out["target_expression"].shape == (2, 4)


def test_cli_data_extract_in_place_then_info(tmp_path, capsys):
    from ffavatar.cli import main

    _v2_tree(tmp_path, size=(110, 160), frames=3)
    doc = json.loads((tmp_path / "240" / "calibration" / "camera_params.json").read_text())
    doc["intrinsics"] = (K_V2 / np.array([[20], [20], [1]])).tolist()  # this test's 110x160 "full resolution"
    (tmp_path / "240" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    assert main(["data", "extract", str(tmp_path), "--scale", "1", "--every", "2", "--cameras", "222200037"]) == 0
    assert "wrote 2 frames of 1 sequences" in capsys.readouterr().out
    images = tmp_path / "240" / "sequences" / "EXP-4-lips" / "images"
    assert sorted(p.name for p in images.iterdir()) == ["cam_222200037.mp4", "cam_222200037_00000.jpg",
                                                         "cam_222200037_00002.jpg", "cam_222200038.mp4"]
    src = NeRSembleSource(tmp_path, scale=1, calib_size=(110, 160))
    assert [f.views[0].image.rsplit("/", 1)[1] for f in src.identity("240").frames] == [
        "cam_222200037_00000.jpg", "cam_222200037_00002.jpg"]  # extracted frames win over the videos
    assert main(["data", "info", f"nersemble:{tmp_path}?scale=1&calib_size=110x160"]) == 0
    assert "1 identities, 2 images" in capsys.readouterr().out


def test_from_video_groups_a_multiview_video_set_into_one_identity(tmp_path, capsys):
    from ffavatar.cli import main
    from ffavatar.data.video import group_clips

    seq = tmp_path / "240" / "sequences" / "EXP-4-lips" / "images"
    cams = [write_video(seq / f"cam_{s}.mp4", [_frame(t, c, 40, 48) for t in range(3)])
            for c, s in enumerate(reversed(SERIALS))]  # given in reverse serial order
    talk = write_video(tmp_path / "talk.mp4", _clip_frames(3))
    assert group_clips([*cams, talk]) == [("240_EXP-4-lips", sorted(cams)), ("talk", [talk])]
    out = tmp_path / "out"
    assert main(["data", "from-video", *map(str, cams), str(talk), "-o", str(out), "--crop", "center",
                 "--size", "32"]) == 0
    assert "wrote 2 identities" in capsys.readouterr().out
    ds = FolderDataset(out)
    assert ds.kind == "multiview" and ds.identities == ["240_EXP-4-lips", "talk"]
    rec = ds.identity("240_EXP-4-lips")
    assert [f.index for f in rec.frames] == [0, 1, 2] and all(len(f.views) == 2 for f in rec.frames)
    v0, v1 = rec.frames[2].views
    assert (v0.view, v0.image, v1.view, v1.image) == (0, "images/000002_00.png", 1, "images/000002_01.png")
    for v, cam in ((v0, 1), (v1, 0)):  # view 0 = the lower serial = the clip written with colour index 1
        rgb, _ = ds.load_view("240_EXP-4-lips", v)
        np.testing.assert_allclose(rgb[20:30, 10:25].reshape(-1, 3).mean(0) * 255, _colour(2, cam), atol=6)
    assert len(ds.identity("talk").frames[0].views) == 1


def test_root_joints_match_the_flame_model(tiny_flame):
    from ffavatar.data.nersemble import root_joints
    from ffavatar.flame import FlameModel

    flame = FlameModel(tiny_flame, dtype=torch.float64)
    rng = np.random.default_rng(2)
    shape, expr = rng.normal(size=5), rng.normal(size=(3, 4))  # fewer shape components than the model
    ref = flame(shape=torch.tensor(np.tile(shape, (3, 1))), expression=torch.tensor(expr),
                pose=torch.tensor(rng.normal(size=(3, 5, 3)) * 0.3)).joints[:, 0].numpy()
    np.testing.assert_allclose(root_joints(flame, shape, expr), ref, atol=1e-12)
