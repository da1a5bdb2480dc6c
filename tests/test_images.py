"""Images and clips as users have them: EXIF rotation, bad bytes, limits, crops, videos, folders."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ffavatar.errors import ImageDecodeError, InvalidInput, LimitExceeded, NoFaceFound
from ffavatar.images import (crop_portrait, decode_image, encode_image, load_image, read_frames, save_image,
                             write_video)


def _gradient(h=20, w=40):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def test_png_round_trip_is_exact_and_rgb_order_kept():
    img = _gradient()
    out = decode_image(encode_image(img, "png"))
    np.testing.assert_array_equal(out, img)
    assert out[0, -1, 0] == 255 and out[0, -1, 1] == 0  # red grows to the right: channels not swapped


def test_exif_orientation_is_honoured():
    img = _gradient(20, 40)
    jpeg = _with_exif_orientation(encode_image(img, "jpeg", quality=98), 6)  # 6 = rotate 90° clockwise
    out = decode_image(jpeg)
    assert out.shape == (40, 20, 3)
    rotated = np.rot90(img, k=-1)
    assert np.abs(out.astype(int) - rotated.astype(int)).mean() < 4


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30])
def test_undecodable_bytes_give_clear_errors(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_pixel_limit_and_missing_file(tmp_path):
    with pytest.raises(LimitExceeded, match="limit"):
        decode_image(encode_image(_gradient(100, 100), "png"), max_pixels=5_000)
    bomb = encode_image(np.zeros((4000, 3000), np.uint8), "png")  # small file, 12 Mpx
    with pytest.raises(LimitExceeded, match="3000x4000"):
        decode_image(bomb, max_pixels=1_000_000)
    with pytest.raises(LimitExceeded, match="40x100"):
        decode_image(encode_image(_gradient(100, 40), "jpeg"), max_pixels=1_000)
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidInput, match="format"):
        encode_image(_gradient(), "gif")


def test_center_crop_geometry_and_no_face():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 200  # the centred 100x100 square is bright, the sides dark
    out = crop_portrait(img, 50, detect=False)
    assert out.shape == (50, 50, 3) and out.min() == 200
    with pytest.raises(NoFaceFound, match="no face"):
        crop_portrait(np.full((120, 120, 3), 90, np.uint8), 64, detect=True)


def test_frames_from_folder_list_and_video(tmp_path):
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(5)]
    for i, f in enumerate(frames):
        save_image(tmp_path / "clip" / f"{i:03d}.png", f)
    got = list(read_frames(tmp_path / "clip"))
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, frames))
    assert len(list(read_frames([tmp_path / "clip" / "001.png"] * 3))) == 3
    video = write_video(tmp_path / "clip.mp4", frames, fps=10)
    vid = list(read_frames(video))
    assert len(vid) == 5 and vid[0].shape == (32, 48, 3)
    assert all(abs(float(a.mean()) - float(b.mean())) < 8 for a, b in zip(vid, frames))  # lossy codec
    assert len(list(read_frames(video.read_bytes(), max_frames=3))) == 3
    with pytest.raises(ImageDecodeError):
        list(read_frames(b"garbage video bytes"))
    with pytest.raises(InvalidInput, match="not found"):
        list(read_frames(tmp_path / "missing.mp4"))
