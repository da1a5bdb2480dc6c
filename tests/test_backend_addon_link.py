"""The Blender add-on's live link (``blender_addon/link.py``, no bpy) against a real backend process:
the extension is staged exactly as ``make extension`` lays it out (the link plus the bundled
``backend/protocol.py`` and ``backend/client.py``) and imported in this venv. Covers issue 14.1:
a backend restarted on the same address ends the jobs it lost with ``disconnected`` (the unknown-cancel
rule lives in the bundled client: tests/test_backend_server.py), and an upload over the backend's
limit ends at once instead of waiting forever."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import time
from pathlib import Path

import pytest
from test_backend_server import SYN, png

from ffavatar_backend import protocol as P
from ffavatar_backend.client import Client
from ffavatar_backend.launcher import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The staged extension imported as package ``ffavatar_staged`` (its modules: ``addon.link`` ...)."""
    spec = importlib.util.spec_from_file_location("ffavatar_build_extension",
                                                  ROOT / "blender_addon" / "tools" / "build_extension.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    root = build.stage(tmp_path_factory.mktemp("ext"))
    pkg_spec = importlib.util.spec_from_file_location("ffavatar_staged", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
    pkg = importlib.util.module_from_spec(pkg_spec)
    sys.modules["ffavatar_staged"] = pkg
    pkg_spec.loader.exec_module(pkg)
    yield pkg
    for name in [m for m in sys.modules if m == "ffavatar_staged" or m.startswith("ffavatar_staged.")]:
        del sys.modules[name]


def _events_of(link, job: str, until, timeout: float) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        assert time.monotonic() < deadline, f"timed out; events of {job}: {seen}"
        seen += [e for e in link.wait_events(0.1) if e.get("id") == job]
    return seen


def _final(seen: list[dict]) -> bool:
    return any(e["event"] in ("result", "error") for e in seen)


def test_link_spells_protocol_names_through_the_protocol_module():
    names = {v for k, v in vars(P).items() if k.startswith(("OP_", "EV_", "E_")) and isinstance(v, str)}
    tree = ast.parse((ROOT / "blender_addon" / "link.py").read_text())
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & names, f"link.py re-spells protocol names: {sorted(literals & names)}"


def test_restarted_backend_ends_the_lost_jobs_and_the_link_says_hello_again(addon, tmp_path):
    link_mod = importlib.import_module("ffavatar_staged.link")
    srv = ServerProcess([*SYN, "--store", str(tmp_path)])
    endpoint = srv.endpoint
    with Client(endpoint, timeout=10) as c:
        aid = c.reconstruct([png()], crop="none")["avatar"]
    link = link_mod.Link(endpoint, timeout=60.0, heartbeat=0.2).start()  # the restart beats the timeout
    try:
        assert link.wait_online(15), link.error
        first = link.info["instance"]

        def forever():
            while True:
                yield [png()]

        job = link.submit("animate", avatar=aid, stream=True, size=16, format="raw", chunks=forever())
        _events_of(link, job, lambda s: any(e["event"] == "frame" for e in s), 15)
        srv.kill()
        srv = ServerProcess([*SYN, "--store", str(tmp_path), "--bind", endpoint])
        seen = _events_of(link, job, _final, 40)  # heartbeat pings reveal the new instance, long before 60 s
        end = seen[-1]
        assert (end["event"], end["code"]) == ("error", "disconnected") and "restarted" in end["message"], end
        assert link.state == "online"
        deadline = time.monotonic() + 10
        while link.info.get("instance") == first:  # a fresh hello describes the new process
            assert time.monotonic() < deadline, "the link never said hello to the restarted backend"
            link.wait_events(0.1)
        again = link.submit("list_avatars")
        assert [a["id"] for a in _events_of(link, again, _final, 10)[-1]["avatars"]] == [aid]
    finally:
        link.stop()
        srv.stop()


def test_link_refuses_an_upload_over_the_backend_limit_at_once(addon, tmp_path):
    # the bundled client learns the limits from the link's own hello: an oversized request never goes
    # out (ZeroMQ would drop it with the connection, and the job would wait for an answer forever)
    link_mod = importlib.import_module("ffavatar_staged.link")
    with ServerProcess([*SYN, "--store", str(tmp_path), "--max-message-mb", "1"]) as srv:
        link = link_mod.Link(srv.endpoint, timeout=10.0, heartbeat=0.2).start()
        try:
            assert link.wait_online(15), link.error
            job = link.submit("reconstruct", images=[b"\0" * (2 * 2**20)], crop="none")
            end = _events_of(link, job, _final, 5)[-1]
            assert (end["event"], end["code"]) == ("error", "limit") and "at most 1048576" in end["message"]
            assert link.state == "online"
        finally:
            link.stop()


def test_run_names_never_lead_out_of_the_frames_folder(addon, tmp_path):
    """A Blender run named '..' wrote its frames into the parent folder and deleted frame_*.png there."""
    frames = importlib.import_module("ffavatar_staged.frames")
    root = tmp_path / "frames"
    root.mkdir()
    precious = tmp_path / "frame_000001.png"
    precious.write_bytes(b"the user's own file")
    for name in ["..", ".", "../..", "/etc", "a/../../b", "", "...", "..\\..", "~", "C:\\x", "x" * 300]:
        safe = frames.folder_name(name)
        assert safe not in ("", ".", "..") and "/" not in safe and "\\" not in safe and len(safe) <= 64, (name, safe)
        folder = root / safe
        assert folder.resolve().parent == root.resolve()
        writer = frames.FrameWriter(folder, prefix="frame")
        writer.write({"index": 0, "format": "png", "image": b"new frame", "width": 1, "height": 1})
        writer.clear_old()
    assert precious.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame_000001.png", "frames"]
