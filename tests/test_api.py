"""The public API on CPU with the tiny model: views, order invariance, files, tracking, animation,
personalization, cancel; and the CLI end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ffavatar_testdata import make_tiny_flame
from ffavatar.api import Avatar, FlameTrack, Reconstructor, save_checkpoint
from ffavatar.errors import Cancelled, CheckpointError, HeadModelMismatch, InvalidInput
from ffavatar.images import save_image


@pytest.fixture(scope="module")
def flame_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("flame") / "tiny.npz"
    np.savez(path, **make_tiny_flame())
    return path


@pytest.fixture(scope="module")
def rec(flame_file):
    torch.manual_seed(0)
    return Reconstructor.from_checkpoint(None, device="cpu", flame=flame_file)


def _portraits(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        blob = np.exp(-((xx - 0.5 + 0.05 * i) ** 2 + (yy - 0.5) ** 2) / 0.06)[..., None]
        img = 1 - blob * (1 - rng.uniform(0.2, 0.8, 3))
        out.append((img * 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("views", [1, 2, 4, 7])
def test_reconstruct_any_number_of_views(rec, views):
    avatar = rec.reconstruct(_portraits(views), crop="none")
    n = rec.pipeline.animator.num_points
    assert avatar.canonical.means.shape == (n, 3) and avatar.shape.shape == (rec.pipeline.flame.n_shape,)
    assert avatar.metadata["views"] == views and len(avatar.metadata["source_images"]) == views


def test_avatar_does_not_depend_on_view_order(rec):
    imgs = _portraits(4)
    a = rec.reconstruct(imgs, crop="none")
    b = rec.reconstruct(imgs[::-1], crop="none")
    for k in ("means", "sh", "log_scales", "opacity_logits"):
        torch.testing.assert_close(getattr(a.canonical, k), getattr(b.canonical, k), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.shape, b.shape, atol=1e-5, rtol=1e-5)


def test_avatar_file_round_trip_and_head_mismatch(rec, tmp_path):
    avatar = rec.reconstruct(_portraits(2), crop="none")
    path = avatar.save(tmp_path / "a.ffa")
    back = Avatar.load(path, rec)
    for k in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(back.canonical, k), getattr(avatar.canonical, k))
    assert torch.equal(back.shape, avatar.shape)
    assert back.metadata["source_images"] == avatar.metadata["source_images"]
    other_file = tmp_path / "other.npz"
    np.savez(other_file, **make_tiny_flame(seed=1))
    other = Reconstructor.from_checkpoint(None, device="cpu", flame=other_file)
    with pytest.raises(HeadModelMismatch, match="head model"):
        Avatar.load(path, other)
    with pytest.raises(CheckpointError, match="not found"):
        Avatar.load(path.with_suffix(".missing"), rec)
    (tmp_path / "junk.ffa").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError):
        Avatar.load(tmp_path / "junk.ffa", rec)


def test_checkpoint_round_trip_is_bit_exact(rec, flame_file, tmp_path):
    path = save_checkpoint(tmp_path / "ck.safetensors", rec.pipeline, {"image_size": 64})
    again = Reconstructor.from_checkpoint(path, device="cpu", flame=flame_file)
    a, b = rec.pipeline.net.state_dict(), again.pipeline.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.image_size == 64
    other_file = tmp_path / "other.npz"
    np.savez(other_file, **make_tiny_flame(seed=2))
    with pytest.raises(HeadModelMismatch):
        Reconstructor.from_checkpoint(path, device="cpu", flame=other_file)
    with pytest.raises(CheckpointError, match="avatar"):
        Reconstructor.from_checkpoint(rec.reconstruct(_portraits(1), crop="none").save(tmp_path / "x.ffa"),
                                      device="cpu", flame=flame_file)


def test_track_animate_render_and_cancel(rec, tmp_path):
    avatar = rec.reconstruct(_portraits(2), crop="none")
    driver = _portraits(3, seed=5)
    track = avatar.track(driver, fps=30, crop="none")
    assert len(track) == 3 and track.pose.shape == (3, 5, 3) and track.fps == 30
    back = FlameTrack.load(track.save(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.expression, track.expression)
    assert back.expression_names == rec.expression_names
    frames = list(avatar.animate(driver, size=48, crop="none"))
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (48, 48, 3) and frames[0].alpha.shape == (48, 48)
    for k, v in track.frame(2).items():
        np.testing.assert_allclose(frames[2].params[k], v, rtol=1e-6)
    rendered = avatar.render(track, size=48)
    np.testing.assert_array_equal(rendered[1], frames[1].image)
    assert frames[0].alpha.max() > 200  # the head is in view of the predicted camera
    calls = []
    with pytest.raises(Cancelled):
        list(avatar.animate(driver, size=48, crop="none", cancel=lambda: calls.append(1) or len(calls) > 1))
    with pytest.raises(InvalidInput, match="crop"):
        rec.reconstruct(_portraits(1), crop="magic")


def test_personalization_raises_input_view_psnr(rec):
    avatar = rec.reconstruct(_portraits(2), crop="none")
    steps = []
    r = avatar.personalize(steps=30, progress=lambda f, m: steps.append(f))
    assert r["psnr_after"] > r["psnr_before"] + 1.0, r
    assert steps[-1] == 1.0
    start = rec.reconstruct(_portraits(2), crop="none")
    drift = {}
    for prior in (0.0, 100.0):
        a = rec.reconstruct(_portraits(2), crop="none")
        a.personalize(steps=15, prior=prior)
        drift[prior] = float((a.canonical.sh - start.canonical.sh).abs().mean())
    assert drift[100.0] < 0.7 * drift[0.0], drift  # the prior holds the prediction back


def test_cli_end_to_end(rec, flame_file, tmp_path):
    ck = save_checkpoint(tmp_path / "ck.safetensors", rec.pipeline, {"image_size": 64})
    for i, img in enumerate(_portraits(3)):
        save_image(tmp_path / "in" / f"p{i}.png", img)
    common = ["--checkpoint", str(ck), "--flame", str(flame_file), "--device", "cpu", "--crop", "none"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "ffavatar.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    r = run("reconstruct", *[str(p) for p in sorted((tmp_path / "in").iterdir())], "-o", str(tmp_path / "a.ffa"),
            "--personalize-steps", "3", *common)
    assert r.returncode == 0, r.stderr
    assert "personalized 3 steps" in r.stdout
    r = run("animate", str(tmp_path / "a.ffa"), "--driver", str(tmp_path / "in"), "-o", str(tmp_path / "anim"),
            "--size", "32", *common)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "anim" / "frames").glob("*.png"))) == 3
    assert len(FlameTrack.load(tmp_path / "anim" / "track.npz")) == 3
    assert (tmp_path / "anim" / "animation.mp4").stat().st_size > 0
    r = run("export-ply", str(tmp_path / "a.ffa"), "-o", str(tmp_path / "a.ply"), *common)
    assert r.returncode == 0 and (tmp_path / "a.ply").read_bytes().startswith(b"ply")
    r = run("reconstruct", str(tmp_path / "missing.png"), "-o", str(tmp_path / "b.ffa"), *common)
    assert r.returncode == 2 and "error [image_decode]" in r.stderr
