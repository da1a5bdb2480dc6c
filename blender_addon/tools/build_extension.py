"""Build the FFAvatar Blender extension: one installable zip per platform in ``dist/``.

    python blender_addon/tools/build_extension.py wheels --build build/extension
    python blender_addon/tools/build_extension.py zip --build build/extension --dist dist

``wheels`` downloads (``pip download --only-binary=:all:``, with the Python version and ABI read from
each wheel's name: cp311, cp313, cp312-abi3...) exactly the wheel files the manifest lists. ``zip`` stages the add-on (``blender_addon/`` minus tools and caches), the
pure backend client (``ffavatar_backend/protocol.py`` + ``client.py``, and ``ffavatar/sequence.py``,
copied into ``backend/``: one source of truth) and the wheels, then writes ``ffavatar-<version>-<platform>.zip`` files laid out as
``blender --command extension build --split-platforms`` does (files at the zip root, only that
platform's wheels, a ``[build.generated]`` table naming the platform and its wheels appended to
the manifest). This tool runs with any Python >= 3.11 (tomllib) and needs no Blender.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

log = logging.getLogger("build_extension")

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "blender_addon"
MANIFEST = ROOT / "blender_manifest.toml"
BACKEND_FILES = ("ffavatar_backend/protocol.py", "ffavatar_backend/client.py", "ffavatar/sequence.py")
"""Pure modules (no torch, no cv2) bundled into the extension's ``backend/`` folder: one source of truth."""
PIP_PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_11_0_arm64"],
    "macos-x64": ["macosx_10_15_x86_64"],
}
"""pip ``--platform`` tags per Blender platform (pip also accepts older/universal wheels for each)."""
ALWAYS_EXCLUDE = ("__pycache__/", "*.pyc", "/tools/", "/.*", "/backend/")


class BuildError(RuntimeError):
    pass


def wheel_platforms(filename: str) -> set[str]:
    """Blender platforms a wheel file serves, from its platform tags."""
    tags = Path(filename).stem.split("-")[-1].split(".")
    out = set()
    for tag in tags:
        if tag == "any":
            return set(PIP_PLATFORMS)
        if re.match(r"(many)?linux.*_x86_64$", tag):
            out.add("linux-x64")
        elif re.match(r"(many)?linux.*_aarch64$", tag):
            out.add("linux-arm64")
        elif tag == "win_amd64":
            out.add("windows-x64")
        elif re.match(r"macosx_.*_universal2$", tag):
            out |= {"macos-x64", "macos-arm64"}
        elif re.match(r"macosx_.*_arm64$", tag):
            out.add("macos-arm64")
        elif re.match(r"macosx_.*_x86_64$", tag):
            out.add("macos-x64")
    return out


def read_manifest() -> dict:
    with MANIFEST.open("rb") as f:
        return tomllib.load(f)


def _requirement(filename: str) -> str:
    name, version = Path(filename).name.split("-")[:2]
    return f"{name.replace('_', '-')}=={version}"


def wheel_python(filename: str) -> tuple[str, str]:
    """``(python version, abi tag)`` of a CPython wheel file name: ``("3.13", "cp313")`` or, for a
    stable-ABI wheel, ``("3.12", "abi3")`` (pip's ``--python-version`` / ``--abi`` values)."""
    parts = Path(filename).name[:-len(".whl")].split("-")
    python, abi = parts[-3], parts[-2]
    m = re.fullmatch(r"cp3(\d+)", python)
    if m is None:
        raise BuildError(f"{filename}: only CPython wheels (cp3XX) can be bundled, found python tag {python!r}")
    return f"3.{m.group(1)}", abi


def download_wheels(build: Path, pip: list[str]) -> list[Path]:
    """Fetch every wheel the manifest lists into ``build/wheels``; returns their paths."""
    manifest = read_manifest()
    wanted = [Path(w).name for w in manifest.get("wheels", [])]
    dest = build / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    for platform in manifest["platforms"]:
        groups: dict[tuple[str, str], list[str]] = {}
        for w in wanted:
            if platform in wheel_platforms(w) and not (dest / w).exists():
                groups.setdefault(wheel_python(w), []).append(w)
        for (python, abi), missing in sorted(groups.items()):
            cmd = [*pip, "download", "-q", "--only-binary=:all:", "--no-deps", "--python-version", python,
                   "--implementation", "cp", "--abi", abi, "-d", str(dest)]
            for tag in PIP_PLATFORMS[platform]:
                cmd += ["--platform", tag]
            cmd += sorted({_requirement(w) for w in missing})
            log.info("%s, Python %s (%s): %s", platform, python, abi, " ".join(cmd))
            subprocess.run(cmd, check=True)
            still = [w for w in missing if not (dest / w).exists()]
            if still:
                got = sorted(p.name for p in dest.glob("*.whl"))
                raise BuildError(f"pip did not fetch {still} for {platform}, Python {python} (got {got}); update the "
                                 f"wheel names in {MANIFEST.name} to what pip downloads")
    return [dest / w for w in wanted]


