"""WebDataset tar shards: packing round-trips, resizing keeps cameras right, DDP × worker splits cover
every identity exactly once per epoch, epochs reshuffle deterministically, hostile tars are refused."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ffavatar.data.folder import (CameraRecord, FolderDataset, FrameRecord, IdentityRecord, ViewRecord,
                                  write_dataset_index, write_identity)
from ffavatar.data.sampler import SamplerConfig
from ffavatar.data.shards import ShardDataset, list_shards, pack, read_index, read_shard
from ffavatar.errors import InvalidInput, LimitExceeded
from ffavatar.images import encode_image
from ffavatar.render.camera import Camera

IDS = ["id0", "id1", "id.2", "id3", "id4"]
CFG = SamplerConfig(max_sources=2, targets=1, size=8)


def _camera(seed: int, w: int, h: int) -> CameraRecord:
    cam = Camera.from_spherical(10.0 * seed, 5.0, 0.6, fov_deg=30.0, width=w, height=h, dtype=torch.float64)
    return CameraRecord.from_camera(cam)


def _dataset(root: Path, ids=IDS, w: int = 6, h: int = 6) -> FolderDataset:
    rng = np.random.default_rng(0)
    for k, ident in enumerate(ids):
        frames, images = [], []
        for f in range(2):
            views, imgs = [], []
            for v in range(2):
                name = f"{f:06d}_{v:02d}.png"
                mask = rng.integers(0, 256, (h, w), dtype=np.uint8) if (k + v) % 2 == 0 else None
                views.append(ViewRecord(view=v, image=f"images/{name}", mask=f"masks/{name}" if mask is not None else None,
                                        camera=_camera(k * 4 + f * 2 + v, w, h)))
                imgs.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask))
            expr = [0.1 * k, -0.2 * f] if k % 2 == 0 else None
            pose = [[0.01 * k, 0.0, 0.0]] * 5 if k % 2 == 0 else None
            frames.append(FrameRecord(index=10 * f, views=views, expression=expr, pose=pose))
            images.append(imgs)
        write_identity(root, IdentityRecord(id=ident, frames=frames, shape=[0.5, k], appearance_seed=k), images)
    write_dataset_index(root, "multiview", list(ids))
    return FolderDataset(root)


class _Wrapped:
    """The same data as a non-folder identity source (forces pack to decode and re-encode)."""

    def __init__(self, ds: FolderDataset):
        self.ds, self.kind, self.identities = ds, ds.kind, ds.identities

    def identity(self, ident):
        return self.ds.identity(ident)

    def load_view(self, ident, view):
        return self.ds.load_view(ident, view)


def _strip_names(rec: IdentityRecord) -> dict:
    d = asdict(rec)
    for f in d["frames"]:
        for v in f["views"]:
            v["image"], v["has_mask"] = None, v.pop("mask") is not None
    return d


@pytest.mark.parametrize("wrapped", [False, True])
def test_pack_round_trips_records_and_images(tmp_path, wrapped):
    ds = _dataset(tmp_path / "ds")
    calls = []
    paths = pack(_Wrapped(ds) if wrapped else ds, tmp_path / "sh", identities_per_shard=2, progress=calls.append)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"] and len(calls) == 5
    info = read_index(tmp_path / "sh")
    assert (info["identities"], info["images"], info["kind"]) == (5, 20, "multiview")
    assert [s["identities"] for s in info["shards"]] == [2, 2, 1]
    assert all(s["bytes"] == (tmp_path / "sh" / s["name"]).stat().st_size for s in info["shards"])
    got = [s for p in paths for s in read_shard(p)]
    assert [s.record.id for s in got] == IDS and [s.key for s in got] == ["id0", "id1", "id_2", "id3", "id4"]
    for s in got:
        ref = ds.identity(s.record.id)
        assert _strip_names(s.record) == _strip_names(ref)
        for fr, fs in zip(ref.frames, s.record.frames):
            for vr, vs in zip(fr.views, fs.views):
                rgb0, m0 = ds.load_view(s.record.id, vr)
                rgb1, m1 = s.load_view(vs)
                np.testing.assert_array_equal(rgb1, rgb0)
                if m0 is None:
                    assert m1 is None
                else:
                    np.testing.assert_array_equal(m1, m0)
    with pytest.raises(InvalidInput, match="already holds shards"):
        pack(ds, tmp_path / "sh")


def test_pack_is_deterministic_and_webdataset_readable(tmp_path):
    ds = _dataset(tmp_path / "ds")
    a = pack(ds, tmp_path / "a", identities_per_shard=3)
    b = pack(ds, tmp_path / "b", identities_per_shard=3)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with tarfile.open(a[0]) as tf:
        names = tf.getnames()
        assert names[:3] == ["id0.json", "id0.000000_000.png", "id0.000000_000.mask.png"]
        assert all(m.isfile() and m.mtime == 0 for m in tf.getmembers())
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(p) for p in a], shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["id0", "id1", "id_2", "id3", "id4"]
    assert json.loads(samples[2]["json"])["id"] == "id.2"
    assert {"000000_000.png", "000001_001.png", "000000_000.mask.png"} <= set(samples[0])


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_pack_resize_to_square_moves_the_cameras_with_the_pixels(tmp_path, fit):
    ds = _dataset(tmp_path / "ds", ids=["wide"], w=12, h=6)
    pack(ds, tmp_path / "sh", size=8, fit=fit, image_format="png")
    (s,) = list(read_shard(tmp_path / "sh" / "shard-000000.tar"))
    ref = ds.identity("wide").frames[1].views[0]
    new = s.record.frames[1].views[0]
    assert (new.camera.width, new.camera.height) == (8, 8)
    rgb, mask = s.load_view(new)
    assert rgb.shape == (8, 8, 3) and mask.shape == (8, 8)
    # a world point in front of the camera: its pixel moves by the crop/pad offset, then scales
    old_cam, new_cam = ref.camera.to_camera(torch.float64), new.camera.to_camera(torch.float64)
    p = old_cam.position[0] * 0.2
    uv_old, uv_new = old_cam.project(p[None])[0, 0], new_cam.project(p[None])[0, 0]
    side, x0, y0 = (6, 3, 0) if fit == "crop" else (12, 0, -3)
    np.testing.assert_allclose(uv_new.numpy(), ((uv_old - torch.tensor([x0, y0])) * 8 / side).numpy(), atol=1e-9)
    np.testing.assert_allclose(new.camera.viewmat, ref.camera.viewmat)
    if fit == "pad":  # 12x6 → 12x12 with 3 zero rows above and below → 8x8 with 2 zero rows each side
        assert rgb[0].max() == 0 and rgb[-1].max() == 0 and mask[0].max() == 0 and rgb[3:5].max() > 0


def _ids_seen(path, epoch, split_by, shuffle_buffer=0, workers=2):
    seen = []
    for rank in range(2):
        dset = ShardDataset(path, CFG, seed=3, shuffle_buffer=shuffle_buffer, split_by=split_by, rank=rank,
                            world_size=2, return_ids=True)
        dset.set_epoch(epoch)
        loader = DataLoader(dset, batch_size=None, num_workers=workers)
        seen.append([s["identity"] for s in loader])
    return seen


def test_two_ranks_two_workers_cover_every_identity_once_per_epoch(tmp_path):
    ds = _dataset(tmp_path / "ds")
    pack(ds, tmp_path / "sh", identities_per_shard=1)
    orders = []
    for epoch in (0, 1):
        seen = _ids_seen(tmp_path / "sh", epoch, "shard", shuffle_buffer=2)
        assert sorted(seen[0] + seen[1]) == sorted(IDS)
        assert set(seen[0]).isdisjoint(seen[1]) and seen[0] and seen[1]
        orders.append(seen[0] + seen[1])
    assert orders[0] != orders[1]  # set_epoch reshuffles


def test_identity_split_when_shards_are_fewer_than_readers(tmp_path):
    ds = _dataset(tmp_path / "ds")
    pack(ds, tmp_path / "sh", identities_per_shard=3)  # 2 shards, 4 readers
    seen = _ids_seen(tmp_path / "sh", 0, "identity")
    assert sorted(seen[0] + seen[1]) == sorted(IDS)
    with pytest.raises(InvalidInput, match="2 shard"):
        next(iter(ShardDataset(tmp_path / "sh", CFG, rank=0, world_size=4)))


def test_epochs_are_deterministic_and_repeat_streams_on(tmp_path):
    ds = _dataset(tmp_path / "ds")
    pack(ds, tmp_path / "sh", identities_per_shard=2)

    def run(epoch, **kw):
        d = ShardDataset(tmp_path / "sh", CFG, seed=5, shuffle_buffer=3, return_ids=True, **kw)
        d.set_epoch(epoch)
        return list(d)

    a, b, c = run(2), run(2), run(3)
    assert [s["identity"] for s in a] == [s["identity"] for s in b]
    for x, y in zip(a, b):
        assert torch.equal(x["source"], y["source"]) and torch.equal(x["target"], y["target"])
    assert [s["identity"] for s in a] != [s["identity"] for s in c]
    s0 = a[0]
    assert s0["source"].shape == (2, 3, 8, 8) and s0["target"].shape == (1, 3, 8, 8)
    d = ShardDataset(tmp_path / "sh", CFG, seed=5, repeat=True, samples_per_identity=2, return_ids=True)
    stream = iter(d)
    ids = [next(stream)["identity"] for _ in range(25)]  # 2.5 epochs of 10 samples
    assert sorted(ids[:10]) == sorted(IDS * 2) and sorted(ids[10:20]) == sorted(IDS * 2)
    assert ShardDataset(tmp_path / "sh", CFG).num_identities == 5
    shards_of = [d.reader_shards(e, 0, 1)[0] for e in range(4)]
    assert all(sorted(s) == sorted(shards_of[0]) for s in shards_of) and len({tuple(s) for s in shards_of}) > 1


# ---------------------------------------------------------------------------------------- hostile tars
def _tar(path: Path, members: list[tuple[str, bytes]], link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return path


def _good_sample(key="a", ident="a"):
    rec = IdentityRecord(id=ident, frames=[FrameRecord(index=i, views=[ViewRecord(0, f"{i:06d}_000.png")]) for i in range(2)])
    png = encode_image(np.zeros((4, 4, 3), np.uint8))
    return [(f"{key}.json", json.dumps(asdict(rec)).encode()), (f"{key}.000000_000.png", png),
            (f"{key}.000001_000.png", png)]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


HOSTILE = {"dotdot": "unsafe member name", "absolute": "unsafe member name", "backslash": "unsafe member name",
           "symlink": "link or special file", "nodot": "not KEY.suffix", "missing": "the shard has no",
           "bad_id": "invalid identity id", "not_json": "not valid JSON", "split": "not contiguous",
           "big": "the limit is"}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_shards_are_refused(tmp_path, case):
    good = _good_sample()
    members, link, kw = list(good), None, {}
    if case == "dotdot":
        members.append(("../evil.json", b"{}"))
    elif case == "absolute":
        members.append(("/tmp/evil.json", b"{}"))
    elif case == "backslash":
        members.append(("..\\evil.json", b"{}"))
    elif case == "symlink":
        link = "a.link"
    elif case == "nodot":
        members.append(("README", b"hi"))
    elif case == "missing":
        members = members[:2]
    elif case == "bad_id":
        members = _good_sample(ident="../x")
    elif case == "not_json":
        members[0] = ("a.json", b"\x80not json")
    elif case == "split":
        members = members + _good_sample("b", "b") + [("a.extra.png", b"x")]
    elif case == "big":
        kw = {"max_member_bytes": 64}
    shard = _tar(tmp_path / "bad.tar", members, link)
    with pytest.raises(LimitExceeded if case == "big" else InvalidInput, match=HOSTILE[case]):
        list(read_shard(shard, **kw))
    assert not (tmp_path.parent / "evil.json").exists() and not Path("/tmp/evil.json").exists()


def test_pickles_in_a_shard_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    shard = _tar(tmp_path / "s.tar", _good_sample() + [("a.pyd", pickle.dumps(_Evil(marker)))])
    (s,) = list(read_shard(shard))
    assert s.files["pyd"].startswith(b"\x80")
    samples = list(ShardDataset(shard, CFG, shuffle_buffer=0))
    assert len(samples) == 1 and samples[0]["target"].shape == (1, 3, 8, 8)
    assert not marker.exists()
    with pytest.raises(InvalidInput, match="only local"):
        list_shards("http://example.com/shard-000000.tar")
