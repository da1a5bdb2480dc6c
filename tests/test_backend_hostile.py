"""Hostile and unlucky inputs against a real backend process (issue 14): files that make a demuxer
read other files, decompression bombs in every accepted image format, byte budgets for what clients
stream and queue, render sizes from cameras, and the error codes they get. Inputs are made here
(stand-ins for ../shared/cases/hostile/), never read from outside the test."""

from __future__ import annotations

import os
import struct
import zlib

import msgpack
import numpy as np
import pytest
import zmq
from test_backend_server import SYN, png, running_stream, wait_until

from ffavatar_backend import protocol as P
from ffavatar_backend.client import BackendError, Client
from ffavatar_backend.launcher import ServerProcess

MiB = 2**20


# ------------------------------------------------------------------------------------ hostile files
def png_header_only(w: int, h: int) -> bytes:
    """A 'PNG' with an IHDR declaring w×h and no pixel data (the 225-byte png_50000x50000 kind)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def bmp_rle8(w: int, h: int) -> bytes:
    """An RLE8 BMP declaring w×h in ~1 KB (bmp_rle8_20000.bmp): decoders allocate and fill w×h."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    data = b"\x00\x01"  # end of bitmap
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return header + info + palette + data


def jpeg_sof_after_64k(w: int, h: int) -> bytes:
    """A JPEG whose size (SOF) comes after 192 KB of APP segments: a 64 KB header window misses it."""
    app = b"\xff\xe1" + struct.pack(">H", 65535) + b"\0" * 65533
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app * 3 + sof + b"\xff\xd9"


