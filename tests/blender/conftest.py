"""Blender-side tests: run under the bpy module in its own venv (``make test-blender``).

Collected only where ``bpy`` imports (the main venv skips this folder). Before bpy is imported,
HOME, the XDG dirs and BLENDER_USER_RESOURCES point at a temporary folder, so nothing touches the
real user's Blender configuration. The extension is installed once per session from the built zip
(``make extension``; FFAVATAR_DIST overrides ``dist/``) with ``package_install_files``, and the real
backend runs from the main venv (FFAVATAR_BACKEND_PYTHON overrides ``.venv/bin/python``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAVE_BPY = importlib.util.find_spec("bpy") is not None

if not HAVE_BPY:
    collect_ignore_glob = ["test_*.py"]
else:
    _HOME = Path(tempfile.mkdtemp(prefix="ffavatar-bpy-home-"))
    for key, sub in (("HOME", ""), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_DATA_HOME", "data"), ("BLENDER_USER_RESOURCES", "blender")):
        os.environ[key] = str(_HOME / sub)
    import bpy  # noqa: E402,F401 - after the environment above

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers: pngs, rigs


def _platform() -> str:
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x64"
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}[sys.platform]
    return f"{system}_{arch}"


@pytest.fixture(scope="session")
def dist() -> Path:
    return Path(os.environ.get("FFAVATAR_DIST", ROOT / "dist"))


@pytest.fixture(scope="session")
def zip_path(dist) -> Path:
    zips = sorted(dist.glob(f"ffavatar-*-{_platform()}.zip"))
    if not zips:
        pytest.fail(f"no extension zip for {_platform()} in {dist}: run `make extension` first")
    return zips[-1]


@pytest.fixture(scope="session")
def pkg(zip_path) -> str:
    """Install + enable the built extension; returns its package name (bl_ext.user_default.ffavatar)."""
    import bpy

    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    name = "bl_ext.user_default.ffavatar"
    assert name in bpy.context.preferences.addons, sorted(bpy.context.preferences.addons.keys())
    return name


@pytest.fixture(scope="session")
def ext(pkg):
    """Import a module of the installed extension: ``ext("retarget")``."""
    return lambda module: importlib.import_module(f"{pkg}.{module}")


@pytest.fixture
def clean(ext):
    """An empty scene (objects, meshes, actions, images... removed) with frames 1..250 at 25 fps."""
    import bpy

    def wipe():
        for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions, bpy.data.images,
                     bpy.data.materials, bpy.data.cameras):
            for item in list(coll):
                coll.remove(item)
        scene = bpy.context.scene
        if scene.sequence_editor is not None:
            scene.sequence_editor_clear()
        scene.frame_start, scene.frame_end, scene.frame_current = 1, 250, 1
        scene.render.fps, scene.render.fps_base = 25, 1.0   # the rate of the tests' tracks: one key per frame
        scene.camera = None

    wipe()
    yield bpy.context.scene
    wipe()


def backend_python() -> str:
    return os.environ.get("FFAVATAR_BACKEND_PYTHON", str(ROOT / ".venv" / "bin" / "python"))


@pytest.fixture(scope="session")
def backend(ext, tmp_path_factory):
    """A real backend subprocess (model engine on CPU, from the main venv), started and connected
    through the add-on's own controller; stopped at the end of the session."""
    py = backend_python()
    if not Path(py).exists():
        pytest.fail(f"no backend Python at {py}: set FFAVATAR_BACKEND_PYTHON or run `make install`")
    ctl = ext("controller")
    store = tmp_path_factory.mktemp("store")
    cmd = [py, "-m", "ffavatar_backend", "serve", "--device", "cpu", "--store", str(store)]
    endpoint = ctl.start_backend(cmd, bind="tcp://127.0.0.1:*", wait=120)
    assert ctl.session().link.wait_online(60), ctl.session().link.error
    yield endpoint
    ctl.disconnect()
    ctl.stop_backend()


def pytest_sessionfinish(session, exitstatus):
    if HAVE_BPY:
        shutil.rmtree(_HOME, ignore_errors=True)
