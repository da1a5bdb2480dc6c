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


# ------------------------------------------------------------------------------ kills and full disks (issue 14.6)
_KILLER = r"""
import os, signal, sys
from pathlib import Path
from ffavatar_backend.store import AvatarStore

root, op, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = AvatarStore(root)
calls = [0]
real_replace = os.replace

def replace(src, dst):  # SIGKILL this process right after its kill_at-th rename
    real_replace(src, dst)
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
if op == "create":
    store.create(lambda p: Path(p).write_bytes(b"NEW" * 100), name="new", personalized=None)
else:
    aid = store.list()[0]["id"]
    store.replace(aid, lambda p: Path(p).write_bytes(b"NEW" * 100), personalized={"steps": 7})
print("finished")
"""


@pytest.mark.parametrize("op", ["create", "replace"])
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 99])
def test_a_kill_at_any_step_leaves_files_and_metadata_that_agree(tmp_path, op, kill_at):
    """A real process is SIGKILLed right after each rename of a write (1: new metadata staged, 2: the
    avatar file committed, 3: metadata promoted, 4: index written; 99: not killed). Reopened, the
    store lists either the old avatar with its old metadata or the new one with its new metadata."""
    import subprocess
    import sys

    s = AvatarStore(tmp_path)
    old = s.create(_writer(b"OLD" * 100), name="old")
    out = subprocess.run([sys.executable, "-c", _KILLER, str(tmp_path), op, str(kill_at)], capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode == 0) == (kill_at == 99), out.stderr
    s2 = AvatarStore(tmp_path)
    listed = {e["id"]: e for e in s2.list()}
    committed = kill_at >= 2  # the avatar file's rename is the commit point
    if op == "create":
        assert len(listed) == (2 if committed else 1)
        new = [e for i, e in listed.items() if i != old["id"]]
        if committed:
            assert new[0]["name"] == "new" and s2.path(new[0]["id"]).read_bytes() == b"NEW" * 100
    else:
        e = listed[old["id"]]
        content = s2.path(old["id"]).read_bytes()
        assert content == (b"NEW" * 100 if committed else b"OLD" * 100)
        assert e.get("personalized") == ({"steps": 7} if committed else None), (kill_at, e)
        assert e["name"] == "old"
    assert json.loads((tmp_path / "index.json").read_text())["avatars"] == listed  # the index was repaired
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".next.json")]


def _file_size_limit(n: int):
    """preexec_fn: the server may not write any file larger than n bytes (writes beyond fail with
    EFBIG, as on a full disk); Python ignores SIGXFSZ, so the write raises instead of killing."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def _server(store, limit: int | None = None):
    from ffavatar_backend.launcher import ServerProcess

    return ServerProcess(["--engine", "synthetic", "--log-level", "ERROR", "--store", str(store)],
                         preexec_fn=_file_size_limit(limit) if limit else None)


def _png() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.full((16, 16, 3), 90, np.uint8))[1].tobytes()


def _name(i: int) -> str:
    return f"avatar {i} " + "x" * 150  # ~12 entries no longer fit in a 3,000-byte index


def test_what_the_client_is_told_matches_the_disk_when_the_index_cannot_be_written(tmp_path):
    """A store whose index.json grows past what the disk takes (here: a 3,000-byte file size limit on
    the server; the avatar files and sidecars still fit). Every create and delete is reported as it
    happened on disk, and a restart lists exactly the same avatars."""
    from ffavatar_backend.client import Client

    store = tmp_path / "store"
    with _server(store, 3000) as srv, Client(srv.endpoint, timeout=20) as c:
        made = [c.reconstruct([_png()], name=_name(i), crop="none")["avatar"] for i in range(12)]
        assert (store / "index.json").stat().st_size <= 3000  # the later index writes failed
        for aid in made[:3]:
            c.delete_avatar(aid)
        told = sorted((a["id"], a["name"]) for a in c.list_avatars())
    assert told == sorted((aid, _name(i)) for i, aid in enumerate(made) if i >= 3)
    with _server(store) as srv, Client(srv.endpoint, timeout=20) as c:
        assert sorted((a["id"], a["name"]) for a in c.list_avatars()) == told
    assert len(json.loads((store / "index.json").read_text())["avatars"]) == 9  # repaired on start


def test_an_avatar_that_does_not_fit_is_a_storage_error_and_leaves_nothing(tmp_path):
    from ffavatar_backend.client import BackendError, Client

    store = tmp_path / "store"
    with _server(store, 100) as srv, Client(srv.endpoint, timeout=20) as c:
        with pytest.raises(BackendError) as e:
            c.reconstruct([_png()], name="big", crop="none")
        assert e.value.code == "storage" and "File too large" in e.value.message and str(store) in e.value.message
        assert c.list_avatars() == []
    assert sorted(p.name for p in store.iterdir()) == ["index.json"]
    with _server(store) as srv, Client(srv.endpoint, timeout=20) as c:
        assert c.list_avatars() == []