def _excluded(rel: str, patterns) -> bool:
    rel_dir = rel + ("/" if not Path(rel).suffix else "")
    for pat in patterns:
        if pat.startswith("/"):
            anchored = pat[1:]
            if anchored.endswith("/"):
                if rel.startswith(anchored):
                    return True
            elif fnmatch.fnmatch(rel.split("/")[0], anchored):
                return True
        elif pat.endswith("/"):
            if f"/{pat}" in f"/{rel_dir}" or f"/{pat}" in f"/{rel}/":
                return True
        elif fnmatch.fnmatch(Path(rel).name, pat):
            return True
    return False


def stage(build: Path) -> Path:
    """Copy the add-on + backend client into ``build/stage`` (the extension's root folder)."""
    manifest = read_manifest()
    patterns = tuple(manifest.get("build", {}).get("paths_exclude_pattern", ())) + ALWAYS_EXCLUDE
    root = build / "stage"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for src in sorted(ADDON.rglob("*")):
        rel = src.relative_to(ADDON).as_posix()
        if src.is_dir() or _excluded(rel, patterns):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / rel)
    backend = root / "backend"
    backend.mkdir()
    (backend / "__init__.py").write_text(
        '"""The backend\'s pure protocol and client and the shared frame order (ffavatar/sequence.py), '
        'copied from the Python packages when the extension is built."""\n')
    for rel in BACKEND_FILES:
        src = ROOT / rel
        if not src.exists():
            raise BuildError(f"{src} is missing: the extension bundles it from the Python packages")
        shutil.copy2(src, backend / src.name)
    shutil.copy2(MANIFEST, root / MANIFEST.name)
    return root


def _generated(platform: str, wheels: list[str]) -> str:
    names = ", ".join(f'"./wheels/{w}"' for w in wheels)
    return ("\n\n# BEGIN GENERATED CONTENT.\n# This must not be included in source manifests.\n"
            f'[build.generated]\nplatforms = ["{platform}"]\nwheels = [{names}]\n# END GENERATED CONTENT.\n')


def build_zips(build: Path, dist: Path, platforms: list[str] | None = None) -> list[Path]:
    """One zip per platform (Blender's split-platform layout) -> their paths."""
    manifest = read_manifest()
    root = stage(build)
    wheels_dir = build / "wheels"
    wanted = [Path(w).name for w in manifest.get("wheels", [])]
    missing = [w for w in wanted if not (wheels_dir / w).exists()]
    if missing:
        raise BuildError(f"wheels missing in {wheels_dir}: {missing}; run the 'wheels' step (make extension) first")
    dist.mkdir(parents=True, exist_ok=True)
    out = []
    for platform in platforms or manifest["platforms"]:
        if platform not in manifest["platforms"]:
            raise BuildError(f"platform {platform!r} is not in the manifest's {manifest['platforms']}")
        mine = [w for w in wanted if platform in wheel_platforms(w)]
        path = dist / f"{manifest['id']}-{manifest['version']}-{platform.replace('-', '_')}.zip"
        tmp = path.with_name("." + path.name)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    rel = f.relative_to(root).as_posix()
                    if rel == MANIFEST.name:
                        z.writestr(rel, f.read_text(encoding="utf-8") + _generated(platform, mine))
                    else:
                        z.write(f, rel)
            for w in mine:
                z.write(wheels_dir / w, f"wheels/{w}", compress_type=zipfile.ZIP_STORED)
        tmp.replace(path)
        log.info("wrote %s (%.1f MB, %d wheels)", path, path.stat().st_size / 1e6, len(mine))
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="download the manifest's wheels")
    w.add_argument("--build", type=Path, default=ROOT / "build" / "extension")
    w.add_argument("--pip", default=f"{shlex.quote(sys.executable)} -m pip", help="pip command (default: this Python's)")
    z = sub.add_parser("zip", help="write one zip per platform")
    z.add_argument("--build", type=Path, default=ROOT / "build" / "extension")
    z.add_argument("--dist", type=Path, default=ROOT / "dist")
    z.add_argument("--platforms", nargs="*", help="subset of the manifest's platforms")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "wheels":
            download_wheels(args.build, shlex.split(args.pip))
        else:
            build_zips(args.build, args.dist, args.platforms)
    except (BuildError, subprocess.CalledProcessError, OSError) as e:
        log.error("extension build failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