def tiff_huge_tile(side: int = 64, tile: int = 15008) -> bytes:
    """A side×side greyscale TIFF whose one tile is tile×tile: decoders allocate tile² × 4 bytes."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 0), (325, 4, 1, 16)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    entries[-2] = (324, 4, 1, data_at)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" * 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    srv = ServerProcess([*SYN, "--store", str(tmp / "store"), "--max-stream-mb", "16", "--max-client-mb", "24",
                         "--max-total-mb", "40", "--max-message-mb", "20"],
                        env={**os.environ, "TMPDIR": str(tmp)})
    srv.tmp = tmp
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.endpoint, timeout=20)
    c.hello()
    yield c
    c.close()


@pytest.fixture(scope="module")
def avatar(server):
    with Client(server.endpoint, timeout=20) as c:
        return c.reconstruct([png()], crop="none")["avatar"]


# ------------------------------------------------------------------------------------ 14.2 references
REFERENCING = {
    "ffconcat": b"ffconcat version 1.0\nfile 'some/other/take.mp4'\n",
    "m3u8": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nsome/other/take.mp4\n#EXT-X-ENDLIST\n",
    "concat_protocol_text": b"file 'some/other/take.mp4'\nfile 'some/other/take.mp4'\n",
    "mp4_named_text": b"some/other/take.mp4\n",
}


@pytest.mark.parametrize("kind", sorted(REFERENCING))
def test_a_driver_video_never_makes_the_server_read_another_file(server, client, avatar, kind):
    from ffavatar.images import write_video

    # the movie a demuxer following the reference would find beside the server's temp folder
    take = server.tmp / "some" / "other" / "take.mp4"
    take.parent.mkdir(parents=True, exist_ok=True)
    write_video(take, [np.full((32, 32, 3), 60 * i, np.uint8) for i in range(4)], fps=10)
    with pytest.raises(BackendError) as e:
        list(client.animate(avatar, video=REFERENCING[kind], video_name="take.mp4", size=32))
    assert e.value.code == "image_decode"
    assert e.value.message.startswith("the video 'take.mp4' is not a video file this product reads")
    assert "MP4/MOV" in e.value.message


def test_real_containers_still_play_and_uploads_leave_nothing_behind(server, client, avatar, tmp_path):
    from ffavatar.images import write_video

    before = {p.name for p in server.tmp.iterdir()}
    clip = write_video(tmp_path / "d.mp4", [np.full((32, 32, 3), 50 * i, np.uint8) for i in range(3)], fps=12)
    evs = list(client.animate(avatar, video=clip.read_bytes(), size=32))
    assert [e["index"] for e in evs if e["event"] == "frame"] == [0, 1, 2]
    assert {p.name for p in server.tmp.iterdir()} == before  # the private upload folder is gone


# ------------------------------------------------------------------------------------ 14.4 bombs
BOMBS = {
    "bmp_rle8_20000": lambda: bmp_rle8(20000, 20000),
    "png_50000": lambda: png_header_only(50000, 50000),
    "jpeg_sof_after_64k": lambda: jpeg_sof_after_64k(20000, 20000),
    "tiff_tile_15008": tiff_huge_tile,
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_image_bombs_are_refused_from_their_header(server, client, avatar, kind):
    data = BOMBS[kind]()
    assert len(data) < 200_000
    rss0 = server.rss_bytes()
    with pytest.raises(BackendError) as e:
        client.reconstruct([png(), data], crop="none")
    assert e.value.code == "limit" and e.value.message.startswith("image 1:"), e.value.message
    with pytest.raises(BackendError) as e:
        list(client.animate(avatar, frames=[png(), data], size=16))
    assert e.value.code == "limit" and "driver frame 1" in e.value.message
    grew = server.rss_bytes() - rss0
    assert grew < 40 * MiB, f"server RSS grew by {grew / MiB:.0f} MiB on a {len(data)}-byte {kind}"


def test_portraits_of_one_request_share_a_pixel_budget(client):
    # each image passes max_pixels (40 M) but together they are over max_request_pixels (160 M): refused
    # before any of them is decoded (headers only: these PNGs have no pixel data at all)
    with pytest.raises(BackendError) as e:
        client.reconstruct([png_header_only(6000, 6000)] * 5, crop="none")
    assert e.value.code == "limit" and "180,000,000 pixels together" in e.value.message


@pytest.mark.parametrize("shape", [(40000, 1), (1, 40000), (300, 7)])
def test_thin_portraits_are_invalid_input(client, shape):
    import cv2

    data = cv2.imencode(".png", np.full((*shape, 3), 128, np.uint8))[1].tobytes()
    with pytest.raises(BackendError) as e:
        client.reconstruct([png(), data], crop="detect")
    assert e.value.code == "invalid_input", e.value.message
    assert e.value.message.startswith(f"image 1: image is {shape[1]}x{shape[0]}: too thin")


@pytest.mark.parametrize("res, pct", [((4608, 4608), 100), ((3000, 2000), 200), ((10**9, 10**9), 100)])
def test_camera_render_sizes_obey_the_size_limit(client, avatar, res, pct):
    cam = {"matrix_world": np.eye(4).tolist(), "lens": 50.0, "resolution_x": res[0], "resolution_y": res[1],
           "resolution_percentage": pct}
    ok = dict(cam, resolution_x=64, resolution_y=48, resolution_percentage=100)
    with pytest.raises(BackendError) as e:  # refused when submitted: nothing is rendered
        list(client.animate(avatar, frames=[png()] * 2, cameras=[ok, cam], format="raw"))
    assert e.value.code == "limit" and "cameras[1]" in e.value.message and "4096x4096" in e.value.message


def test_camera_limit_is_the_render_limit():
    from ffavatar.render.camera import MAX_RENDER_SIZE, BlenderCameraParams

    assert P.MAX_SIZE == P.Limits().max_size == MAX_RENDER_SIZE
    with pytest.raises(Exception) as e:
        BlenderCameraParams(matrix_world=np.eye(4).tolist(), lens=50.0, resolution_x=4608, resolution_y=4608)
    assert getattr(e.value, "code", None) == "limit"
    assert BlenderCameraParams(matrix_world=np.eye(4).tolist(), lens=50.0, resolution_x=8192, resolution_y=4096,
                               resolution_percentage=50).width == P.camera_size(
        {"resolution_x": 8192, "resolution_y": 4096, "resolution_percentage": 50})[0]


# ------------------------------------------------------------------------------------ 14.4 byte budgets
def test_frames_streamed_into_a_queued_job_are_bounded_in_bytes_and_freed_on_cancel(server, avatar):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    c = Client(server.endpoint, timeout=20)
    try:
        blocker = running_stream(c, avatar)
        sock.send(P.encode(P.make_request("animate", "q", avatar=avatar, stream=True, size=16)))  # queued
        blob = np.random.default_rng(0).bytes(MiB)
        rss0 = server.rss_bytes()
        for i in range(48):  # 48 MiB at a 16 MiB per-stream budget (the old count bound let 512 frames in)
            sock.send(P.encode(P.make_request("animate_chunk", f"c{i}", job="q", frames=[blob])))
        replies = []
        while len(replies) < 1 + 32:  # the queued ack, then one error per refused chunk
            assert sock.poll(10_000), replies[-3:]
            replies.append(msgpack.unpackb(sock.recv(), raw=False))
        refused = [r for r in replies if r["event"] == "error"]
        assert len(refused) == 32 and {r["code"] for r in refused} == {"busy"}
        assert "16.0 MiB" in refused[0]["message"]
        grew = server.rss_bytes() - rss0
        assert grew < 40 * MiB, f"RSS grew by {grew / MiB:.0f} MiB for a 16 MiB stream budget"
        sock.send(P.encode(P.make_request("status", "s1")))
        assert msgpack.unpackb(sock.recv(), raw=False)["input_bytes"] == 16 * MiB
        sock.send(P.encode(P.make_request("cancel", "x", job="q")))
        got = [msgpack.unpackb(sock.recv(), raw=False) for _ in range(2)]
        assert {(g["id"], g["event"]) for g in got} == {("q", "error"), ("x", "result")}
        sock.send(P.encode(P.make_request("status", "s2")))
        assert msgpack.unpackb(sock.recv(), raw=False)["input_bytes"] == 0  # released at the cancel
    finally:
        sock.close()
        c.cancel(blocker)
        c.close()


def test_queued_requests_are_bounded_per_client_and_in_total(server, avatar):
    # budgets of this server: 24 MiB per connection, 40 MiB in total (messages up to 20 MiB)
    a, b, c = (Client(server.endpoint, timeout=20) for _ in range(3))
    big = [np.random.default_rng(1).bytes(15 * MiB)]

    def replies(client, ids):
        got: dict[str, dict] = {}
        wait_until(lambda: [got.setdefault(e["id"], e) for e in client.poll(0.1)] is not None and set(ids) <= set(got),
                   20, f"replies to {ids}")
        return [got[i] for i in ids]

    try:
        blocker = running_stream(a, avatar)
        first, second = replies(a, [a.submit("reconstruct", images=big), a.submit("reconstruct", images=big)])
        assert first["event"] == "progress"  # queued: 15 of this connection's 24 MiB
        assert (second["event"], second["code"]) == ("error", "busy")
        assert "this connection's jobs already hold 15.0 MiB" in second["message"]
        (third,) = replies(b, [b.submit("reconstruct", images=big)])  # another connection: 30 of 40 MiB in all
        assert third["event"] == "progress"
        (fourth,) = replies(c, [c.submit("reconstruct", images=big)])  # 45 of 40: wait for the others
        assert fourth["code"] == "busy" and "the server holds 30.0 MiB of input for all clients" in fourth["message"]
        assert a.cancel(first["id"]) and b.cancel(third["id"])
        assert a.status()["input_bytes"] == 0 and b.status()["input_bytes"] == 0
        ok = c.submit("reconstruct", images=big)  # room again
        assert replies(c, [ok])[0]["event"] == "progress"
        c.cancel(ok)
    finally:
        a.cancel(blocker)
        for x in (a, b, c):
            x.close()
