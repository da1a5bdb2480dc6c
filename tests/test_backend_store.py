"""The avatar store: atomic writes, strict ids, index rebuilt from files, leftovers of crashes removed."""

from __future__ import annotations

import json
import stat

import pytest

from ffavatar.errors import InvalidInput, NotFound
from ffavatar_backend.store import AvatarStore, check_id


def _writer(payload: bytes):
    return lambda path: path.write_bytes(payload)


def test_create_get_list_delete(tmp_path):
    s = AvatarStore(tmp_path / "store")
    a = s.create(_writer(b"A" * 10), name="Ada", images=2)
    b = s.create(_writer(b"B" * 20), name="Bob", images=1)
    assert check_id(a["id"]) == a["id"] and a["id"] != b["id"]
    assert s.path(a["id"]).read_bytes() == b"A" * 10
    listed = s.list()
    assert [e["name"] for e in listed] == ["Ada", "Bob"] and [e["bytes"] for e in listed] == [10, 20]
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    assert stat.S_IMODE(s.path(a["id"]).stat().st_mode) == 0o600
    s.delete(a["id"])
    assert [e["id"] for e in s.list()] == [b["id"]]
    with pytest.raises(NotFound):
        s.get(a["id"])
    assert not list((tmp_path / "store").glob(f"{a['id']}*"))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF",
                                 "/abs/path", "", None, 5, "0123456789abcde\n"])
def test_ids_are_checked_before_any_path(tmp_path, bad):
    s = AvatarStore(tmp_path)
    with pytest.raises(InvalidInput):
        s.get(bad)
    with pytest.raises(InvalidInput):
        s.delete(bad)


def test_failed_write_leaves_nothing(tmp_path):
    s = AvatarStore(tmp_path)

    def broken(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        s.create(broken, name="x")
    assert s.list() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_replace_is_atomic_and_keeps_metadata(tmp_path):
    s = AvatarStore(tmp_path)
    a = s.create(_writer(b"old"), name="Ada")

    def broken(path):
        path.write_bytes(b"new-but-broken")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        s.replace(a["id"], broken, personalized={"steps": 5})
    assert s.path(a["id"]).read_bytes() == b"old" and s.get(a["id"]).get("personalized") is None
    e = s.replace(a["id"], _writer(b"new"), personalized={"steps": 5})
    assert s.path(a["id"]).read_bytes() == b"new"
    assert e["name"] == "Ada" and e["personalized"] == {"steps": 5} and e["updated"] >= a["updated"]


@pytest.mark.parametrize("damage", ["missing", "corrupt", "wrong_layout"])
def test_index_rebuilt_from_files(tmp_path, damage):
    s = AvatarStore(tmp_path)
    ids = [s.create(_writer(bytes([i]) * 8), name=f"n{i}")["id"] for i in range(3)]
    index = tmp_path / "index.json"
    if damage == "missing":
        index.unlink()
    elif damage == "corrupt":
        index.write_text('{"version": 1, "avatars": {')
    else:
        index.write_text(json.dumps([1, 2, 3]))
    s2 = AvatarStore(tmp_path)
    assert sorted(e["id"] for e in s2.list()) == sorted(ids)
    assert {e["name"] for e in s2.list()} == {"n0", "n1", "n2"}  # names come back from the sidecars
    assert json.loads(index.read_text())["version"] == 1


def test_crash_leftovers_are_cleaned_and_ignored(tmp_path):
    s = AvatarStore(tmp_path)
    keep = s.create(_writer(b"good"), name="keep")["id"]
    # what a process killed mid-write leaves: temp files (ours and save_tensors'), an uncommitted sidecar
    (tmp_path / ".tmp-0a1b2c3d4e5f.ffa").write_bytes(b"half an avatar")
    (tmp_path / "..tmp-9f.ffa.1234.tmp").write_bytes(b"half")
    (tmp_path / "fedcba9876543210.json").write_text(json.dumps({"id": "fedcba9876543210", "name": "ghost"}))
    # an avatar file whose sidecar and index entry never got written (killed right after the rename)
    (tmp_path / "00000000000000aa.ffa").write_bytes(b"complete")
    s2 = AvatarStore(tmp_path)
    assert sorted(e["id"] for e in s2.list()) == sorted([keep, "00000000000000aa"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.startswith(".")]
    assert "fedcba9876543210.json" not in names
    assert s2.path(keep).read_bytes() == b"good"
