"""What users bring, on the Blender side (issue 13): wheels for every Blender Python, one natural
frame order shared with the CLI, big phone photos downscaled before sending with their EXIF
orientation kept, empty movies refused with their name."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

PYTHONS = ((3, 11), (3, 13))      # Blender 4.2 LTS - 5.0, and 5.1 and later


def _serves(wheel: str, python: tuple[int, int]) -> bool:
    """Whether a wheel installs on CPython ``python`` (exact cpXY, or a stable-ABI cpXY-abi3 for >= XY)."""
    py, abi = wheel[:-4].split("-")[-3:-1]
    version = (int(py[2]), int(py[3:]))
    return version == python or (abi == "abi3" and python >= version)


@pytest.mark.parametrize("platform", ("linux_x64", "windows_x64", "macos_arm64", "macos_x64"))
def test_every_platform_zip_has_wheels_for_every_blender_python(dist, platform):
    zips = sorted(dist.glob(f"ffavatar-*-{platform}.zip"))
    with zipfile.ZipFile(zips[-1]) as z:
        wheels = [Path(n).name for n in z.namelist() if n.startswith("wheels/")]
        assert z.read("backend/sequence.py") == (ROOT / "ffavatar" / "sequence.py").read_bytes()
    for python in PYTHONS:
        for pkg in ("msgpack", "pyzmq"):
            assert any(w.startswith(pkg + "-") and _serves(w, python) for w in wheels), (platform, python, pkg, wheels)


def test_the_installed_wheels_are_for_this_python(pkg):
    import sys

    import msgpack
    import zmq

    for mod, dist in ((zmq, "pyzmq"), (msgpack, "msgpack")):
        assert "extensions" in mod.__file__, mod.__file__
        wheel = next(Path(mod.__file__).parents[1].glob(f"{dist}-*.dist-info")) / "WHEEL"
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        assert tags and all(_serves(f"{dist}-0-{t}.whl", sys.version_info[:2]) for t in tags), tags


def test_unpadded_frame_numbers_play_in_the_same_order_as_the_cli(ext, tmp_path):
    driver = ext("driver")
    seq = ext("backend.sequence")
    for i in range(1, 13):                            # the user's driver_unpadded/ (frame_1 ... frame_12)
        (tmp_path / f"frame_{i}.png").write_bytes(b"")
    clip = driver.resolve(tmp_path)
    assert [p.name for p in clip.paths] == [f"frame_{i}.png" for i in range(1, 13)]
    assert [p.name for p in driver.resolve(tmp_path / "frame_7.png").paths] == [f"frame_{i}.png" for i in range(1, 13)]
    assert clip.paths == seq.natural_sorted(list(tmp_path.iterdir()))


def test_an_empty_movie_is_refused_with_its_name(ext, tmp_path):
    empty = tmp_path / "take 3.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ext("driver").DriverError, match=r"take 3\.mp4 is empty"):
        ext("driver").resolve(empty)


def _jpeg_with_orientation(path: Path, w: int, h: int, orientation: int) -> bytes:
    import bpy

    img = bpy.data.images.new("photo", w, h)
    px = np.zeros((h, w, 4), np.float32)
    px[..., 3] = 1
    px[:, : w // 2, 0] = 1                           # left half red (bottom-up rows: any row works)
    img.pixels.foreach_set(px.ravel())
    img.filepath_raw, img.file_format = str(path), "JPEG"
    img.save()
    bpy.data.images.remove(img)
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + tiff + struct.pack(">I", 0)
    data = path.read_bytes()
    data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    path.write_bytes(data)
    return data


def test_big_photos_are_downscaled_before_sending_and_keep_their_orientation(ext, tmp_path):
    import bpy

    ctl, portraits = ext("controller"), ext("portraits")
    assert portraits.fit_size(8000, 6000, 40_000_000) == (7302, 5477)
    assert 7302 * 5477 <= 40_000_000 and portraits.fit_size(640, 480, 40_000_000) == (640, 480)
    path = tmp_path / "phone.jpg"
    data = _jpeg_with_orientation(path, 160, 120, 6)
    assert ctl.portrait_bytes(path, 160 * 120) == data            # within the limit: sent as it is
    small = ctl.portrait_bytes(path, 4800)                         # a 19 kP photo under a 4.8 kP limit
    assert small[:2] == b"\xff\xd8" and portraits.exif_segment(small) == portraits.exif_segment(data)
    out = tmp_path / "small.jpg"
    out.write_bytes(small)
    img = bpy.data.images.load(str(out), check_existing=False)
    assert tuple(img.size) == (80, 60) and tuple(img.size) == portraits.fit_size(160, 120, 4800)
    bpy.data.images.remove(img)
    assert not [i for i in bpy.data.images if i.filepath.endswith("phone.jpg")]
    assert any("sent downscaled to 80x60" in text for _, text in ctl.runtime.messages)


def test_frames_never_take_over_the_users_datablocks(ext, clean, tmp_path):
    """A user's mesh, material, image and strip that happen to carry the add-on's names stay as they were."""
    import bpy

    scn, frames = ext("scene"), ext("frames")
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    clean.collection.objects.link(cam)
    mine = bpy.data.objects.new("Run Frames", bpy.data.meshes.new("mine"))
    mine.data.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    clean.collection.objects.link(mine)
    mat = bpy.data.materials.new("Run Frames")
    img = bpy.data.images.new("Run Frames Frames", 4, 4)
    other = tmp_path / "mine.png"
    other.write_bytes(b"")
    strip = scn._strips(clean).new_image(name="Run", filepath=str(other), channel=1, frame_start=1)
    w = frames.FrameWriter(tmp_path / "f", prefix="run", frame_start=1)
    png = (ROOT / "tests" / "data" / "rgba_cutout.png").read_bytes()
    for i in range(2):
        w.write({"index": i, "format": "png", "image": png, "width": 576, "height": 768})
    for _ in range(2):                                      # twice: the second run reuses its own
        plane = scn.show_frames(clean, w, cam, name="Run Frames")
    scn.frames_strip(clean, w, name="Run")
    assert plane != mine and len(mine.data.vertices) == 3 and mine.data.materials[:] == []
    assert plane.active_material != mat and mat.node_tree is None or not mat.node_tree.nodes.get("FFAvatar Frames")
    assert img.source == "GENERATED" and tuple(img.size) == (4, 4)
    assert [o.name for o in bpy.data.objects if "Run Frames" in o.name].__len__() == 2
    assert scn._strips(clean).get("Run") == strip and len(scn._strips(clean)) == 2


def test_backend_messages_get_the_users_file_names(ext, tmp_path):
    name = ext("driver").name_inputs
    paths = [tmp_path / f"frame_{i}.png" for i in (1, 2, 10)]
    assert name("driver frame 2: could not decode", "driver frame", paths) == "driver frame 2 (frame_10.png): could not decode"
    assert name("image 0: no face", "image", paths) == "image 0 (frame_1.png): no face"
    assert name("driver frame 7: x", "driver frame", paths) == "driver frame 7: x"       # out of range: as is
    assert name("image 0 (a.png): x", "image", paths) == "image 0 (a.png): x"           # named already
