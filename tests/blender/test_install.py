"""The built extension: per-platform zips in Blender's split layout, validated by Blender's own
extension tool, installed with package_install_files, enabled, with its wheels and classes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

PLATFORMS = ("linux_x64", "windows_x64", "macos_arm64", "macos_x64")


def _blender_ext() -> Path:
    import bpy

    return Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_zip_per_platform(dist, platform):
    zips = sorted(dist.glob(f"ffavatar-*-{platform}.zip"))
    assert zips, f"no zip for {platform} in {dist}"
    with zipfile.ZipFile(zips[-1]) as z:
        names = set(z.namelist())
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
    assert {"__init__.py", "batch.py", "backend/client.py", "backend/protocol.py", "maps/arkit52.json"} <= names
    assert not any(n.startswith("tools/") or "__pycache__" in n for n in names)
    generated = manifest["build"]["generated"]
    assert generated["platforms"] == [platform.replace("_", "-")]
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert sorted(w[2:] for w in generated["wheels"]) == wheels
    assert {Path(w).name.split("-")[0] for w in wheels} == {"msgpack", "pyzmq"}
    assert manifest["id"] == "ffavatar" and manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"] and set(manifest["permissions"]) == {"network", "files"}
    # the bundled client is the backend's, byte for byte
    root = Path(__file__).resolve().parents[2]
    with zipfile.ZipFile(zips[-1]) as z:
        assert z.read("backend/client.py") == (root / "ffavatar_backend" / "client.py").read_bytes()
    out = subprocess.run([sys.executable, str(_blender_ext()), "validate", str(zips[-1])], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr


def test_installed_and_registered(pkg, ext):
    import bpy

    addon = bpy.context.preferences.addons[pkg]
    assert type(addon.preferences).bl_idname == pkg
    assert addon.preferences.backend_address.startswith("tcp://")
    for op in ("connect", "start_backend", "reconstruct", "animate", "bake_retarget", "autofit", "cancel"):
        assert hasattr(bpy.ops.ffavatar, op)
    assert hasattr(bpy.types, "FFAVATAR_PT_backend") and bpy.types.FFAVATAR_PT_animate.bl_category == "FFAvatar"
    assert hasattr(bpy.context.scene, "ffavatar")
    import zmq

    # pyzmq comes from the wheels Blender installed for the extension, not from this venv
    assert "extensions" in zmq.__file__, zmq.__file__
    user = Path(ext("controller").user_dir("maps"))
    assert Path(bpy.utils.extension_path_user(pkg)) in user.parents
    items = [i[0] for i in ext("props").map_items(None, bpy.context)]
    assert items[:3] == ["builtin:arkit52", "builtin:flame", "builtin:rigify_face"]
    path = ext("controller").export_map("builtin:arkit52")
    assert path.parent == user and "user:" + path.stem in [i[0] for i in ext("props").map_items(None, bpy.context)]


def test_no_pure_module_imports_bpy(pkg):
    import bpy

    root = Path(bpy.utils.extension_path_user(pkg)).parents[2] / "user_default" / "ffavatar"
    assert root.is_dir(), root
    pure = ["link", "session", "track", "rotations", "rigdata", "keyframes", "names", "retarget", "nnls",
            "autofit", "driver", "frames", "process", "cameras", "batchargs", "portraits"]
    for name in pure:
        src = (root / f"{name}.py").read_text()
        assert "import bpy" not in src and "from bpy" not in src, name
